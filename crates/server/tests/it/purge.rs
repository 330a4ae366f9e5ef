//! `_purge`, `_purged_infos_limit` and `/_node/{node}/_stats` through the router.

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, feed_ids, row_ids, seq_n, seq_param};

/// A count read from the store file on a connection of the test's own.
fn count(s: &TestServer, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        s.dir.path().join("outpost.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Attachment rows left in the store.
fn stored_attachments(s: &TestServer) -> i64 {
    count(s, "SELECT count(*) FROM attachments")
}

/// A database with a view and a Mango index over `n`, two documents, one of them with an
/// attachment, and both indexes built.
async fn setup(s: &TestServer) -> (String, String) {
    s.expect("PUT", "/p", None, 201).await;
    let ddoc = json!({"views": {"by_n": {"map": "function (doc) { emit(doc.n, null); }"}}});
    s.expect("PUT", "/p/_design/v", Some(ddoc), 201).await;
    s.expect(
        "POST",
        "/p/_index",
        Some(json!({"index": {"fields": ["n"]}, "ddoc": "m", "name": "n"})),
        200,
    )
    .await;
    let a = s
        .expect(
            "PUT",
            "/p/a",
            Some(json!({"n": 1, "_attachments": {"f.txt": {
                "content_type": "text/plain", "data": "cHVyZ2UgbWU="
            }}})),
            201,
        )
        .await;
    let b = s.expect("PUT", "/p/b", Some(json!({"n": 2})), 201).await;
    let view = s.expect("GET", "/p/_design/v/_view/by_n", None, 200).await;
    assert_eq!(row_ids(&view), ["a", "b"]);
    let found = s
        .expect(
            "POST",
            "/p/_find",
            Some(json!({"selector": {"n": {"$gt": 0}}, "use_index": "m"})),
            200,
        )
        .await;
    assert_eq!(found["docs"].as_array().unwrap().len(), 2);
    (
        a["rev"].as_str().unwrap().to_owned(),
        b["rev"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn purging_every_leaf_removes_a_document_from_every_listing_and_index() {
    let s = TestServer::new();
    let (a, _) = setup(&s).await;
    assert_eq!(stored_attachments(&s), 1);
    let before = s.expect("GET", "/p", None, 200).await;
    assert_eq!(seq_n(&before["purge_seq"]), 0);

    let answer = s
        .expect(
            "POST",
            "/p/_purge",
            Some(json!({"a": [a, "1-967a00dff5e02add41819138abb3284d"], "none": [a]})),
            201,
        )
        .await;
    assert_eq!(
        answer,
        json!({"purge_seq": null, "purged": {"a": [a], "none": []}})
    );

    let gone = s.expect("GET", "/p/a", None, 404).await;
    assert_error(&gone, "not_found");
    s.expect("GET", &format!("/p/a?rev={a}"), None, 404).await;
    s.expect("GET", "/p/a/f.txt", None, 404).await;
    assert_eq!(
        row_ids(&s.expect("GET", "/p/_all_docs", None, 200).await),
        ["_design/m", "_design/v", "b"]
    );
    let changes = s.expect("GET", "/p/_changes", None, 200).await;
    assert!(!feed_ids(&changes).contains(&"a".to_owned()));
    let view = s.expect("GET", "/p/_design/v/_view/by_n", None, 200).await;
    assert_eq!(row_ids(&view), ["b"]);
    assert_eq!(
        count(&s, "SELECT count(*) FROM indexes WHERE name LIKE '_view/%'"),
        1
    );
    let found = s
        .expect(
            "POST",
            "/p/_find",
            Some(json!({"selector": {"n": {"$gt": 0}}, "use_index": "m"})),
            200,
        )
        .await;
    assert_eq!(found["docs"].as_array().unwrap().len(), 1);
    assert_eq!(found["docs"][0]["_id"], "b");
    let info = s.expect("GET", "/p", None, 200).await;
    assert_eq!(seq_n(&info["purge_seq"]), 2);
    assert_eq!(info["doc_count"], before["doc_count"].as_u64().unwrap() - 1);
    assert!(seq_n(&info["update_seq"]) > seq_n(&before["update_seq"]));
    // The attachment's bytes were only the purged revision's: collected in the background.
    for _ in 0..500 {
        if stored_attachments(&s) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stored_attachments(&s), 0);
    // A purged design document's view indexes go with it, as with a deletion.
    let ddoc = s.expect("GET", "/p/_design/v", None, 200).await;
    let ddoc_rev = ddoc["_rev"].as_str().unwrap();
    s.expect(
        "POST",
        "/p/_purge",
        Some(json!({"_design/v": [ddoc_rev]})),
        201,
    )
    .await;
    s.expect("GET", "/p/_design/v/_view/by_n", None, 404).await;
    assert_eq!(
        count(&s, "SELECT count(*) FROM indexes WHERE name LIKE '_view/%'"),
        0
    );
    // The event log keeps only that the document was purged.
    let events = s.expect("GET", "/p/_events?doc_id=a", None, 200).await;
    let kinds: Vec<&str> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["purged"]);
    assert_eq!(events["results"][0]["rev"], a.as_str());
    assert_eq!(events["results"][0]["removed"], json!([a]));
}

#[tokio::test]
async fn purging_a_conflicts_winner_leaves_the_other_branch_winning() {
    let s = TestServer::new();
    s.expect("PUT", "/c", None, 201).await;
    let docs = json!({"new_edits": false, "docs": [
        {"_id": "d", "_rev": "2-bbbb", "v": "b", "_revisions": {"start": 2, "ids": ["bbbb", "aaaa"]}},
        {"_id": "d", "_rev": "2-cccc", "v": "c", "_revisions": {"start": 2, "ids": ["cccc", "aaaa"]}},
    ]});
    s.expect("POST", "/c/_bulk_docs", Some(docs), 201).await;
    let doc = s.expect("GET", "/c/d?conflicts=true", None, 200).await;
    assert_eq!(doc["_rev"], "2-cccc");
    assert_eq!(doc["_conflicts"], json!(["2-bbbb"]));
    let seq_before = s.expect("GET", "/c", None, 200).await["update_seq"].clone();

    let answer = s
        .expect("POST", "/c/_purge", Some(json!({"d": ["2-cccc"]})), 201)
        .await;
    assert_eq!(answer["purged"], json!({"d": ["2-cccc"]}));
    let doc = s.expect("GET", "/c/d?conflicts=true", None, 200).await;
    assert_eq!(doc["_rev"], "2-bbbb");
    assert_eq!(doc["v"], "b");
    assert!(doc.get("_conflicts").is_none(), "{doc}");
    s.expect("GET", "/c/d?rev=2-cccc", None, 404).await;
    let conflicts = s.expect("GET", "/c/_conflicts", None, 200).await;
    assert!(row_ids(&conflicts).is_empty(), "{conflicts}");
    // The document's new state is a change after the purge.
    let since = format!("/c/_changes?since={}", seq_param(&seq_before));
    let changes = s.expect("GET", &since, None, 200).await;
    assert_eq!(feed_ids(&changes), ["d"]);
    assert_eq!(changes["results"][0]["changes"], json!([{"rev": "2-bbbb"}]));
    // The log keeps the history of the branch left and records the purge.
    let events = s.expect("GET", "/c/_events?doc_id=d", None, 200).await;
    let last = events["results"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "purged");
    assert_eq!(last["rev"], "2-cccc");
    assert_eq!(last["removed"], json!(["2-cccc"]));
    assert_eq!(events["results"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn purge_requests_are_checked_before_anything_is_written() {
    let s = TestServer::new();
    s.expect("PUT", "/v", None, 201).await;
    let rev = s.expect("PUT", "/v/d", Some(json!({})), 201).await["rev"].clone();
    let cases: Vec<(Value, &str)> = vec![
        (json!(["d"]), "Request body must be a JSON object"),
        (json!({"d": rev}), "must be an array"),
        (json!({"d": ["nonsense"]}), "Invalid rev format"),
        (json!({"d": [1]}), "Invalid rev format"),
        (
            Value::Object((0..101).map(|i| (format!("d{i}"), json!([]))).collect()),
            "Exceeded maximum number of documents.",
        ),
        (
            json!({"d": (0..1001).map(|i| format!("1-{i:032x}")).collect::<Vec<_>>()}),
            "Exceeded maximum number of revisions.",
        ),
    ];
    for (body, reason) in cases {
        let answer = s.expect("POST", "/v/_purge", Some(body), 400).await;
        assert_error(&answer, "bad_request");
        assert!(
            answer["reason"].as_str().unwrap().contains(reason),
            "{answer}"
        );
    }
    // At the limits exactly, the request goes through.
    let at_limit: Value = Value::Object(
        (0..100)
            .map(|i| (format!("d{i}"), json!([format!("1-{i:032x}")])))
            .collect(),
    );
    s.expect("POST", "/v/_purge", Some(at_limit), 201).await;
    let (status, _, _) = s
        .raw(
            "POST",
            "/v/_purge",
            &[("content-type", "text/plain")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    s.expect("GET", "/v/_purge", None, 405).await;
    s.expect("POST", "/missing/_purge", Some(json!({})), 404)
        .await;
    // Nothing was purged by the refused requests.
    s.expect("GET", "/v/d", None, 200).await;
    assert_eq!(
        seq_n(&s.expect("GET", "/v", None, 200).await["purge_seq"]),
        100
    );
}

#[tokio::test]
async fn the_purged_infos_limit_is_read_and_set_as_couchdb_does() {
    let s = TestServer::new();
    s.expect("PUT", "/l", None, 201).await;
    assert_eq!(
        s.expect("GET", "/l/_purged_infos_limit", None, 200).await,
        json!(1000)
    );
    assert_eq!(
        s.expect("PUT", "/l/_purged_infos_limit", Some(json!(5)), 200)
            .await,
        json!({"ok": true})
    );
    assert_eq!(
        s.expect("GET", "/l/_purged_infos_limit", None, 200).await,
        json!(5)
    );
    for bad in [json!(0), json!(-1), json!(1.5), json!("7"), json!(null)] {
        let answer = s
            .expect("PUT", "/l/_purged_infos_limit", Some(bad), 400)
            .await;
        assert_eq!(
            answer["reason"],
            "`purged_infos_limit` must be positive integer"
        );
    }
    s.expect("POST", "/l/_purged_infos_limit", Some(json!(5)), 405)
        .await;
    s.expect("GET", "/missing/_purged_infos_limit", None, 404)
        .await;
}

#[tokio::test]
async fn node_stats_are_couchdbs_shape_drawn_from_the_metrics() {
    let s = TestServer::new();
    s.expect("PUT", "/st", None, 201).await;
    let rev = s.expect("PUT", "/st/d", Some(json!({})), 201).await["rev"].clone();
    s.expect("GET", "/st/d", None, 200).await;
    s.expect("GET", "/st/missing", None, 404).await;
    s.expect("POST", "/st/_purge", Some(json!({"d": [rev]})), 201)
        .await;

    let all = s.expect("GET", "/_node/_local/_stats", None, 200).await;
    let requests = &all["couchdb"]["httpd"]["requests"];
    assert_eq!(requests["type"], "counter");
    assert_eq!(requests["desc"], "number of HTTP requests");
    // Other tests of this binary run alongside: at least this test's requests.
    assert!(requests["value"].as_u64().unwrap() >= 5, "{requests}");
    let couchdb = &all["couchdb"];
    let counter = |stat: &Value| stat["value"].as_u64().unwrap();
    assert!(counter(&couchdb["httpd_request_methods"]["PUT"]) >= 2);
    assert!(couchdb["httpd_request_methods"]["COPY"]["value"].is_u64());
    assert!(counter(&couchdb["httpd_status_codes"]["404"]) >= 1);
    assert!(
        couchdb["httpd_status_codes"]["201"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("number of HTTP 201")
    );
    assert!(counter(&couchdb["database_reads"]) >= 1);
    assert!(counter(&couchdb["database_writes"]) >= 1);
    assert!(counter(&couchdb["httpd"]["purge_requests"]) >= 1);
    assert!(counter(&couchdb["document_purges"]["success"]) >= 1);
    assert!(couchdb["open_databases"]["value"].as_u64().unwrap() >= 1);
    let time = &couchdb["request_time"];
    assert_eq!(time["type"], "histogram");
    assert!(time["value"]["n"].as_u64().unwrap() >= 5);
    assert_eq!(time["value"]["percentile"][0][0], 50);
    assert!(time["value"]["arithmetic_mean"].as_f64().unwrap() >= 0.0);
    // Outpost's own, by label.
    let written = &all["outpost"]["documents_written_total"]["created"];
    assert_eq!(written["type"], "counter");
    assert!(written["value"].as_u64().unwrap() >= 1);

    // A path selects a part, `null` past what there is; both node names work.
    let one = s
        .expect(
            "GET",
            "/_node/nonode@nohost/_stats/couchdb/httpd/requests",
            None,
            200,
        )
        .await;
    assert_eq!(one["type"], "counter");
    assert!(one["value"].as_u64().unwrap() >= requests["value"].as_u64().unwrap());
    assert_eq!(
        s.expect("GET", "/_node/_local/_stats/couchdb/nothing", None, 200)
            .await,
        Value::Null
    );
    s.expect("POST", "/_node/_local/_stats", Some(json!({})), 405)
        .await;
    s.expect("GET", "/_node/elsewhere@host/_stats", None, 404)
        .await;
}
