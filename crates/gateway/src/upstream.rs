//! The HTTP client toward the backend: connect and response timeouts, and the replay delivery.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod pool;
use pool::{Lent, Pool};

use crate::config::{Config, UpstreamUrl};
use crate::forward;
use crate::record::{StoredRequest, StoredResponse};
use crate::worker::{Deliver, Delivery};

/// Idle connections to the upstream older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not get an answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// The upstream did not answer in time.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the request was in flight.
    #[error("the upstream connection failed: {0}")]
    Broken(String),
    /// The request target cannot be forwarded.
    #[error("the request target cannot be forwarded")]
    BadTarget,
    /// Every upstream connection stayed busy for the whole response timeout; nothing was sent.
    #[error("no upstream connection became free within {0:?}")]
    Busy(Duration),
}

impl SendError {
    /// Whether this failure says the upstream is down (as opposed to one broken connection).
    pub fn marks_down(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Timeout(_))
    }

    /// Whether the request may have reached the upstream and been applied: it was sent (or
    /// being sent) when the timeout struck or the connection broke.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, SendError::Timeout(_) | SendError::Broken(_))
    }
}

/// The backend, as a client.
#[derive(Debug, Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    url: UpstreamUrl,
    /// The `Host` every request carries, as the client library would write it (the port left
    /// out when it is the scheme's default), made once instead of formatted per request.
    host: Option<HeaderValue>,
    response_timeout: Duration,
    capture: usize,
    /// One permit per request toward the upstream, held until its answer has been read in
    /// full (the permit travels with the response body), so live traffic and replay together
    /// never hold more than this many connections.
    connections: Arc<Semaphore>,
}

/// A response body holding its connection's permit until it is dropped, and the connection
/// itself until the body has been read in full: then the connection goes back to the pool (a
/// body dropped before its end closes it instead).
struct Permitted {
    inner: Incoming,
    conn: Option<Lent>,
    _permit: OwnedSemaphorePermit,
}

impl Permitted {
    /// Gives the connection back to the pool (once): its answer has been read in full.
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.give_back();
        }
    }

    fn give_back_at_end(&mut self) {
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

impl Drop for Permitted {
    fn drop(&mut self) {
        self.give_back_at_end();
    }
}

impl hyper::body::Body for Permitted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(None) => self.give_back(),
            std::task::Poll::Ready(Some(Ok(_))) => self.give_back_at_end(),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    /// A client for the configured upstream.
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let address = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(config.upstream.scheme.clone());
            parts.authority = Some(config.upstream.authority.clone());
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            parts
        })
        .expect("a scheme and an authority make a URI");
        Self {
            pool: Arc::new(Pool::new(connector, address, IDLE_TIMEOUT)),
            host: host_header(&config.upstream.authority),
            url: config.upstream.clone(),
            response_timeout: config.response_timeout,
            capture: config.limits.max_response_capture,
            connections: Arc::new(Semaphore::new(config.max_upstream_connections.max(1))),
        }
    }

    /// Sends `req` (whose URI holds the target as received) and waits for the response head;
    /// the response body holds one of the connection permits until it is dropped. Waiting for
    /// a permit counts toward the response timeout.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, SendError> {
        // Origin form on the wire; the upstream's authority goes in `Host`.
        *req.uri_mut() = Uri::from(
            self.url
                .join_target(req.uri().path_and_query())
                .ok_or(SendError::BadTarget)?,
        );
        if let Some(host) = &self.host {
            req.headers_mut()
                .entry(HOST)
                .or_insert_with(|| host.clone());
        }
        let started = tokio::time::Instant::now();
        let permit = match tokio::time::timeout(
            self.response_timeout,
            self.connections.clone().acquire_owned(),
        )
        .await
        {
            Ok(permit) => permit.expect("the semaphore is never closed"),
            Err(_) => return Err(SendError::Busy(self.response_timeout)),
        };
        let left = self.response_timeout.saturating_sub(started.elapsed());
        let exchange = async {
            let (resp, conn) = self.pool.send(req).await?;
            // A body that is already over (`HEAD`, 204, 304, `Content-Length: 0`) frees the
            // connection at once.
            let conn = if hyper::body::Body::is_end_stream(resp.body()) {
                conn.give_back();
                None
            } else {
                Some(conn)
            };
            Ok::<_, SendError>(resp.map(|inner| {
                Body::new(Permitted {
                    inner,
                    conn,
                    _permit: permit,
                })
            }))
        };
        match tokio::time::timeout(left, exchange).await {
            Err(_) => Err(SendError::Timeout(self.response_timeout)),
            Ok(result) => result,
        }
    }

    /// One probe: any answer below 500 counts as up.
    pub async fn probe(&self, path: &str) -> Result<(), String> {
        let req = Request::get(path)
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        match self.send(req).await {
            Ok(resp) if resp.status().as_u16() < 500 => {
                // Reading the body lets the connection go back to the pool.
                let _ =
                    tokio::time::timeout(self.response_timeout, resp.into_body().collect()).await;
                Ok(())
            }
            Ok(resp) => Err(format!("probe answered {}", resp.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `Host` for requests to `authority`: its host, and its port unless that is 80 (the default of
/// `http`, the only scheme toward the upstream), exactly as the client library sets it on a
/// request that has none.
fn host_header(authority: &Authority) -> Option<HeaderValue> {
    let host = authority.host();
    match authority.port() {
        Some(port) if port.as_u16() != 80 => {
            HeaderValue::try_from(format!("{host}:{}", port.as_str())).ok()
        }
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// The error and its causes on one line, for logs and `last_error`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads at most `cap` bytes of a body; says whether there was more.
pub async fn read_capped<B>(body: B, cap: usize) -> Result<(Bytes, bool), String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error,
{
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error_chain(&e))?;
        if let Ok(data) = frame.into_data() {
            let room = cap - buf.len();
            if data.len() > room {
                buf.extend_from_slice(&data[..room]);
                return Ok((buf.freeze(), true));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), false))
}

impl Deliver for Upstream {
    async fn deliver(&self, request: &StoredRequest) -> Delivery {
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            return Delivery::Rejected("stored method is invalid".into());
        };
        let mut req = Request::new(Body::from(request.body.clone()));
        *req.method_mut() = method;
        match request.target.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Delivery::Rejected("stored target is invalid".into()),
        }
        *req.headers_mut() = forward::from_pairs(&request.headers);
        let resp = match self.send(req).await {
            Ok(resp) => resp,
            Err(SendError::BadTarget) => {
                return Delivery::Rejected("stored target cannot be forwarded".into());
            }
            Err(e) => {
                return Delivery::Failed {
                    upstream_down: e.marks_down(),
                    outcome_unknown: e.outcome_unknown(),
                    reason: e.to_string(),
                };
            }
        };
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers;
        forward::strip_hop_by_hop(&mut headers);
        // The status line decides the outcome; a body that fails or stalls afterwards only means
        // less of it is kept (sending the write again because of it could apply it twice).
        let (body, truncated) = match tokio::time::timeout(
            self.response_timeout,
            read_capped(body, self.capture),
        )
        .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(reason)) => {
                tracing::debug!(%reason, "reading a delivery's answer failed");
                (Bytes::new(), true)
            }
            Err(_) => (Bytes::new(), true),
        };
        Delivery::Answered(StoredResponse {
            status: parts.status.as_u16(),
            headers: forward::to_pairs(&headers),
            body,
            truncated,
        })
    }
}
