//! Several gateways on one PostgreSQL queue: writes queued through any of them are delivered
//! once each, in order per ordering key.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn two_gateways_share_one_queue_and_deliver_each_write_once_in_order() {
    let test = "two_gateways_share_one_queue";
    let Some(store) = TestStore::postgres(test).await else {
        return;
    };
    let mut upstream = TestUpstream::stopped().await;
    let mut config = store.config(&upstream);
    config.ordering = outpost_gateway::Ordering::parse("path:1").unwrap();
    let gateways = [
        TestGateway::start(config.clone()).await,
        TestGateway::start(config).await,
    ];
    for gw in &gateways {
        gw.wait_upstream("down").await;
    }
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..40 {
        let key = format!("/k{}", i % 4);
        let body = format!("{key}-{i}");
        // Each key's writes alternate between the gateways.
        let gw = &gateways[(i / 4) % 2];
        let (status, headers, _) = post(&gw.url(&key), &body, &[]).await;
        assert_eq!(status, 202);
        // The depth is the shared queue's, whichever gateway answers.
        assert_eq!(
            headers["x-outpost-queue-depth"],
            (i + 1).to_string().as_str()
        );
        sent.entry(key).or_default().push(body);
    }
    // A write to a key with queued writes queues behind them even at the other gateway.
    let status = gateways[1].admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["queue"]["depth"], 40);

    upstream.restart().await;
    let mut drained = false;
    for _ in 0..1500 {
        let status = gateways[0].admin_get("/_outpost/v1/gateway").await;
        if status["queue"]["depth"] == 0 && upstream.writes().len() >= 40 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "the shared queue did not drain");
    let mut delivered: HashMap<String, Vec<String>> = HashMap::new();
    for w in upstream.writes() {
        delivered
            .entry(w.target.clone())
            .or_default()
            .push(String::from_utf8_lossy(&w.body).into_owned());
    }
    assert_eq!(delivered, sent, "not delivered once each in order per key");
    let counters: u64 = {
        let mut n = 0;
        for gw in &gateways {
            n += gw.admin_get("/_outpost/v1/gateway").await["counters"]["delivered"]
                .as_u64()
                .unwrap();
        }
        n
    };
    assert_eq!(counters, 40);
    for gw in gateways {
        gw.stop().await;
    }
}
