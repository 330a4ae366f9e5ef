//! Test fixtures: the shared pouchdb-server (`crate::pouchdb_server`), and a small HTTP client
//! for setting up and inspecting databases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_replicator::{HttpEndpoint, http_client};
use serde_json::{Value, json};

pub use crate::pouchdb_server::{free_port, pouchdb_server};

/// A fresh database name, unique within the test run.
pub fn db_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn endpoint(url: &str) -> std::sync::Arc<HttpEndpoint> {
    std::sync::Arc::new(HttpEndpoint::new(http_client().unwrap(), url, &[]).unwrap())
}

/// A database, for setting up and checking tests over plain HTTP.
pub struct Db {
    pub url: String,
    client: reqwest::Client,
}

impl Db {
    pub async fn create(server: &str, name: &str) -> Db {
        let db = Db::open(server, name);
        let status = db.client.put(&db.url).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 201, "create {}", db.url);
        db
    }

    pub fn open(server: &str, name: &str) -> Db {
        Db {
            url: format!("{server}/{name}"),
            client: http_client().unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}/{path}", self.url))
            .header("accept", "application/json");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Writes a document and returns its new revision.
    pub async fn put(&self, id: &str, doc: Value) -> String {
        let (status, answer) = self.call(reqwest::Method::PUT, id, Some(doc)).await;
        assert!(
            status == 201 || status == 202,
            "put {id}: {status} {answer}"
        );
        answer["rev"].as_str().unwrap().to_string()
    }

    pub async fn delete(&self, id: &str, rev: &str) -> String {
        let (status, answer) = self
            .call(reqwest::Method::DELETE, &format!("{id}?rev={rev}"), None)
            .await;
        assert_eq!(status, 200, "delete {id}: {answer}");
        answer["rev"].as_str().unwrap().to_string()
    }

    /// Writes revisions as they are (`new_edits: false`), for building conflicts.
    pub async fn force(&self, docs: Value) {
        let body = json!({"docs": docs, "new_edits": false});
        let (status, answer) = self
            .call(reqwest::Method::POST, "_bulk_docs", Some(body))
            .await;
        assert_eq!(status, 201, "{answer}");
    }

    pub async fn put_attachment(
        &self,
        id: &str,
        rev: Option<&str>,
        name: &str,
        body: &[u8],
    ) -> String {
        let mut url = format!("{}/{id}/{name}", self.url);
        if let Some(rev) = rev {
            url.push_str(&format!("?rev={rev}"));
        }
        let resp = self
            .client
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let answer: Value = resp.json().await.unwrap();
        answer["rev"].as_str().unwrap().to_string()
    }

    /// Every document with every leaf revision (history and inline attachments included),
    /// deleted ones too: what two replicas must agree on.
    pub async fn dump(&self) -> BTreeMap<String, Vec<Value>> {
        let (_, changes) = self.get("_changes?style=all_docs").await;
        let mut out = BTreeMap::new();
        for row in changes["results"].as_array().unwrap() {
            let id = row["id"].as_str().unwrap();
            let encoded = outpost_replicator::encode_doc_id(id);
            let (status, leaves) = self
                .get(&format!(
                    "{encoded}?open_revs=all&revs=true&attachments=true"
                ))
                .await;
            assert_eq!(status, 200, "{id}: {leaves}");
            let mut leaves: Vec<Value> = leaves
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["ok"].clone())
                .collect();
            // PouchDB sets `revpos` to the writing revision's generation whenever an attachment
            // arrives with inline data, as every replicated attachment does (PouchDB's own
            // replicator included), so a pouchdb-server target cannot keep the source's value.
            for leaf in &mut leaves {
                if let Some(atts) = leaf.get_mut("_attachments").and_then(Value::as_object_mut) {
                    for att in atts.values_mut() {
                        att.as_object_mut().unwrap().shift_remove("revpos");
                    }
                }
            }
            leaves.sort_by_key(|l| l["_rev"].as_str().unwrap_or_default().to_string());
            out.insert(id.to_string(), leaves);
        }
        out
    }

    /// The ids and revisions in this database's changes feed after `since`.
    pub async fn changes_since(&self, since: &Value) -> Vec<(String, Vec<String>)> {
        let (_, changes) = self
            .get(&format!("_changes?style=all_docs&since={since}"))
            .await;
        changes["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let revs = r["changes"].as_array().unwrap().iter();
                (
                    r["id"].as_str().unwrap().to_string(),
                    revs.map(|c| c["rev"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    pub async fn update_seq(&self) -> Value {
        self.get("").await.1["update_seq"].clone()
    }
}

/// Waits until `check` holds, or fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Db {
    /// Writes ordinary edits in one request.
    pub async fn bulk(&self, docs: Value) {
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                "_bulk_docs",
                Some(json!({"docs": docs})),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
        for row in answer.as_array().unwrap() {
            assert!(row.get("error").is_none(), "{row}");
        }
    }
}

/// A stand-in server that answers every request with the same status and JSON body, counting
/// requests: for the failures a real server will not produce on demand.
pub struct FakeServer {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(status: &'static str, body: &'static str) -> FakeServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Every request the replicator sends before failing has a small body; reading
                // up to the end of the headers is enough to answer it.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        FakeServer {
            url,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fails with the first document that differs, rather than two whole databases.
#[track_caller]
pub fn assert_same(left: &BTreeMap<String, Vec<Value>>, right: &BTreeMap<String, Vec<Value>>) {
    for (id, leaves) in left {
        assert_eq!(Some(leaves), right.get(id), "document {id} differs");
    }
    let extra: Vec<&String> = right.keys().filter(|k| !left.contains_key(*k)).collect();
    assert!(extra.is_empty(), "only on the right: {extra:?}");
}
