//! Writes queued while the upstream is down and drained, in order and once, when it is back.

use serde_json::Value;

use crate::support::*;

on_both_engines!(
    queue_while_down_and_drain_in_order_exactly_once,
    a_restarted_gateway_delivers_what_it_queued,
    writes_queue_behind_pending_ones_even_when_the_upstream_is_up,
    partitions_replay_independently,
    a_slow_lane_does_not_hold_up_the_others,
);

async fn queue_while_down_and_drain_in_order_exactly_once(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;

    let mut ids = Vec::new();
    for i in 0..60 {
        let method = ["POST", "PUT", "PATCH", "DELETE"][i % 4];
        let resp = client()
            .request(method.parse().unwrap(), gw.url(&format!("/orders/{i}?v=1")))
            .body(format!("order-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.headers()["x-outpost-upstream"], "down");
        assert_eq!(
            resp.headers()["x-outpost-queue-depth"],
            (i + 1).to_string().as_str()
        );
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "queued");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/_outpost/v1/queue/{id}"));
        assert_eq!(body["status_url"], location.as_str());
        ids.push(id);
    }
    let entry = gw.entry(&ids[0]).await;
    assert_eq!(entry["state"], "pending");
    assert_eq!(entry["delivered_at"], Value::Null);
    assert_eq!(entry["request"]["target"], "/orders/0?v=1");

    let read = client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(read.status(), 503);
    assert!(read.headers().get("retry-after").is_some());
    assert_eq!(read.headers()["x-outpost-upstream"], "down");
    assert_eq!(read.headers()["x-outpost-queue-depth"], "60");

    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["upstream"]["state"], "down");
    assert_eq!(status["queue"]["depth"], 60);
    assert!(status["queue"]["oldest_pending_age_ms"].is_u64());

    upstream.restart().await;
    let status = gw.wait_drained(60).await;
    assert_eq!(status["counters"]["delivered"], 60);
    assert_eq!(status["upstream"]["state"], "up");

    let writes = upstream.writes();
    let bodies: Vec<String> = writes
        .iter()
        .map(|w| String::from_utf8_lossy(&w.body).into_owned())
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("order-{i}")).collect();
    assert_eq!(
        bodies, expected,
        "delivered out of order or not exactly once"
    );
    for (i, w) in writes.iter().enumerate() {
        assert_eq!(w.method, ["POST", "PUT", "PATCH", "DELETE"][i % 4]);
        assert_eq!(w.target, format!("/orders/{i}?v=1"));
        assert_eq!(w.headers["x-forwarded-for"], "127.0.0.1");
    }

    let done = gw.entry(&ids[5]).await;
    assert_eq!(done["state"], "done");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["response"]["status"], 201);
    assert_eq!(done["response"]["body"], "PUT /orders/5?v=1 order-5");
    assert_eq!(done["response"]["headers"]["x-upstream"], "yes");
    let delivered = done["delivered_ms"].as_i64().unwrap();
    assert!(delivered >= done["created_ms"].as_i64().unwrap(), "{done}");
    assert_eq!(
        done["delivered_at"],
        outpost_gateway::api::rfc3339_ms(delivered).as_str()
    );

    // Passed-through answers say the same, now that everything is delivered.
    let read = client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(read.headers()["x-outpost-upstream"], "up");
    assert_eq!(read.headers()["x-outpost-queue-depth"], "0");
    gw.stop().await;
}

async fn a_restarted_gateway_delivers_what_it_queued(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    for i in 0..10 {
        let (status, _, _) = post(&gw.url("/r"), &format!("r-{i}"), &[]).await;
        assert_eq!(status, 202);
    }
    gw.stop().await;

    upstream.restart().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    gw.wait_drained(10).await;
    let bodies: Vec<_> = upstream.writes().iter().map(|w| w.body.clone()).collect();
    let expected: Vec<_> = (0..10)
        .map(|i| bytes::Bytes::from(format!("r-{i}")))
        .collect();
    assert_eq!(bodies, expected);
    gw.stop().await;
}

#[tokio::test]
async fn unavailable_mode_answers_503_with_the_same_body() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.queued_status = outpost_gateway::QueuedStatus::Unavailable;
    config.retry_after_secs = 7;
    let gw = TestGateway::start(config).await;
    let (status, headers, body) = post(&gw.url("/x"), "x", &[]).await;
    assert_eq!(status, 503);
    // The configured value plus up to half again of jitter.
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((7..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(body["status"], "queued");
    assert_eq!(headers["location"], body["status_url"].as_str().unwrap());
    gw.stop().await;
}

async fn writes_queue_behind_pending_ones_even_when_the_upstream_is_up(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let gw = TestGateway::start(store.config(&upstream)).await;
    // The first write is refused with a long Retry-After, so it stays pending while up.
    let (status, _, first) = post(&gw.url("/w"), "first", &[]).await;
    assert_eq!(status, 202);
    upstream.script([Answer {
        status: 429,
        headers: vec![("retry-after", "1")],
    }]);
    upstream.restart().await;
    let id = first["id"].as_str().unwrap();
    for _ in 0..500 {
        if gw.entry(id).await["attempts"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, _, _) = post(&gw.url("/w"), "second", &[]).await;
    assert_eq!(status, 202, "a write overtook a pending one");
    gw.wait_drained(2).await;
    let bodies: Vec<_> = upstream.writes().iter().map(|w| w.body.clone()).collect();
    assert_eq!(bodies, ["first", "first", "second"]);
    gw.stop().await;
}

async fn partitions_replay_independently(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.ordering = outpost_gateway::Ordering::parse("path:1").unwrap();
    let gw = TestGateway::start(config).await;
    for i in 0..20 {
        let stream = if i % 2 == 0 { "a" } else { "b" };
        let (status, _, _) = post(
            &gw.url(&format!("/{stream}/{i}")),
            &format!("{stream}{i}"),
            &[],
        )
        .await;
        assert_eq!(status, 202);
    }
    upstream.restart().await;
    gw.wait_drained(20).await;
    let writes = upstream.writes();
    assert_eq!(writes.len(), 20);
    for stream in ["/a/", "/b/"] {
        let order: Vec<u32> = writes
            .iter()
            .filter(|w| w.target.starts_with(stream))
            .map(|w| w.target[3..].parse().unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "stream {stream} out of order");
        assert_eq!(order.len(), 10);
    }
    gw.stop().await;
}

/// Issue 15, defect 5: two processes could own one data directory and both deliver everything.
#[tokio::test]
async fn a_second_gateway_on_the_same_data_directory_is_refused() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let second = outpost_gateway::Gateway::bind(test_config(&upstream, dir.path())).await;
    match second {
        Err(outpost_gateway::Error::Locked(path)) => assert_eq!(path, dir.path()),
        other => panic!("a second gateway started on a locked directory: {other:?}"),
    }
    // The operator's commands still work beside the running gateway.
    outpost_gateway::open_queue(&test_config(&upstream, dir.path())).unwrap();
    gw.stop().await;
    let again = outpost_gateway::Gateway::bind(test_config(&upstream, dir.path())).await;
    assert!(again.is_ok(), "the lock outlived the gateway");
}

/// Issue 15, defect 12: one corrupt or undecryptable row stopped the worker forever. It is
/// dead-lettered with its error, and the entries behind it are delivered.
#[tokio::test]
async fn a_poison_entry_is_dead_lettered_and_the_rest_delivered() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let (_, _, poison) = post(&gw.url("/p"), "poison", &[]).await;
    let (_, _, fine) = post(&gw.url("/f"), "fine", &[]).await;
    let poison = poison["id"].as_str().unwrap().to_owned();
    {
        let db = rusqlite::Connection::open(dir.path().join("queue.sqlite3")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let changed = db
            .execute(
                "UPDATE entries SET request = X'00112233445566778899AABBCCDDEEFF00' WHERE id = ?1",
                [&poison],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    upstream.restart().await;
    gw.wait_state(fine["id"].as_str().unwrap(), "done").await;
    let dead = gw.wait_state(&poison, "dead").await;
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{dead}"
    );
    let bodies: Vec<_> = upstream.writes().iter().map(|w| w.body.clone()).collect();
    assert_eq!(bodies, ["fine"]);
    gw.stop().await;
}

/// Issue 15, defect 11: the worker waited for the slowest lane of a batch before loading again,
/// so one slow ordering key held up every other key.
async fn a_slow_lane_does_not_hold_up_the_others(store: &TestStore) {
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.ordering = outpost_gateway::Ordering::parse("path:1").unwrap();
    config.response_timeout = std::time::Duration::from_secs(120);
    config.shutdown_grace = std::time::Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let (_, _, refused) = post(&gw.url("/status/422"), "refused", &[]).await;
    let (_, _, slow) = post(&gw.url("/slow/60000"), "slow", &[]).await;
    upstream.restart().await;
    let refused = refused["id"].as_str().unwrap();
    gw.wait_state(refused, "dead").await;
    let sent = |target: &str| {
        upstream
            .received()
            .iter()
            .filter(|r| r.target == target)
            .count()
    };
    for _ in 0..1500 {
        if sent("/slow/60000") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sent("/slow/60000"), 1, "the slow delivery never started");
    // While the slow key's delivery is in flight, the operator retries the other key's entry:
    // it is delivered at once, not after the slow one.
    let resp = client()
        .post(gw.url(&format!("/_outpost/v1/queue/{refused}/retry")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..1500 {
        if sent("/status/422") == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        sent("/status/422"),
        2,
        "the other key waited for the slow one"
    );
    assert_eq!(
        gw.entry(slow["id"].as_str().unwrap()).await["state"],
        "pending"
    );
    gw.stop().await;
}

/// Issue 15, defect 13: nothing checked that a 202 is on disk. The queue's files, copied at the
/// instant each 202 arrives (as a crash at that instant would leave them), hold the entry.
#[tokio::test]
async fn a_202_is_on_disk_when_it_is_sent() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&upstream, dir.path());
    let gw = TestGateway::start(config.clone()).await;
    for i in 0..5 {
        let (status, _, body) = post(&gw.url("/d"), &format!("durable-{i}"), &[]).await;
        assert_eq!(status, 202);
        let copy = tempfile::tempdir().unwrap();
        for name in ["queue.sqlite3", "queue.sqlite3-wal", "gateway.key"] {
            let from = dir.path().join(name);
            if from.exists() {
                std::fs::copy(&from, copy.path().join(name)).unwrap();
            }
        }
        let mut copied = config.clone();
        copied.data_dir = copy.path().to_owned();
        let queue = outpost_gateway::open_queue(&copied).unwrap();
        let entry = queue.get(body["id"].as_str().unwrap()).await.unwrap();
        assert_eq!(entry.summary.state, outpost_gateway::State::Pending);
        assert_eq!(entry.request.unwrap().body, format!("durable-{i}"));
    }
    gw.stop().await;
}
