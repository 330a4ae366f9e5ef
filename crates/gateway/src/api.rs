//! The gateway's own HTTP API under the reserved prefix, and the one mapping from failures to
//! `{"error","reason"}` answers.
//!
//! `GET {prefix}v1/queue/{id}` is open to whoever holds the id (an unguessable UUID handed out
//! in the `Location` of the 202), so a client can follow its own request, and
//! `GET {prefix}v1/ready` to load-balancer probes. Everything else
//! (listing, retry, drop, gateway status, metrics) is the admin part and needs
//! `Authorization: Bearer <admin token>`, or the credentials of a server admin of the sync
//! server (Basic, or a JWT with the `_admin` role; see [`crate::accounts`]); with neither a token
//! nor accounts configured it is disabled.

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
    /// The idempotency key is already used for a different request.
    KeyReused,
    /// The request body stopped arriving.
    RequestTimeout,
    /// Buffered request bodies are at the gateway's global byte budget.
    Busy,
    /// A write was sent to the upstream but no answer came (a timeout, or the connection broke):
    /// it may or may not have been applied.
    OutcomeUnknown {
        /// Whether it timed out (504) rather than lost its connection (502).
        timeout: bool,
    },
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
            ApiError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this idempotency key is already used for a different request".into(),
            ),
            ApiError::OutcomeUnknown { timeout } => (
                if *timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "upstream_outcome_unknown",
                "the upstream did not answer this write; it may or may not have been applied"
                    .into(),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stopped arriving".into(),
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many request bodies are in flight; retry later".into(),
            ),
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
        match self {
            ApiError::Unavailable { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Busy => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
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
            Error::KeyReused => ApiError::KeyReused,
            e @ (Error::Unreachable(_) | Error::SharedStorage(_)) if e.is_retryable() => {
                tracing::error!(error = %e, "queue operation failed");
                ApiError::Unavailable {
                    reason: "the queue database cannot be reached".into(),
                    retry_after: 5,
                }
            }
            e @ (Error::Storage(_)
            | Error::SharedStorage(_)
            | Error::Unreachable(_)
            | Error::File { .. }
            | Error::Listen { .. }
            | Error::Corrupt(_)
            | Error::WrongKey
            | Error::OtherKey(_)
            | Error::InvalidKey(_)
            | Error::Config(_)
            | Error::Locked(_)
            | Error::Closed) => {
                tracing::error!(error = %e, "queue operation failed");
                ApiError::Internal
            }
        }
    }
}

/// What the admin routes need.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub queue: Queue,
    pub stats: Arc<Stats>,
    /// The upstream's health; absent for the in-process layer, which has no upstream.
    pub health: Option<Arc<Health>>,
    /// The upstream URL shown in the status.
    pub upstream: Option<String>,
    pub token: Option<String>,
    /// Server admins and JWT settings accepted besides the token.
    pub accounts: Option<Arc<crate::accounts::AdminAccounts>>,
    pub prefix: String,
    /// Set only on the router a host process embeds after checking the caller is an admin
    /// itself ([`embedded_router`]); such a router is never served on a socket.
    pub trusted: bool,
}

impl AdminState {
    async fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.trusted {
            return Ok(());
        }
        let accounts = self.accounts.as_ref().filter(|a| !a.is_empty());
        if self.token.is_none() && accounts.is_none() {
            return Err(ApiError::AdminDisabled);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let (Some(token), Some(bearer)) = (&self.token, given.strip_prefix("Bearer "))
            && constant_time_eq(bearer.as_bytes(), token.as_bytes())
        {
            return Ok(());
        }
        if let Some(accounts) = accounts
            && accounts.admits(given).await
        {
            return Ok(());
        }
        Err(ApiError::Unauthorized)
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
    let prefix = state.prefix.clone();
    routes(state, &prefix)
}

/// The admin routes under `/v1/` for a process that runs the gateway beside its own server and
/// has already checked that the caller is an admin (the sync server's console): no credentials
/// are asked. Status URLs in its answers still name the gateway's own prefix.
pub(crate) fn embedded_router(state: &AdminState) -> Router {
    let trusted = AdminState {
        trusted: true,
        ..state.clone()
    };
    routes(Arc::new(trusted), "/")
}

fn routes(state: Arc<AdminState>, p: &str) -> Router {
    Router::new()
        .route(&format!("{p}v1/queue"), get(list))
        .route(&format!("{p}v1/queue/{{id}}"), get(show).delete(drop_entry))
        .route(&format!("{p}v1/queue/{{id}}/retry"), post(retry))
        .route(&format!("{p}v1/gateway"), get(gateway))
        .route(&format!("{p}v1/metrics"), get(metrics))
        .route(&format!("{p}v1/ready"), get(ready))
        .route(&format!("{p}v1/openapi.json"), get(openapi))
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

#[utoipa::path(
    get,
    path = "/_outpost/v1/queue",
    tag = "gateway",
    description = "Queue entries, oldest first, filtered by `state` (pending, dead, done); pages with `after` and `limit` (at most 1,000). Needs the admin token.",
    responses((status = 200, description = "`{entries, next_after}`"), (status = 400, description = "Invalid query parameters"), (status = 401, description = "Missing or wrong admin token"), (status = 403, description = "No admin token configured"))
)]
async fn list(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize(&headers).await?;
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

#[utoipa::path(
    get,
    path = "/_outpost/v1/queue/{id}",
    tag = "gateway",
    description = "One queued request: state, attempts, last error, the upstream answer once delivered and `delivered_at`. Open to whoever holds the id (it is the `Location` of the 202).",
    responses((status = 200, description = "The entry"), (status = 404, description = "No such entry"))
)]
async fn show(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let detail = s.queue.get(&id).await?;
    Ok(axum::Json(entry_json(&detail, &s.status_url(&id))).into_response())
}

#[utoipa::path(
    delete,
    path = "/_outpost/v1/queue/{id}",
    tag = "gateway",
    description = "Deletes an entry in any state (pending, dead or done). Needs the admin token. An entry being delivered at that moment may still reach the upstream; its outcome is then discarded (the compare-and-set finds the entry gone).",
    responses((status = 200, description = "`{id, dropped: true}`"), (status = 404, description = "No such entry"), (status = 401, description = "Missing or wrong admin token"), (status = 403, description = "No admin token configured"))
)]
async fn drop_entry(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.authorize(&headers).await?;
    s.queue.drop_entry(&id).await?;
    Ok(axum::Json(json!({ "id": id, "dropped": true })).into_response())
}

#[utoipa::path(
    post,
    path = "/_outpost/v1/queue/{id}/retry",
    tag = "gateway",
    description = "Makes a dead or backing-off pending entry pending now, with its attempts reset. Needs the admin token. An entry being delivered at that moment keeps its delivery, whose outcome is then discarded (the compare-and-set finds the entry changed), and is delivered again with the same Idempotency-Key.",
    responses((status = 200, description = "`{id, status: pending}`"), (status = 404, description = "No such entry"), (status = 409, description = "The entry was already delivered"), (status = 401, description = "Missing or wrong admin token"), (status = 403, description = "No admin token configured"))
)]
async fn retry(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.authorize(&headers).await?;
    s.queue.retry(&id).await?;
    Ok(axum::Json(json!({ "id": id, "status": "pending" })).into_response())
}

#[utoipa::path(
    get,
    path = "/_outpost/v1/gateway",
    tag = "gateway",
    description = "Upstream state, queue depth, oldest pending age and the delivery counters. Needs the admin token.",
    responses((status = 200, description = "`{upstream, queue, counters}`"), (status = 401, description = "Missing or wrong admin token"), (status = 403, description = "No admin token configured"))
)]
async fn gateway(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers).await?;
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

#[utoipa::path(
    get,
    path = "/_outpost/v1/metrics",
    tag = "gateway",
    description = "Every metric in the Prometheus text format. Needs the admin token.",
    responses((status = 200, description = "The exposition", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String), (status = 401, description = "Missing or wrong admin token"), (status = 403, description = "No admin token configured"))
)]
async fn metrics(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers).await?;
    publish_metrics(&s).await?;
    Ok((
        [(header::CONTENT_TYPE, outpost_telemetry::CONTENT_TYPE)],
        outpost_telemetry::render(),
    )
        .into_response())
}

/// Readiness, open to probes: 200 while the queue answers, whatever the upstream's state (a
/// gateway whose upstream is down is doing its job by taking writes, so a balancer must keep
/// sending them), which the body reports; 503 with `Retry-After` when the queue does not answer.
#[utoipa::path(
    get,
    path = "/_outpost/v1/ready",
    tag = "gateway",
    description = "Readiness: 200 while the queue answers, whatever the upstream state (reported in the body); 503 with `Retry-After` otherwise.",
    responses((status = 200, description = "`{status: ready, upstream}`"), (status = 503, description = "The queue does not answer"))
)]
async fn ready(State(s): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    if let Err(e) = s.queue.stats().await {
        tracing::warn!(error = %e, "readiness check: the queue does not answer");
        return Err(ApiError::Unavailable {
            reason: "the queue does not answer".into(),
            retry_after: 5,
        });
    }
    let upstream = s
        .health
        .as_ref()
        .map(|h| if h.is_up() { "up" } else { "down" });
    let worker_panics = s.stats.snapshot().worker_panics;
    Ok(axum::Json(json!({
        "status": "ready",
        "upstream": upstream,
        "worker_panics": worker_panics,
    }))
    .into_response())
}

/// The OpenAPI document of the routes above, generated from their `#[utoipa::path]`
/// attributes; a route missing from `paths` fails the test that compares it with the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Outpost gateway API",
        description = "The offline request gateway's own endpoints under its reserved prefix (`/_outpost/` unless configured otherwise): queued requests, operations and this document."
    ),
    paths(list, show, drop_entry, retry, gateway, metrics, ready, openapi)
)]
struct ApiDoc;

/// This API's OpenAPI 3.1 document, with the paths under the configured prefix.
#[utoipa::path(
    get,
    path = "/_outpost/v1/openapi.json",
    tag = "gateway",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi(State(s): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    if s.prefix != "/_outpost/" {
        let paths = std::mem::take(&mut doc.paths.paths);
        doc.paths.paths = paths
            .into_iter()
            .map(|(path, item)| (path.replacen("/_outpost/", &s.prefix, 1), item))
            .collect();
    }
    let text = doc.to_json().map_err(|e| {
        tracing::error!(error = %e, "cannot serialise the OpenAPI document");
        ApiError::Internal
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// Copies the gateway's counters and the queue's state into the process-wide `metrics`
/// registry, which the scrape then renders with everything else the process records (the
/// enqueue latency, the queue file's size, memory and descriptors).
pub(crate) async fn publish_metrics(s: &AdminState) -> Result<(), ApiError> {
    use metrics::{counter, gauge};
    // Usually installed at start (`outpost gateway` does); an embedding that did not gets
    // the gateway's series from its first scrape on.
    outpost_telemetry::install();
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(describe_metrics);
    let c = s.stats.snapshot();
    for (name, value) in [
        ("outpost_gateway_passed_total", c.passed),
        ("outpost_gateway_queued_total", c.queued),
        ("outpost_gateway_deduplicated_total", c.deduplicated),
        ("outpost_gateway_delivered_total", c.delivered),
        ("outpost_gateway_retried_total", c.retried),
        ("outpost_gateway_dead_lettered_total", c.dead_lettered),
        (
            "outpost_gateway_queue_full_rejections_total",
            c.rejected_full,
        ),
        ("outpost_gateway_stale_served_total", c.stale_served),
        ("outpost_gateway_unavailable_total", c.unavailable),
        ("outpost_gateway_worker_panics_total", c.worker_panics),
    ] {
        counter!(name).absolute(value);
    }
    if let Some(pool) = s.queue.pool_status() {
        let busy = pool.size.saturating_sub(pool.idle);
        gauge!("outpost_gateway_pool_connections", "state" => "idle").set(pool.idle as f64);
        gauge!("outpost_gateway_pool_connections", "state" => "busy").set(busy as f64);
        gauge!("outpost_gateway_pool_max_connections").set(pool.max_size as f64);
        gauge!("outpost_gateway_pool_waiting").set(pool.waiting as f64);
        gauge!("outpost_gateway_leases_held").set(s.queue.leases_held() as f64);
        // Counted where leases change hands; touched here so they are exported from the
        // start, before the first lease is taken.
        for name in [
            "outpost_gateway_lease_acquired_total",
            "outpost_gateway_lease_takeovers_total",
            "outpost_gateway_lease_lost_total",
        ] {
            counter!(name).increment(0);
        }
    }
    let q = s.queue.stats().await?;
    let up = s.health.as_ref().is_none_or(|h| h.is_up());
    let oldest = q.oldest_pending_ms.map_or(0, |t| (now_ms() - t).max(0));
    gauge!("outpost_gateway_upstream_up").set(if up { 1.0 } else { 0.0 });
    gauge!("outpost_gateway_queue_pending").set(q.pending as f64);
    gauge!("outpost_gateway_queue_dead").set(q.dead as f64);
    gauge!("outpost_gateway_queue_stored_bytes").set(q.stored_bytes as f64);
    gauge!("outpost_gateway_queue_oldest_pending_age_seconds").set(oldest as f64 / 1000.0);
    Ok(())
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "outpost_gateway_passed_total",
        "Requests passed through to the upstream."
    );
    describe_counter!(
        "outpost_gateway_queued_total",
        "Writes made durable in the queue."
    );
    describe_counter!(
        "outpost_gateway_deduplicated_total",
        "Writes answered with an already queued entry."
    );
    describe_counter!(
        "outpost_gateway_delivered_total",
        "Queued writes delivered."
    );
    describe_counter!(
        "outpost_gateway_retried_total",
        "Delivery attempts scheduled for retry."
    );
    describe_counter!(
        "outpost_gateway_dead_lettered_total",
        "Entries moved to the dead-letter queue."
    );
    describe_counter!(
        "outpost_gateway_queue_full_rejections_total",
        "Writes refused because the queue was full."
    );
    describe_counter!(
        "outpost_gateway_stale_served_total",
        "Reads answered from the stale cache."
    );
    describe_counter!(
        "outpost_gateway_unavailable_total",
        "Reads refused while the upstream was down."
    );
    describe_counter!(
        "outpost_gateway_worker_panics_total",
        "Panics caught in the replay worker (the delivery is dead-lettered, the loop restarted)."
    );
    describe_gauge!(
        "outpost_gateway_upstream_up",
        "Whether the upstream is believed up (1) or down (0)."
    );
    describe_gauge!(
        "outpost_gateway_queue_pending",
        "Entries waiting for delivery."
    );
    describe_gauge!("outpost_gateway_queue_dead", "Dead-lettered entries kept.");
    describe_gauge!(
        "outpost_gateway_queue_stored_bytes",
        Unit::Bytes,
        "Bytes of queued requests held."
    );
    describe_gauge!(
        "outpost_gateway_queue_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest pending entry; 0 when none is pending."
    );
    describe_gauge!(
        "outpost_gateway_pool_connections",
        "Connections of the PostgreSQL queue's pool, by state (idle, busy)."
    );
    describe_gauge!(
        "outpost_gateway_pool_max_connections",
        "Most connections the PostgreSQL queue's pool opens."
    );
    describe_gauge!(
        "outpost_gateway_pool_waiting",
        "Callers waiting for a connection of the PostgreSQL queue's pool."
    );
    describe_gauge!(
        "outpost_gateway_leases_held",
        "Ordering keys whose lease this gateway holds (PostgreSQL queue)."
    );
    describe_counter!(
        "outpost_gateway_lease_acquired_total",
        "Leases on ordering keys taken or renewed by a load (PostgreSQL queue)."
    );
    describe_counter!(
        "outpost_gateway_lease_takeovers_total",
        "Leases taken over from another gateway after they expired unreleased (PostgreSQL queue)."
    );
    describe_counter!(
        "outpost_gateway_lease_lost_total",
        "Leases this gateway held and found expired and taken at renewal (PostgreSQL queue)."
    );
    describe_histogram!(
        "outpost_gateway_enqueue_duration_seconds",
        Unit::Seconds,
        "Time to make a write durable in the queue (encryption, group commit, fsync)."
    );
}

/// The JSON form of an entry for the status URL: state and history, the request line, and the
/// upstream's answer once there is one. Request headers are left out: they carry credentials;
/// so is the value of a `Set-Cookie` in the answer.
pub fn entry_json(detail: &EntryDetail, status_url: &str) -> Value {
    let s = &detail.summary;
    // A delivered entry never changes again (it cannot be retried), so its last change is its
    // delivery.
    let delivered_ms = (s.state == EntryState::Done).then_some(s.updated_ms);
    let mut v = json!({
        "id": s.id,
        "state": s.state,
        "status_url": status_url,
        "attempts": s.attempts,
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
        "next_attempt_ms": s.next_attempt_ms,
        "delivered_ms": delivered_ms,
        "delivered_at": delivered_ms.map(rfc3339_ms),
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
        // A status URL is a capability that can leak (logs, a `Referer`): the session a
        // `Set-Cookie` would hand out is not shown through it.
        let headers: serde_json::Map<String, Value> = resp
            .headers
            .iter()
            .map(|(n, v)| {
                let value = if n.eq_ignore_ascii_case("set-cookie") {
                    "[redacted]".to_owned()
                } else {
                    String::from_utf8_lossy(v).into_owned()
                };
                (n.clone(), Value::String(value))
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

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time with milliseconds
/// (`2024-02-29T12:34:56.789Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }
}
