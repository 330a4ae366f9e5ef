//! The request path: pass through while the upstream is up, queue writes and answer reads from
//! the stale cache (or 503) while it is down.
//!
//! A write is buffered (up to the body limit) before it is forwarded, because if the upstream
//! cannot take it the very same bytes must go into the queue. A write also queues, even while
//! the upstream is up, when earlier writes of its ordering key are still queued: it must not
//! overtake them. Reads are streamed both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::api::{ApiError, status_url};
use crate::cache::{CacheKey, StaleCache};
use crate::config::{Ordering, QueuedStatus};
use crate::error::Error;
use crate::forward;
use crate::health::Health;
use crate::queue::{Enqueued, NewEntry, Queue};
use crate::record::StoredRequest;
use crate::stats::Stats;
use crate::upstream::{SendError, Upstream};

/// `up` or `down`: whether the gateway believes the upstream answers, as of this response.
pub const UPSTREAM_HEADER: &str = "x-outpost-upstream";
/// How many queued writes wait for delivery, as of this response.
pub const QUEUE_DEPTH_HEADER: &str = "x-outpost-queue-depth";

/// Sets the sync-state headers every gateway answer carries, replacing any the upstream sent,
/// so an offline-first client learns from any answer whether its writes are still queued.
pub fn sync_headers(headers: &mut HeaderMap, up: bool, depth: Option<u64>) {
    let state = if up { "up" } else { "down" };
    headers.insert(UPSTREAM_HEADER, HeaderValue::from_static(state));
    if let Some(depth) = depth {
        // The usual depth needs no allocation.
        let value = match depth {
            0 => HeaderValue::from_static("0"),
            n => HeaderValue::from(n),
        };
        headers.insert(QUEUE_DEPTH_HEADER, value);
    }
}

/// Settings of the request path.
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
    pub prefix: String,
    pub ordering: Ordering,
    pub queued_status: QueuedStatus,
    pub retry_after_secs: u64,
    pub body: BodyLimits,
    /// See [`crate::config::RetryPolicy::upstream_honours_keys`].
    pub upstream_honours_keys: bool,
    /// See [`crate::config::Config::trusted_proxies`].
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Everything a request needs; shared by all connections.
pub(crate) struct App {
    pub settings: ProxySettings,
    pub upstream: Upstream,
    pub queue: Queue,
    pub health: Arc<Health>,
    pub stats: Arc<Stats>,
    pub cache: Option<StaleCache>,
    pub admin: axum::Router,
}

impl App {
    /// Answers one request, passed through, queued or refused, and says in its headers whether
    /// the upstream is up and how many writes wait (see [`sync_headers`]).
    pub async fn handle(self: Arc<Self>, req: Request<Body>, client: SocketAddr) -> Response {
        let mut response = if req.uri().path().starts_with(&self.settings.prefix) {
            match self.admin.clone().oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        } else if let Some(refusal) = refuse(&req) {
            refusal.into_response()
        } else if forward::is_write(req.method()) {
            self.write(req, client).await
        } else {
            self.read(req, client).await
        };
        // A queue that cannot be counted (its database unreachable) leaves the depth out
        // rather than report a wrong one.
        let depth = self.queue.pending_count().await.ok();
        sync_headers(response.headers_mut(), self.health.is_up(), depth);
        response
    }

    /// Whether a write may go straight to the upstream: it is up, and no write of the same
    /// ordering key waits in the queue (on PostgreSQL, queued by any instance). When the queue
    /// cannot tell, the answer is the error to send.
    async fn may_pass(&self, ordering_key: &str) -> Result<bool, Response> {
        if !self.health.is_up() {
            return Ok(false);
        }
        self.queue
            .has_pending(ordering_key)
            .await
            .map(|pending| !pending)
            .map_err(|e| ApiError::from(e).into_response())
    }

    /// Whether `client` is a proxy whose forwarding headers are believed.
    fn trusts(&self, client: SocketAddr) -> bool {
        let ip = client.ip().to_canonical();
        self.settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }

    fn unavailable(&self, reason: &str) -> Response {
        ApiError::Unavailable {
            reason: reason.into(),
            retry_after: jittered(self.settings.retry_after_secs),
        }
        .into_response()
    }

    async fn write(&self, req: Request<Body>, client: SocketAddr) -> Response {
        let (mut parts, body) = req.into_parts();
        // Held until the write is forwarded or queued: the body's share of the byte budget.
        let (body, _permit) = match read_body(&parts.headers, body, &self.settings.body).await {
            Ok(BodyRead::Complete(body, permit)) => (body, permit),
            Ok(BodyRead::TooLarge { prefix, rest }) => {
                return self.stream_large(parts, prefix, rest, client).await;
            }
            Err(e) => return e.into_response(),
        };
        forward::prepare_request_headers(&mut parts.headers, client.ip(), self.trusts(client));
        let (idempotency_key, chosen) = forward::ensure_idempotency_key(&mut parts.headers);
        let principal = chosen.then(|| forward::credentials(&parts.headers));
        let target = target_of(&parts.uri);
        let ordering_key = self.settings.ordering.key_of(&target, &parts.headers);

        let pass = match self.may_pass(&ordering_key).await {
            Ok(pass) => pass,
            Err(resp) => return resp,
        };
        if pass {
            let mut up = Request::new(Body::from(body.clone()));
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = parts.uri.clone();
            *up.headers_mut() = parts.headers.clone();
            match self.upstream.send(up).await {
                Ok(resp) if !matches!(resp.status().as_u16(), 502..=504) => {
                    self.health.success();
                    Stats::bump(&self.stats.passed);
                    return pass_response(resp);
                }
                Ok(resp) => {
                    self.health
                        .failure(&format!("upstream answered {}", resp.status()));
                }
                Err(SendError::BadTarget) => {
                    return ApiError::BadRequest("the request target cannot be forwarded".into())
                        .into_response();
                }
                Err(e) => {
                    if e.marks_down() {
                        self.health.failure(&e.to_string());
                    }
                    if e.outcome_unknown() && !self.settings.upstream_honours_keys {
                        // It may have been applied: queueing it could apply it twice. The
                        // client, who knows what it sent, decides what to do.
                        tracing::info!(error = %e, "write outcome unknown; not queued");
                        return ApiError::OutcomeUnknown {
                            timeout: matches!(e, SendError::Timeout(_)),
                        }
                        .into_response();
                    }
                    tracing::info!(error = %e, "write not delivered; queueing it");
                }
            }
        }

        let entry = NewEntry {
            ordering_key,
            idempotency_key,
            principal,
            request: StoredRequest {
                method: parts.method.as_str().to_owned(),
                target,
                headers: forward::to_pairs(&parts.headers),
                body,
            },
        };
        match self.queue.enqueue(entry).await {
            Ok(enqueued) => self.queued_response(&enqueued),
            Err(Error::KeyReused) => ApiError::from(Error::KeyReused).into_response(),
            Err(Error::QueueFull(why)) => {
                Stats::bump(&self.stats.rejected_full);
                tracing::warn!(why, "queue full; write refused");
                ApiError::QueueFull(why).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot queue a write");
                self.unavailable("the request could not be queued")
            }
        }
    }

    /// A write above the buffering limit cannot be queued; while the upstream is up (and nothing
    /// of its ordering key waits) it is streamed through instead of refused.
    async fn stream_large(
        &self,
        mut parts: http::request::Parts,
        prefix: Bytes,
        rest: Body,
        client: SocketAddr,
    ) -> Response {
        let too_large = || ApiError::PayloadTooLarge(self.settings.body.max_bytes).into_response();
        let target = target_of(&parts.uri);
        let ordering_key = self.settings.ordering.key_of(&target, &parts.headers);
        match self.may_pass(&ordering_key).await {
            Ok(true) => {}
            Ok(false) => return too_large(),
            Err(resp) => return resp,
        }
        forward::prepare_request_headers(&mut parts.headers, client.ip(), self.trusts(client));
        forward::ensure_idempotency_key(&mut parts.headers);
        let body = Body::new(PrefixedBody {
            prefix: Some(prefix),
            rest,
        });
        match self.upstream.send(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                if matches!(resp.status().as_u16(), 502..=504) {
                    self.health
                        .failure(&format!("upstream answered {}", resp.status()));
                } else {
                    self.health.success();
                }
                Stats::bump(&self.stats.passed);
                pass_response(resp)
            }
            Err(SendError::BadTarget) => {
                ApiError::BadRequest("the request target cannot be forwarded".into())
                    .into_response()
            }
            Err(e) if e.outcome_unknown() => ApiError::OutcomeUnknown {
                timeout: matches!(e, SendError::Timeout(_)),
            }
            .into_response(),
            Err(e) => {
                if e.marks_down() {
                    self.health.failure(&e.to_string());
                }
                self.unavailable("the upstream is unavailable, and a body this large is not queued")
            }
        }
    }

    fn queued_response(&self, enqueued: &Enqueued) -> Response {
        if enqueued.duplicate {
            Stats::bump(&self.stats.deduplicated);
        } else {
            Stats::bump(&self.stats.queued);
        }
        queued_response(
            &self.settings.prefix,
            self.settings.queued_status,
            self.settings.retry_after_secs,
            enqueued,
        )
    }

    async fn read(&self, req: Request<Body>, client: SocketAddr) -> Response {
        let cacheable = matches!(*req.method(), Method::GET | Method::HEAD);
        let key = match (&self.cache, cacheable) {
            (Some(_), true) => Some(CacheKey::of(&target_of(req.uri()), req.headers())),
            _ => None,
        };
        // The request's headers as received, for the cache's `Vary` matching.
        let request_headers = key
            .as_ref()
            .map(|_| req.headers().clone())
            .unwrap_or_default();
        let method = req.method().clone();
        if self.health.is_up() {
            let (mut parts, body) = req.into_parts();
            forward::prepare_request_headers(&mut parts.headers, client.ip(), self.trusts(client));
            match self.upstream.send(Request::from_parts(parts, body)).await {
                Ok(resp) if matches!(resp.status().as_u16(), 502..=504) => {
                    self.health
                        .failure(&format!("upstream answered {}", resp.status()));
                    if let Some(stale) = self.stale(key.as_ref(), &method, &request_headers) {
                        return stale;
                    }
                    return pass_response(resp);
                }
                Ok(resp) => {
                    self.health.success();
                    Stats::bump(&self.stats.passed);
                    return match (&self.cache, key, method) {
                        (Some(cache), Some(key), Method::GET) => {
                            let (mut parts, body) = resp.into_parts();
                            forward::strip_hop_by_hop(&mut parts.headers);
                            let body = cache.capture(
                                key,
                                &request_headers,
                                parts.status,
                                &parts.headers,
                                body,
                            );
                            Response::from_parts(parts, body)
                        }
                        _ => pass_response(resp),
                    };
                }
                Err(SendError::BadTarget) => {
                    return ApiError::BadRequest("the request target cannot be forwarded".into())
                        .into_response();
                }
                Err(e) => {
                    if e.marks_down() {
                        self.health.failure(&e.to_string());
                    }
                    tracing::info!(error = %e, "read failed");
                }
            }
        }
        if let Some(stale) = self.stale(key.as_ref(), &method, &request_headers) {
            return stale;
        }
        Stats::bump(&self.stats.unavailable);
        self.unavailable("the upstream is unavailable")
    }

    fn stale(
        &self,
        key: Option<&CacheKey>,
        method: &Method,
        request: &HeaderMap,
    ) -> Option<Response> {
        let resp = self.cache.as_ref()?.serve(key?, method, request)?;
        Stats::bump(&self.stats.stale_served);
        Some(resp)
    }
}

/// Requests that are never forwarded, refused before any connection is made: `CONNECT` (the
/// gateway is not a tunnel) and targets that are not in origin form (`OPTIONS *`, which would
/// otherwise be glued to the upstream's authority).
fn refuse(req: &Request<Body>) -> Option<ApiError> {
    if req.method() == Method::CONNECT {
        return Some(ApiError::MethodNotAllowed);
    }
    if !req
        .uri()
        .path_and_query()
        .is_none_or(|pq| pq.as_str().starts_with('/'))
    {
        return Some(ApiError::BadRequest(
            "only request targets starting with `/` are forwarded".into(),
        ));
    }
    None
}

/// The request target (path and query) exactly as received.
pub(crate) fn target_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned())
}

/// Bounds on reading request bodies.
#[derive(Debug, Clone)]
pub(crate) struct BodyLimits {
    /// Largest body that is buffered (and can be queued).
    pub max_bytes: u64,
    /// Longest pause between two pieces of a body; a body that stops arriving is answered 408.
    pub idle_timeout: std::time::Duration,
    /// Bytes of buffered bodies all requests together may hold; `None` for no global bound.
    pub budget: Option<Arc<tokio::sync::Semaphore>>,
}

/// A request body as read.
pub(crate) enum BodyRead {
    /// The whole body, with its share of the in-flight byte budget (held until dropped).
    Complete(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    /// Larger than the buffering limit: what was read so far and the rest, still unread.
    TooLarge { prefix: Bytes, rest: Body },
}

/// Reads a request body up to `limits.max_bytes`, each piece within the idle timeout and
/// within the global budget.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &BodyLimits,
) -> Result<BodyRead, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes) {
        return Ok(BodyRead::TooLarge {
            prefix: Bytes::new(),
            rest: body,
        });
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout(limits.idle_timeout, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::BadRequest(
                    "the request body could not be read".into(),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if (buf.len() + data.len()) as u64 > limits.max_bytes {
            buf.extend_from_slice(&data);
            return Ok(BodyRead::TooLarge {
                prefix: buf.freeze(),
                rest: body,
            });
        }
        if let Some(budget) = &limits.budget {
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            match budget.clone().try_acquire_many_owned(n) {
                Ok(more) => match permit.as_mut() {
                    Some(held) => held.merge(more),
                    None => permit = Some(more),
                },
                Err(_) => return Err(ApiError::Busy),
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok(BodyRead::Complete(buf.freeze(), permit))
}

/// The part of a body already read, followed by the rest as it arrives: a large body streamed
/// to the upstream after the buffering limit was crossed.
struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for PrefixedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if let Some(prefix) = self.prefix.take().filter(|p| !p.is_empty()) {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// `secs` plus up to half again, at random, so clients told to come back do not all come back in
/// the same second.
pub(crate) fn jittered(secs: u64) -> u64 {
    secs.saturating_add(rand::random_range(0..=secs / 2))
}

/// The answer acknowledging a queued write.
pub(crate) fn queued_response(
    prefix: &str,
    queued_status: QueuedStatus,
    retry_after_secs: u64,
    enqueued: &Enqueued,
) -> Response {
    let url = status_url(prefix, &enqueued.id);
    let body = json!({
        "id": enqueued.id,
        "status": "queued",
        "status_url": url,
        "duplicate": enqueued.duplicate,
    });
    let status = match queued_status {
        QueuedStatus::Accepted => StatusCode::ACCEPTED,
        QueuedStatus::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(loc) = HeaderValue::try_from(url) {
        resp.headers_mut().insert(LOCATION, loc);
    }
    if queued_status == QueuedStatus::Unavailable {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(jittered(retry_after_secs)));
    }
    resp
}

/// The upstream's answer, streamed, without its hop-by-hop headers.
fn pass_response(resp: Response<Body>) -> Response {
    let (mut parts, body) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}
