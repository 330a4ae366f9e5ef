//! Idempotency-key deduplication while queued.

use crate::support::*;

#[tokio::test]
async fn the_same_key_while_queued_returns_the_first_entry() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let (s1, _, first) = post(
        &gw.url("/charge"),
        "100",
        &[("idempotency-key", "charge-42")],
    )
    .await;
    let (s2, _, second) = post(
        &gw.url("/charge"),
        "100",
        &[("idempotency-key", "charge-42")],
    )
    .await;
    let (s3, _, other) = post(
        &gw.url("/charge"),
        "100",
        &[("idempotency-key", "charge-43")],
    )
    .await;
    assert_eq!((s1, s2, s3), (202, 202, 202));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_ne!(first["id"], other["id"]);

    upstream.restart().await;
    gw.wait_drained(2).await;
    let keys: Vec<_> = upstream
        .writes()
        .iter()
        .map(|w| w.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["charge-42", "charge-43"]);
    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["counters"]["deduplicated"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn generated_keys_are_kept_with_the_entry() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let (_, _, body) = post(&gw.url("/a"), "a", &[]).await;
    let (_, _, body2) = post(&gw.url("/a"), "a", &[]).await;
    assert_ne!(
        body["id"], body2["id"],
        "requests without a key are never merged"
    );
    let entry = gw.entry(body["id"].as_str().unwrap()).await;
    let key = entry["idempotency_key"].as_str().unwrap().to_owned();
    upstream.restart().await;
    gw.wait_drained(2).await;
    assert_eq!(
        upstream.writes()[0].headers["idempotency-key"],
        key.as_str()
    );
    gw.stop().await;
}
