//! A fresh server over a temporary SQLite store, and a one-call request helper.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use outpost_server::{AppState, Config, app};
use outpost_store::sqlite::SqliteStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub struct TestServer {
    pub router: Router,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn new() -> TestServer {
        Self::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let state = AppState::new(store, config, CancellationToken::new());
        TestServer {
            router: app(state),
            dir,
        }
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, bytes) = self
            .raw(
                method,
                path,
                &[("content-type", "application/json")],
                body.map(|b| b.to_string().into_bytes()),
            )
            .await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value)
    }

    /// Sends a request with explicit headers and raw body bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, bytes)
    }

    /// Asserts a status and returns the body.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, value) = self.call(method, path, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path} answered {value}");
        value
    }
}

/// `POST /{db}/_compact`, then polls the database info until `compact_running` is false, as
/// PouchDB does.
pub async fn compact(s: &TestServer, db: &str) {
    s.expect(
        "POST",
        &format!("/{db}/_compact"),
        Some(Value::Object(Default::default())),
        202,
    )
    .await;
    while s.expect("GET", &format!("/{db}"), None, 200).await["compact_running"] == true {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Bytes the store takes on disk: its file and its write-ahead log.
pub fn store_bytes(dir: &std::path::Path) -> u64 {
    ["outpost.sqlite", "outpost.sqlite-wal"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
        .sum()
}

/// Asserts that an error body has CouchDB's shape and code.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(body["reason"].is_string(), "{body}");
}

/// The `id` of every row of a changes feed (`results`).
pub fn feed_ids(feed: &Value) -> Vec<String> {
    ids_in(&feed["results"])
}

/// The `id` of every row of a listing or a view (`rows`).
pub fn row_ids(listing: &Value) -> Vec<String> {
    ids_in(&listing["rows"])
}

fn ids_in(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The numeric prefix of a sequence as the API shows it (`"N-<suffix>"`), asserting that form:
/// what tests compare where the order of sequences matters.
pub fn seq_n(seq: &Value) -> u64 {
    let text = seq
        .as_str()
        .unwrap_or_else(|| panic!("a sequence is a string: {seq}"));
    let (n, suffix) = text
        .split_once('-')
        .unwrap_or_else(|| panic!("a sequence is N-<suffix>: {text}"));
    assert!(
        !suffix.is_empty()
            && suffix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a sequence's suffix is URL-safe: {text}"
    );
    n.parse()
        .unwrap_or_else(|_| panic!("a sequence starts with a number: {text}"))
}

/// The suffix of a sequence, which names the database's incarnation.
pub fn seq_suffix(seq: &Value) -> String {
    seq_n(seq);
    let text = seq.as_str().unwrap();
    text.split_once('-').unwrap().1.to_owned()
}

/// A sequence as a `since=` query parameter: a string as it is, anything else as JSON.
pub fn seq_param(seq: &Value) -> String {
    match seq {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A server listening on a loopback port (over a temporary SQLite store), for clients that need
/// a real connection; it stops when dropped.
pub struct LiveServer {
    pub base: String,
    _shutdown: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

impl LiveServer {
    pub async fn start() -> LiveServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let shutdown = CancellationToken::new();
        let state = AppState::new(store, Config::default(), shutdown.clone());
        let base = format!("http://{}", serve_on_loopback(state).await);
        LiveServer {
            base,
            _shutdown: shutdown.drop_guard(),
            _dir: dir,
        }
    }
}

/// Serves `state` over HTTP on a free loopback port until its shutdown token fires; the address.
pub async fn serve_on_loopback(state: AppState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(outpost_server::serve(listener, state));
    addr
}
