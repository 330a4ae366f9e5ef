//! Idempotency-key deduplication while queued.

use crate::support::*;

on_both_engines!(
    the_same_key_while_queued_returns_the_first_entry,
    generated_keys_are_kept_with_the_entry,
    keys_are_scoped_by_credentials_method_and_target,
);

async fn the_same_key_while_queued_returns_the_first_entry(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
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

async fn generated_keys_are_kept_with_the_entry(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
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

/// Issue 15, defect 3: deduplication was global. Two users' different requests with the same
/// key got one entry; the second write was never delivered and its sender could read the first
/// user's answer. Keys are now scoped by credentials, method and target, with a body
/// fingerprint: the same key with another body is refused with 422.
async fn keys_are_scoped_by_credentials_method_and_target(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    let key = ("idempotency-key", "k-1");
    let (sa, _, a) = post(
        &gw.url("/pay"),
        "alice",
        &[key, ("authorization", "Bearer A")],
    )
    .await;
    let (sb, _, b) = post(
        &gw.url("/pay"),
        "bob",
        &[key, ("authorization", "Bearer B")],
    )
    .await;
    let (sk, _, k) = post(&gw.url("/pay"), "carol", &[key, ("x-api-key", "C")]).await;
    let (st, _, t) = post(
        &gw.url("/other"),
        "alice",
        &[key, ("authorization", "Bearer A")],
    )
    .await;
    assert_eq!((sa, sb, sk, st), (202, 202, 202, 202));
    let ids = [&a, &b, &k, &t].map(|v| v["id"].as_str().unwrap().to_owned());
    for (i, x) in ids.iter().enumerate() {
        assert!(
            !ids[..i].contains(x),
            "entries merged across scopes: {ids:?}"
        );
    }
    assert_eq!(b["duplicate"], false);

    // The same request again is the same entry; the same key with another body is a misuse.
    let (s, _, again) = post(
        &gw.url("/pay"),
        "alice",
        &[key, ("authorization", "Bearer A")],
    )
    .await;
    assert_eq!(
        (s, again["id"].as_str(), again["duplicate"].as_bool()),
        (202, Some(ids[0].as_str()), Some(true))
    );
    let (s, _, reused) = post(
        &gw.url("/pay"),
        "mallory",
        &[key, ("authorization", "Bearer A")],
    )
    .await;
    assert_eq!(s, 422, "{reused}");
    assert_eq!(reused["error"], "idempotency_key_reused");

    upstream.restart().await;
    gw.wait_drained(4).await;
    let bodies: Vec<_> = upstream.writes().iter().map(|w| w.body.clone()).collect();
    assert_eq!(bodies, ["alice", "bob", "carol", "alice"]);
    let bob = gw.entry(&ids[1]).await;
    assert_eq!(bob["response"]["body"], "POST /pay bob");
    gw.stop().await;
}

/// Issue 15, defect 3: a status URL showed the upstream's `Set-Cookie`, a session anyone
/// holding the URL could take.
#[tokio::test]
async fn a_status_url_never_shows_a_session_cookie() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let (_, _, body) = post(&gw.url("/login"), "x", &[]).await;
    upstream.script([Answer {
        status: 201,
        headers: vec![("set-cookie", "session=SECRET-SESSION-9d2")],
    }]);
    upstream.restart().await;
    let entry = gw.wait_state(body["id"].as_str().unwrap(), "done").await;
    assert_eq!(entry["response"]["headers"]["set-cookie"], "[redacted]");
    assert!(!entry.to_string().contains("SECRET-SESSION-9d2"));
    gw.stop().await;
}
