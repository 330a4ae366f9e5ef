//! `_changes` in all four feed formats; the live ones against a real server on a socket.

use std::sync::Arc;
use std::time::Duration;

use outpost_server::{AppState, Config};
use outpost_store::Store;
use outpost_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{TestServer, assert_error, feed_ids, seq_n};

async fn filled() -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let docs: Vec<Value> = (0..10)
        .map(|i| json!({"_id": format!("d{i}"), "n": i, "tags": [i % 3]}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;
    s
}

#[tokio::test]
async fn normal_feed_pages_with_limit_and_last_seq() {
    let s = filled().await;
    let page = s.expect("GET", "/db/_changes?limit=4", None, 200).await;
    assert_eq!(feed_ids(&page), ["d0", "d1", "d2", "d3"]);
    // Truncated by limit: last_seq is the last row's seq, so `since=last_seq` continues exactly.
    assert_eq!(seq_n(&page["last_seq"]), 4);
    assert_eq!(page["pending"], 6);
    let since = page["last_seq"].as_str().unwrap();
    let rest = s
        .expect("GET", &format!("/db/_changes?since={since}"), None, 200)
        .await;
    assert_eq!(rest["results"].as_array().unwrap().len(), 6);
    assert_eq!(seq_n(&rest["last_seq"]), 10);
    let now = s.expect("GET", "/db/_changes?since=now", None, 200).await;
    assert_eq!(
        (
            now["results"].as_array().unwrap().len(),
            seq_n(&now["last_seq"])
        ),
        (0, 10)
    );
    let desc = s
        .expect("GET", "/db/_changes?descending=true&limit=2", None, 200)
        .await;
    assert_eq!(feed_ids(&desc), ["d9", "d8"]);

    // An update moves a document to the end of the feed; it appears once.
    let rev = s.expect("GET", "/db/d0", None, 200).await["_rev"].clone();
    s.expect("PUT", "/db/d0", Some(json!({"_rev": rev, "n": 100})), 201)
        .await;
    let all = s
        .expect("GET", "/db/_changes?include_docs=true", None, 200)
        .await;
    assert_eq!(feed_ids(&all).len(), 10);
    assert_eq!(all["results"][9]["doc"]["n"], 100);
    assert_eq!(seq_n(&all["results"][9]["seq"]), 11);
}

#[tokio::test]
async fn filters_doc_ids_selector_and_design() {
    let s = filled().await;
    s.expect("PUT", "/db/_design/app", Some(json!({"views": {}})), 201)
        .await;
    let by_ids = s
        .expect(
            "POST",
            "/db/_changes?filter=_doc_ids",
            Some(json!({"doc_ids": ["d3", "d7", "zz"]})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&by_ids), ["d3", "d7"]);
    let by_query = s
        .expect(
            "GET",
            "/db/_changes?filter=_doc_ids&doc_ids=%5B%22d1%22%5D",
            None,
            200,
        )
        .await;
    assert_eq!(feed_ids(&by_query), ["d1"]);
    let selected = s
        .expect(
            "POST",
            "/db/_changes?filter=_selector&limit=2",
            Some(json!({"selector": {"n": {"$gte": 4}, "tags": {"$elemMatch": {"$eq": 0}}}})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&selected), ["d6", "d9"]);
    assert_eq!(seq_n(&selected["last_seq"]), 10);
    let design = s
        .expect("GET", "/db/_changes?filter=_design", None, 200)
        .await;
    assert_eq!(feed_ids(&design), ["_design/app"]);
    // A filter function is looked up before anything else, as CouchDB does.
    assert_error(
        &s.expect("GET", "/db/_changes?filter=app%2Fmine", None, 404)
            .await,
        "not_found",
    );
    s.expect(
        "PUT",
        "/db/_design/fns",
        Some(json!({"filters": {"mine": "function (doc) { return true; }"}})),
        201,
    )
    .await;
    let all = s
        .expect("GET", "/db/_changes?filter=fns%2Fmine", None, 200)
        .await;
    assert!(!feed_ids(&all).is_empty(), "{all}");
    assert_error(
        &s.expect(
            "POST",
            "/db/_changes?filter=_selector",
            Some(json!({"selector": {"n": {"$bogus": 1}}})),
            400,
        )
        .await,
        "bad_request",
    );
}

#[tokio::test]
async fn all_docs_style_lists_every_leaf() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let docs = json!({"new_edits": false, "docs": [
        {"_id": "c", "_rev": "1-aaa"}, {"_id": "c", "_rev": "1-bbb"},
    ]});
    s.expect("POST", "/db/_bulk_docs", Some(docs), 201).await;
    let main = s.expect("GET", "/db/_changes", None, 200).await;
    assert_eq!(main["results"][0]["changes"], json!([{"rev": "1-bbb"}]));
    let all = s
        .expect("GET", "/db/_changes?style=all_docs", None, 200)
        .await;
    assert_eq!(
        all["results"][0]["changes"],
        json!([{"rev": "1-bbb"}, {"rev": "1-aaa"}])
    );
}

/// A real server on a free port, stopped when dropped.
struct Live {
    base: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn live() -> Live {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let state = AppState::new(store, Config::default(), shutdown.clone());
    let base = format!("http://{}", crate::support::serve_on_loopback(state).await);
    let client = reqwest::Client::new();
    client.put(format!("{base}/db")).send().await.unwrap();
    Live {
        base,
        shutdown,
        _dir: dir,
    }
}

async fn put(base: &str, id: &str) {
    let response = reqwest::Client::new()
        .put(format!("{base}/db/{id}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn longpoll_waits_for_the_next_change() {
    install_crypto();
    let server = live().await;
    let base = server.base.clone();
    let poll = tokio::spawn(async move {
        reqwest::get(format!(
            "{base}/db/_changes?feed=longpoll&since=now&heartbeat=50"
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "longpoll answered before any change");
    put(&server.base, "late").await;
    let text = poll.await.unwrap();
    // Heartbeat newlines may precede the JSON; clients parse the whole body.
    let feed: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(feed["results"][0]["id"], "late");
    assert_eq!(seq_n(&feed["last_seq"]), 1);

    let empty: Value = reqwest::get(format!(
        "{}/db/_changes?feed=longpoll&since=1&timeout=100",
        server.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(empty["results"], json!([]));
    assert_eq!(empty["pending"], 0);
    assert_eq!(empty["last_seq"], feed["last_seq"], "{empty}");
}

#[tokio::test]
async fn continuous_and_eventsource_stream_rows_as_they_happen() {
    install_crypto();
    let server = live().await;
    put(&server.base, "first").await;
    let base = server.base.clone();
    let continuous = tokio::spawn(async move {
        reqwest::get(format!("{base}/db/_changes?feed=continuous&timeout=1500"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let base = server.base.clone();
    let sse = tokio::spawn(async move {
        let response = reqwest::get(format!("{base}/db/_changes?feed=eventsource&timeout=1500"))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        response.text().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&server.base, "second").await;

    let text = continuous.await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["id"], "first");
    assert_eq!(lines[1]["id"], "second");
    assert_eq!(seq_n(&lines[2]["last_seq"]), 2);
    assert_eq!(lines[2]["pending"], 0);
    assert_eq!(lines[2]["last_seq"], lines[1]["seq"]);

    // Each event's id is its sequence as JSON, quotes and all, as CouchDB writes it.
    let text = sse.await.unwrap();
    let first = lines[0]["seq"].as_str().unwrap();
    let second = lines[1]["seq"].as_str().unwrap();
    assert!(
        text.contains(&format!("data: {{\"seq\":\"{first}\",\"id\":\"first\"")),
        "{text}"
    );
    assert!(text.contains(&format!("id: \"{second}\"\n")), "{text}");
}

#[tokio::test]
async fn a_live_feed_ends_when_the_server_shuts_down() {
    install_crypto();
    let server = live().await;
    let base = server.base.clone();
    let feed = tokio::spawn(async move {
        reqwest::get(format!("{base}/db/_changes?feed=continuous&heartbeat=100"))
            .await
            .unwrap()
            .text()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), feed).await;
    assert!(ended.is_ok(), "the feed kept running after shutdown");
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn the_event_log_has_the_same_feed_formats() {
    install_crypto();
    let server = live().await;
    put(&server.base, "a").await;
    let base = server.base.clone();
    let poll = tokio::spawn(async move {
        reqwest::get(format!(
            "{base}/db/_events?feed=longpoll&since=1&heartbeat=50"
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "longpoll on _events answered before any event"
    );
    put(&server.base, "b").await;
    let feed: Value = serde_json::from_str(poll.await.unwrap().trim()).unwrap();
    assert_eq!(feed["results"][0]["id"], "b");
    assert_eq!(feed["results"][0]["type"], "created");
    assert_eq!(seq_n(&feed["last_seq"]), 2);

    let text = reqwest::get(format!(
        "{}/db/_events?feed=continuous&timeout=200",
        server.base
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(seq_n(&lines[2]["last_seq"]), 2);
}

#[tokio::test]
async fn revisions_of_one_document_in_one_request_take_one_sequence() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let docs = json!([
        {"_id": "x", "_rev": "1-a", "v": 1},
        {"_id": "x", "_rev": "1-b", "v": 2},
        {"_id": "y", "_rev": "1-a"},
        {"_id": "x", "_revisions": {"start": 2, "ids": ["c", "a"]}, "v": 3},
    ]);
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(json!({"docs": docs, "new_edits": false})),
        201,
    )
    .await;
    let info = s.expect("GET", "/db", None, 200).await;
    assert_eq!(seq_n(&info["update_seq"]), 2, "{info}");
    let feed = s.expect("GET", "/db/_changes", None, 200).await;
    assert_eq!(feed_ids(&feed), ["x", "y"]);
    assert_eq!(seq_n(&feed["results"][0]["seq"]), 1);
    assert_eq!(seq_n(&feed["last_seq"]), 2);
    // Every revision keeps its event; paging never splits a sequence.
    let events = s.expect("GET", "/db/_events?limit=2", None, 200).await;
    let revs: Vec<&str> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rev"].as_str().unwrap())
        .collect();
    assert_eq!(revs, ["1-a", "1-b", "2-c"], "{events}");
    assert_eq!(seq_n(&events["last_seq"]), 1);
    let rest = s.expect("GET", "/db/_events?since=1", None, 200).await;
    assert_eq!(rest["results"][0]["id"], "y", "{rest}");
    assert_eq!(rest["results"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_database_deleted_and_created_again_in_one_commit_ends_its_live_feeds() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let state = AppState::new(store.clone(), Config::default(), shutdown.clone());
    let _stop = shutdown.clone().drop_guard();
    let base = format!("http://{}", crate::support::serve_on_loopback(state).await);
    store.create_db("db").await.unwrap();

    let mut feed = reqwest::get(format!("{base}/db/_changes?feed=continuous&heartbeat=50"))
        .await
        .unwrap();
    // The first heartbeat proves the feed is subscribed and waiting.
    let first = feed.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"\n");

    // The writer is kept busy with a ping while the write lock is held elsewhere; both jobs are
    // queued behind it, so the writer takes them together and commits them in one transaction.
    let lock =
        rusqlite::Connection::open(dir.path().join(outpost_store::sqlite::FILE_NAME)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut ping = Box::pin(store.check_writable());
    let mut delete = Box::pin(store.delete_db("db"));
    let mut create = Box::pin(store.create_db("db"));
    std::future::poll_fn(|cx| {
        let _ = ping.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    // Time for the writer to take the ping and wait for the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for job in [&mut delete, &mut create] {
        std::future::poll_fn(|cx| {
            let _ = job.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
    lock.execute_batch("COMMIT").unwrap();
    ping.await.unwrap();
    delete.await.unwrap();
    create.await.unwrap();

    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(chunk) = feed.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    })
    .await
    .expect("the old database's feed stayed open");
    assert!(rest.contains("last_seq"), "{rest}");
}

/// `/_db_updates`: every database once at its latest event, in the normal, longpoll and
/// continuous formats.
#[tokio::test]
async fn db_updates_follow_databases_as_they_change() {
    install_crypto();
    let server = live().await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    for db in ["a", "b"] {
        client.put(format!("{base}/{db}")).send().await.unwrap();
    }
    client
        .put(format!("{base}/a/x"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    client.delete(format!("{base}/b")).send().await.unwrap();
    let feed: Value = reqwest::get(format!("{base}/_db_updates"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows: Vec<(String, String)> = feed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["db_name"].as_str().unwrap().to_owned(),
                r["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // `db` was created by `live()` and has not changed since.
    assert_eq!(
        rows,
        [
            ("db".to_owned(), "created".to_owned()),
            ("a".to_owned(), "updated".to_owned()),
            ("b".to_owned(), "deleted".to_owned()),
        ],
        "{feed}"
    );
    assert_eq!(feed["results"][2]["seq"], feed["last_seq"]);
    let last_n = seq_n(&feed["last_seq"]);
    let last = feed["last_seq"].as_str().unwrap().to_owned();

    // A longpoll from the last sequence answers with the next event, whenever it comes.
    let poll = {
        let (base, last) = (base.clone(), last.clone());
        tokio::spawn(async move {
            reqwest::get(format!("{base}/_db_updates?feed=longpoll&since={last}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    client.put(format!("{base}/c")).send().await.unwrap();
    let answer: Value = serde_json::from_str(poll.await.unwrap().trim()).unwrap();
    assert_eq!(answer["results"][0]["db_name"], "c", "{answer}");
    assert_eq!(answer["results"][0]["type"], "created", "{answer}");

    let text = reqwest::get(format!(
        "{base}/_db_updates?feed=continuous&since={last}&timeout=100"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["db_name"], "c", "{text}");
    assert_eq!(seq_n(&lines[1]["last_seq"]), last_n + 1, "{text}");
}
