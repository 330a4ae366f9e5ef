//! Outpost's HTTP server: the CouchDB-compatible API over a [`Store`].
//!
//! [`app`] builds the request handler (testable without a socket); [`serve`] runs it on a
//! listener until a shutdown token fires, then lets in-flight requests finish.
//!
//! Routing is done by hand on the *raw* request path ([`dispatch`]), not by a router on the
//! decoded path: a document id may contain an encoded `/` (`a%2Fb`) that must stay part of the id,
//! while `_design/x` keeps a literal slash.

pub mod auth;
mod authz;
mod dispatch;
mod docjson;
mod encoding;
mod error;
mod feed;
mod limits;
mod multipart;
mod observe;
mod query;
pub mod replication;
mod request;
mod routes;
mod stream;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, header};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use outpost_store::Store;
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
    /// Largest attachment, inline or uploaded alone.
    pub max_attachment_size: usize,
    /// How long a request body may take to arrive; a client that stops sending mid-body gets
    /// 408 instead of holding its connection forever.
    pub body_read_timeout: Duration,
    /// Largest accepted request head (request line and headers).
    pub max_header_bytes: usize,
    /// Origins allowed by CORS; `None` echoes any origin.
    pub cors_origins: Option<Vec<String>>,
    /// Most simultaneous connections; more wait to be accepted.
    pub max_connections: usize,
    /// Accounts, sessions, tokens and the default security of databases.
    pub auth: auth::AuthSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: 64 * 1024 * 1024,
            max_body_bytes_in_flight: 512 * 1024 * 1024,
            max_document_size: 8_000_000,
            max_attachment_size: 64 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            cors_origins: None,
            max_connections: 4096,
            auth: auth::AuthSettings::default(),
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
    /// Server admins, the password cache, session cookies and lockout.
    pub auth: Arc<auth::Auth>,
    /// Request body bytes in flight, shared by every request (`max_body_bytes_in_flight`).
    pub(crate) body_budget: request::BodyBudget,
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
        AppState {
            store,
            auth: auth::shared(config.auth.clone()),
            body_budget: request::BodyBudget::new(config.max_body_bytes_in_flight),
            config: Arc::new(config),
            shutdown,
            tasks: TaskTracker::new(),
            replications: replication::Replications::new(),
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
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, service, shutdown, max_header).await;
        });
    }
    connections.close();
    state.tasks.close();
    connections.wait().await;
    state.tasks.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    shutdown: CancellationToken,
    max_header_bytes: usize,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new());
    builder.header_read_timeout(Duration::from_secs(30));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
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
