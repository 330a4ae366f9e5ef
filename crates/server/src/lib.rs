//! Outpost's HTTP server: the CouchDB-compatible API over a [`Store`].
//!
//! [`app`] builds the request handler (testable without a socket); [`serve`] runs it on a
//! listener until a shutdown token fires, then lets in-flight requests finish; [`serve_tls`]
//! does the same behind TLS (`outpost-tls`), with HTTP/2 and HTTP/1.1 chosen by ALPN.
//!
//! Routing is done by hand on the *raw* request path ([`dispatch`]), not by a router on the
//! decoded path: a document id may contain an encoded `/` (`a%2Fb`) that must stay part of the id,
//! while `_design/x` keeps a literal slash.

mod access;
pub mod auth;
mod authz;
mod design;
mod dispatch;
mod docjson;
mod encoding;
mod error;
mod feed;
mod limits;
mod multipart;
pub mod mux;
mod observe;
mod query;
pub mod replication;
mod request;
mod routes;
mod seq;
mod stream;
mod target_encoding;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use outpost_store::Store;
use target_encoding::EncodeTargets;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub use error::ApiError;

/// The parsers the fuzz targets in `fuzz/` drive directly. Compiled only with the `fuzzing`
/// feature, so the crate's API stays what the binary needs.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::docjson::{parse_doc, parse_revisions};
    pub use crate::query::Query;
}

/// The address a request came from, put in its extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The CouchDB version Outpost answers as: clients and their test suites branch on it.
pub const COUCHDB_VERSION: &str = "3.3.3";

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Request body bytes all requests together may hold at once; a body that would go beyond
    /// gets 503 with `Retry-After`.
    pub max_body_bytes_in_flight: usize,
    /// Largest document body (its JSON without attachments), as CouchDB's `max_document_size`.
    pub max_document_size: usize,
    /// Largest attachment, inline or uploaded alone (its identity bytes, however it is stored).
    pub max_attachment_size: usize,
    /// Which attachments are stored gzip-encoded, and at what level (CouchDB's `[attachments]
    /// compressible_types` and `compression_level`).
    pub attachments: outpost_core::attachment::Compression,
    /// How long a request body may take to arrive; a client that stops sending mid-body gets
    /// 408 instead of holding its connection forever.
    pub body_read_timeout: Duration,
    /// Largest accepted request head (request line and headers).
    pub max_header_bytes: usize,
    /// Origins allowed by CORS; `None` echoes any origin.
    pub cors_origins: Option<Vec<String>>,
    /// Most simultaneous connections; more wait to be accepted.
    pub max_connections: usize,
    /// How long a design-document function may run on one document before it is stopped.
    pub js_timeout: Duration,
    /// How much memory each JavaScript engine may hold.
    pub js_memory_bytes: usize,
    /// Accounts, sessions, tokens and the default security of databases.
    pub auth: auth::AuthSettings,
    /// Limits of the multiplexed feed (`/_outpost/v1/feed`).
    pub feed: mux::FeedLimits,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: 64 * 1024 * 1024,
            max_body_bytes_in_flight: 512 * 1024 * 1024,
            max_document_size: 8_000_000,
            max_attachment_size: 64 * 1024 * 1024,
            attachments: outpost_core::attachment::Compression::default(),
            body_read_timeout: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            cors_origins: None,
            max_connections: 4096,
            js_timeout: outpost_js::Limits::default().timeout,
            js_memory_bytes: outpost_js::Limits::default().memory_bytes,
            auth: auth::AuthSettings::default(),
            feed: mux::FeedLimits::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Fires when the server shuts down, so live feeds end cleanly instead of being cut.
    pub shutdown: CancellationToken,
    /// Tasks that produce streamed responses (live feeds) and background store maintenance
    /// (`_compact`); waited for on shutdown.
    pub tasks: TaskTracker,
    /// Replications running in this server (`_replicate`, `_replicator` jobs), for
    /// cancellation and the `_scheduler` and `_active_tasks` views.
    pub replications: Arc<replication::Replications>,
    /// The engines that run design-document functions.
    pub js: outpost_js::Sandbox,
    /// The design documents last read per database.
    pub(crate) design: Arc<design::DesignCache>,
    /// Server admins, the password cache, session cookies and lockout.
    pub auth: Arc<auth::Auth>,
    /// Request body bytes in flight, shared by every request (`max_body_bytes_in_flight`).
    pub(crate) body_budget: request::BodyBudget,
    /// The multiplexed feed's connections.
    pub feeds: Arc<mux::FeedHub>,
    /// The admin API of a gateway running in the same process (set by the binary), which
    /// `/_outpost/gateway/` hands server admins' requests to; `None` without a gateway.
    pub gateway: Option<Router>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: Config, shutdown: CancellationToken) -> AppState {
        let js = outpost_js::Sandbox::new(outpost_js::Limits {
            timeout: config.js_timeout,
            memory_bytes: config.js_memory_bytes,
            ..outpost_js::Limits::default()
        });
        AppState {
            store,
            auth: auth::shared(config.auth.clone()),
            body_budget: request::BodyBudget::new(config.max_body_bytes_in_flight),
            config: Arc::new(config),
            shutdown,
            tasks: TaskTracker::new(),
            replications: replication::Replications::new(),
            js,
            design: Arc::default(),
            feeds: Arc::default(),
            gateway: None,
        }
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    // The recorder is process-wide and installed once; doing it here means every server, an
    // embedded or a tested one included, records from its first request.
    outpost_telemetry::install();
    routes::node::start_clock();
    let origins = match &state.config.cors_origins {
        // Without a list, any origin while the server is in admin party (as before accounts
        // existed), none once authentication is enforced: a page on any site must not act
        // with a signed-in user's cookie.
        None => {
            let auth = state.auth.clone();
            AllowOrigin::predicate(move |_, _| !auth.enforced())
        }
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    // PouchDB in a browser sends credentials, so the origin must be echoed (never `*`) along with
    // Allow-Credentials; almost every call is preflighted because of its JSON content type.
    let cors = CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::from_bytes(b"COPY").expect("COPY is a valid method"),
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::CONTENT_TYPE,
            observe::COUCH_REQUEST_ID,
            observe::REQUEST_ID,
        ])
        .max_age(Duration::from_secs(600));
    Router::new()
        .fallback(dispatch::handle)
        .with_state(state)
        .layer(cors)
        // Outermost, so preflights and refusals are logged and counted too.
        .layer(axum::middleware::from_fn(observe::layer))
}

/// Serves `app` on `listener` until `state.shutdown` fires, then stops accepting, lets requests
/// in flight finish (live feeds end at once), and returns.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    serve_tls(listener, state, None).await
}

/// [`serve`], over TLS when `tls` is given: each accepted connection first completes a TLS
/// handshake with the certificate `tls` holds at that moment (so a reload takes effect for new
/// connections without closing the listener), then speaks HTTP/2 when ALPN chose `h2` and
/// HTTP/1.1 otherwise. Without TLS a connection speaks HTTP/1.1, or HTTP/2 when it opens with
/// the HTTP/2 preface (prior knowledge).
pub async fn serve_tls(
    listener: TcpListener,
    state: AppState,
    tls: Option<outpost_tls::Tls>,
) -> std::io::Result<()> {
    let router = app(state.clone());
    let shutdown = state.shutdown.clone();
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(ClientAddr(peer))));
        let shutdown = shutdown.clone();
        let max_header = state.config.max_header_bytes;
        // Taken now, so the handshake uses the certificate current when the connection came.
        let acceptor = tls.as_ref().map(outpost_tls::Tls::acceptor);
        let executor = Tracked(connections.clone());
        connections.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                let protocol = Protocol::Detect;
                serve_connection(
                    stream, protocol, peer, service, executor, shutdown, max_header,
                )
                .await;
                return;
            };
            // A client that opens a connection and never finishes the handshake must not hold
            // its slot forever.
            let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(outpost_tls::ALPN_H2) => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve_connection(
                stream, protocol, peer, service, executor, shutdown, max_header,
            )
            .await;
        });
    }
    connections.close();
    state.tasks.close();
    connections.wait().await;
    state.tasks.wait().await;
    Ok(())
}

/// How long a client may take to send a request head (and, under TLS, to finish the handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the tasks hyper spawns for a connection (one per HTTP/2 stream) on the connections'
/// tracker, so shutdown waits for them as for the connections themselves.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// Chosen by ALPN: HTTP/1.1.
    Http1,
    /// Chosen by ALPN: HTTP/2.
    Http2,
    /// No TLS: HTTP/2 if the client opens with its preface, HTTP/1.1 otherwise.
    Detect,
}

async fn serve_connection<I>(
    stream: I,
    protocol: Protocol,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    executor: Tracked,
    shutdown: CancellationToken,
    max_header_bytes: usize,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(executor);
    builder
        .http1()
        .max_buf_size(max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // An HTTP/2 connection carries many requests (and live feeds) at once, so a peer that
    // vanished is found by pings rather than by a request timing out.
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // HTTP/1 request targets with what CouchDB takes and `http::Uri` does not (`?key="a"`)
    // are percent-encoded on their way to hyper.
    let (builder, stream) = match protocol {
        Protocol::Http1 => (
            builder.http1_only(),
            EncodeTargets::new(stream, max_header_bytes.max(8192)),
        ),
        Protocol::Http2 => (builder.http2_only(), EncodeTargets::untouched(stream)),
        Protocol::Detect => (
            builder,
            EncodeTargets::new(stream, max_header_bytes.max(8192)),
        ),
    };
    // With upgrades, so the multiplexed feed's WebSocket handshake can take the connection over.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
    }
}

/// A JSON response body with its content type.
pub(crate) fn json_body(text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
