//! Behaviour that PouchDB's own test suite and CouchDB clients rely on, one test per defect.

use serde_json::json;

use crate::support::{TestServer, assert_error};

#[tokio::test]
async fn descending_changes_ignore_since_and_start_from_the_newest() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for id in ["a", "b", "c"] {
        s.expect("PUT", &format!("/db/{id}"), Some(json!({})), 201)
            .await;
    }
    for query in [
        "descending=true",
        "descending=true&since=0",
        "descending=true&since=1",
    ] {
        let feed = s
            .expect("GET", &format!("/db/_changes?{query}"), None, 200)
            .await;
        let ids: Vec<&str> = feed["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "b", "a"], "{query}");
    }
}

#[tokio::test]
async fn a_filter_function_that_does_not_exist_is_not_found() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let missing = s
        .expect("GET", "/db/_changes?filter=nodoc/odd", None, 404)
        .await;
    assert_error(&missing, "not_found");
    s.expect(
        "PUT",
        "/db/_design/app",
        Some(json!({"filters": {"odd": "function (doc) { return true; }"}})),
        201,
    )
    .await;
    let no_function = s
        .expect("GET", "/db/_changes?filter=app/even", None, 404)
        .await;
    assert_eq!(no_function["reason"], "missing json key: even");
    assert_error(
        &s.expect("GET", "/db/_changes?filter=_view", None, 400)
            .await,
        "bad_request",
    );
    s.expect("GET", "/db/_changes?filter=_view&view=app/v", None, 404)
        .await;
}

#[tokio::test]
async fn replicated_revisions_take_their_path_from_revisions_over_rev() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let doc = json!({"_id": "d", "_rev": "2-a", "_revisions": {"start": 1, "ids": ["a"]}, "v": 1});
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(json!({"docs": [doc], "new_edits": false})),
        201,
    )
    .await;
    assert_eq!(s.expect("GET", "/db/d", None, 200).await["_rev"], "1-a");
}

#[tokio::test]
async fn a_bare_generation_is_a_revision_a_peer_may_send() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "foo", "_rev": "1-", "integer": 1}], "new_edits": false})),
            201,
        )
        .await;
    assert_eq!(out, json!([]));
    assert_eq!(s.expect("GET", "/db/foo", None, 200).await["_rev"], "1-");
}

#[tokio::test]
async fn bulk_docs_with_an_unparseable_document_fails_as_a_whole() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for (docs, new_edits) in [
        (
            json!([{"_id": "ok"}, {"_id": "_invalid", "foo": "bar"}]),
            true,
        ),
        (json!([{"_id": "_invalid"}, {"_id": 123}]), true),
        (json!([{"_id": "ok"}, {"_id": "x", "_zing": 1}]), true),
        (json!([{"_id": "foo", "integer": 1}]), false),
    ] {
        let body = json!({"docs": docs, "new_edits": new_edits});
        let (status, answer) = s.call("POST", "/db/_bulk_docs", Some(body)).await;
        assert_eq!(status.as_u16(), 400, "{docs}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    // Nothing of a refused request was written.
    assert_eq!(s.expect("GET", "/db", None, 200).await["doc_count"], 0);
}

#[tokio::test]
async fn local_documents_in_bulk_docs_are_written_and_deleted() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s
        .expect("PUT", "/db/_local/godzilla", Some(json!({})), 201)
        .await;
    let mothra = s.expect("PUT", "/db/mothra", Some(json!({})), 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [
                {"_id": "mothra", "_rev": mothra["rev"], "_deleted": true},
                {"_id": "_local/godzilla", "_rev": put["rev"], "_deleted": true},
                {"_id": "_local/rodan", "v": 1},
                {"_id": "_local/ghidorah", "_rev": "1-fake", "_deleted": true},
            ]})),
            201,
        )
        .await;
    assert_eq!(out[0]["ok"], true);
    assert_eq!(
        out[1],
        json!({"ok": true, "id": "_local/godzilla", "rev": "0-0"})
    );
    assert_eq!(
        out[2],
        json!({"ok": true, "id": "_local/rodan", "rev": "0-1"})
    );
    assert!(out[3]["error"].is_string(), "{out}");
    s.expect("GET", "/db/_local/godzilla", None, 404).await;
    assert_eq!(s.expect("GET", "/db/_local/rodan", None, 200).await["v"], 1);
}

#[tokio::test]
async fn a_local_document_deleted_by_put_is_gone() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/_local/x", Some(json!({"a": 1})), 201)
        .await;
    let out = s
        .expect(
            "PUT",
            "/db/_local/x",
            Some(json!({"_rev": "0-1", "_deleted": true})),
            201,
        )
        .await;
    assert_eq!(out["rev"], "0-0");
    s.expect("GET", "/db/_local/x", None, 404).await;
}

#[tokio::test]
async fn local_documents_keep_attachments_as_json_and_serve_none() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let atts = json!({"foo.txt": {"content_type": "text/plain", "data": "VGhpcyBpcyBhIGJhc2U2NCBlbmNvZGVkIHRleHQ="}});
    s.expect(
        "PUT",
        "/db/_local/bin_doc",
        Some(json!({"_attachments": atts})),
        201,
    )
    .await;
    assert_eq!(
        s.expect("GET", "/db/_local/bin_doc", None, 200).await["_attachments"],
        atts
    );
    let refused = s
        .expect("GET", "/db/_local/bin_doc/foo.txt", None, 400)
        .await;
    assert_eq!(
        refused["reason"],
        "_local documents do not accept attachments."
    );
}

#[tokio::test]
async fn replicator_fields_are_kept_in_the_body() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let doc = json!({
        "_replication_id": "r1",
        "_replication_state": "triggered",
        "_replication_state_time": 1,
        "_replication_stats": {"docs_read": 0},
    });
    s.expect("PUT", "/db/job", Some(doc.clone()), 201).await;
    let got = s.expect("GET", "/db/job", None, 200).await;
    for key in doc.as_object().unwrap().keys() {
        assert_eq!(got[key], doc[key], "{key}");
    }
}
