//! Retry classes: 5xx and 429 retried with the same idempotency key, other 4xx dead-lettered,
//! and the operator's retry and drop.

use crate::support::*;

on_both_engines!(
    server_errors_and_429_are_retried_with_the_same_key,
    client_errors_are_dead_lettered_without_blocking_the_rest,
    out_of_attempts_is_dead_lettered,
    old_entries_expire_and_delivered_ones_are_purged,
    retry_after_is_clamped_and_overflow_safe,
);

async fn server_errors_and_429_are_retried_with_the_same_key(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    let (status, _, body) = post(&gw.url("/pay"), "pay-1", &[]).await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().unwrap().to_owned();

    upstream.script([
        status_of(500),
        Answer {
            status: 429,
            headers: vec![("retry-after", "0")],
        },
        status_of(503),
        status_of(200),
    ]);
    upstream.restart().await;
    let entry = gw.wait_state(&id, "done").await;
    assert_eq!(entry["attempts"], 4);
    assert_eq!(entry["response"]["status"], 200);
    let writes = upstream.writes();
    assert_eq!(writes.len(), 4);
    let key = writes[0].headers["idempotency-key"].clone();
    assert!(
        writes
            .iter()
            .all(|w| w.headers["idempotency-key"] == key && w.body == "pay-1")
    );
    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["counters"]["retried"], 3);
    assert_eq!(status["counters"]["delivered"], 1);
    gw.stop().await;
}

fn status_of(code: u16) -> Answer {
    status(code)
}

async fn client_errors_are_dead_lettered_without_blocking_the_rest(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, _, body) = post(&gw.url("/doc"), &format!("d{i}"), &[]).await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    upstream.script([status(422)]);
    upstream.restart().await;
    gw.wait_drained(3).await;

    let dead = gw.entry(&ids[0]).await;
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["response"]["status"], 422);
    assert!(dead["last_error"].as_str().unwrap().contains("422"));
    assert_eq!(gw.entry(&ids[1]).await["state"], "done");
    assert_eq!(gw.entry(&ids[2]).await["state"], "done");

    let listed = gw.admin_get("/_outpost/v1/queue?state=dead").await;
    let listed = listed["entries"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], ids[0].as_str());

    // The operator fixes the cause and retries the dead letter.
    let resp = client()
        .post(gw.url(&format!("/_outpost/v1/queue/{}/retry", ids[0])))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let entry = gw.wait_state(&ids[0], "done").await;
    assert_eq!(entry["response"]["status"], 201);
    assert_eq!(upstream.writes().len(), 4);

    // A delivered entry cannot be retried; it can be dropped.
    let resp = client()
        .post(gw.url(&format!("/_outpost/v1/queue/{}/retry", ids[1])))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let resp = client()
        .delete(gw.url(&format!("/_outpost/v1/queue/{}", ids[1])))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gone = client()
        .get(gw.url(&format!("/_outpost/v1/queue/{}", ids[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    gw.stop().await;
}

async fn out_of_attempts_is_dead_lettered(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.retry.max_attempts = 2;
    let gw = TestGateway::start(config).await;
    let (_, _, body) = post(&gw.url("/x"), "x", &[]).await;
    let (_, _, after) = post(&gw.url("/x"), "y", &[]).await;
    upstream.script([status(500), status(500)]);
    upstream.restart().await;
    let dead = gw.wait_state(body["id"].as_str().unwrap(), "dead").await;
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts")
    );
    gw.wait_state(after["id"].as_str().unwrap(), "done").await;
    gw.stop().await;
}

#[tokio::test]
async fn admin_api_requires_the_token() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    for (method, path) in [
        ("GET", "/_outpost/v1/gateway"),
        ("GET", "/_outpost/v1/queue"),
        ("GET", "/_outpost/v1/metrics"),
        ("DELETE", "/_outpost/v1/queue/x"),
        ("POST", "/_outpost/v1/queue/x/retry"),
    ] {
        let resp = client()
            .request(method.parse().unwrap(), gw.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
        let resp = client()
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
    let metrics = client()
        .get(gw.url("/_outpost/v1/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outpost_gateway_queue_pending 0"));
    // The reserved prefix never reaches the upstream.
    let resp = client()
        .get(gw.url("/_outpost/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(upstream.received().is_empty());
    gw.stop().await;
}

async fn old_entries_expire_and_delivered_ones_are_purged(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.retry.max_age = std::time::Duration::from_secs(1);
    // The sweep runs at least as often as the retention period.
    config.done_retention = std::time::Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let (_, _, old) = post(&gw.url("/old"), "old", &[]).await;
    let expired = gw.wait_state(old["id"].as_str().unwrap(), "dead").await;
    assert!(
        expired["last_error"].as_str().unwrap().contains("expired"),
        "{expired}"
    );

    let (_, _, fresh) = post(&gw.url("/fresh"), "fresh", &[]).await;
    upstream.restart().await;
    let id = fresh["id"].as_str().unwrap();
    let url = gw.url(&format!("/_outpost/v1/queue/{id}"));
    let mut purged = false;
    for _ in 0..500 {
        if client().get(&url).send().await.unwrap().status() == 404 {
            purged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(purged, "a delivered entry outlived its retention");
    assert_eq!(
        upstream.writes().len(),
        1,
        "the expired entry was delivered"
    );
    assert_eq!(upstream.writes()[0].body, "fresh");
    gw.stop().await;
}

/// Issue 15, defect 4: a `Retry-After` too large for any clock killed the worker, and a merely
/// huge one parked the queue for years. Both are clamped to `max_retry_after`.
async fn retry_after_is_clamped_and_overflow_safe(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.retry.max_retry_after = std::time::Duration::from_millis(50);
    let gw = TestGateway::start(config).await;
    let (_, _, first) = post(&gw.url("/a"), "a", &[]).await;
    let (_, _, second) = post(&gw.url("/b"), "b", &[]).await;
    upstream.script([
        Answer {
            status: 503,
            headers: vec![("retry-after", "9223372036854775")],
        },
        Answer {
            status: 429,
            headers: vec![("retry-after", "100000000")],
        },
    ]);
    upstream.restart().await;
    let done = gw.wait_state(first["id"].as_str().unwrap(), "done").await;
    assert_eq!(done["attempts"], 3);
    gw.wait_state(second["id"].as_str().unwrap(), "done").await;
    assert_eq!(upstream.writes().len(), 4);
    gw.stop().await;
}

/// Issue 15, defect 6: a redirect on replay (a login page after the session expired) counted as
/// delivered and the write was deleted.
#[tokio::test]
async fn a_redirect_on_replay_is_dead_lettered_not_done() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let (_, _, body) = post(&gw.url("/save"), "draft", &[]).await;
    upstream.script([Answer {
        status: 302,
        headers: vec![("location", "/login")],
    }]);
    upstream.restart().await;
    let dead = gw.wait_state(body["id"].as_str().unwrap(), "dead").await;
    assert_eq!(dead["response"]["status"], 302);
    assert_eq!(dead["response"]["headers"]["location"], "/login");
    assert!(
        dead["last_error"].as_str().unwrap().contains("302"),
        "{dead}"
    );
    assert_eq!(
        dead["request"]["target"], "/save",
        "the request is kept for a retry"
    );
    gw.stop().await;
}
