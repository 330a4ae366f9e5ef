//! The request every handler takes: method, headers, query and a body read once, under the
//! server's limits (size, time, a budget of bytes in flight across requests, content encoding).
//! It sits below the routes and the dispatcher alike; the dispatcher only builds it.

use axum::body::{Body, Bytes};
use http::{HeaderMap, Method, header};
use serde_json::Value;

use crate::ApiError;
use crate::query::Query;

/// The longest document id accepted, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 4096;

/// A request, taken apart once for every handler.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// Who the request comes from (a server admin in admin party).
    pub user: outpost_auth::UserCtx,
    /// The user's level on the route's database, when the route has one and it was checked.
    pub level: Option<outpost_auth::Level>,
    /// How the user was authenticated (`default`, `cookie`, `jwt`), for `GET /_session`.
    pub authenticated: Option<&'static str>,
    /// The client's address, for lockout accounting; `unknown` without a socket.
    pub source: String,
    /// Taken once by whoever reads it. In a mutex only so that `&Req` can cross an `.await`
    /// (a body is `Send` but not `Sync`); it is never contended.
    body: std::sync::Mutex<Option<Body>>,
    max_body: usize,
    body_timeout: std::time::Duration,
    /// The server's budget of request body bytes in flight.
    budget: BodyBudget,
    /// This request's share of the budget, given back when the request is dropped.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The WebSocket handshake of an `Upgrade: websocket` request, taken by the one route that
    /// accepts it (the multiplexed feed). In a mutex for the same reason as the body.
    websocket: std::sync::Mutex<Option<axum::extract::ws::WebSocketUpgrade>>,
}

/// The bytes of request bodies all requests together may hold: each body's bytes are counted
/// as they are read and given back when its request is answered, so many large bodies at once
/// get 503 instead of exhausting memory.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
    total: u64,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: std::sync::Arc::new(tokio::sync::Semaphore::new(total)),
            total: total as u64,
        }
    }
}

impl Req {
    /// A request as the dispatcher takes it apart, with the server's body limits.
    pub(crate) fn new(
        method: Method,
        headers: HeaderMap,
        query: Query,
        body: Body,
        config: &crate::Config,
        budget: BodyBudget,
    ) -> Req {
        Req {
            method,
            headers,
            query,
            user: outpost_auth::UserCtx::anonymous(),
            level: None,
            authenticated: None,
            source: String::from("unknown"),
            body: std::sync::Mutex::new(Some(body)),
            max_body: config.max_body_bytes,
            body_timeout: config.body_read_timeout,
            budget,
            held: None,
            websocket: std::sync::Mutex::new(None),
        }
    }

    /// Hangs a WebSocket handshake on the request.
    pub(crate) fn set_websocket(&mut self, upgrade: axum::extract::ws::WebSocketUpgrade) {
        *self.websocket.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(upgrade);
    }

    /// The WebSocket handshake, if the request asked to upgrade.
    pub(crate) fn take_websocket(&self) -> Option<axum::extract::ws::WebSocketUpgrade> {
        self.websocket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The whole body, refused above the configured limit, and with 503 when the server's
    /// budget of body bytes in flight is spent. The bytes stay counted against that budget until
    /// the request is answered.
    pub async fn bytes(&mut self) -> Result<Bytes, ApiError> {
        let bytes = self.raw_bytes().await?;
        let compressed = bytes.as_ptr();
        let decoded = self.decode_content(bytes)?;
        // Decompressed bytes are held as well as the compressed ones.
        if decoded.as_ptr() != compressed {
            self.reserve(decoded.len() as u64)?;
        }
        Ok(decoded)
    }

    /// The body of an attachment upload, and whether it is gzip-encoded: sent with
    /// `Content-Encoding: gzip`, it is kept as it came (CouchDB stores such an attachment
    /// encoded); any other body is what [`Req::bytes`] gives.
    pub async fn attachment_bytes(&mut self) -> Result<(Bytes, bool), ApiError> {
        let gzip = matches!(
            self.headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref(),
            Some("gzip" | "x-gzip")
        );
        if gzip {
            Ok((self.raw_bytes().await?, true))
        } else {
            Ok((self.bytes().await?, false))
        }
    }

    /// The whole body as sent, under the size limit and the budget.
    async fn raw_bytes(&mut self) -> Result<Bytes, ApiError> {
        let body = self
            .body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let declared = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared {
            self.reserve(len)?;
        }
        // A client that stops sending mid-body must not hold a connection (and its memory)
        // forever.
        let read = tokio::time::timeout(self.body_timeout, self.read_body(body, declared));
        let Ok(read) = read.await else {
            return Err(ApiError::RequestTimeout);
        };
        read
    }

    async fn read_body(&mut self, body: Body, declared: Option<u64>) -> Result<Bytes, ApiError> {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| ApiError::bad_request("could not read the request body"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = out.len() as u64 + data.len() as u64;
            if total > self.max_body as u64 {
                return Err(self.too_large());
            }
            // A body without a length is counted as it arrives; one with a length was counted
            // whole before reading (hyper refuses a body longer than it said).
            if declared.is_none() {
                self.reserve(data.len() as u64)?;
            }
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    }

    fn too_large(&self) -> ApiError {
        ApiError::TooLarge(format!(
            "request body is larger than {} bytes",
            self.max_body
        ))
    }

    /// Counts `len` more body bytes against the server's budget, for as long as this request
    /// lives.
    fn reserve(&mut self, len: u64) -> Result<(), ApiError> {
        if len > self.max_body as u64 {
            return Err(self.too_large());
        }
        if len > self.budget.total {
            return Err(ApiError::TooLarge(format!(
                "request body is larger than the {} bytes all requests may have in flight",
                self.budget.total
            )));
        }
        let Ok(n) = u32::try_from(len) else {
            return Err(self.too_large());
        };
        if n == 0 {
            return Ok(());
        }
        let permit = self
            .budget
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| {
                ApiError::Busy("too many request bytes in flight; retry shortly".into())
            })?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// Undoes a `Content-Encoding` of the body (the Cloudant SDK under couchbackup gzips its
    /// request bodies). The decoded size is held to the same limit as a plain body, so a small
    /// compressed bomb cannot expand without bound.
    fn decode_content(&self, bytes: Bytes) -> Result<Bytes, ApiError> {
        use crate::encoding::{InflateError, inflate};
        let coding = self
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        match inflate(coding.as_deref(), &bytes, self.max_body) {
            Ok(None) => Ok(bytes),
            Ok(Some(decoded)) => Ok(Bytes::from(decoded)),
            Err(InflateError::Unsupported(other)) => Err(ApiError::BadContentType(format!(
                "unsupported Content-Encoding {other:?}; use gzip or deflate"
            ))),
            Err(InflateError::Corrupt) => Err(ApiError::bad_request(
                "the request body is not validly compressed",
            )),
            Err(InflateError::TooLarge) => Err(ApiError::TooLarge(format!(
                "request body is larger than {} bytes once decompressed",
                self.max_body
            ))),
        }
    }

    /// The body parsed as JSON (see [`outpost_core::json`]); the content type, when given, must
    /// be JSON.
    pub async fn json(&mut self) -> Result<Value, ApiError> {
        let bytes = self.json_bytes().await?;
        decode_json(&bytes)
    }

    /// The body, which must be a JSON document (see [`Req::json`]), not decoded yet: for a
    /// handler that decodes parts of it on its own (`_bulk_docs`).
    pub async fn json_bytes(&mut self) -> Result<Bytes, ApiError> {
        self.require_json_type()?;
        let bytes = self.bytes().await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "request body must be a JSON document",
            ));
        }
        Ok(bytes)
    }

    /// Refuses a body sent with a content type other than JSON, as CouchDB does (a missing
    /// content type is let through for the convenience of hand-written requests).
    pub fn require_json_type(&self) -> Result<(), ApiError> {
        match self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            None => Ok(()),
            Some(ct) if media_type(ct) == "application/json" => Ok(()),
            Some(ct) => Err(ApiError::BadContentType(format!(
                "Content-Type must be application/json, not {}",
                media_type(ct)
            ))),
        }
    }
}

/// A request body decoded as JSON: numbers as written, keys in order, duplicate keys as CouchDB
/// decodes them (see [`outpost_core::json`]).
pub fn decode_json(bytes: &[u8]) -> Result<Value, ApiError> {
    outpost_core::json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}
