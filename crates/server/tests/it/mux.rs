//! The multiplexed feed (`/_outpost/v1/feed`) on a real socket: subscribing and unsubscribing
//! over a WebSocket, filters, resuming from the last sequences after a reconnect, cutting a
//! client that does not read, authorization per database, and the event-stream variant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use outpost_auth::Credentials;
use outpost_server::auth::{AuthSettings, DefaultSecurity};
use outpost_server::mux::FeedLimits;
use outpost_server::{AppState, Config};
use outpost_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::support::seq_n;

/// Far above any normal wait, so only a hang trips it.
const PATIENCE: Duration = Duration::from_secs(60);

struct Live {
    base: String,
    state: AppState,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn live(config: Config) -> Live {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let state = AppState::new(store, config, shutdown.clone());
    let base = format!(
        "http://{}",
        crate::support::serve_on_loopback(state.clone()).await
    );
    Live {
        base,
        state,
        shutdown,
        _dir: dir,
    }
}

impl Live {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(None, method, path, body).await
    }

    async fn call_as(
        &self,
        user: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request =
            reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some((name, password)) = user {
            request = request.basic_auth(name, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, db: &str) {
        let (status, body) = self.call("PUT", &format!("/{db}"), None).await;
        assert_eq!(status, 201, "{body}");
    }

    /// Writes a document and gives its new revision.
    async fn put(&self, db: &str, id: &str, doc: Value) -> String {
        let (status, body) = self.call("PUT", &format!("/{db}/{id}"), Some(doc)).await;
        assert_eq!(status, 201, "{body}");
        body["rev"].as_str().unwrap().to_owned()
    }

    async fn ws(&self, user: Option<(&str, &str)>) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(self.handshake(user, None))
            .await
            .unwrap();
        Ws { ws }
    }

    /// The WebSocket handshake, with credentials and an `Origin` when given.
    fn handshake(&self, user: Option<(&str, &str)>, origin: Option<&str>) -> http::Request<()> {
        let url = format!("{}/_outpost/v1/feed", self.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        if let Some((name, password)) = user {
            use base64::Engine;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
            request
                .headers_mut()
                .insert("authorization", format!("Basic {token}").parse().unwrap());
        }
        request
    }
}

struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    async fn send(&mut self, cmd: Value) {
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
    }

    /// The next JSON frame; `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame within the patience limit");
            match message {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn expect(&mut self) -> Value {
        self.next().await.expect("the connection is open")
    }

    /// Frames up to and including the first `pred` accepts.
    async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.expect().await;
            let done = pred(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Subscribes and reads until the subscription caught up; gives the change frames.
    async fn subscribe(&mut self, sub: Value) -> Vec<Value> {
        let db = sub["db"].clone();
        let mut cmd = sub;
        cmd["type"] = json!("subscribe");
        self.send(cmd).await;
        let ack = self.expect().await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        assert_eq!(ack["db"], db);
        let frames = self
            .until(|f| f["type"] == "caught_up" && f["db"] == db)
            .await;
        frames
            .into_iter()
            .filter(|f| f["type"] == "change")
            .collect()
    }
}

fn ids(changes: &[Value]) -> BTreeSet<String> {
    changes
        .iter()
        .map(|c| c["change"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn subscribe_receive_live_changes_and_unsubscribe() {
    let server = live(Config::default()).await;
    for db in ["alpha", "beta"] {
        server.create(db).await;
    }
    server.put("alpha", "a1", json!({"n": 1})).await;
    server.put("beta", "b1", json!({"n": 1})).await;
    server.put("beta", "b2", json!({"n": 2})).await;

    let mut ws = server.ws(None).await;
    let alpha = ws.subscribe(json!({"db": "alpha", "since": 0})).await;
    assert_eq!(ids(&alpha), BTreeSet::from(["a1".to_owned()]));
    let beta = ws
        .subscribe(json!({"db": "beta", "include_docs": true}))
        .await;
    assert_eq!(ids(&beta), BTreeSet::from(["b1".into(), "b2".into()]));
    for change in &beta {
        assert_eq!(change["db"], "beta");
        assert_eq!(change["seq"], change["change"]["seq"]);
        assert!(change["change"]["changes"][0]["rev"].is_string());
        assert_eq!(change["change"]["doc"]["_id"], change["change"]["id"]);
    }
    assert!(alpha[0].get("doc").is_none() && alpha[0]["change"].get("doc").is_none());

    // Live: a write to either database arrives on the one connection.
    let rev = server.put("alpha", "a2", json!({"n": 2})).await;
    let change = ws.expect().await;
    assert_eq!(change["type"], "change");
    assert_eq!(
        (&change["db"], &change["change"]["id"]),
        (&json!("alpha"), &json!("a2"))
    );
    assert_eq!(change["change"]["changes"][0]["rev"], rev.as_str());
    server.put("beta", "b3", json!({})).await;
    let change = ws.expect().await;
    assert_eq!(
        (&change["db"], &change["change"]["id"]),
        (&json!("beta"), &json!("b3"))
    );

    // Subscribing twice to one database is refused; the first subscription goes on.
    ws.send(json!({"type": "subscribe", "db": "alpha"})).await;
    let refused = ws.expect().await;
    assert_eq!(
        (&refused["type"], &refused["error"]),
        (&json!("error"), &json!("bad_request"))
    );

    ws.send(json!({"type": "unsubscribe", "db": "beta"})).await;
    let ack = ws.expect().await;
    assert_eq!(
        (&ack["type"], &ack["db"]),
        (&json!("unsubscribed"), &json!("beta"))
    );
    // After the acknowledgement nothing of beta arrives: alpha's later write is the next frame.
    server.put("beta", "b4", json!({})).await;
    server.put("alpha", "a3", json!({})).await;
    let next = ws.expect().await;
    assert_eq!(
        (&next["db"], &next["change"]["id"]),
        (&json!("alpha"), &json!("a3"))
    );

    ws.send(json!({"type": "unsubscribe", "db": "beta"})).await;
    let missing = ws.expect().await;
    assert_eq!(missing["error"], "not_found", "{missing}");
    ws.send(json!({"type": "subscribe", "db": "nowhere"})).await;
    let missing = ws.expect().await;
    assert_eq!(
        (&missing["error"], &missing["db"]),
        (&json!("not_found"), &json!("nowhere"))
    );
    ws.send(json!({"type": "dance"})).await;
    assert_eq!(ws.expect().await["error"], "bad_request");
    ws.ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(ws.expect().await["error"], "bad_request");

    // Deleting a database ends its subscription with a `closed` frame.
    let (status, _) = server.call("DELETE", "/alpha", None).await;
    assert_eq!(status, 200);
    let closed = ws.expect().await;
    assert_eq!(
        (&closed["type"], &closed["db"]),
        (&json!("closed"), &json!("alpha"))
    );
}

#[tokio::test]
async fn filters_are_those_of_changes() {
    let server = live(Config::default()).await;
    server.create("notes").await;
    for (id, kind) in [("n1", "task"), ("n2", "note"), ("n3", "task")] {
        server.put("notes", id, json!({"kind": kind})).await;
    }
    server
        .put(
            "notes",
            "_design/app",
            json!({"filters": {"notes": "function(doc, req) { return doc.kind === req.query.kind; }"}}),
        )
        .await;

    let mut ws = server.ws(None).await;
    let by_ids = ws
        .subscribe(json!({"db": "notes", "filter": "_doc_ids", "doc_ids": ["n2", "n3", "zz"]}))
        .await;
    assert_eq!(ids(&by_ids), BTreeSet::from(["n2".into(), "n3".into()]));
    ws.send(json!({"type": "unsubscribe", "db": "notes"})).await;
    ws.until(|f| f["type"] == "unsubscribed").await;

    let tasks = ws
        .subscribe(json!({"db": "notes", "filter": "_selector", "selector": {"kind": "task"}, "include_docs": true}))
        .await;
    assert_eq!(ids(&tasks), BTreeSet::from(["n1".into(), "n3".into()]));
    assert!(tasks.iter().all(|c| c["change"]["doc"]["kind"] == "task"));
    // Live changes go through the same filter.
    server.put("notes", "n4", json!({"kind": "note"})).await;
    server.put("notes", "n5", json!({"kind": "task"})).await;
    let next = ws.expect().await;
    assert_eq!(next["change"]["id"], "n5", "{next}");
    ws.send(json!({"type": "unsubscribe", "db": "notes"})).await;
    ws.until(|f| f["type"] == "unsubscribed").await;

    let designs = ws
        .subscribe(json!({"db": "notes", "filter": "_design"}))
        .await;
    assert_eq!(ids(&designs), BTreeSet::from(["_design/app".into()]));
    ws.send(json!({"type": "unsubscribe", "db": "notes"})).await;
    ws.until(|f| f["type"] == "unsubscribed").await;

    let by_function = ws
        .subscribe(json!({"db": "notes", "filter": "app/notes", "query": {"kind": "note"}}))
        .await;
    assert_eq!(
        ids(&by_function),
        BTreeSet::from(["n2".into(), "n4".into()])
    );

    // A bad filter is refused as `_changes` refuses it, and names the database.
    for (sub, error) in [
        (json!({"db": "other", "filter": "_selector"}), "not_found"),
        (json!({"db": "notes", "filter": "_selector"}), "bad_request"),
        (json!({"db": "notes", "filter": "nope/nope"}), "not_found"),
        (json!({"db": "notes", "filter": "_bogus"}), "bad_request"),
        (json!({"db": "notes", "include_docs": "yes"}), "bad_request"),
    ] {
        let mut cmd = sub.clone();
        cmd["type"] = json!("subscribe");
        // `notes` is subscribed already; a second connection checks the refusals.
        let mut other = server.ws(None).await;
        other.send(cmd).await;
        let refused = other.expect().await;
        assert_eq!(
            (&refused["type"], &refused["error"]),
            (&json!("error"), &json!(error)),
            "{sub}: {refused}"
        );
    }
}

#[tokio::test]
async fn a_reconnect_resumes_from_the_last_sequences_without_loss() {
    let server = live(Config::default()).await;
    let dbs = ["r0", "r1", "r2"];
    for db in dbs {
        server.create(db).await;
        server.put(db, "first", json!({})).await;
    }
    let mut ws = server.ws(None).await;
    let mut last: BTreeMap<&str, Value> = BTreeMap::new();
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for db in dbs {
        for change in ws.subscribe(json!({"db": db})).await {
            last.insert(db, change["seq"].clone());
            seen.entry(db)
                .or_default()
                .insert(change["change"]["id"].as_str().unwrap().into());
        }
    }
    drop(ws);
    // Written while no one listens.
    let mut written: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (i, db) in dbs.iter().enumerate() {
        for n in 0..=i {
            let id = format!("while-away-{n}");
            server.put(db, &id, json!({})).await;
            written.entry(db).or_default().insert(id);
        }
    }
    let mut ws = server.ws(None).await;
    for db in dbs {
        let missed = ws.subscribe(json!({"db": db, "since": last[db]})).await;
        assert_eq!(ids(&missed), written[db], "{db}");
        assert!(missed.iter().all(|c| seq_n(&c["seq"]) > seq_n(&last[db])));
    }
    // `since` also takes the plain number earlier versions showed, and `now`.
    let mut ws = server.ws(None).await;
    let plain = ws
        .subscribe(json!({"db": "r2", "since": seq_n(&last["r2"])}))
        .await;
    assert_eq!(ids(&plain), written["r2"]);
    let now = ws.subscribe(json!({"db": "r1", "since": "now"})).await;
    assert!(now.is_empty());
    // A sequence of another database (here CouchDB's form) starts over, as CouchDB does.
    let foreign = ws
        .subscribe(json!({"db": "r0", "since": format!("{}-g1AAAA", seq_n(&last["r0"]))}))
        .await;
    let mut everything = written["r0"].clone();
    everything.insert("first".into());
    assert_eq!(ids(&foreign), everything);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_told_and_cut() {
    let server = live(Config {
        feed: FeedLimits {
            buffer: 4,
            slow_client_timeout: Duration::from_millis(200),
            ..FeedLimits::default()
        },
        ..Config::default()
    })
    .await;
    server.create("big").await;
    // Far more than the socket buffers on both sides hold, so the server's writes block.
    let filler = "x".repeat(100_000);
    for batch in 0..8 {
        let docs: Vec<Value> = (0..32)
            .map(|i| json!({"_id": format!("d{batch:02}-{i:02}"), "filler": filler}))
            .collect();
        let (status, _) = server
            .call("POST", "/big/_bulk_docs", Some(json!({"docs": docs})))
            .await;
        assert_eq!(status, 201);
    }
    let mut ws = server.ws(None).await;
    ws.send(json!({"type": "subscribe", "db": "big", "include_docs": true}))
        .await;
    // The client reads nothing until the server gave up on it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.state.feeds.slow_clients_cut() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client was never cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut changes = 0;
    let last = loop {
        let frame = ws.next().await.expect("a last frame before the close");
        match frame["type"].as_str() {
            Some("subscribed") => {}
            Some("change") => changes += 1,
            _ => break frame,
        }
    };
    assert_eq!(
        (&last["type"], &last["error"]),
        (&json!("error"), &json!("slow_client")),
        "{last}"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("resume"),
        "{last}"
    );
    assert!(
        changes < 256,
        "the cut came before the whole database was sent"
    );
    assert!(
        ws.next().await.is_none(),
        "the connection closes after the last frame"
    );
    // Nothing of the connection is left.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.state.feeds.open_connections() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subscriptions_and_connections_are_limited() {
    let server = live(Config {
        feed: FeedLimits {
            max_connections: 1,
            max_subscriptions: 2,
            ..FeedLimits::default()
        },
        ..Config::default()
    })
    .await;
    for db in ["l0", "l1", "l2"] {
        server.create(db).await;
    }
    let mut ws = server.ws(None).await;
    ws.subscribe(json!({"db": "l0"})).await;
    ws.subscribe(json!({"db": "l1"})).await;
    ws.send(json!({"type": "subscribe", "db": "l2"})).await;
    let refused = ws.expect().await;
    assert_eq!(
        (&refused["error"], &refused["db"]),
        (&json!("too_large"), &json!("l2")),
        "{refused}"
    );
    ws.send(json!({"type": "unsubscribe", "db": "l0"})).await;
    ws.until(|f| f["type"] == "unsubscribed").await;
    ws.subscribe(json!({"db": "l2"})).await;

    // A second connection is refused while the first is open, then accepted.
    let url = format!(
        "{}/_outpost/v1/feed",
        server.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("a second connection was not refused: {other:?}"),
    }
    let (status, body) = server.call("GET", "/_outpost/v1/feed", None).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("service_unavailable"))
    );
    drop(ws);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.state.feeds.open_connections() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.ws(None).await.subscribe(json!({"db": "l0"})).await;
}

#[tokio::test]
async fn each_database_is_authorized_as_its_changes_feed() {
    let dir = tempfile::tempdir().unwrap();
    let server = live(Config {
        auth: AuthSettings {
            admins: vec![("admin".into(), Credentials::hash("secret", 10))],
            admins_file: Some(dir.path().join("admins.json")),
            password_iterations: 10,
            default_security: DefaultSecurity::Everyone,
            ..AuthSettings::default()
        },
        ..Config::default()
    })
    .await;
    let admin = Some(("admin", "secret"));
    for db in ["public", "private"] {
        let (status, body) = server.call_as(admin, "PUT", &format!("/{db}"), None).await;
        assert_eq!(status, 201, "{body}");
        let (status, _) = server
            .call_as(admin, "PUT", &format!("/{db}/doc"), Some(json!({})))
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = server
        .call_as(
            admin,
            "PUT",
            "/private/_security",
            Some(json!({"members": {"names": ["alice"]}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.call_as(admin, "PUT", "/_users", None).await;
    assert_eq!(status, 201);
    for name in ["alice", "bob"] {
        let (status, body) = server
            .call_as(
                admin,
                "PUT",
                &format!("/_users/org.couchdb.user:{name}"),
                Some(json!({"name": name, "password": "pw", "roles": [], "type": "user"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // A page of another site may not open the feed with the user's credentials (browsers send
    // cookies with a WebSocket handshake and apply no CORS to it); the server's own origin may.
    let alice = Some(("alice", "pw"));
    match tokio_tungstenite::connect_async(server.handshake(alice, Some("http://evil.example")))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a foreign origin was let in: {other:?}"),
    }
    let own = server.base.clone();
    let (ws, _) = tokio_tungstenite::connect_async(server.handshake(alice, Some(&own)))
        .await
        .unwrap();
    let mut ws = Ws { ws };
    ws.subscribe(json!({"db": "private"})).await;

    // The same decision as `GET /private/_changes`, for each kind of client.
    for (user, expected) in [
        (None, Some("unauthorized")),
        (Some(("bob", "pw")), Some("forbidden")),
        (Some(("alice", "pw")), None),
        (admin, None),
    ] {
        let (status, _) = server.call_as(user, "GET", "/private/_changes", None).await;
        assert_eq!(status == 200, expected.is_none(), "{user:?}");
        let mut ws = server.ws(user).await;
        ws.send(json!({"type": "subscribe", "db": "private"})).await;
        let answer = ws.expect().await;
        match expected {
            Some(error) => {
                assert_eq!(
                    (&answer["error"], &answer["db"]),
                    (&json!(error), &json!("private")),
                    "{user:?}"
                );
                // The refusal leaves the connection usable for what the user may read.
                let public = ws.subscribe(json!({"db": "public"})).await;
                assert_eq!(ids(&public), BTreeSet::from(["doc".into()]));
            }
            None => {
                assert_eq!(answer["type"], "subscribed", "{user:?}: {answer}");
                let frames = ws.until(|f| f["type"] == "caught_up").await;
                assert_eq!(frames.len(), 2, "{frames:?}");
            }
        }
    }
}

/// Reads server-sent events from a streamed body.
struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    /// The next event as (name, data), heartbeat comments skipped.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if name.is_empty() {
                    continue;
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(PATIENCE, self.body.next())
                .await
                .expect("an event within the patience limit")
                .expect("the stream is open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn the_event_stream_takes_subscriptions_in_the_query_and_by_post() {
    let server = live(Config::default()).await;
    for db in ["s1", "s2"] {
        server.create(db).await;
        server.put(db, "x", json!({})).await;
    }
    let subscribe = json!([{"db": "s1", "include_docs": true}]).to_string();
    let subscribe =
        percent_encoding::utf8_percent_encode(&subscribe, percent_encoding::NON_ALPHANUMERIC);
    let response = reqwest::Client::new()
        .get(format!(
            "{}/_outpost/v1/feed?subscribe={subscribe}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        body: Box::pin(response.bytes_stream()),
        buffer: String::new(),
    };
    let (name, hello) = events.next().await;
    assert_eq!(name, "stream");
    let stream = hello["stream"].as_str().unwrap().to_owned();
    assert_eq!(events.next().await.0, "subscribed");
    let (name, change) = events.next().await;
    assert_eq!(
        (
            name.as_str(),
            &change["db"],
            &change["change"]["doc"]["_id"]
        ),
        ("change", &json!("s1"), &json!("x"))
    );
    assert_eq!(events.next().await.0, "caught_up");

    let control = format!("/_outpost/v1/feed/{stream}");
    let (status, ack) = server
        .call(
            "POST",
            &control,
            Some(json!({"type": "subscribe", "db": "s2"})),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(events.next().await, ("subscribed".into(), ack));
    let (_, change) = events.next().await;
    assert_eq!(
        (&change["db"], &change["change"]["id"]),
        (&json!("s2"), &json!("x"))
    );
    assert_eq!(events.next().await.0, "caught_up");
    server.put("s1", "y", json!({})).await;
    let (_, change) = events.next().await;
    assert_eq!(
        (&change["db"], &change["change"]["id"]),
        (&json!("s1"), &json!("y"))
    );

    let (status, body) = server
        .call(
            "POST",
            &control,
            Some(json!({"type": "subscribe", "db": "missing"})),
        )
        .await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));
    let (status, _) = server
        .call(
            "POST",
            "/_outpost/v1/feed/no-such-stream",
            Some(json!({"type": "subscribe", "db": "s1"})),
        )
        .await;
    assert_eq!(status, 404);
    // A subscription in the query that cannot be made refuses the stream itself.
    let (status, body) = server
        .call(
            "GET",
            "/_outpost/v1/feed?subscribe=%5B%7B%22db%22%3A%22missing%22%7D%5D",
            None,
        )
        .await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));

    // When the stream's body goes, so does the stream.
    drop(events);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // A command the stream refuses as bad (400) while it exists.
        let (status, _) = server
            .call("POST", &control, Some(json!({"type": "dance"})))
            .await;
        assert!(status == 400 || status == 404, "{status}");
        if status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream outlived its body"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_member_of_an_access_database_follows_only_their_documents() {
    let dir = tempfile::tempdir().unwrap();
    let server = live(Config {
        auth: AuthSettings {
            admins: vec![("admin".into(), Credentials::hash("secret", 10))],
            admins_file: Some(dir.path().join("admins.json")),
            password_iterations: 10,
            ..AuthSettings::default()
        },
        ..Config::default()
    })
    .await;
    let admin = Some(("admin", "secret"));
    let must = |(status, body): (u16, Value), expected: u16| assert_eq!(status, expected, "{body}");
    must(server.call_as(admin, "PUT", "/_users", None).await, 201);
    for name in ["alice", "bob"] {
        let user = json!({"name": name, "password": "pw", "roles": [], "type": "user"});
        let path = format!("/_users/org.couchdb.user:{name}");
        must(server.call_as(admin, "PUT", &path, Some(user)).await, 201);
    }
    must(
        server.call_as(admin, "PUT", "/acc?access=true", None).await,
        201,
    );
    let security = json!({"members": {"names": ["alice", "bob"]}});
    must(
        server
            .call_as(admin, "PUT", "/acc/_security", Some(security))
            .await,
        200,
    );
    for (id, who) in [("a1", "alice"), ("b1", "bob")] {
        let doc = json!({"_access": [who]});
        must(
            server
                .call_as(admin, "PUT", &format!("/acc/{id}"), Some(doc))
                .await,
            201,
        );
    }

    let mut ws = server.ws(Some(("alice", "pw"))).await;
    let first = ws
        .subscribe(json!({"db": "acc", "include_docs": true}))
        .await;
    assert_eq!(ids(&first), BTreeSet::from(["a1".to_owned()]));

    // Live: bob's new document never reaches her; hers does, and so does losing one.
    for (id, who) in [("b2", "bob"), ("a2", "alice")] {
        let doc = json!({"_access": [who]});
        must(
            server
                .call_as(admin, "PUT", &format!("/acc/{id}"), Some(doc))
                .await,
            201,
        );
    }
    let live = ws
        .until(|f| f["type"] == "change" && f["change"]["id"] == "a2")
        .await;
    let seen: Vec<&Value> = live.iter().filter(|f| f["type"] == "change").collect();
    assert_eq!(seen.len(), 1, "{live:?}");
    assert!(!seen[0].to_string().contains("b2"));
}
