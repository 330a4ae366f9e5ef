//! Several `outpost serve` processes on one PostgreSQL database (`--store postgres://…`): one
//! server to their clients (the same uuid), a write on one node seen by a live changes feed on
//! another, readiness that fails when the database cannot be reached, a `_replicator` job that
//! runs on one node and moves to another when that node dies, a per-document access database
//! serving two members through either node, and server admins set through one node signing in
//! on every node until deleted.
//!
//! Needs the server at `OUTPOST_TEST_POSTGRES_URL`; skips saying so without it (fails under
//! `CI=true`). Each test works in a schema of its own, dropped afterwards.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod pg;
use pg::{Schema, postgres_url};

/// Long enough that only a defect runs into it.
const GUARD: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client() -> reqwest::Client {
    outpost_replicator::http_client().unwrap()
}

/// An `outpost serve` node on `store`.
struct Node {
    port: u16,
    child: Child,
}

impl Node {
    async fn start(store: &str, data: &Path) -> Node {
        Node::start_with(store, data, &[], &[]).await
    }

    /// A node with further `outpost serve` arguments and environment variables (the server
    /// admin, for one).
    async fn start_with(store: &str, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                store,
            ])
            .args(extra)
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost serve");
        let node = Node { port, child };
        let deadline = Instant::now() + GUARD;
        loop {
            if let Ok(r) = client().get(node.url("/_up")).send().await
                && r.status().is_success()
            {
                return node;
            }
            assert!(Instant::now() < deadline, "outpost serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_reaches_a_live_feed_on_another() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&store, da.path()).await;
    let b = Node::start(&store, db.path()).await;

    // One server to its clients: PouchDB keys its checkpoints on this.
    let (_, root_a) = a.get("/").await;
    let (_, root_b) = b.get("/").await;
    assert_eq!(root_a["uuid"], root_b["uuid"]);

    let created = client().put(a.url("/shared")).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    // A longpoll feed on B from the database's current sequence: it waits for the write on A
    // (or, had the write come first, answers it at once; the store's own tests show the wake-up
    // itself deterministically).
    // Sequences name the database the same way on every node, so a client moved to another
    // node resumes where it was.
    let (_, info) = b.get("/shared").await;
    let (_, info_a) = a.get("/shared").await;
    assert_eq!(info["update_seq"], info_a["update_seq"]);
    let since = info_a["update_seq"].as_str().unwrap().to_owned();
    let feed = tokio::spawn({
        let url = b.url(&format!(
            "/shared/_changes?feed=longpoll&since={since}&timeout=60000"
        ));
        async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    });
    let put = client()
        .put(a.url("/shared/doc1"))
        .json(&json!({"from": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let changes = tokio::time::timeout(GUARD, feed)
        .await
        .expect("the feed on the other node was not woken")
        .unwrap();
    let ids: Vec<&str> = changes["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["doc1"]);
    let (status, doc) = b.get("/shared/doc1").await;
    assert_eq!((status, &doc["from"]), (200, &json!("a")));
}

/// Sends `method path` to `node` as `user` (password `pw-{user}`); the status and JSON answer.
async fn as_user(
    node: &Node,
    user: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), node.url(path))
        .basic_auth(user, Some(format!("pw-{user}")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The ids of a `_changes` answer, each with whether it shows as deleted.
fn feed_rows(changes: &Value) -> Vec<(String, bool)> {
    changes["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let deleted = r["deleted"].as_bool().unwrap_or(false);
            (r["id"].as_str().unwrap().to_owned(), deleted)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_database_serves_each_member_their_documents_on_every_node() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let admin = [
        ("OUTPOST_ADMIN_USER", "root"),
        ("OUTPOST_ADMIN_PASSWORD", "pw-root"),
    ];
    let a = Node::start_with(&store, da.path(), &[], &admin).await;
    let b = Node::start_with(&store, db.path(), &[], &admin).await;
    let ok = |(status, body): (u16, Value)| {
        assert!((200..300).contains(&status), "{status} {body}");
        body
    };
    ok(as_user(&a, "root", "PUT", "/_users", None).await);
    for name in ["alice", "bob"] {
        let user =
            json!({"name": name, "type": "user", "roles": [], "password": format!("pw-{name}")});
        let path = format!("/_users/org.couchdb.user:{name}");
        ok(as_user(&a, "root", "PUT", &path, Some(user)).await);
    }
    ok(as_user(&a, "root", "PUT", "/shared?access=true", None).await);
    let security = json!({"members": {"names": ["alice", "bob"], "roles": []}});
    ok(as_user(&b, "root", "PUT", "/shared/_security", Some(security)).await);

    // Each member writes through one node and reads through the other.
    ok(as_user(
        &a,
        "alice",
        "PUT",
        "/shared/a1",
        Some(json!({"_access": ["alice"]})),
    )
    .await);
    ok(as_user(
        &b,
        "bob",
        "PUT",
        "/shared/b1",
        Some(json!({"_access": ["bob"]})),
    )
    .await);
    let both = ok(as_user(
        &a,
        "alice",
        "PUT",
        "/shared/both",
        Some(json!({"_access": ["alice", "bob"]})),
    )
    .await);
    let alice_feed = ok(as_user(&b, "alice", "GET", "/shared/_changes", None).await);
    assert_eq!(
        feed_rows(&alice_feed),
        [("a1".to_owned(), false), ("both".to_owned(), false)]
    );
    let bob_feed = ok(as_user(&a, "bob", "GET", "/shared/_changes", None).await);
    assert_eq!(
        feed_rows(&bob_feed),
        [("b1".to_owned(), false), ("both".to_owned(), false)]
    );
    assert_eq!(as_user(&b, "alice", "GET", "/shared/b1", None).await.0, 404);
    assert_eq!(as_user(&a, "bob", "GET", "/shared/a1", None).await.0, 404);
    let listed = ok(as_user(&b, "bob", "GET", "/shared/_all_docs", None).await);
    let ids: Vec<&str> = listed["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "both"]);

    // Alice takes `both` away from bob on one node: on the other, his feed shows it deleted.
    let rev = both["rev"].as_str().unwrap();
    ok(as_user(
        &b,
        "alice",
        "PUT",
        &format!("/shared/both?rev={rev}"),
        Some(json!({"_access": ["alice"]})),
    )
    .await);
    let since = bob_feed["last_seq"].clone();
    let since = since
        .as_str()
        .map(str::to_owned)
        .unwrap_or(since.to_string());
    let after = ok(as_user(
        &a,
        "bob",
        "GET",
        &format!("/shared/_changes?since={since}"),
        None,
    )
    .await);
    assert_eq!(feed_rows(&after), [("both".to_owned(), true)]);
    assert_eq!(as_user(&a, "bob", "GET", "/shared/both", None).await.0, 404);
    let (_, info) = as_user(&b, "bob", "GET", "/shared", None).await;
    assert_eq!(
        (info["doc_count"].as_u64(), info["doc_del_count"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, info) = as_user(&a, "root", "GET", "/shared", None).await;
    assert_eq!(info["doc_count"].as_u64(), Some(3));
}

/// `GET /_session` on `node` with `user`'s Basic credentials (password `pw-{user}`): the status
/// and the roles it was given.
async fn session_roles(node: &Node, user: &str) -> (u16, Value) {
    let (status, body) = as_user(node, user, "GET", "/_session", None).await;
    (status, body["userCtx"]["roles"].clone())
}

const ADMIN: &str = "/_node/_local/_config/admins";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_admin_set_through_one_node_signs_in_on_every_node_until_deleted() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let root = [
        ("OUTPOST_ADMIN_USER", "root"),
        ("OUTPOST_ADMIN_PASSWORD", "pw-root"),
    ];
    let a = Node::start_with(&store, da.path(), &[], &root).await;
    let b = Node::start_with(&store, db.path(), &[], &root).await;
    assert_eq!(session_roles(&b, "ann").await.0, 401);

    let path = format!("{ADMIN}/ann");
    let (status, previous) = as_user(&a, "root", "PUT", &path, Some(json!("pw-ann"))).await;
    assert_eq!((status, previous), (200, json!("")));
    let admin = json!(["_admin"]);
    eventually("the admin set on node A to sign in on node B", || async {
        let (status, roles) = session_roles(&b, "ann").await;
        (status == 200 && roles == admin).then_some(())
    })
    .await;
    let signed_in = client()
        .post(b.url("/_session"))
        .json(&json!({"name": "ann", "password": "pw-ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 200);
    let (_, names) = as_user(&b, "ann", "GET", ADMIN, None).await;
    assert!(
        names.get("ann").is_some() && names.get("root").is_some(),
        "{names}"
    );

    // A node started afterwards, with no admin of its own, reads the admins from the store
    // before it serves: it is no admin party, and the admin signs in on it at once. (A second
    // stored admin keeps it from becoming one once the first is deleted below.)
    let (status, _) = as_user(
        &a,
        "root",
        "PUT",
        &format!("{ADMIN}/bob"),
        Some(json!("pw-bob")),
    )
    .await;
    assert_eq!(status, 200);
    let c = Node::start(&store, dc.path()).await;
    assert_eq!(c.get("/_all_dbs").await.0, 401);
    assert_eq!(session_roles(&c, "ann").await, (200, admin.clone()));

    // Another admin's password is changed through node B; node A follows.
    let (status, previous) = as_user(&b, "ann", "PUT", &path, Some(json!("pw-ann"))).await;
    assert_eq!((status, previous), (200, json!("<hashed>")));

    // An admin given by the nodes' configuration is not changed through the API.
    let (status, body) = as_user(&a, "root", "DELETE", &format!("{ADMIN}/root"), None).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    assert_eq!(session_roles(&b, "root").await, (200, admin.clone()));

    let (status, _) = as_user(&a, "root", "DELETE", &path, None).await;
    assert_eq!(status, 200);
    for node in [&b, &c] {
        eventually(
            "the admin deleted on node A to be refused on another node",
            || async { (session_roles(node, "ann").await.0 == 401).then_some(()) },
        )
        .await;
    }
    assert_eq!(session_roles(&a, "ann").await.0, 401);
    let (status, _) = as_user(&b, "root", "DELETE", &path, None).await;
    assert_eq!(status, 404);
}

/// Before server admins lived in PostgreSQL, a node kept those added through the API in
/// `admins.json` in its data directory: a node of this version moves them into the store, so
/// they are not lost (nor the node left without admins), and every node knows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_admins_saved_in_a_data_directory_move_into_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        // A data directory whose `admins.json` holds an admin added through the API: the
        // SQLite engine keeps them there.
        let node = Node::start(da.path().to_str().unwrap(), da.path()).await;
        let (status, _) = as_user(
            &node,
            "x",
            "PUT",
            &format!("{ADMIN}/dave"),
            Some(json!("pw-dave")),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(da.path().join("admins.json").exists());
    let a = Node::start(&store, da.path()).await;
    let b = Node::start(&store, db.path()).await;
    let admin = json!(["_admin"]);
    assert_eq!(session_roles(&b, "dave").await, (200, admin.clone()));
    assert_eq!(session_roles(&a, "dave").await, (200, admin));
    assert!(!da.path().join("admins.json").exists());
    assert!(da.path().join("admins.json.moved").exists());

    // Deleted, it stays deleted when its old node starts again.
    let (status, _) = as_user(
        &b,
        "dave",
        "PUT",
        &format!("{ADMIN}/erin"),
        Some(json!("pw-erin")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = as_user(&b, "erin", "DELETE", &format!("{ADMIN}/dave"), None).await;
    assert_eq!(status, 200);
    drop(a);
    let a = Node::start(&store, da.path()).await;
    assert_eq!(session_roles(&a, "dave").await.0, 401);
    assert_eq!(session_roles(&a, "erin").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_postgres_cannot_be_reached() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let upstream = postgres_host_port(&url);
    let proxy = Proxy::start(&upstream).await;
    let store = schema.url_via(Some(&format!("127.0.0.1:{}", proxy.port)));
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&store, data.path()).await;
    assert_eq!(node.get("/_outpost/v1/ready").await.0, 200);

    proxy.cut();
    let deadline = Instant::now() + GUARD;
    loop {
        let (status, body) = node.get("/_outpost/v1/ready").await;
        if status == 503 {
            assert_eq!(body["status"], "unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without its database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `host:port` of a PostgreSQL URL (5432 when none is given).
fn postgres_host_port(url: &str) -> String {
    let rest = &url[url.find("://").unwrap() + 3..];
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hp = rest.split(['/', '?']).next().unwrap();
    if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:5432")
    }
}

/// A TCP proxy in front of PostgreSQL that can be cut: then it closes every connection and
/// refuses new ones, as an unreachable database would look to the node.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let upstream = upstream.to_owned();
        let held = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        Proxy {
            port,
            task,
            connections,
        }
    }

    fn cut(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// SIGKILL under concurrent writes: every write a node acknowledged is there when another node
/// opens the database. A 2xx means committed in PostgreSQL, never "queued".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_a_sigkilled_node() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(&store, data.path()).await;
    let created = client().put(node.url("/crash")).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);

    const WRITERS: usize = 8;
    const KILL_AFTER: usize = 200;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let enough = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (acked, enough, base) = (acked.clone(), enough.clone(), node.url("/crash"));
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i:05}");
                let sent = client()
                    .put(format!("{base}/{id}"))
                    .json(&json!({"w": w, "i": i}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let mut acked = acked.lock().unwrap();
                        acked.push(id);
                        if acked.len() == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    // The node is gone: whatever was not acknowledged may or may not be there.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::timeout(GUARD, enough.notified())
        .await
        .expect("the writers never got far enough");
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }

    let other = tempfile::tempdir().unwrap();
    node = Node::start(&store, other.path()).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    let r = client()
        .post(node.url("/crash/_all_docs"))
        .json(&json!({"keys": acked}))
        .send()
        .await
        .unwrap();
    let rows: Value = r.json().await.unwrap();
    let missing: Vec<&Value> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row.get("error").is_some())
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// `outpost db migrate`: a data directory into PostgreSQL, served from there, and back into a
/// new data directory, served from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_moves_to_postgres_and_back() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let original = tempfile::tempdir().unwrap();
    let uuid = {
        let node = Node::start(original.path().to_str().unwrap(), original.path()).await;
        assert_eq!(
            client()
                .put(node.url("/moving"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            201
        );
        let put = client()
            .put(node.url("/moving/doc"))
            .json(&json!({"here": "sqlite"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201);
        node.get("/").await.1["uuid"].clone()
    };
    let migrate = |from: &str, to: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["db", "migrate", "--from", from, "--to", to])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let said = migrate(original.path().to_str().unwrap(), &store);
    assert!(said.contains("docs: 1 rows"), "{said}");

    let back = tempfile::tempdir().unwrap();
    {
        let node = Node::start(&store, back.path()).await;
        assert_eq!(node.get("/").await.1["uuid"], uuid);
        let (status, doc) = node.get("/moving/doc").await;
        assert_eq!((status, &doc["here"]), (200, &json!("sqlite")));
        let put = client()
            .put(node.url("/moving/doc2"))
            .json(&json!({"here": "postgres"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201);
    }
    // Copying into a store that holds databases is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "db",
            "migrate",
            "--from",
            original.path().to_str().unwrap(),
            "--to",
            &store,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());

    let said = migrate(&store, back.path().to_str().unwrap());
    assert!(said.contains("docs: 2 rows"), "{said}");
    let node = Node::start(back.path().to_str().unwrap(), back.path()).await;
    assert_eq!(node.get("/").await.1["uuid"], uuid);
    for id in ["doc", "doc2"] {
        assert_eq!(node.get(&format!("/moving/{id}")).await.0, 200);
    }
}

/// Polls `check` until it gives a value, failing after [`GUARD`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes documents `from..to` into `db` through `node`, returning their revisions by id.
async fn write_docs(node: &Node, db: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    let docs: Vec<Value> = range
        .map(|i| json!({"_id": format!("doc-{i:03}"), "i": i}))
        .collect();
    let r = client()
        .post(node.url(&format!("/{db}/_bulk_docs")))
        .json(&json!({ "docs": docs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let rows: Vec<Value> = r.json().await.unwrap();
    rows.iter()
        .map(|row| {
            assert_eq!(row["ok"], true, "{row}");
            (
                row["id"].as_str().unwrap().to_owned(),
                row["rev"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `db`'s documents by id with their revisions and conflicts, once it has `n` of them.
async fn wait_for_docs(node: &Node, db: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} documents in {db}"), || async {
        let (status, body) = node
            .get(&format!("/{db}/_all_docs?include_docs=true&conflicts=true"))
            .await;
        let rows = body["rows"].as_array().cloned().unwrap_or_default();
        (status == 200 && rows.len() == n).then_some(rows)
    })
    .await
}

/// The `_active_tasks` entry of the `_replicator` document `doc_id` on `node`, if it runs there.
async fn task_of(node: &Node, doc_id: &str) -> Option<Value> {
    let (status, tasks) = node.get("/_active_tasks").await;
    assert_eq!(status, 200);
    tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["doc_id"] == doc_id)
        .cloned()
}

/// The `_scheduler/docs` entry of `doc_id` on `node`, if it lists it.
async fn scheduler_doc(node: &Node, doc_id: &str) -> Option<Value> {
    let (status, body) = node.get("/_scheduler/docs").await;
    assert_eq!(status, 200);
    body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["doc_id"] == doc_id)
        .cloned()
}

/// `outpost_replication_leases_held` as `node` reports it.
async fn leases_held(node: &Node) -> f64 {
    let text = client()
        .get(node.url("/_outpost/v1/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("outpost_replication_leases_held "))
        .expect("the lease gauge is exported")
        .parse()
        .unwrap()
}

/// A continuous `_replicator` job on two nodes runs on exactly one, holding the job's lease.
/// SIGKILL that node: once the lease expires the other takes the job over and resumes from the
/// shared checkpoint, reading only what came after it; every document written before and after
/// the kill arrives, each at the revision it was written with, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicator_job_moves_to_another_node_when_its_node_dies() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url);
    let store = schema.url_via(None);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |name: &'static str| ["--replicator-lease-ttl", "2s", "--node-name", name];
    let mut nodes = [
        Node::start_with(&store, data_a.path(), &args("outpost@a"), &[]).await,
        Node::start_with(&store, data_b.path(), &args("outpost@b"), &[]).await,
    ];
    for db in ["/src", "/dst"] {
        let r = client().put(nodes[0].url(db)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let mut written = write_docs(&nodes[0], "src", 0..20).await;
    let r = client()
        .put(nodes[1].url("/_replicator/job"))
        .json(&json!({"source": "src", "target": "dst", "continuous": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    wait_for_docs(&nodes[0], "dst", 20).await;

    // Exactly one node runs it, and says so; the other neither runs nor lists it.
    let runner = eventually("one node running the job", || async {
        let mut running = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if task_of(node, "job").await.is_some() {
                running.push(i);
            }
        }
        (running.len() == 1).then(|| running[0])
    })
    .await;
    let survivor = 1 - runner;
    let name = ["outpost@a", "outpost@b"];
    let doc = scheduler_doc(&nodes[runner], "job").await.unwrap();
    assert_eq!(doc["node"], name[runner]);
    assert!(scheduler_doc(&nodes[survivor], "job").await.is_none());
    assert_eq!(leases_held(&nodes[runner]).await, 1.0);
    assert_eq!(leases_held(&nodes[survivor]).await, 0.0);
    // The job checkpoints what it copied before it dies.
    eventually("the first documents checkpointed", || async {
        let task = task_of(&nodes[runner], "job").await?;
        (task["docs_written"] == 20
            && !task["checkpointed_source_seq"].is_null()
            && task["checkpointed_source_seq"] == task["source_seq"])
            .then_some(())
    })
    .await;
    // While the runner lives, the other node stays out, however many of its lease periods pass.
    assert!(task_of(&nodes[survivor], "job").await.is_none());

    nodes[runner].child.kill().unwrap();
    nodes[runner].child.wait().unwrap();
    written.extend(write_docs(&nodes[survivor], "src", 20..40).await);
    let rows = wait_for_docs(&nodes[survivor], "dst", 40).await;
    let task = eventually("the job running on the other node", || async {
        let task = task_of(&nodes[survivor], "job").await?;
        (task["docs_written"] == 20).then_some(task)
    })
    .await;
    // Resumed from the checkpoint: it read only the changes after it.
    assert_eq!(task["docs_read"], 20, "{task}");
    assert_eq!(task["node"], name[survivor]);
    let doc = scheduler_doc(&nodes[survivor], "job").await.unwrap();
    assert_eq!(doc["node"], name[survivor]);
    assert_eq!(leases_held(&nodes[survivor]).await, 1.0);
    // Every document once, at the revision it was written with: none copied as a new one.
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            assert!(row["doc"].get("_conflicts").is_none(), "{row}");
            (
                row["id"].as_str().unwrap().to_owned(),
                row["value"]["rev"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    written.sort();
    assert_eq!(got, written);
    let (_, info) = nodes[survivor].get("/dst").await;
    assert_eq!(info["doc_count"], 40);
    let update_seq = info["update_seq"].as_str().unwrap();
    assert!(update_seq.starts_with("40-"), "{info}");

    // Editing the job (through a node that just joined) restarts it, on whichever node takes
    // the lease of its new version, and on that node only.
    let data_c = tempfile::tempdir().unwrap();
    let third = Node::start_with(&store, data_c.path(), &args("outpost@c"), &[]).await;
    let (_, doc) = third.get("/_replicator/job").await;
    let r = client()
        .put(third.url("/_replicator/job"))
        .json(
            &json!({"_rev": doc["_rev"], "source": "src", "target": "dst2",
                      "create_target": true, "continuous": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let live = [&nodes[survivor], &third];
    wait_for_docs(&third, "dst2", 40).await;
    // Two whole lease periods, in which a lease left free would be taken by the other node.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut running = 0;
    let mut held = 0.0;
    for node in live {
        running += usize::from(task_of(node, "job").await.is_some());
        held += leases_held(node).await;
    }
    assert_eq!((running, held), (1, 1.0));
}
