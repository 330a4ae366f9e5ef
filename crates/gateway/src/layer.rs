//! The gateway as a tower [`Layer`] inside an axum application.
//!
//! Wrapped around an application's routes, the layer passes requests to them as usual. When a
//! write's handler answers with the [`DatabaseUnavailable`] marker (see [`database_unavailable`]),
//! the layer makes the request durable in the same encrypted queue the standalone gateway uses
//! and answers `202` with a status URL instead; a [`Worker`] later replays it into the same
//! routes, in order, with back-off until the handler stops reporting its database unavailable.
//! Status and admin routes are served under the same reserved prefix.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::post};
//! use outpost_gateway::layer::{LayerConfig, OfflineQueue, database_unavailable};
//!
//! let routes = Router::new().route("/orders", post(|| async { database_unavailable() }));
//! let offline = OfflineQueue::open(LayerConfig::new("./queue-data".into()))?;
//! let app = routes.clone().layer(offline.layer());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let tracker = tokio_util::task::TaskTracker::new();
//! tracker.spawn(offline.worker(routes).supervise(shutdown.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use tower::{Layer, Service, ServiceExt};

use crate::api::{self, AdminState, ApiError};
use crate::config::{Limits, Ordering, QueuedStatus, RetryPolicy};
use crate::crypto::{Cipher, KeySource};
use crate::error::{Error, Result};
use crate::forward;
use crate::proxy::{BodyLimits, BodyRead, queued_response, read_body, target_of};

/// Longest pause between two pieces of a request body inside the application.
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
use crate::queue::{DirLock, NewEntry, Queue, QueueLimits};
use crate::record::{StoredRequest, StoredResponse};
use crate::stats::Stats;
use crate::worker::{Deliver, Delivery, Worker};

/// The marker a handler puts in its response extensions to say its database is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseUnavailable;

/// A `503` answer carrying the [`DatabaseUnavailable`] marker, for handlers to return.
pub fn database_unavailable() -> Response {
    let mut resp = ApiError::Unavailable {
        reason: "the database is unavailable".into(),
        retry_after: 5,
    }
    .into_response();
    resp.extensions_mut().insert(DatabaseUnavailable);
    resp
}

/// Settings of the layer.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    /// Directory of the queue database and, by default, the key file.
    pub data_dir: PathBuf,
    /// Where the encryption key comes from.
    pub key: KeySource,
    /// Body and queue limits (header limits are the server's business here).
    pub limits: Limits,
    /// Retry and dead-letter policy of the replay.
    pub retry: RetryPolicy,
    /// How queued writes are partitioned.
    pub ordering: Ordering,
    /// The status that acknowledges a queued write.
    pub queued_status: QueuedStatus,
    /// The `Retry-After` sent with 503 answers.
    pub retry_after_secs: u64,
    /// The reserved prefix for status and admin routes.
    pub prefix: String,
    /// Bearer token of the admin routes; without one they are disabled.
    pub admin_token: Option<String>,
}

impl LayerConfig {
    /// Defaults matching the standalone gateway.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            key: KeySource::DataDir,
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            ordering: Ordering::Global,
            queued_status: QueuedStatus::Accepted,
            retry_after_secs: 5,
            prefix: "/_outpost/".into(),
            admin_token: None,
        }
    }
}

/// The queue behind a layer: hands out the layer and the replay worker.
#[derive(Clone)]
pub struct OfflineQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OfflineQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineQueue")
            .field("queue", &self.shared.queue)
            .finish()
    }
}

struct Shared {
    config: LayerConfig,
    queue: Queue,
    stats: Arc<Stats>,
    admin: axum::Router,
}

impl OfflineQueue {
    /// Opens (or creates) the queue. Blocks briefly on file I/O.
    pub fn open(config: LayerConfig) -> Result<Self> {
        let trimmed = config.prefix.trim_matches('/').to_owned();
        if trimmed.is_empty() {
            return Err(Error::Config(
                "the reserved prefix must not be empty".into(),
            ));
        }
        let mut config = config;
        config.prefix = format!("/{trimmed}/");
        let lock = DirLock::acquire(&config.data_dir)?;
        let cipher = Cipher::load(&config.key, &config.data_dir)?;
        let queue = Queue::open_locked(
            &config.data_dir,
            cipher,
            QueueLimits {
                max_entries: config.limits.max_queue_entries,
                max_bytes: config.limits.max_queue_bytes,
            },
            lock,
        )?;
        let stats = Arc::new(Stats::default());
        let admin = api::router(Arc::new(AdminState {
            queue: queue.clone(),
            stats: stats.clone(),
            health: None,
            upstream: None,
            token: config.admin_token.clone(),
            accounts: None,
            prefix: config.prefix.clone(),
            trusted: false,
        }));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                queue,
                stats,
                admin,
            }),
        })
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.shared.queue
    }

    /// The layer to wrap around the application's routes.
    pub fn layer(&self) -> OfflineQueueLayer {
        OfflineQueueLayer {
            shared: self.shared.clone(),
        }
    }

    /// A worker replaying the queue into `inner` (the same routes, without the layer).
    ///
    /// Request extensions are not stored with a queued request (they are arbitrary values of
    /// this process), so a replayed request has none but [`Replayed`]; see
    /// [`OfflineQueue::worker_with`] to give it the ones its handlers need.
    pub fn worker<S>(&self, inner: S) -> Worker<ServiceDeliver<S>>
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        self.worker_with(inner, |_| {})
    }

    /// A worker replaying the queue into `inner`, calling `prepare` on each replayed request
    /// first: the place to restore the extensions that layers outside this one set on the live
    /// request (an authenticated user derived again from the stored headers, say).
    pub fn worker_with<S, F>(&self, inner: S, prepare: F) -> Worker<ServiceDeliver<S>>
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
        F: Fn(&mut Request<Body>) + Send + Sync + 'static,
    {
        Worker::new(
            self.shared.queue.clone(),
            ServiceDeliver {
                inner,
                capture: self.shared.config.limits.max_response_capture,
                prepare: Arc::new(prepare),
            },
            None,
            self.shared.config.retry.clone(),
            self.shared.stats.clone(),
        )
    }
}

/// The tower layer; see the module documentation.
#[derive(Clone)]
pub struct OfflineQueueLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for OfflineQueueLayer {
    type Service = OfflineQueueService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OfflineQueueService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the layer produces.
#[derive(Clone)]
pub struct OfflineQueueService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for OfflineQueueService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move { Ok(handle(shared, inner, req).await) })
    }
}

async fn handle<S>(shared: Arc<Shared>, mut inner: S, req: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let config = &shared.config;
    if req.uri().path().starts_with(&config.prefix) {
        return match shared.admin.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
    }
    if !forward::is_write(req.method()) {
        return match inner.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
    }
    let (mut parts, body) = req.into_parts();
    let limits = BodyLimits {
        max_bytes: config.limits.max_body_bytes,
        idle_timeout: BODY_IDLE_TIMEOUT,
        budget: None,
    };
    let body = match read_body(&parts.headers, body, &limits).await {
        Ok(BodyRead::Complete(b, _)) => b,
        Ok(BodyRead::TooLarge { .. }) => {
            return ApiError::PayloadTooLarge(config.limits.max_body_bytes).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let (idempotency_key, chosen) = forward::ensure_idempotency_key(&mut parts.headers);
    let principal = chosen.then(|| forward::credentials(&parts.headers));
    let target = target_of(&parts.uri);
    let ordering_key = config.ordering.key_of(&target, &parts.headers);
    let behind = match shared.queue.has_pending(&ordering_key).await {
        Ok(behind) => behind,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !behind {
        let mut attempt = Request::new(Body::from(body.clone()));
        *attempt.method_mut() = parts.method.clone();
        *attempt.uri_mut() = parts.uri.clone();
        *attempt.headers_mut() = parts.headers.clone();
        *attempt.extensions_mut() = parts.extensions.clone();
        let resp = match inner.call(attempt).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        if resp.extensions().get::<DatabaseUnavailable>().is_none() {
            Stats::bump(&shared.stats.passed);
            return resp;
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
    match shared.queue.enqueue(entry).await {
        Ok(enqueued) => {
            Stats::bump(if enqueued.duplicate {
                &shared.stats.deduplicated
            } else {
                &shared.stats.queued
            });
            queued_response(
                &config.prefix,
                config.queued_status,
                config.retry_after_secs,
                &enqueued,
            )
        }
        Err(Error::KeyReused) => ApiError::from(Error::KeyReused).into_response(),
        Err(Error::QueueFull(why)) => {
            Stats::bump(&shared.stats.rejected_full);
            ApiError::QueueFull(why).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot queue a write");
            ApiError::Unavailable {
                reason: "the request could not be queued".into(),
                retry_after: crate::proxy::jittered(config.retry_after_secs),
            }
            .into_response()
        }
    }
}

/// Replays queued requests into a service of this process.
#[derive(Clone)]
pub struct ServiceDeliver<S> {
    inner: S,
    capture: usize,
    /// Restores what a replayed request needs besides its stored parts.
    prepare: Arc<Prepare>,
}

/// The hook of [`OfflineQueue::worker_with`].
type Prepare = dyn Fn(&mut Request<Body>) + Send + Sync;

/// The extension every replayed request carries, so a handler can tell a replay from a live
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

impl<S> Deliver for ServiceDeliver<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    async fn deliver(&self, request: &StoredRequest) -> Delivery {
        let Ok(method) = http::Method::from_bytes(request.method.as_bytes()) else {
            return Delivery::Rejected("stored method is invalid".into());
        };
        let Ok(uri) = request.target.parse::<http::Uri>() else {
            return Delivery::Rejected("stored target is invalid".into());
        };
        let mut req = Request::new(Body::from(request.body.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = forward::from_pairs(&request.headers);
        req.extensions_mut().insert(Replayed);
        (self.prepare)(&mut req);
        let resp = match self.inner.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        if resp.extensions().get::<DatabaseUnavailable>().is_some() {
            return Delivery::Failed {
                upstream_down: false,
                outcome_unknown: false,
                reason: "the database is unavailable".into(),
            };
        }
        let (parts, body) = resp.into_parts();
        let (body, truncated) = match crate::upstream::read_capped(body, self.capture).await {
            Ok(read) => read,
            Err(reason) => {
                return Delivery::Failed {
                    upstream_down: false,
                    outcome_unknown: false,
                    reason: format!("reading the answer failed: {reason}"),
                };
            }
        };
        let status = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            StatusCode::BAD_GATEWAY
        } else {
            parts.status
        };
        Delivery::Answered(StoredResponse {
            status: status.as_u16(),
            headers: forward::to_pairs(&parts.headers),
            body,
            truncated,
        })
    }
}
