//! A fault-injecting HTTP proxy: it stands in front of a real server (pouchdb-server) and
//! forwards every request, except where a [`Faults`] rule says to answer otherwise. It logs
//! every request it saw, with the time and the status it answered, so a test can count
//! attempts and measure the pauses between them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// What the proxy does instead of forwarding.
#[derive(Default)]
pub struct Faults {
    /// Answer 503 to every `_bulk_docs` whose body holds this document id.
    pub unavailable_with: Option<String>,
    /// Answer 413 to every request whose body is larger than this many bytes.
    pub max_body: Option<usize>,
    /// Leave this document out of every `_bulk_docs` forwarded, and answer an error entry for
    /// it, as a server refusing it would.
    pub refuse: Option<String>,
    /// Answer 403 to writes of `_local/` documents (a read-only database).
    pub read_only_local: bool,
    /// Cut this many `_bulk_get` answers halfway through their body.
    pub cut_bulk_get: AtomicUsize,
    /// Wait this long before answering each request.
    pub delay: Duration,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The status answered (for a cut body, the status sent before the cut).
    pub status: u16,
    /// Document ids in a `_bulk_docs` body.
    pub doc_ids: Vec<String>,
    /// Bytes of the request body and of the answer's body.
    pub bytes: usize,
    pub at: Instant,
}

pub struct FaultProxy {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl FaultProxy {
    /// Starts a proxy for `upstream` (a server URL without a path).
    pub async fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            faults,
            client: reqwest::Client::new(),
            seen: seen.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        FaultProxy { url, seen, task }
    }

    /// An endpoint for `db` (a database of the upstream server) reached through the proxy.
    pub fn endpoint(
        &self,
        db: &crate::support::Db,
    ) -> std::sync::Arc<outpost_replicator::HttpEndpoint> {
        let name = db.url.rsplit('/').next().unwrap();
        crate::support::endpoint(&format!("{}/{name}", self.url))
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests whose path ends with `suffix` (before any query), with this method.
    pub fn seen_at(&self, method: &str, suffix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.target.split('?').next().unwrap().ends_with(suffix))
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    upstream: String,
    faults: Faults,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let path = target.split('?').next().unwrap_or("").to_string();
        let headers = req.headers().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let bulk_docs = method == hyper::Method::POST && path.ends_with("/_bulk_docs");
        let mut docs: Vec<Value> = if bulk_docs {
            serde_json::from_slice::<Value>(&body).unwrap()["docs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let doc_ids = docs
            .iter()
            .filter_map(|d| d["_id"].as_str().map(str::to_owned))
            .collect::<Vec<_>>();
        tokio::time::sleep(self.faults.delay).await;
        let record = |status: u16, answered: usize| {
            self.seen.lock().unwrap().push(Seen {
                method: method.to_string(),
                target: target.clone(),
                status,
                doc_ids: doc_ids.clone(),
                bytes: body.len() + answered,
                at: Instant::now(),
            });
        };
        let f = &self.faults;
        if f.max_body.is_some_and(|max| body.len() > max) {
            record(413, 0);
            return error(413, "too_large", "the request entity is too large");
        }
        if bulk_docs
            && f.unavailable_with
                .as_ref()
                .is_some_and(|id| doc_ids.contains(id))
        {
            record(503, 0);
            return error(503, "unavailable", "try again later");
        }
        if f.read_only_local && method == hyper::Method::PUT && path.contains("/_local/") {
            record(403, 0);
            return error(403, "forbidden", "this database is read-only");
        }
        let mut refused = Vec::new();
        let mut forwarded = body.clone();
        if let (true, Some(refuse)) = (bulk_docs, &f.refuse) {
            let before = docs.len();
            docs.retain(|d| d["_id"].as_str() != Some(refuse));
            if docs.len() < before {
                refused.push(json!({"id": refuse, "error": "bad_request", "reason": "refused"}));
                forwarded = Bytes::from(
                    serde_json::to_vec(&json!({"docs": docs, "new_edits": false})).unwrap(),
                );
            }
        }
        let mut upstream = self
            .client
            .request(method.clone(), format!("{}{target}", self.upstream))
            .body(forwarded);
        for (name, value) in &headers {
            if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
                upstream = upstream.header(name, value);
            }
        }
        let answer = upstream.send().await.unwrap();
        let status = answer.status().as_u16();
        let content_type = answer.headers().get("content-type").cloned();
        let mut bytes = answer.bytes().await.unwrap();
        if !refused.is_empty() && status < 300 {
            let mut rows: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
            rows.extend(refused);
            bytes = Bytes::from(serde_json::to_vec(&rows).unwrap());
        }
        record(status, bytes.len());
        let mut response = Response::builder()
            .status(status)
            .header("content-length", bytes.len());
        if let Some(ct) = content_type {
            response = response.header("content-type", ct);
        }
        let cut = path.ends_with("/_bulk_get")
            && f.cut_bulk_get
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if cut {
            // Half the body, then an error: hyper drops the connection with the answer
            // incomplete, as a reset mid-transfer does.
            let half = bytes.slice(..bytes.len() / 2);
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::other("connection cut")),
            ];
            return response
                .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                    frames,
                ))))
                .unwrap();
        }
        response
            .body(Full::new(bytes).map_err(|e: Infallible| match e {}).boxed())
            .unwrap()
    }
}

fn error(status: u16, error: &str, reason: &str) -> Response<Body> {
    let body = json!({"error": error, "reason": reason}).to_string();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap()
}
