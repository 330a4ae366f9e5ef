//! Writes whose outcome is unknown (sent, then no answer) are never sent again toward a backend
//! that does not honour `Idempotency-Key`, and a key-honouring backend's "in progress" 409 is
//! retried later.

use std::time::Duration;

use crate::support::*;

on_both_engines!(
    a_write_with_an_unknown_outcome_is_never_sent_twice,
    in_progress_409_is_retried_toward_a_key_honouring_upstream,
);

/// Issue 15, defect 2: a POST that outlived `--response-timeout` was answered 202 and executed
/// again on every replay.
async fn a_write_with_an_unknown_outcome_is_never_sent_twice(store: &TestStore) {
    let mut upstream = TestUpstream::start().await;
    let mut config = store.config(&upstream);
    config.response_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;

    // Live: sent, no answer in time. Not acknowledged as queued, and nothing queued.
    let (status, _, body) = post(&gw.url("/slow/5000"), "live", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "upstream_outcome_unknown");
    let state = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(state["queue"]["depth"], 0, "{state}");
    assert_eq!(state["counters"]["queued"], 0, "{state}");

    // Replay: queued while the upstream is down, then sent and not answered in time.
    upstream.stop().await;
    let (status, _, queued) = post(&gw.url("/slow/5000"), "replayed", &[]).await;
    assert_eq!(status, 202);
    upstream.restart().await;
    let dead = gw.wait_state(queued["id"].as_str().unwrap(), "dead").await;
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("outcome is unknown"),
        "{dead}"
    );
    // Attempts that found no connection (before the upstream was back) are safe to repeat;
    // the one that was sent is never repeated.
    let sent = |body: &str| upstream.writes().iter().filter(|w| w.body == body).count();
    assert_eq!((sent("live"), sent("replayed")), (1, 1));
    gw.stop().await;
}

/// Issue 15, defect 2: a key-honouring backend answers 409 while the first request with the key
/// is still running; that was dead-lettered at once.
async fn in_progress_409_is_retried_toward_a_key_honouring_upstream(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.retry.upstream_honours_keys = true;
    let gw = TestGateway::start(config).await;
    let (_, _, body) = post(&gw.url("/pay"), "p", &[("idempotency-key", "p-1")]).await;
    upstream.script([status(409)]);
    upstream.restart().await;
    let done = gw.wait_state(body["id"].as_str().unwrap(), "done").await;
    assert_eq!(done["attempts"], 2);
    let writes = upstream.writes();
    assert_eq!(writes.len(), 2);
    assert!(writes.iter().all(|w| w.headers["idempotency-key"] == "p-1"));
    gw.stop().await;
}
