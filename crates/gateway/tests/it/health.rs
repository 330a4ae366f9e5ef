//! Upstream health: decided by thresholds of consecutive failures and successes, never by one
//! request, and bad request targets refused before any connection.

use std::time::Duration;

use crate::support::*;

/// Issue 15, defect 1: one 503 from one path switched the whole gateway offline.
#[tokio::test]
async fn one_failing_request_does_not_take_the_upstream_down() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    // Only live traffic may change the state during this test.
    config.probe_interval = Duration::from_secs(3600);
    let gw = TestGateway::start(config).await;

    let resp = client().get(gw.url("/status/503")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-outpost-upstream"], "up");
    let (status, headers, _) = post(&gw.url("/after"), "x", &[]).await;
    assert_eq!(status, 201, "the next write must be forwarded, not queued");
    assert_eq!(headers["x-outpost-upstream"], "up");

    // Targets that are not in origin form, and CONNECT, are refused without a connection.
    let answer = raw(gw.addr, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-outpost-upstream: up"), "{answer}");
    let answer = raw(
        gw.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(upstream.received().len(), 2, "{:?}", upstream.received());

    // Consecutive failures do take it down, after the threshold.
    for i in 1..=3 {
        let resp = client().get(gw.url("/status/502")).send().await.unwrap();
        let want = if i < 3 { "up" } else { "down" };
        assert_eq!(resp.headers()["x-outpost-upstream"], want, "after {i}");
    }
    let (status, _, _) = post(&gw.url("/queued"), "y", &[]).await;
    assert_eq!(status, 202);
    gw.stop().await;
}
