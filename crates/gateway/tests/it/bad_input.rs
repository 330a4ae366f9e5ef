//! Bad input: invalid HTTP, oversized bodies and headers, traversal paths. Each is answered
//! correctly, nothing invalid reaches the upstream, and the gateway keeps serving.

use crate::support::*;

async fn still_serving(gw: &TestGateway) {
    let resp = client().get(gw.url("/alive")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "GET /alive ");
}

#[tokio::test]
async fn invalid_http_gets_400_and_never_reaches_the_upstream() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET /a HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /a HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ];
    for case in cases {
        let answer = raw(gw.addr, case).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} answered {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
    still_serving(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let big = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = raw(gw.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let mut many = String::from("GET /h HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(gw.addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(upstream.received().is_empty());
    still_serving(&gw).await;
    gw.stop().await;
}

/// Issue 15, defect 9: while the upstream was healthy, writes over the buffering limit got 413
/// instead of being streamed through. Only while it is down (when the write would have to be
/// queued) is a large body refused.
#[tokio::test]
async fn oversized_bodies_stream_while_up_and_get_413_while_down() {
    let mut upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.limits.max_body_bytes = 1024;
    let gw = TestGateway::start(config).await;

    let (status, _, _) = post(&gw.url("/b"), &"x".repeat(200_000), &[]).await;
    assert_eq!(status, 201);
    // Chunked: no length up front, streamed once the limit is crossed.
    let chunked = raw(
        gw.addr,
        format!(
            "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
            "y".repeat(0x800)
        )
        .as_bytes(),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 201"), "{chunked}");
    let writes = upstream.writes();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].body.len(), 200_000);
    assert!(writes[0].body.iter().all(|b| *b == b'x'));
    assert_eq!(writes[1].body.len(), 0x800);
    assert!(writes[0].headers.get("idempotency-key").is_some());

    upstream.stop().await;
    gw.wait_upstream("down").await;
    let (status, _, body) = post(&gw.url("/b"), &"x".repeat(4096), &[]).await;
    assert_eq!(status, 413, "an oversized write must not be queued");
    assert_eq!(body["error"], "payload_too_large");
    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["queue"]["depth"], 0);
    gw.stop().await;
}

/// Issue 15, defect 9: a body that stopped arriving was never timed out, and buffered bodies
/// had no global bound.
#[tokio::test]
async fn stalled_bodies_time_out_and_buffered_bytes_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.body_read_timeout = std::time::Duration::from_millis(200);
    config.limits.max_body_bytes = 64 * 1024;
    config.limits.max_body_bytes_in_flight = 16 * 1024;
    let gw = TestGateway::start(config).await;

    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut answer))
        .await
        .expect("a stalled body was never timed out")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body within the per-request limit but above the global budget is refused, not buffered.
    let (status, headers, body) = post(&gw.url("/s"), &"z".repeat(32 * 1024), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "busy");
    assert!(headers.get("retry-after").is_some());
    let (status, _, _) = post(&gw.url("/s"), &"z".repeat(8 * 1024), &[]).await;
    assert_eq!(status, 201, "the budget is given back after each request");
    let (status, _, _) = post(&gw.url("/s"), &"z".repeat(8 * 1024), &[]).await;
    assert_eq!(status, 201);
    assert!(upstream.writes().iter().all(|w| w.body.len() == 8 * 1024));
    gw.stop().await;
}

#[tokio::test]
async fn traversal_paths_are_forwarded_exactly_as_received() {
    let mut upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let targets = [
        "/api/../../etc/passwd",
        "/api/%2e%2e/%2e%2e/x",
        "/api/%2E%2E%2fsecret",
        "/x%00y",
        "/a/./b//c",
        "/api/..%2f..%2f?q=../..",
    ];
    for target in targets {
        let answer = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
    }
    let seen: Vec<_> = upstream.received().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, targets);

    // Queued writes keep their target byte for byte as well.
    upstream.stop().await;
    let answer = raw(
        gw.addr,
        b"POST /api/../%2e%2e/x%00 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nz",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    upstream.restart().await;
    gw.wait_drained(1).await;
    assert_eq!(upstream.writes()[0].target, "/api/../%2e%2e/x%00");
    still_serving(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_with_507_and_never_drops_silently() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.limits.max_queue_entries = 3;
    let gw = TestGateway::start(config).await;
    for i in 0..3 {
        let (status, _, _) = post(&gw.url("/f"), &format!("{i}"), &[]).await;
        assert_eq!(status, 202);
    }
    let (status, _, body) = post(&gw.url("/f"), "3", &[]).await;
    assert_eq!(status, 507);
    assert_eq!(body["error"], "queue_full");
    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["counters"]["rejected_full"], 1);
    assert_eq!(status["queue"]["depth"], 3);
    gw.stop().await;
}
