//! The one error type of the HTTP API and its one mapping to status codes.
//!
//! Every error leaves as `{"error": code, "reason": text}` with CouchDB's codes, because clients
//! branch on them (PouchDB creates a database on 404, treats 412 on create as success, retries
//! 5xx). A 5xx body says nothing internal; the cause goes to the log.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use outpost_core::NameError;
use outpost_store::{DocError, StoreError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: bad JSON, a bad parameter, an invalid revision.
    #[error("{0}")]
    BadRequest(String),
    /// A database name outside CouchDB's rule.
    #[error("{0}")]
    IllegalDbName(String),
    /// A document id CouchDB does not allow (empty, or `_` without a reserved prefix).
    #[error("{0}")]
    IllegalDocId(String),
    /// A special field (`_foo`) CouchDB does not know.
    #[error("{0}")]
    DocValidation(String),
    /// The database, document, revision or attachment does not exist; the reason is CouchDB's
    /// (`missing`, `deleted`, `Database does not exist.`).
    #[error("{0}")]
    NotFound(String),
    /// The method is not supported on this resource.
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    /// An edit of a revision that is not the current leaf.
    #[error("Document update conflict.")]
    Conflict,
    /// The database to create already exists.
    #[error("The database could not be created, the file already exists.")]
    FileExists,
    /// A precondition of the request does not hold (a missing attachment stub).
    #[error("{0}")]
    PreconditionFailed(String),
    /// An attachment stub that names no attachment of the revision it builds on.
    #[error("{0}")]
    MissingStub(String),
    /// A body, id or batch above the configured limits.
    #[error("{0}")]
    TooLarge(String),
    /// A document whose body is above `max_document_size`; the reason is its id, as CouchDB's.
    #[error("{0}")]
    DocumentTooLarge(String),
    /// An attachment above `max_attachment_size`; the reason is its name, as CouchDB's.
    #[error("{0}")]
    AttachmentTooLarge(String),
    /// Query parameters that cannot be used together (`key` with `keys`).
    #[error("{0}")]
    QueryParse(String),
    /// Too many request bytes are already in flight; the client should retry shortly.
    #[error("{0}")]
    Busy(String),
    /// A body in a content type this endpoint does not take.
    #[error("{0}")]
    BadContentType(String),
    /// No representation the client's `Accept-Encoding` allows (it refuses identity and the
    /// stored coding alike).
    #[error("{0}")]
    NotAcceptable(String),
    /// An endpoint CouchDB removed (`_temp_view`).
    #[error("{0}")]
    Gone(String),
    /// A `validate_doc_update` refused the write with `{forbidden: message}`.
    #[error("{0}")]
    Forbidden(String),
    /// A `validate_doc_update` refused the write with `{unauthorized: message}`.
    #[error("{0}")]
    Unauthorized(String),
    /// A design-document function threw something else, did not compile or was stopped; the
    /// reason is the function's own message.
    #[error("{0}")]
    FunctionFailed(String),
    /// A built-in reduce (`_sum`, `_stats`) refused the values it was given.
    #[error("{0}")]
    BuiltinReduce(String),
    /// A feature Outpost does not have (yet), named in the reason.
    #[error("{0}")]
    NotImplemented(String),
    /// A Mango request without a member it needs.
    #[error("{0}")]
    MissingRequiredKey(String),
    /// No Mango index can serve the query (its sort).
    #[error("{0}")]
    NoUsableIndex(String),
    /// A Mango sort with fields in different directions.
    #[error("{0}")]
    UnsupportedMixedSort(String),
    /// A Mango bookmark this server did not hand out.
    #[error("{0}")]
    InvalidBookmark(String),
    /// The request body did not arrive in time.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The store is closing.
    #[error("the server is shutting down")]
    Unavailable,
    /// A bug or a storage failure; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::BadRequest(reason.into())
    }

    pub fn missing() -> ApiError {
        ApiError::NotFound("missing".into())
    }

    pub fn no_db() -> ApiError {
        ApiError::NotFound("Database does not exist.".into())
    }

    /// Status and CouchDB error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::IllegalDbName(_) => (StatusCode::BAD_REQUEST, "illegal_database_name"),
            ApiError::IllegalDocId(_) => (StatusCode::BAD_REQUEST, "illegal_docid"),
            ApiError::DocValidation(_) => (StatusCode::BAD_REQUEST, "doc_validation"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict => (StatusCode::CONFLICT, "conflict"),
            ApiError::FileExists => (StatusCode::PRECONDITION_FAILED, "file_exists"),
            ApiError::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            ApiError::MissingStub(_) => (StatusCode::PRECONDITION_FAILED, "missing_stub"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::DocumentTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "document_too_large"),
            ApiError::AttachmentTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "attachment_too_large")
            }
            ApiError::QueryParse(_) => (StatusCode::BAD_REQUEST, "query_parse_error"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::BadContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone"),
            ApiError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BuiltinReduce(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "builtin_reduce_error")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::FunctionFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unknown_error"),
            ApiError::MissingRequiredKey(_) => (StatusCode::BAD_REQUEST, "missing_required_key"),
            ApiError::NoUsableIndex(_) => (StatusCode::BAD_REQUEST, "no_usable_index"),
            ApiError::UnsupportedMixedSort(_) => {
                (StatusCode::BAD_REQUEST, "unsupported_mixed_sort")
            }
            ApiError::InvalidBookmark(_) => (StatusCode::BAD_REQUEST, "invalid_bookmark"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error"),
        }
    }

    /// The `reason` a client sees.
    pub fn reason(&self) -> String {
        match self {
            ApiError::Internal(_) => "an internal error occurred; see the server log".to_owned(),
            other => other.to_string(),
        }
    }

    /// The `{"error","reason"}` object.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.status_and_code().1, "reason": self.reason() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %cause, "request failed");
        }
        let mut response = (status, crate::json_body(self.body().to_string())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NoDb => ApiError::no_db(),
            StoreError::DbExists => ApiError::FileExists,
            StoreError::Conflict => ApiError::Conflict,
            StoreError::NotFound => ApiError::missing(),
            StoreError::Closed => ApiError::Unavailable,
            StoreError::Unavailable(reason) => {
                tracing::warn!(reason = %reason, "store unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> ApiError {
        match e {
            DocError::Conflict => ApiError::Conflict,
            DocError::MissingStub { doc, name } => {
                ApiError::MissingStub(format!("Invalid attachment stub in {doc} for {name}"))
            }
            DocError::InvalidPath => ApiError::bad_request("Invalid _revisions path"),
            DocError::Invalid(reason) => ApiError::BadRequest(reason),
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        match e {
            NameError::IllegalDbName(_) => ApiError::IllegalDbName(e.to_string()),
            NameError::EmptyId | NameError::ReservedId => ApiError::IllegalDocId(e.to_string()),
        }
    }
}
