//! Test fixtures: a real upstream HTTP server that can be stopped and started on the same port,
//! a gateway on 127.0.0.1:0, and an HTTP client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use outpost_gateway::{Config, Gateway, UpstreamUrl};
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The path the gateway probes; the upstream answers it without recording it.
pub const PROBE: &str = "/_probe";
/// The admin token of test gateways.
pub const TOKEN: &str = "test-admin-token";

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A scripted answer: status and extra headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
}

#[derive(Default)]
pub struct UpstreamState {
    /// Every non-probe request, in the order it arrived.
    pub received: Mutex<Vec<Received>>,
    /// Answers for the next writes; when empty, writes get 201.
    pub script: Mutex<VecDeque<Answer>>,
    /// Requests being answered right now, and the most there ever were at once.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub max_in_flight: std::sync::atomic::AtomicUsize,
}

/// A real HTTP server on a fixed port that the test can stop and start.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl TestUpstream {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let mut up = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            state: Arc::default(),
            running: None,
        };
        up.restart().await;
        up
    }

    /// Reserves a port without serving on it (the upstream starts out down).
    pub async fn stopped() -> Self {
        let mut up = Self::start().await;
        up.stop().await;
        up
    }

    /// Starts serving again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "upstream already running");
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        self.addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let stop = token.clone();
        let state = self.state.clone();
        let handle = tokio::spawn(async move {
            // Dropping the set on stop aborts every connection, like a crashed backend.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(answer(state, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        self.running = Some((token, handle));
    }

    /// Stops serving and drops every open connection.
    pub async fn stop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            handle.await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Received writes (not GET/HEAD).
    pub fn writes(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .collect()
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }
}

pub fn status(code: u16) -> Answer {
    Answer {
        status: code,
        headers: vec![],
    }
}

async fn answer(state: Arc<UpstreamState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if target == PROBE {
        return Response::new(Body::from("ok"));
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    // Reads answering with caching-relevant headers.
    let special: Option<(&str, &str)> = match target.as_str() {
        "/set-cookie" => Some(("set-cookie", "session=alice-session")),
        "/private" => Some(("cache-control", "private, max-age=60")),
        "/vary" => Some(("vary", "accept-language")),
        _ => None,
    };
    if let Some((name, value)) = special {
        let mut resp = Response::new(Body::from(format!(
            "{target} for {:?}",
            parts.headers.get("x-api-key")
        )));
        resp.headers_mut().insert(name, value.parse().unwrap());
        return resp;
    }
    if let Some(n) = target.strip_prefix("/big/") {
        return Response::new(Body::from(vec![b'x'; n.parse().unwrap()]));
    }
    let is_write = parts.method != http::Method::GET && parts.method != http::Method::HEAD;
    // `/status/NNN` answers NNN to any method, without consuming the script.
    let fixed = target
        .strip_prefix("/status/")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    let scripted = if let Some(code) = fixed {
        Some(status(code))
    } else if is_write {
        state.script.lock().unwrap().pop_front()
    } else {
        None
    };
    state.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    // `/slow/MS` answers after MS milliseconds (recorded on arrival, like a backend that has
    // started applying the request).
    if let Some(ms) = target
        .strip_prefix("/slow/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        use std::sync::atomic::Ordering::SeqCst;
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.max_in_flight.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        state.in_flight.fetch_sub(1, SeqCst);
    }
    let answer = scripted.unwrap_or(Answer {
        status: if is_write { 201 } else { 200 },
        headers: vec![],
    });
    let mut resp = Response::new(Body::from(format!(
        "{} {} {}",
        parts.method,
        target,
        String::from_utf8_lossy(&body)
    )));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    resp.headers_mut()
        .insert("x-upstream", "yes".parse().unwrap());
    for (n, v) in answer.headers {
        resp.headers_mut().insert(n, v.parse().unwrap());
    }
    resp
}

/// Where a test gateway keeps its queue: the SQLite file of a data directory, or a PostgreSQL
/// schema of the test's own (the directory then only holds the key, which every gateway of the
/// test shares).
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub schema: Option<crate::pg::TestSchema>,
}

impl TestStore {
    pub fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            schema: None,
        }
    }

    /// `None` when the test is skipped (see [`crate::pg`]).
    pub async fn postgres(test: &str) -> Option<Self> {
        let schema = crate::pg::TestSchema::create(test).await?;
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            schema: Some(schema),
        })
    }

    /// [`test_config`] with this store; gateways on one PostgreSQL store take over each
    /// other's keys a second after one stops renewing them.
    pub fn config(&self, upstream: &TestUpstream) -> Config {
        let mut config = test_config(upstream, self.dir.path());
        if let Some(schema) = &self.schema {
            let mut store = outpost_gateway::PostgresStore::new(schema.url.clone());
            store.pool_size = 8;
            store.lease_ttl = Duration::from_secs(1);
            config.store = outpost_gateway::QueueStore::Postgres(store);
        }
        config
    }
}

/// Runs each named `async fn(&TestStore)` as two tests, `NAME::sqlite` and `NAME::postgres`:
/// the queue's behaviour seen through the gateway is the same on both engines.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(&crate::support::TestStore::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(store) = crate::support::TestStore::postgres(stringify!($name)).await {
                    super::$name(&store).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_engines;

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<outpost_gateway::Result<()>>,
}

pub fn test_config(upstream: &TestUpstream, data: &Path) -> Config {
    let mut config = Config::new(
        UpstreamUrl::parse(&upstream.url()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        data.to_owned(),
    );
    config.probe_path = PROBE.into();
    config.probe_interval = Duration::from_millis(50);
    config.connect_timeout = Duration::from_secs(1);
    config.response_timeout = Duration::from_secs(5);
    config.retry.base_delay = Duration::from_millis(20);
    config.retry.max_delay = Duration::from_millis(200);
    config.admin_token = Some(TOKEN.into());
    config
}

impl TestGateway {
    pub async fn start(config: Config) -> Self {
        let gateway = Gateway::bind(config).await.unwrap();
        let addr = gateway.local_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(gateway.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let resp = client()
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn entry(&self, id: &str) -> Value {
        let resp = client()
            .get(self.url(&format!("/_outpost/v1/queue/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Waits until nothing is pending and `delivered + dead` reached `n`.
    pub async fn wait_drained(&self, n: u64) -> Value {
        for _ in 0..1500 {
            let status = self.admin_get("/_outpost/v1/gateway").await;
            let settled = status["counters"]["delivered"].as_u64().unwrap()
                + status["counters"]["dead_lettered"].as_u64().unwrap();
            if status["queue"]["depth"] == 0 && settled >= n {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "queue did not drain: {}",
            self.admin_get("/_outpost/v1/gateway").await
        );
    }

    /// Waits until the gateway believes its upstream is `state` (`up` or `down`).
    pub async fn wait_upstream(&self, state: &str) {
        for _ in 0..1500 {
            let ready = self.admin_get("/_outpost/v1/gateway").await;
            if ready["upstream"]["state"] == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the upstream never became {state}");
    }

    /// Waits until entry `id` reaches `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        for _ in 0..1500 {
            let entry = self.entry(id).await;
            if entry["state"] == state {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("entry {id} never reached {state}: {}", self.entry(id).await);
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends raw bytes and returns whatever comes back until the server closes or 2 s pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One complete answer is enough for these tests.
                if let Some(head_end) = find(&out, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..head_end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if let Some(len) = len
                        && out.len() >= head_end + 4 + len
                    {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// POSTs `body` and returns status, headers and JSON (or Null).
pub async fn post(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().post(url).body(body.to_owned());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}
