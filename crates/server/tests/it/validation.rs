//! `validate_doc_update` on every write path, answered as CouchDB answers it.

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error};

/// Refuses documents with `forbid` (403), with `auth` (401), deletions of documents marked
/// `keep` (through `oldDoc`), and documents whose `_attachments` hold `bad.txt`.
const VALIDATE: &str = "function (newDoc, oldDoc, userCtx, secObj) {
    if (newDoc.forbid) { throw({forbidden: 'no forbid field, please'}); }
    if (newDoc.auth) { throw({unauthorized: 'log in first'}); }
    if (newDoc._deleted && oldDoc && oldDoc.keep) { throw({forbidden: 'kept: ' + oldDoc._id}); }
    if (newDoc._attachments && newDoc._attachments['bad.txt']) { throw({forbidden: 'bad attachment'}); }
    if (userCtx.roles.indexOf('_admin') < 0 || secObj.members === undefined) { throw({forbidden: 'context'}); }
}";

async fn guarded() -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/guard",
        Some(json!({"validate_doc_update": VALIDATE})),
        201,
    )
    .await;
    s
}

#[tokio::test]
async fn put_post_and_delete_are_validated() {
    let s = guarded().await;
    let body = s
        .expect("PUT", "/db/a", Some(json!({"forbid": true})), 403)
        .await;
    assert_eq!(
        body,
        json!({"error": "forbidden", "reason": "no forbid field, please"})
    );
    let body = s
        .expect("POST", "/db", Some(json!({"auth": true})), 401)
        .await;
    assert_eq!(
        body,
        json!({"error": "unauthorized", "reason": "log in first"})
    );
    s.expect("GET", "/db/a", None, 404).await;

    let kept = s
        .expect("PUT", "/db/k", Some(json!({"keep": true})), 201)
        .await;
    let rev = kept["rev"].as_str().unwrap();
    let body = s
        .expect("DELETE", &format!("/db/k?rev={rev}"), None, 403)
        .await;
    assert_eq!(body["reason"], "kept: k");
    let body = s
        .expect(
            "PUT",
            "/db/k",
            Some(json!({"_rev": rev, "_deleted": true})),
            403,
        )
        .await;
    assert_error(&body, "forbidden");
    s.expect("GET", "/db/k", None, 200).await;

    // Allowed writes go through, and design documents are not validated.
    s.expect("PUT", "/db/ok", Some(json!({"fine": true})), 201)
        .await;
    s.expect(
        "PUT",
        "/db/_design/other",
        Some(json!({"forbid": true})),
        201,
    )
    .await;
}

#[tokio::test]
async fn bulk_docs_answers_per_document() {
    let s = guarded().await;
    let body = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "a"}, {"_id": "b", "forbid": true}, {"_id": "c", "auth": 1}]})),
            201,
        )
        .await;
    assert_eq!(body[0]["ok"], true, "{body}");
    assert_eq!(
        body[1],
        json!({"id": "b", "error": "forbidden", "reason": "no forbid field, please"})
    );
    assert_eq!(
        body[2],
        json!({"id": "c", "error": "unauthorized", "reason": "log in first"})
    );
    s.expect("GET", "/db/a", None, 200).await;
    s.expect("GET", "/db/b", None, 404).await;
}

#[tokio::test]
async fn replicated_revisions_are_validated() {
    let s = guarded().await;
    let body = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"new_edits": false, "docs": [
                {"_id": "r1", "_rev": "1-aaaa", "forbid": true},
                {"_id": "r2", "_rev": "1-bbbb"},
            ]})),
            201,
        )
        .await;
    assert_eq!(
        body,
        json!([{"id": "r1", "error": "forbidden", "reason": "no forbid field, please"}])
    );
    s.expect("GET", "/db/r2", None, 200).await;
    s.expect("GET", "/db/r1", None, 404).await;
    let body = s
        .expect(
            "PUT",
            "/db/r3?new_edits=false",
            Some(json!({"_rev": "1-cccc", "auth": true})),
            401,
        )
        .await;
    assert_error(&body, "unauthorized");

    // A replication into a guarded database: refused documents are write failures.
    s.expect("PUT", "/src", None, 201).await;
    s.expect("PUT", "/src/good", Some(json!({"n": 1})), 201)
        .await;
    s.expect("PUT", "/src/evil", Some(json!({"forbid": true})), 201)
        .await;
    let result = s
        .expect(
            "POST",
            "/_replicate",
            Some(json!({"source": "src", "target": "db"})),
            200,
        )
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["doc_write_failures"], 1, "{result}");
    s.expect("GET", "/db/good", None, 200).await;
    s.expect("GET", "/db/evil", None, 404).await;
}

#[tokio::test]
async fn attachments_are_validated() {
    let s = guarded().await;
    let created = s
        .expect("PUT", "/db/d", Some(json!({"keep": true})), 201)
        .await;
    let rev = created["rev"].as_str().unwrap();
    let (status, _, bytes) = s
        .raw(
            "PUT",
            &format!("/db/d/bad.txt?rev={rev}"),
            &[("content-type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 403);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["reason"], "bad attachment");
    let (status, _, bytes) = s
        .raw(
            "PUT",
            &format!("/db/d/good.txt?rev={rev}"),
            &[("content-type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let rev = body["rev"].as_str().unwrap();
    let (status, _, bytes) = s.raw("GET", "/db/d/good.txt", &[], None).await;
    assert_eq!((status.as_u16(), bytes.as_slice()), (200, b"x".as_slice()));
    // Removing the attachment is validated too: the function refuses while `oldDoc` holds `keep`
    // only for deletions of the document, so this passes.
    s.expect("DELETE", &format!("/db/d/good.txt?rev={rev}"), None, 200)
        .await;
}

#[tokio::test]
async fn a_throwing_validation_is_an_error_not_a_crash() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/broken",
        Some(json!({"validate_doc_update": "function (doc) { return doc.missing.field; }"})),
        201,
    )
    .await;
    let body = s.expect("PUT", "/db/x", Some(json!({})), 500).await;
    assert_error(&body, "unknown_error");
    assert!(
        body["reason"].as_str().unwrap().contains("TypeError"),
        "{body}"
    );
    // Taking the function away lets writes through again.
    let ddoc = s.expect("GET", "/db/_design/broken", None, 200).await;
    s.expect(
        "DELETE",
        &format!("/db/_design/broken?rev={}", ddoc["_rev"].as_str().unwrap()),
        None,
        200,
    )
    .await;
    s.expect("PUT", "/db/x", Some(json!({})), 201).await;
}

#[tokio::test]
async fn a_runaway_validation_is_stopped_by_the_time_limit() {
    let s = TestServer::with_config(outpost_server::Config {
        js_timeout: std::time::Duration::from_millis(300),
        ..outpost_server::Config::default()
    });
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/loop",
        Some(
            json!({"validate_doc_update": "function (doc) { if (doc.spin) { while (true) {} } }"}),
        ),
        201,
    )
    .await;
    let body = s
        .expect("PUT", "/db/x", Some(json!({"spin": true})), 500)
        .await;
    assert_error(&body, "unknown_error");
    assert!(
        body["reason"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    // The engine that was stopped is replaced: the next write is validated and goes through.
    s.expect("PUT", "/db/y", Some(json!({"spin": false})), 201)
        .await;
}
