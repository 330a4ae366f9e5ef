//! Sequences as CouchDB 3 shows them: opaque strings `"N-<suffix>"` whose numeric prefix grows
//! and whose suffix names the database's incarnation; `since` in every form clients send.

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, feed_ids, seq_n, seq_param, seq_suffix};

/// CouchDB's reason for a `since` it cannot read.
const MALFORMED: &str = "Malformed sequence supplied in 'since' parameter.";

async fn with_docs(s: &TestServer, db: &str, ids: &[&str]) {
    let docs: Vec<Value> = ids.iter().map(|id| json!({"_id": id})).collect();
    s.expect(
        "POST",
        &format!("/{db}/_bulk_docs"),
        Some(json!({"docs": docs})),
        201,
    )
    .await;
}

fn rows(feed: &Value) -> &Vec<Value> {
    feed["results"].as_array().unwrap()
}

#[tokio::test]
async fn every_sequence_a_client_sees_is_an_opaque_string_of_its_database() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/other", None, 201).await;
    with_docs(&s, "db", &["a", "b", "c"]).await;

    let info = s.expect("GET", "/db", None, 200).await;
    assert_eq!(seq_n(&info["update_seq"]), 3, "{info}");
    let suffix = seq_suffix(&info["update_seq"]);
    assert_eq!(seq_n(&info["purge_seq"]), 0, "{info}");
    assert_eq!(seq_suffix(&info["purge_seq"]), suffix, "{info}");
    // Another database has another suffix.
    let other = s.expect("GET", "/other", None, 200).await;
    assert_ne!(seq_suffix(&other["update_seq"]), suffix);

    let dbs = s.expect("GET", "/_dbs_info", None, 200).await;
    let entry = dbs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "db")
        .unwrap();
    assert_eq!(entry["info"]["update_seq"], info["update_seq"], "{dbs}");

    let feed = s.expect("GET", "/db/_changes", None, 200).await;
    let seqs: Vec<u64> = rows(&feed).iter().map(|r| seq_n(&r["seq"])).collect();
    assert_eq!(seqs, [1, 2, 3], "{feed}");
    assert!(rows(&feed).iter().all(|r| seq_suffix(&r["seq"]) == suffix));
    assert_eq!(feed["last_seq"], info["update_seq"], "{feed}");

    let listing = s
        .expect("GET", "/db/_all_docs?update_seq=true", None, 200)
        .await;
    assert_eq!(listing["update_seq"], info["update_seq"], "{listing}");
    let keyed = s
        .expect(
            "POST",
            "/db/_all_docs?update_seq=true",
            Some(json!({"keys": ["a"]})),
            200,
        )
        .await;
    assert_eq!(keyed["update_seq"], info["update_seq"], "{keyed}");

    // Outpost's event log shows its sequences the same way.
    let events = s.expect("GET", "/db/_events", None, 200).await;
    assert!(
        rows(&events)
            .iter()
            .all(|r| seq_suffix(&r["seq"]) == suffix)
    );
    assert_eq!(events["last_seq"], info["update_seq"], "{events}");

    // `_db_updates` counts the server's events, in the server's space: one suffix for all.
    let updates = s.expect("GET", "/_db_updates", None, 200).await;
    let server_suffix = seq_suffix(&updates["last_seq"]);
    assert_ne!(server_suffix, suffix);
    assert!(
        rows(&updates)
            .iter()
            .all(|r| seq_suffix(&r["seq"]) == server_suffix)
    );

    // `_local_seq` stays the plain per-document number, as in CouchDB.
    let doc = s.expect("GET", "/db/c?local_seq=true", None, 200).await;
    assert_eq!(doc["_local_seq"], 3, "{doc}");
}

#[tokio::test]
async fn since_takes_every_form_clients_send() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    with_docs(&s, "db", &["a", "b", "c", "d"]).await;
    let feed = s.expect("GET", "/db/_changes", None, 200).await;
    let second = rows(&feed)[1]["seq"].as_str().unwrap().to_owned();
    let after_second = ["c", "d"];
    for since in [
        // Ours, as shown and in the double quotes an event source's id carries (encoded).
        second.clone(),
        format!("%22{second}%22"),
        // A plain number, as earlier versions showed (and pouchdb-server shows), bare or quoted.
        "2".into(),
        "%222%22".into(),
    ] {
        let feed = s
            .expect("GET", &format!("/db/_changes?since={since}"), None, 200)
            .await;
        assert_eq!(feed_ids(&feed), after_second, "since={since}");
        let events = s
            .expect("GET", &format!("/db/_events?since={since}"), None, 200)
            .await;
        assert_eq!(rows(&events).len(), 2, "since={since}: {events}");
    }
    let now = s.expect("GET", "/db/_changes?since=now", None, 200).await;
    assert_eq!(rows(&now).len(), 0);
    assert_eq!(seq_n(&now["last_seq"]), 4);

    // An event source that reconnects sends back the id it was given, quotes and all.
    let (status, _, body) = s
        .raw(
            "GET",
            "/db/_changes?feed=eventsource&timeout=10",
            &[("last-event-id", &format!("\"{second}\""))],
            None,
        )
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["id"].to_string())
        .collect();
    let after_second = after_second.map(|id| format!("\"{id}\""));
    assert_eq!(ids, after_second, "{text}");
    assert!(
        text.contains(&format!("id: {}\n", rows(&feed)[3]["seq"])),
        "{text}"
    );
}

#[tokio::test]
async fn a_malformed_since_is_refused_as_couchdb_refuses_it() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for since in [
        "", "abc", "-1", "1.5", "3-", "3-a%2Fb", "3-a%20b", "%22%22", "now-x",
    ] {
        for path in ["/db/_changes", "/db/_events", "/_db_updates"] {
            let body = s
                .expect("GET", &format!("{path}?since={since}"), None, 400)
                .await;
            assert_error(&body, "bad_request");
            assert_eq!(body["reason"], MALFORMED, "{path}?since={since}");
        }
    }
    // A missing database is still a 404 first.
    s.expect("GET", "/nope/_changes?since=abc", None, 404).await;
}

#[tokio::test]
async fn a_since_from_a_deleted_database_starts_the_new_one_from_the_beginning() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    with_docs(&s, "db", &["old1", "old2", "old3", "old4", "old5"]).await;
    let old = s.expect("GET", "/db/_changes", None, 200).await["last_seq"].clone();
    assert_eq!(seq_n(&old), 5);

    s.expect("DELETE", "/db", None, 200).await;
    s.expect("PUT", "/db", None, 201).await;
    with_docs(&s, "db", &["new1", "new2"]).await;
    let info = s.expect("GET", "/db", None, 200).await;
    assert_ne!(seq_suffix(&info["update_seq"]), seq_suffix(&old));

    // By its number alone the old position would skip both new documents.
    let plain = s.expect("GET", "/db/_changes?since=5", None, 200).await;
    assert!(rows(&plain).is_empty(), "{plain}");
    let feed = s
        .expect(
            "GET",
            &format!("/db/_changes?since={}", seq_param(&old)),
            None,
            200,
        )
        .await;
    assert_eq!(feed_ids(&feed), ["new1", "new2"], "{feed}");
    assert_eq!(feed["last_seq"], info["update_seq"]);
    // A longpoll from there answers at once with them too.
    let poll = s
        .expect(
            "GET",
            &format!("/db/_changes?feed=longpoll&since={}", seq_param(&old)),
            None,
            200,
        )
        .await;
    assert_eq!(feed_ids(&poll), ["new1", "new2"], "{poll}");
    // CouchDB's own sequences name shards Outpost does not have: from the beginning too.
    let couch = "5-g1AAAAE7eJzLYWBg4MhgTmHgS0ktM3QwNDLXMwBCwxygOFMiQ5L8____sxIZcKlIUgCSSfZgRUw4";
    let feed = s
        .expect("GET", &format!("/db/_changes?since={couch}"), None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["new1", "new2"], "{feed}");
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Outpost's replicator pulling from Outpost over HTTP: the checkpoints and the scheduler hold
/// the source's opaque sequences, a second run resumes from them, and a `since_seq` of the
/// source's previous incarnation starts from the beginning.
#[tokio::test]
async fn replication_over_http_checkpoints_opaque_sequences() {
    let server = crate::support::LiveServer::start().await;
    let base = &server.base;
    for db in ["src", "dst"] {
        assert_eq!(
            call(reqwest::Method::PUT, &format!("{base}/{db}"), None)
                .await
                .0,
            201
        );
    }
    async fn bulk(base: &str, ids: &[&str]) {
        let docs: Vec<Value> = ids.iter().map(|id| json!({"_id": id})).collect();
        let url = format!("{base}/src/_bulk_docs");
        let (status, _) = call(reqwest::Method::POST, &url, Some(json!({"docs": docs}))).await;
        assert_eq!(status, 201);
    }
    async fn replicate(base: &str, extra: Value) -> Value {
        let mut body = json!({"source": format!("{base}/src"), "target": "dst"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let url = format!("{base}/_replicate");
        let (status, result) = call(reqwest::Method::POST, &url, Some(body)).await;
        assert_eq!(status, 200, "{result}");
        result
    }
    bulk(base, &["a", "b", "c"]).await;
    let first = replicate(base, json!({})).await;
    let (_, src) = call(reqwest::Method::GET, &format!("{base}/src"), None).await;
    assert_eq!(first["source_last_seq"], src["update_seq"], "{first}");
    assert_eq!(first["history"][0]["docs_written"], 3, "{first}");

    // The checkpoint on the target names the source's sequence as the source showed it.
    let rep_id = first["session_id"].clone();
    let (_, local) = call(
        reqwest::Method::GET,
        &format!("{base}/dst/_local_docs?include_docs=true"),
        None,
    )
    .await;
    let checkpoint = &local["rows"][0]["doc"];
    assert_eq!(checkpoint["source_last_seq"], src["update_seq"], "{local}");
    assert_eq!(checkpoint["session_id"], rep_id, "{local}");

    bulk(base, &["d"]).await;
    let second = replicate(base, json!({})).await;
    assert_eq!(second["history"][0]["docs_read"], 1, "{second}");
    assert_eq!(seq_n(&second["source_last_seq"]), 4, "{second}");

    // The source deleted and created again: the old position names another incarnation.
    let old = second["source_last_seq"].clone();
    call(reqwest::Method::DELETE, &format!("{base}/src"), None).await;
    call(reqwest::Method::PUT, &format!("{base}/src"), None).await;
    bulk(base, &["e", "f"]).await;
    let again = replicate(base, json!({"since_seq": old})).await;
    assert_eq!(again["history"][0]["docs_read"], 2, "{again}");
    assert_eq!(seq_n(&again["source_last_seq"]), 2, "{again}");
    assert_ne!(seq_suffix(&again["source_last_seq"]), seq_suffix(&old));
}
