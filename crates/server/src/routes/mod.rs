//! One module per HTTP resource, and the few helpers they share.

pub mod all_docs;
pub mod attachment;
pub mod bulk;
pub mod changes;
pub mod conflicts;
pub mod console;
pub mod db;
pub mod db_updates;
pub mod doc;
pub mod doc_form;
pub mod doc_multipart;
pub mod feed;
pub mod find;
pub mod gateway;
pub mod local;
pub mod node;
pub mod ops;
pub mod purge;
pub mod replicate;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod session;
pub mod stats;
pub mod view;

use axum::response::Response;
use http::{StatusCode, header};
use outpost_core::Rev;
use outpost_store::{DocRecord, DocUpdate};

use crate::request::Req;
use crate::{ApiError, AppState};

/// A JSON answer with a status.
pub fn json(status: StatusCode, text: String) -> Response {
    let mut response = crate::json_body(text);
    *response.status_mut() = status;
    response
}

/// A JSON answer with 200.
pub fn ok(text: String) -> Response {
    json(StatusCode::OK, text)
}

/// Adds an `ETag` of a revision.
pub fn with_etag(mut response: Response, rev: &Rev) -> Response {
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{rev}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// A document's record, or CouchDB's 404 (`missing`).
pub async fn load_doc(state: &AppState, db: &str, id: &str) -> Result<DocRecord, ApiError> {
    let record = state
        .store
        .doc(db, id)
        .await?
        .ok_or_else(ApiError::missing)?;
    crate::observe::documents_read(1);
    Ok(record)
}

/// The revision a read without `rev` serves: the winner, or CouchDB's 404 (`deleted`) when the
/// document is deleted.
pub fn live_winner(record: &DocRecord) -> Result<Rev, ApiError> {
    let winner = record.tree.winner().ok_or_else(ApiError::missing)?;
    if winner.deleted {
        return Err(ApiError::NotFound("deleted".into()));
    }
    Ok(winner.rev)
}

/// Writes one document, once the database's `validate_doc_update` functions allow it, and
/// returns its new revision.
pub async fn write_one(
    state: &AppState,
    db: &str,
    update: DocUpdate,
    req: &Req,
) -> Result<Rev, ApiError> {
    let user_ctx = crate::design::user_ctx(req, db);
    let mut results = crate::design::write_validated(state, db, vec![update], &user_ctx).await?;
    match results.pop() {
        Some(result) => result,
        None => Err(ApiError::Internal(
            "the store answered no result for a write".into(),
        )),
    }
}

/// Refuses a method, naming the ones allowed.
pub fn not_allowed(allowed: &'static str) -> ApiError {
    ApiError::MethodNotAllowed(allowed)
}
