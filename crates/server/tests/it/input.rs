//! Bad input gets a clear 4xx in CouchDB's error shape, and the server keeps serving.

use outpost_server::Config;
use serde_json::json;

use crate::support::{TestServer, assert_error};

#[tokio::test]
async fn malformed_requests_get_couchdb_errors() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    // (method, path, body, headers, status, error code)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<Vec<u8>>,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/db/d",
            Some(b"{not json".to_vec()),
            &[("content-type", "application/json")],
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/db/d",
            Some(b"[1,2]".to_vec()),
            &[("content-type", "application/json")],
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/db/d",
            Some(b"{}".to_vec()),
            &[("content-type", "text/plain")],
            415,
            "bad_content_type",
        ),
        (
            "PUT",
            "/db/d",
            Some(br#"{"_rev":"x-1"}"#.to_vec()),
            &[],
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/db/d",
            Some(br#"{"_foo":1}"#.to_vec()),
            &[],
            400,
            "doc_validation",
        ),
        ("GET", "/db/d?rev=nope", None, &[], 400, "bad_request"),
        (
            "GET",
            "/db/_all_docs?limit=-5",
            None,
            &[],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/db/_all_docs?startkey=%7Bbad",
            None,
            &[],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/db/_changes?feed=sideways",
            None,
            &[],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/db/_changes?since=yesterday",
            None,
            &[],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/db/d?open_revs=%5B1%5D",
            None,
            &[],
            400,
            "bad_request",
        ),
        (
            "POST",
            "/db/_bulk_docs",
            Some(br#"{"docs":{}}"#.to_vec()),
            &[],
            400,
            "bad_request",
        ),
        (
            "POST",
            "/db/_revs_diff",
            Some(br#"{"a":["bad"]}"#.to_vec()),
            &[],
            400,
            "bad_request",
        ),
        ("GET", "/db/%FF%FE", None, &[], 400, "bad_request"),
        ("PATCH", "/db/d", None, &[], 405, "method_not_allowed"),
        ("GET", "/_nonsense", None, &[], 400, "bad_request"),
        ("GET", "/_uuids?count=100000", None, &[], 400, "bad_request"),
        (
            "PUT",
            "/db/_revs_limit",
            Some(b"0".to_vec()),
            &[],
            400,
            "bad_request",
        ),
    ];
    for (method, path, body, headers, status, code) in cases {
        let (got, _, bytes) = s.raw(method, path, headers, body).await;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: error body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(got.as_u16(), status, "{method} {path}: {value}");
        assert_error(&value, code);
    }
    // A replicated document with an impossible path.
    let bad_path = json!({"new_edits": false, "docs": [
        {"_id": "a", "_rev": "3-c", "_revisions": {"start": 1, "ids": ["c", "b"]}},
    ]});
    // A document that cannot be parsed fails the whole request, as in CouchDB.
    assert_error(
        &s.expect("POST", "/db/_bulk_docs", Some(bad_path), 400)
            .await,
        "bad_request",
    );
    // Still serving, nothing written.
    assert_eq!(s.expect("GET", "/db", None, 200).await["doc_count"], 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let s = TestServer::with_config(Config {
        max_body_bytes: 1024,
        ..Config::default()
    });
    s.expect("PUT", "/db", None, 201).await;
    let big = json!({"x": "y".repeat(4096)});
    assert_error(&s.expect("PUT", "/db/d", Some(big), 413).await, "too_large");
    let long_id = "i".repeat(5000);
    assert_error(
        &s.expect("GET", &format!("/db/{long_id}"), None, 413).await,
        "too_large",
    );
    s.expect("PUT", "/db/d", Some(json!({"small": true})), 201)
        .await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(outpost_store::sqlite::SqliteStore::open(dir.path()).unwrap());
    let config = Config {
        body_read_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = outpost_server::AppState::new(store, config, shutdown.clone());
    let addr = crate::support::serve_on_loopback(state).await;

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Promises 100 bytes, sends 2, then goes quiet.
    conn.write_all(b"PUT /db/d HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server kept waiting for the body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    shutdown.cancel();
}

/// The highest generation Outpost accepts (2^53 - 1, what a JavaScript client can hold exactly).
const MAX_GENERATION: u64 = (1 << 53) - 1;

#[tokio::test]
async fn generations_beyond_the_bound_are_refused_and_the_database_stays_readable() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/a", Some(json!({"v": 1})), 201).await;

    // A replicated revision far beyond any real history, by `_revisions.start` or by `_rev`.
    for start in [10_000_000_000_000_000_000u64, u64::MAX, MAX_GENERATION + 1] {
        let doc = json!({"_id": "big", "_revisions": {"start": start, "ids": ["x", "w"]}});
        let body = s
            .expect("PUT", "/db/big?new_edits=false", Some(doc.clone()), 400)
            .await;
        assert_error(&body, "bad_request");
        let answer = s
            .expect(
                "POST",
                "/db/_bulk_docs",
                Some(json!({"docs": [doc], "new_edits": false})),
                400,
            )
            .await;
        assert_error(&answer, "bad_request");
        let doc = json!({"_id": "big", "_rev": format!("{start}-x")});
        s.expect("PUT", "/db/big?new_edits=false", Some(doc), 400)
            .await;
    }

    // A revision at the bound is stored, but an edit of it would pass the bound: refused.
    let top = format!("{MAX_GENERATION}-x");
    let doc =
        json!({"_id": "top", "_rev": top, "_revisions": {"start": MAX_GENERATION, "ids": ["x"]}});
    s.expect("PUT", "/db/top?new_edits=false", Some(doc), 201)
        .await;
    let body = s
        .expect("PUT", "/db/top", Some(json!({"_rev": top, "v": 2})), 400)
        .await;
    assert_error(&body, "bad_request");
    s.expect("DELETE", &format!("/db/top?rev={top}"), None, 400)
        .await;

    // Every read path still works on every stored document.
    let top_doc = s.expect("GET", "/db/top", None, 200).await;
    assert_eq!(top_doc["_rev"], top);
    s.expect("GET", "/db/a", None, 200).await;
    let changes = s.expect("GET", "/db/_changes", None, 200).await;
    assert_eq!(changes["results"].as_array().unwrap().len(), 2, "{changes}");
    let all = s.expect("GET", "/db/_all_docs", None, 200).await;
    assert_eq!(all["total_rows"], 2, "{all}");
    let info = s.expect("GET", "/db", None, 200).await;
    assert_eq!(info["doc_count"], 2, "{info}");
    let diff = s
        .expect(
            "POST",
            "/db/_revs_diff",
            Some(json!({"top": [top, "1-y"]})),
            200,
        )
        .await;
    assert_eq!(diff["top"]["missing"], json!(["1-y"]), "{diff}");
    s.expect(
        "POST",
        "/db/_bulk_get",
        Some(json!({"docs": [{"id": "top"}, {"id": "a"}]})),
        200,
    )
    .await;
}
