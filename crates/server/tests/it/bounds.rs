//! The cost of a request is bounded whatever it asks for: large answers are streamed in frames
//! as they are read, request bodies in flight have a global budget, and documents and
//! attachments have size limits.

use axum::body::{Body, Bytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Request;
use http_body_util::BodyExt;
use outpost_server::Config;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{TestServer, assert_error, seq_n};

/// Sends a request and returns its status and the body's data frames, as they arrived.
async fn framed(
    s: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Vec<Bytes>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = s.router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.push(data);
        }
    }
    (status, out)
}

fn joined(frames: &[Bytes]) -> String {
    String::from_utf8(frames.concat()).unwrap()
}

/// A database with a document of about 300 KB, `big`, and a small one, `small`.
async fn with_big_document() -> (TestServer, String, String) {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let big = s
        .expect(
            "PUT",
            "/db/big",
            Some(json!({"text": "x".repeat(300_000)})),
            201,
        )
        .await;
    let small = s
        .expect("PUT", "/db/small", Some(json!({"n": 1})), 201)
        .await;
    (
        s,
        big["rev"].as_str().unwrap().to_owned(),
        small["rev"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn all_docs_keys_answer_is_streamed_in_frames() {
    let (s, big_rev, _) = with_big_document().await;
    let keys = vec!["big"; 8];
    let (status, frames) = framed(
        &s,
        "POST",
        "/db/_all_docs?include_docs=true",
        Some(json!({ "keys": keys })),
    )
    .await;
    assert_eq!(status, 200);
    // Eight copies of a 300 KB document: written as they are read, the answer arrives in many
    // frames, none holding more than a document and a frame's worth of text.
    assert!(frames.len() > 8, "{} frames", frames.len());
    assert!(frames.iter().all(|f| f.len() < 400_000));
    let answer: Value = serde_json::from_str(&joined(&frames)).unwrap();
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["doc"]["_rev"] == big_rev.as_str()));
}

#[tokio::test]
async fn bulk_get_answer_is_streamed_in_frames() {
    let (s, big_rev, _) = with_big_document().await;
    let docs: Vec<Value> = (0..8).map(|_| json!({"id": "big"})).collect();
    let (status, frames) = framed(&s, "POST", "/db/_bulk_get", Some(json!({ "docs": docs }))).await;
    assert_eq!(status, 200);
    assert!(frames.len() > 8, "{} frames", frames.len());
    assert!(frames.iter().all(|f| f.len() < 400_000));
    let answer: Value = serde_json::from_str(&joined(&frames)).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    assert!(
        results
            .iter()
            .all(|r| r["docs"][0]["ok"]["_rev"] == big_rev.as_str())
    );
}

#[tokio::test]
async fn streamed_keys_and_bulk_get_answers_keep_their_exact_text() {
    let (s, big_rev, small_rev) = with_big_document().await;
    let (_, frames) = framed(
        &s,
        "POST",
        "/db/_all_docs?include_docs=true&update_seq=true",
        Some(json!({"keys": ["small", "nope", 1]})),
    )
    .await;
    let update_seq = s.expect("GET", "/db", None, 200).await["update_seq"].clone();
    assert_eq!(seq_n(&update_seq), 2);
    assert_eq!(
        joined(&frames),
        format!(
            "{{\"total_rows\":2,\"offset\":0,\"rows\":[\n\
             {{\"id\":\"small\",\"key\":\"small\",\"value\":{{\"rev\":\"{small_rev}\"}},\"doc\":{{\"_id\":\"small\",\"_rev\":\"{small_rev}\",\"n\":1}}}},\n\
             {{\"key\":\"nope\",\"error\":\"not_found\"}},\n\
             {{\"key\":1,\"error\":\"not_found\"}}\n\
             ],\"update_seq\":{update_seq}}}"
        )
    );
    let (_, frames) = framed(
        &s,
        "POST",
        "/db/_bulk_get",
        Some(json!({"docs": [{"id": "small"}, {"id": "nope"}, {"id": "big", "rev": "9-0123456789abcdef0123456789abcdef"}]})),
    )
    .await;
    assert_eq!(
        joined(&frames),
        format!(
            "{{\"results\":[\
             {{\"id\":\"small\",\"docs\":[{{\"ok\":{{\"_id\":\"small\",\"_rev\":\"{small_rev}\",\"n\":1}}}}]}},\
             {{\"id\":\"nope\",\"docs\":[{{\"error\":{{\"id\":\"nope\",\"rev\":\"undefined\",\"error\":\"not_found\",\"reason\":\"missing\"}}}}]}},\
             {{\"id\":\"big\",\"docs\":[{{\"error\":{{\"id\":\"big\",\"rev\":\"9-0123456789abcdef0123456789abcdef\",\"error\":\"not_found\",\"reason\":\"missing\"}}}}]}}\
             ]}}"
        )
    );
    assert!(big_rev.starts_with("1-"));
}

#[tokio::test]
async fn inline_attachments_are_streamed_in_ranges() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    // Above one store range (1.5 MiB) and not a multiple of 3, so the ranges' encodings must
    // join into the whole attachment's.
    let data: Vec<u8> = (0..2_000_001u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, _, _) = s
        .raw(
            "PUT",
            "/db/d/blob.bin",
            &[("content-type", "application/octet-stream")],
            Some(data.clone()),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    let (status, frames) = framed(&s, "GET", "/db/d?attachments=true", None).await;
    assert_eq!(status, 200);
    assert!(frames.len() > 2, "{} frames", frames.len());
    let doc: Value = serde_json::from_str(&joined(&frames)).unwrap();
    assert_eq!(
        doc["_attachments"]["blob.bin"]["data"],
        BASE64.encode(&data)
    );
    let (status, frames) = framed(&s, "GET", "/db/d?open_revs=all&attachments=true", None).await;
    assert_eq!(status, 200);
    assert!(frames.len() > 2, "{} frames", frames.len());
    let leaves: Value = serde_json::from_str(&joined(&frames)).unwrap();
    assert_eq!(
        leaves[0]["ok"]["_attachments"]["blob.bin"]["data"],
        BASE64.encode(&data)
    );
    let (status, frames) = framed(
        &s,
        "POST",
        "/db/_bulk_get?attachments=true",
        Some(json!({"docs": [{"id": "d"}, {"id": "d"}]})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(frames.len() > 4, "{} frames", frames.len());
    let answer: Value = serde_json::from_str(&joined(&frames)).unwrap();
    for result in answer["results"].as_array().unwrap() {
        let att = &result["docs"][0]["ok"]["_attachments"]["blob.bin"];
        assert_eq!(att["data"], BASE64.encode(&data));
    }
}

#[tokio::test]
async fn body_budget_refuses_with_503_when_spent() {
    let s = TestServer::with_config(Config {
        max_body_bytes: 1000,
        max_body_bytes_in_flight: 1500,
        ..Config::default()
    });
    s.expect("PUT", "/db", None, 201).await;
    // A body without a length that sends 900 bytes and then waits. A channel of one frame
    // tells when the server has taken a frame: a send completes only once the one before was
    // read, so after the third send the first frame is counted.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let slow = Request::builder()
        .method("PUT")
        .uri("/db/slow")
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let router = s.router.clone();
    let pending = tokio::spawn(async move { router.oneshot(slow).await.unwrap() });
    let opening = format!("{{\"t\":\"{}", "x".repeat(891));
    tx.send(Ok(Bytes::from(opening))).await.unwrap();
    tx.send(Ok(Bytes::from_static(b"y"))).await.unwrap();
    tx.send(Ok(Bytes::from_static(b"z"))).await.unwrap();

    let other = json!({"t": "w".repeat(700)});
    let (status, headers, body) = s
        .raw(
            "PUT",
            "/db/other",
            &[("content-type", "application/json")],
            Some(other.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status.as_u16(), 503, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("retry-after"));
    assert_error(
        &serde_json::from_slice(&body).unwrap(),
        "service_unavailable",
    );

    tx.send(Ok(Bytes::from_static(b"\"}"))).await.unwrap();
    drop(tx);
    let slow = pending.await.unwrap();
    assert_eq!(slow.status().as_u16(), 201);
    // The slow request's bytes were given back when it was answered.
    s.expect("PUT", "/db/other", Some(other), 201).await;
}

#[tokio::test]
async fn a_body_larger_than_the_whole_budget_gets_413() {
    let s = TestServer::with_config(Config {
        max_body_bytes: 10_000,
        max_body_bytes_in_flight: 500,
        ..Config::default()
    });
    s.expect("PUT", "/db", None, 201).await;
    let (status, body) = s
        .call("PUT", "/db/d", Some(json!({"t": "x".repeat(600)})))
        .await;
    assert_eq!(status.as_u16(), 413);
    assert_error(&body, "too_large");
}

#[tokio::test]
async fn all_docs_with_bodies_pages_through_the_store_without_gaps() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let docs: Vec<Value> = (0..150)
        .map(|i| json!({"_id": format!("d{i:03}"), "n": i}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({ "docs": docs })), 201)
        .await;
    for (query, first, count) in [
        ("include_docs=true", 0, 150),
        ("include_docs=true&skip=10&limit=100", 10, 100),
        ("include_docs=true&descending=true&limit=130", 149, 130),
    ] {
        let answer = s
            .expect("GET", &format!("/db/_all_docs?{query}"), None, 200)
            .await;
        let rows = answer["rows"].as_array().unwrap();
        assert_eq!(rows.len(), count, "{query}");
        let descending = query.contains("descending");
        for (i, row) in rows.iter().enumerate() {
            let n = if descending { first - i } else { first + i };
            assert_eq!(row["id"], format!("d{n:03}"), "{query}");
            assert_eq!(row["doc"]["n"], n, "{query}");
        }
    }
}
