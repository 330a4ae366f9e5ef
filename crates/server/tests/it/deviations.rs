//! Small deviations from CouchDB 3 that a client can observe, one test per defect: size limits,
//! the Prometheus path, attachment names, `open_revs`, `_bulk_get`, revisions in the URL.

use outpost_server::Config;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_error};

async fn with_db(config: Config) -> TestServer {
    let s = TestServer::with_config(config);
    s.expect("PUT", "/db", None, 201).await;
    s
}

#[tokio::test]
async fn documents_above_max_document_size_get_413_document_too_large() {
    assert_eq!(Config::default().max_document_size, 8_000_000);
    let s = with_db(Config {
        max_document_size: 1000,
        ..Config::default()
    })
    .await;
    let large = json!({"t": "x".repeat(1000)});
    let expect_too_large = |body: &Value, id: &str| {
        assert_eq!(
            body,
            &json!({"error": "document_too_large", "reason": id}),
            "{body}"
        );
    };
    let body = s.expect("PUT", "/db/big", Some(large.clone()), 413).await;
    expect_too_large(&body, "big");
    let mut posted = large.clone();
    posted["_id"] = json!("posted");
    let body = s.expect("POST", "/db", Some(posted.clone()), 413).await;
    expect_too_large(&body, "posted");
    let body = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "fine"}, posted]})),
            413,
        )
        .await;
    expect_too_large(&body, "posted");
    // Nothing of the refused batch was written; a document within the limit is.
    s.expect("GET", "/db/fine", None, 404).await;
    s.expect("PUT", "/db/fine", Some(json!({"t": "x".repeat(900)})), 201)
        .await;
}

#[tokio::test]
async fn attachments_above_max_attachment_size_get_413() {
    let s = with_db(Config {
        max_attachment_size: 100,
        ..Config::default()
    })
    .await;
    let (status, _, body) = s
        .raw(
            "PUT",
            "/db/d/big.bin",
            &[("content-type", "application/octet-stream")],
            Some(vec![7; 101]),
        )
        .await;
    assert_eq!(status.as_u16(), 413);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"error": "attachment_too_large", "reason": "big.bin"})
    );
    let inline = json!({"_attachments": {"inline.bin": {
        "content_type": "application/octet-stream",
        "data": base64_of(&[7; 101]),
    }}});
    let body = s.expect("PUT", "/db/d", Some(inline), 413).await;
    assert_eq!(
        body,
        json!({"error": "attachment_too_large", "reason": "inline.bin"})
    );
    let (status, _, _) = s
        .raw("PUT", "/db/d/small.bin", &[], Some(vec![7; 100]))
        .await;
    assert_eq!(status.as_u16(), 201);
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test]
async fn a_database_named_metrics_is_usable() {
    let s = TestServer::new();
    s.expect("PUT", "/metrics", None, 201).await;
    let info = s.expect("GET", "/metrics", None, 200).await;
    assert_eq!(info["db_name"], "metrics");
    s.expect("PUT", "/metrics/d", Some(json!({"n": 1})), 201)
        .await;
    // Prometheus is served where CouchDB 3 serves it, and under Outpost's own namespace.
    for path in ["/_node/_local/_prometheus", "/_outpost/v1/metrics"] {
        let (status, headers, body) = s.raw("GET", path, &[], None).await;
        assert_eq!(status.as_u16(), 200, "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(String::from_utf8_lossy(&body).contains("outpost_http_requests_total"));
    }
}

#[tokio::test]
async fn attachment_names_starting_with_underscore_are_refused() {
    let s = with_db(Config::default()).await;
    let body = s
        .expect(
            "PUT",
            "/db/d",
            Some(json!({"_attachments": {"_x": {"content_type": "text/plain", "data": "aGk="}}})),
            400,
        )
        .await;
    assert_eq!(
        body,
        json!({"error": "bad_request", "reason": "Attachment name can't start with '_'"})
    );
    let (status, _, body) = s
        .raw(
            "PUT",
            "/db/d/_x",
            &[("content-type", "text/plain")],
            Some(b"hi".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["reason"], "Attachment name can't start with '_'");
    s.expect("GET", "/db/d", None, 404).await;
}

#[tokio::test]
async fn open_revs_of_a_missing_document_lists_each_as_missing() {
    let s = with_db(Config::default()).await;
    let answer = s
        .expect(
            "GET",
            "/db/nope?open_revs=%5B%221-x%22%2C%222-y%22%5D",
            None,
            200,
        )
        .await;
    assert_eq!(answer, json!([{"missing": "1-x"}, {"missing": "2-y"}]));
    let body = s.expect("GET", "/db/nope?open_revs=all", None, 404).await;
    assert_error(&body, "not_found");
}

#[tokio::test]
async fn bulk_get_without_rev_of_a_deleted_document_is_not_found_deleted() {
    let s = with_db(Config::default()).await;
    let put = s.expect("PUT", "/db/d", Some(json!({"n": 1})), 201).await;
    let rev = put["rev"].as_str().unwrap();
    let gone = s
        .expect("DELETE", &format!("/db/d?rev={rev}"), None, 200)
        .await;
    let answer = s
        .expect(
            "POST",
            "/db/_bulk_get",
            Some(json!({"docs": [{"id": "d"}]})),
            200,
        )
        .await;
    assert_eq!(
        answer,
        json!({"results": [{"id": "d", "docs": [{"error": {
            "id": "d", "rev": "undefined", "error": "not_found", "reason": "deleted"
        }}]}]})
    );
    // Asked by revision, the tombstone is still served, as replication needs.
    let tombstone = gone["rev"].as_str().unwrap();
    let answer = s
        .expect(
            "POST",
            "/db/_bulk_get",
            Some(json!({"docs": [{"id": "d", "rev": tombstone}]})),
            200,
        )
        .await;
    assert_eq!(answer["results"][0]["docs"][0]["ok"]["_deleted"], true);
}

#[tokio::test]
async fn a_rev_in_the_url_or_if_match_must_agree_with_the_body() {
    let s = with_db(Config::default()).await;
    let put = s.expect("PUT", "/db/d", Some(json!({"n": 1})), 201).await;
    let rev = put["rev"].as_str().unwrap().to_owned();
    let other = "1-0123456789abcdef0123456789abcdef";
    let body = s
        .expect(
            "PUT",
            &format!("/db/d?rev={rev}"),
            Some(json!({"_rev": other, "n": 2})),
            400,
        )
        .await;
    assert_eq!(
        body,
        json!({"error": "bad_request", "reason": "Document rev from request body and query string have different values"})
    );
    let (status, _, body) = s
        .raw(
            "PUT",
            "/db/d",
            &[
                ("content-type", "application/json"),
                ("if-match", &format!("\"{rev}\"")),
            ],
            Some(json!({"_rev": other, "n": 2}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status.as_u16(), 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = s
        .raw(
            "PUT",
            &format!("/db/d?rev={rev}"),
            &[
                ("content-type", "application/json"),
                ("if-match", &format!("\"{other}\"")),
            ],
            Some(json!({"n": 2}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    // Agreeing, the write goes through.
    s.expect(
        "PUT",
        &format!("/db/d?rev={rev}"),
        Some(json!({"_rev": rev, "n": 2})),
        201,
    )
    .await;
}

#[tokio::test]
async fn inline_attachments_carry_data_without_length_or_stub() {
    let s = with_db(Config::default()).await;
    s.expect(
        "PUT",
        "/db/d",
        Some(
            json!({"_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}}),
        ),
        201,
    )
    .await;
    let doc = s.expect("GET", "/db/d?attachments=true", None, 200).await;
    let digest =
        outpost_core::hash::attachment_digest(&outpost_core::attachment::gzip(b"hello", 8));
    assert_eq!(
        doc["_attachments"]["a.txt"],
        json!({"content_type": "text/plain", "digest": digest, "revpos": 1, "data": "aGVsbG8="})
    );
    let all = s
        .expect(
            "GET",
            "/db/_all_docs?include_docs=true&attachments=true",
            None,
            200,
        )
        .await;
    let att = &all["rows"][0]["doc"]["_attachments"]["a.txt"];
    assert!(
        att.get("length").is_none() && att.get("stub").is_none(),
        "{att}"
    );
    let got = s
        .expect(
            "POST",
            "/db/_bulk_get?attachments=true",
            Some(json!({"docs": [{"id": "d"}]})),
            200,
        )
        .await;
    let att = &got["results"][0]["docs"][0]["ok"]["_attachments"]["a.txt"];
    assert!(
        att.get("length").is_none() && att.get("stub").is_none(),
        "{att}"
    );
    // Stubs, without attachments=true, keep their length.
    let doc = s.expect("GET", "/db/d", None, 200).await;
    assert_eq!(doc["_attachments"]["a.txt"]["length"], 5);
}

#[tokio::test]
async fn all_docs_with_both_key_and_keys_is_refused() {
    let s = with_db(Config::default()).await;
    let body = s
        .expect(
            "POST",
            "/db/_all_docs?key=%22a%22",
            Some(json!({"keys": ["a"]})),
            400,
        )
        .await;
    assert_error(&body, "query_parse_error");
    let body = s
        .expect(
            "GET",
            "/db/_all_docs?key=%22a%22&keys=%5B%22a%22%5D",
            None,
            400,
        )
        .await;
    assert_error(&body, "query_parse_error");
}
