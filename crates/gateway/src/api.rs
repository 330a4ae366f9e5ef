//! The gateway's own HTTP API under the reserved prefix, and the one mapping from failures to
//! `{"error","reason"}` answers.
//!
//! `GET {prefix}v1/queue/{id}` is open to whoever holds the id (an unguessable UUID handed out
//! in the `Location` of the 202), so a client can follow its own request. Everything else
//! (listing, retry, drop, gateway status, metrics) is the admin part and needs
//! `Authorization: Bearer <admin token>`; without a configured token it is disabled.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::health::Health;
use crate::queue::{EntryDetail, Queue, State as EntryState, now_ms};
use crate::stats::Stats;

/// A failure as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    /// The request is malformed.
    BadRequest(String),
    /// The admin token is missing or wrong.
    Unauthorized,
    /// The admin API is disabled because no token is configured.
    AdminDisabled,
    /// No such resource.
    NotFound(String),
    /// The method does not apply to this resource.
    MethodNotAllowed,
    /// The operation does not apply in the resource's current state.
    Conflict(String),
    /// The body is larger than the limit (in bytes).
    PayloadTooLarge(u64),
    /// The queue cannot take more.
    QueueFull(&'static str),
    /// The upstream (or the queue) cannot serve this now; retry after the given seconds.
    Unavailable {
        /// What is unavailable.
        reason: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// Something failed inside the gateway; the cause is logged, not sent.
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(r) => (StatusCode::BAD_REQUEST, "bad_request", r.clone()),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required".into(),
            ),
            ApiError::AdminDisabled => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "the admin api is disabled: no admin token is configured".into(),
            ),
            ApiError::NotFound(r) => (StatusCode::NOT_FOUND, "not_found", r.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method does not apply to this resource".into(),
            ),
            ApiError::Conflict(r) => (StatusCode::CONFLICT, "conflict", r.clone()),
            ApiError::PayloadTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body exceeds {max} bytes"),
            ),
            ApiError::QueueFull(why) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "queue_full",
                format!("the request was not queued: {why}"),
            ),
            ApiError::Unavailable { reason, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                reason.clone(),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the gateway failed; see its log".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, reason) = self.parts();
        let mut resp = (
            status,
            axum::Json(json!({ "error": error, "reason": reason })),
        )
            .into_response();
        if let ApiError::Unavailable { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(id) => ApiError::NotFound(format!("no queue entry {id}")),
            Error::Conflict(reason) => ApiError::Conflict(reason),
            Error::QueueFull(why) => ApiError::QueueFull(why),
            e @ (Error::Storage(_)
            | Error::File { .. }
            | Error::Listen { .. }
            | Error::Corrupt(_)
            | Error::WrongKey
            | Error::InvalidKey(_)
            | Error::Config(_)
            | Error::Closed) => {
                tracing::error!(error = %e, "queue operation failed");
                ApiError::Internal
            }
        }
    }
}

/// What the admin routes need.
pub(crate) struct AdminState {
    pub queue: Queue,
    pub stats: Arc<Stats>,
    /// The upstream's health; absent for the in-process layer, which has no upstream.
    pub health: Option<Arc<Health>>,
    /// The upstream URL shown in the status.
    pub upstream: Option<String>,
    pub token: Option<String>,
    pub prefix: String,
}

impl AdminState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError::AdminDisabled);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The status URL of an entry.
    pub fn status_url(&self, id: &str) -> String {
        status_url(&self.prefix, id)
    }
}

/// The status URL of entry `id` under `prefix`.
pub fn status_url(prefix: &str, id: &str) -> String {
    format!("{prefix}v1/queue/{id}")
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router of the reserved prefix.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    let p = state.prefix.clone();
    Router::new()
        .route(&format!("{p}v1/queue"), get(list))
        .route(&format!("{p}v1/queue/{{id}}"), get(show).delete(drop_entry))
        .route(&format!("{p}v1/queue/{{id}}/retry"), post(retry))
        .route(&format!("{p}v1/gateway"), get(gateway))
        .route(&format!("{p}v1/metrics"), get(metrics))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    state: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn list(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let Query(params) = params.map_err(|_| {
        ApiError::BadRequest("the query parameters are invalid (state, after, limit)".into())
    })?;
    let state = params
        .state
        .as_deref()
        .map(|st| {
            EntryState::parse(st).map_err(|_| {
                ApiError::BadRequest(format!("state `{st}` is not one of pending, dead, done"))
            })
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let entries = s
        .queue
        .list(state, params.after.unwrap_or(0), limit)
        .await?;
    let next = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(axum::Json(json!({ "entries": entries, "next_after": next })).into_response())
}

async fn show(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let detail = s.queue.get(&id).await?;
    Ok(axum::Json(entry_json(&detail, &s.status_url(&id))).into_response())
}

async fn drop_entry(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    s.queue.drop_entry(&id).await?;
    Ok(axum::Json(json!({ "id": id, "dropped": true })).into_response())
}

async fn retry(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    s.queue.retry(&id).await?;
    Ok(axum::Json(json!({ "id": id, "status": "pending" })).into_response())
}

async fn gateway(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let q = s.queue.stats().await?;
    let now = now_ms();
    let body = json!({
        "upstream": {
            "url": s.upstream,
            "state": s.health.as_ref().map(|h| if h.is_up() { "up" } else { "down" }),
        },
        "queue": {
            "depth": q.pending,
            "dead": q.dead,
            "done": q.done,
            "stored_bytes": q.stored_bytes,
            "oldest_pending_age_ms": q.oldest_pending_ms.map(|t| (now - t).max(0)),
        },
        "counters": s.stats.snapshot(),
    });
    Ok(axum::Json(body).into_response())
}

async fn metrics(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let up = s.health.as_ref().is_none_or(|h| h.is_up());
    let text = s
        .stats
        .snapshot()
        .prometheus(up, s.queue.pending_count(), s.queue.stored_bytes());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The JSON form of an entry for the status URL: state and history, the request line, and the
/// upstream's answer once there is one. Request headers are left out: they carry credentials.
pub fn entry_json(detail: &EntryDetail, status_url: &str) -> Value {
    let s = &detail.summary;
    let mut v = json!({
        "id": s.id,
        "state": s.state,
        "status_url": status_url,
        "attempts": s.attempts,
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
        "next_attempt_ms": s.next_attempt_ms,
        "last_error": s.last_error,
        "idempotency_key": s.idempotency_key,
        "ordering_key": s.ordering_key,
    });
    if let Some(req) = &detail.request {
        v["request"] = json!({
            "method": req.method,
            "target": req.target,
            "body_bytes": req.body.len(),
        });
    }
    if let Some(resp) = &detail.response {
        let headers: serde_json::Map<String, Value> = resp
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        let mut r = json!({
            "status": resp.status,
            "headers": headers,
            "truncated": resp.truncated,
        });
        match std::str::from_utf8(&resp.body) {
            Ok(text) => r["body"] = Value::String(text.to_owned()),
            Err(_) => {
                r["body_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&resp.body))
            }
        }
        v["response"] = r;
    }
    v
}
