//! End-to-end replication tests with real processes on real ports: `outpost serve` (the built
//! binary, killed with SIGKILL where a test says so), `outpost replicate`, and pouchdb-server
//! from `tests/interop` (`npm ci` there installs it; `OUTPOST_POUCHDB_SERVER` overrides it).
//!
//! Replicas are compared document by document with every leaf (`open_revs=all`, history and
//! attachments included). "No revision written twice" is checked on the replicators' own
//! `docs_written` counters: the store silently ignores a revision it already holds, so the
//! target's contents alone cannot show a revision sent twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The replicator's tests' pouchdb-server launcher, shared rather than copied.
#[path = "../../replicator/tests/it/pouchdb_server.rs"]
mod pouchdb_server;
use pouchdb_server::{free_port, pouchdb_server};

fn client() -> reqwest::Client {
    outpost_replicator::http_client().unwrap()
}

/// An `outpost serve` process on a fixed port and data directory, so it can be killed and
/// started again as the same server.
struct Outpost {
    port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl Outpost {
    async fn start(data: &Path) -> Outpost {
        let mut o = Outpost {
            port: free_port(),
            data: data.to_path_buf(),
            child: None,
        };
        o.spawn().await;
        o
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data")
            .arg(&self.data)
            // Short retries, so a peer that comes back is found again within the test's time.
            .args([
                "--replication-retry-initial",
                "200ms",
                "--replication-retry-max",
                "1s",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(format!("{}/_up", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "outpost serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no final checkpoint.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn db(&self, name: &str) -> Db {
        Db::open(&self.url(), name)
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A database reached over plain HTTP, for setting up and checking.
struct Db {
    url: String,
    client: reqwest::Client,
}

impl Db {
    fn open(server: &str, name: &str) -> Db {
        Db {
            url: format!("{server}/{name}"),
            client: client(),
        }
    }

    async fn create(&self) {
        let status = self.client.put(&self.url).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 201, "create {}", self.url);
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

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, id: &str, doc: Value) -> String {
        let (status, answer) = self.call(reqwest::Method::PUT, id, Some(doc)).await;
        assert_eq!(status, 201, "put {id}: {answer}");
        answer["rev"].as_str().unwrap().to_string()
    }

    async fn bulk(&self, docs: Value, new_edits: bool) {
        let body = json!({"docs": docs, "new_edits": new_edits});
        let (status, answer) = self
            .call(reqwest::Method::POST, "_bulk_docs", Some(body))
            .await;
        assert_eq!(status, 201, "{answer}");
        for row in answer.as_array().unwrap() {
            assert!(row.get("error").is_none(), "{row}");
        }
    }

    async fn put_attachment(
        &self,
        id: &str,
        rev: Option<&str>,
        name: &str,
        content_type: &str,
        body: &[u8],
    ) -> String {
        let mut url = format!("{}/{id}/{name}", self.url);
        if let Some(rev) = rev {
            url.push_str(&format!("?rev={rev}"));
        }
        let resp = self
            .client
            .put(url)
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let answer: Value = resp.json().await.unwrap();
        answer["rev"].as_str().unwrap().to_string()
    }

    /// Every document with every leaf (history and inline attachments included), deleted ones
    /// too: what two replicas must agree on.
    async fn dump(&self) -> BTreeMap<String, Vec<Value>> {
        let (status, changes) = self.get("_changes?style=all_docs").await;
        assert_eq!(status, 200, "{}: {changes}", self.url);
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
            // arrives with inline data, so a pouchdb-server target cannot keep the source's; and
            // it leaves `length` out next to inline data. A digest is that of the bytes a side
            // stores: Outpost keeps text gzip-encoded (as CouchDB does), pouchdb-server as it
            // came, so the digest of a text attachment is left out here (and compared between
            // Outposts where they replicate). The data (the identity bytes either way) and the
            // other digests are compared.
            for leaf in &mut leaves {
                if let Some(atts) = leaf.get_mut("_attachments").and_then(Value::as_object_mut) {
                    for att in atts.values_mut() {
                        let att = att.as_object_mut().unwrap();
                        att.shift_remove("revpos");
                        att.shift_remove("length");
                        let text = att["content_type"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("text/");
                        if text {
                            att.shift_remove("digest");
                        }
                    }
                }
            }
            leaves.sort_by_key(|l| l["_rev"].as_str().unwrap_or_default().to_string());
            out.insert(id.to_string(), leaves);
        }
        out
    }
}

/// Waits until `check` holds, or fails the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[track_caller]
fn assert_same(left: &BTreeMap<String, Vec<Value>>, right: &BTreeMap<String, Vec<Value>>) {
    for (id, leaves) in left {
        assert_eq!(Some(leaves), right.get(id), "document {id} differs");
    }
    let extra: Vec<&String> = right.keys().filter(|k| !left.contains_key(*k)).collect();
    assert!(extra.is_empty(), "only on the right: {extra:?}");
}

fn sig(c: char) -> String {
    std::iter::repeat_n(c, 32).collect()
}

/// Plain, edited, deleted and conflicting documents (a deleted branch too), attachments (one
/// older than the current revision) and ids that need encoding.
async fn fill(db: &Db) {
    let docs: Vec<Value> = (0..150)
        .map(|i| json!({"_id": format!("doc-{i:03}"), "n": i}))
        .collect();
    db.bulk(Value::Array(docs), true).await;
    let (_, doc) = db.get("doc-000").await;
    let rev = db
        .put("doc-000", json!({"_rev": doc["_rev"], "n": 0, "edited": 1}))
        .await;
    db.put("doc-000", json!({"_rev": rev, "n": 0, "edited": 2}))
        .await;
    let (_, doc) = db.get("doc-001").await;
    let (status, _) = db
        .call(
            reqwest::Method::DELETE,
            &format!("doc-001?rev={}", doc["_rev"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (a, b, c, d, e) = (sig('a'), sig('b'), sig('c'), sig('d'), sig('e'));
    db.bulk(
        json!([
            {"_id": "conflicted", "_rev": format!("1-{a}"), "v": "root"},
            {"_id": "conflicted", "_rev": format!("2-{b}"), "v": "left",
             "_revisions": {"start": 2, "ids": [b, a]}},
            {"_id": "conflicted", "_rev": format!("2-{c}"), "v": "right",
             "_revisions": {"start": 2, "ids": [c, a]}},
            {"_id": "conflicted", "_rev": format!("3-{d}"), "_deleted": true,
             "_revisions": {"start": 3, "ids": [d, c, a]}},
            {"_id": "conflicted", "_rev": format!("2-{e}"), "v": "third",
             "_revisions": {"start": 2, "ids": [e, a]}},
        ]),
        false,
    )
    .await;
    let rev = db
        .put_attachment(
            "with-atts",
            None,
            "a.bin",
            "application/octet-stream",
            b"first attachment",
        )
        .await;
    let rev = db
        .put_attachment(
            "with-atts",
            Some(&rev),
            "b.bin",
            "application/octet-stream",
            &[0, 1, 2, 255],
        )
        .await;
    // Stored gzip-encoded by Outpost, as CouchDB stores text.
    let text = "a text attachment, compressible: ".repeat(200);
    let rev = db
        .put_attachment(
            "with-atts",
            Some(&rev),
            "c.txt",
            "text/plain",
            text.as_bytes(),
        )
        .await;
    let (_, mut doc) = db.get("with-atts").await;
    doc["note"] = json!("edited after the attachments");
    assert_eq!(doc["_rev"], json!(rev));
    db.put("with-atts", doc).await;
    db.put("a%2Fslash", json!({"kind": "slash"})).await;
}

fn leaves(dump: &BTreeMap<String, Vec<Value>>) -> usize {
    dump.values().map(Vec::len).sum()
}

async fn replicate(server: &str, body: Value) -> Value {
    let resp = client()
        .post(format!("{server}/_replicate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap();
    assert!(status == 200 || status == 202, "{status}: {answer}");
    answer
}

/// `outpost replicate SOURCE TARGET --create-target`, which must succeed; returns what it
/// printed (the replication's result).
async fn cli_replicate(source: &str, target: &str) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["replicate", source, target, "--create-target"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Outpost → Outpost through `POST /_replicate` (the target's server pulls over HTTP into a
/// local database), Outpost → pouchdb-server with `outpost replicate`, and pouchdb-server →
/// Outpost through `POST /_replicate`; every copy identical to the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_between_outpost_and_pouchdb_server() {
    let dirs = tempfile::tempdir().unwrap();
    let a = Outpost::start(&dirs.path().join("a")).await;
    let b = Outpost::start(&dirs.path().join("b")).await;
    let pouch = pouchdb_server();

    let source = a.db("orders");
    source.create().await;
    fill(&source).await;
    let original = source.dump().await;
    assert_eq!(original["conflicted"].len(), 3);

    // Outpost → Outpost: B pulls A's database into a local one it creates.
    let result = replicate(
        &b.url(),
        json!({"source": source.url, "target": "orders-copy", "create_target": true}),
    )
    .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["docs_written"], json!(leaves(&original)), "{result}");
    assert_eq!(result["doc_write_failures"], 0);
    let copy = b.db("orders-copy");
    assert_same(&original, &copy.dump().await);
    // Between Outposts with the same settings the text attachment, sent as its identity bytes
    // and compressed again by the target, is stored with the same bytes and so the same digest.
    let stubs = |doc: Value| doc["_attachments"]["c.txt"].clone();
    let (_, here) = source.get("with-atts?att_encoding_info=true").await;
    let (_, there) = copy.get("with-atts?att_encoding_info=true").await;
    assert_eq!(stubs(here.clone())["encoding"], "gzip");
    assert_eq!(stubs(here), stubs(there));
    // A second run finds nothing missing.
    let again = replicate(
        &b.url(),
        json!({"source": source.url, "target": "orders-copy"}),
    )
    .await;
    assert_eq!(again["docs_written"], 0, "{again}");

    // Outpost → pouchdb-server with the CLI.
    let pouch_db = Db::open(&pouch.url, &format!("orders-{}", a.port));
    let printed = cli_replicate(&copy.url, &pouch_db.url).await;
    assert_eq!(printed["docs_written"], json!(leaves(&original)));
    assert_same(&original, &pouch_db.dump().await);

    // Outpost → Outpost over HTTP with the CLI: documents with attachment data go as
    // `multipart/related` PUTs, their bytes unencoded, and arrive as they were.
    let http_copy = a.db("orders-over-http");
    let printed = cli_replicate(&copy.url, &http_copy.url).await;
    assert_eq!(printed["docs_written"], json!(leaves(&original)));
    assert_same(&original, &http_copy.dump().await);
    let (_, there) = http_copy.get("with-atts?att_encoding_info=true").await;
    let (_, here) = copy.get("with-atts?att_encoding_info=true").await;
    assert_eq!(here["_attachments"], there["_attachments"]);

    // pouchdb-server → Outpost, into a database named by the bare name (the local endpoint).
    let result = replicate(
        &a.url(),
        json!({"source": {"url": pouch_db.url, "headers": {}}, "target": "from-pouch", "create_target": true}),
    )
    .await;
    assert_eq!(result["docs_written"], json!(leaves(&original)), "{result}");
    let back = a.db("from-pouch");
    assert_same(&original, &back.dump().await);
    // Local writes record where they came from.
    let (_, events) = back.get("_events?limit=1").await;
    let origin = events["results"][0]["origin"].as_str().unwrap().to_string();
    assert!(origin.starts_with("replication:http"), "{origin}");
}

/// The edge/cloud scenario: two `outpost serve` processes, the edge running two continuous
/// `_replicator` jobs (edge → cloud, cloud → edge). Clients write on both sides; the cloud is
/// SIGKILLed for several seconds while the edge keeps taking writes, then restarted on the same
/// port and data. Both converge to identical contents and no side accepts a revision twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_cloud_converge_across_a_cloud_crash() {
    let dirs = tempfile::tempdir().unwrap();
    let edge = Outpost::start(&dirs.path().join("edge")).await;
    let mut cloud = Outpost::start(&dirs.path().join("cloud")).await;
    let (e, c) = (edge.db("orders"), cloud.db("orders"));
    e.create().await;
    c.create().await;
    // The same document edited on both sides: a conflict both must end up with. Written before
    // the jobs start, or the edge's revision could reach the cloud first and the cloud's own
    // write would be a plain 409.
    e.put("shared", json!({"by": "edge"})).await;
    c.put("shared", json!({"by": "cloud"})).await;
    let jobs = edge.db("_replicator");
    jobs.put(
        "up",
        json!({"source": "orders", "target": c.url, "continuous": true}),
    )
    .await;
    jobs.put(
        "down",
        json!({"source": c.url, "target": "orders", "continuous": true}),
    )
    .await;

    let write = |db: &Db, prefix: &str, range: std::ops::Range<u32>| {
        let docs: Vec<Value> = range
            .map(|i| json!({"_id": format!("{prefix}-{i:04}"), "n": i}))
            .collect();
        let db = Db::open(
            db.url.rsplit_once('/').unwrap().0,
            db.url.rsplit_once('/').unwrap().1,
        );
        async move { db.bulk(Value::Array(docs), true).await }
    };
    write(&e, "edge", 0..100).await;
    write(&c, "cloud", 0..100).await;
    eventually(Duration::from_secs(20), "first sync", || async {
        e.dump().await.len() == 201 && c.dump().await.len() == 201
    })
    .await;

    cloud.kill();
    for round in 0..5u32 {
        write(&e, "offline", round * 50..(round + 1) * 50).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    // While the cloud is down the edge reports the error on the job and its document.
    eventually(Duration::from_secs(10), "an error state", || async {
        let (_, d) = jobs.get("up").await;
        d["_replication_state"] == "error"
    })
    .await;
    let (_, docs) = edge.db("_scheduler").get("docs").await;
    assert!(
        docs["docs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["state"] == "crashing" && d["info"]["error"].is_string()),
        "{docs}"
    );

    cloud.spawn().await;
    write(&c, "cloud-after", 0..100).await;
    eventually(Duration::from_secs(30), "convergence", || async {
        let (ed, cd) = (e.dump().await, c.dump().await);
        ed.len() == 551 && ed == cd
    })
    .await;
    assert_eq!(e.dump().await["shared"].len(), 2, "the conflict is kept");
    for id in ["up", "down"] {
        let (_, d) = jobs.get(id).await;
        assert!(d["_replication_id"].is_string(), "{d}");
    }
    eventually(Duration::from_secs(10), "running states", || async {
        let (_, d) = jobs.get("up").await;
        d["_replication_state"] == "running"
    })
    .await;
    // The jobs ran all along (the edge never restarted), so their counters cover the whole
    // test: each revision was written exactly once, even across the cloud's crash. Up: 100
    // edge documents, the edge's side of the conflict, 250 written offline; down: 100 + 1 +
    // 100.
    let (_, tasks) = Db::open(&edge.url(), "_active_tasks").get("").await;
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks}");
    for task in tasks.as_array().unwrap() {
        let expected = if task["doc_id"] == "up" { 351 } else { 201 };
        assert_eq!(task["docs_written"], expected, "{task}");
        assert!(task["last_sync"].is_string(), "{task}");
    }
}

/// A persistent job outlives a SIGKILL of the process running it: after the restart it resumes
/// from its checkpoint (nothing copied twice) and keeps following the source. Its source and
/// target carry credentials, which the status endpoints never show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_job_survives_a_restart() {
    let dirs = tempfile::tempdir().unwrap();
    let mut server = Outpost::start(&dirs.path().join("s")).await;
    let src = server.db("src");
    src.create().await;
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"_id": format!("a{i:03}")}))
        .collect();
    src.bulk(Value::Array(docs), true).await;
    let secret_target = format!("http://admin:s3cret@127.0.0.1:{}/dst", server.port);
    server
        .db("_replicator")
        .put(
            "job",
            json!({"source": {"url": src.url, "headers": {"authorization": "Bearer t0ken"}},
                   "target": secret_target, "continuous": true, "create_target": true}),
        )
        .await;
    let dst = server.db("dst");
    eventually(Duration::from_secs(20), "the first copy", || async {
        dst.get("").await.1["doc_count"] == 200
    })
    .await;
    for what in ["_scheduler/docs", "_scheduler/jobs", "_active_tasks"] {
        let text = client()
            .get(format!("{}/{what}", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("/dst"), "{what}: {text}");
        assert!(
            !text.contains("s3cret") && !text.contains("t0ken"),
            "{what}: {text}"
        );
    }

    server.kill();
    server.spawn().await;
    let docs: Vec<Value> = (0..50)
        .map(|i| json!({"_id": format!("b{i:03}")}))
        .collect();
    src.bulk(Value::Array(docs), true).await;
    eventually(
        Duration::from_secs(20),
        "the copy after the restart",
        || async { dst.get("").await.1["doc_count"] == 250 },
    )
    .await;
    assert_same(&src.dump().await, &dst.dump().await);
    // The resumed job wrote only the new documents: everything before the kill was either
    // checkpointed or found on the target by `_revs_diff`.
    let (_, tasks) = Db::open(&server.url(), "_active_tasks").get("").await;
    assert_eq!(tasks[0]["docs_written"], 50, "{tasks}");
    let (_, job) = server.db("_replicator").get("job").await;
    assert_eq!(job["_replication_state"], "running", "{job}");
}
