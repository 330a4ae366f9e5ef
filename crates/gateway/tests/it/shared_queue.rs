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

/// One ordering key (the global order) replayed by two gateways: never two deliveries in
/// flight at once, and in the order acknowledged, whichever gateway took each write.
#[tokio::test]
async fn one_key_has_one_delivery_in_flight_across_gateways() {
    let Some(store) = TestStore::postgres("one_key_has_one_delivery_in_flight").await else {
        return;
    };
    let mut upstream = TestUpstream::stopped().await;
    let config = store.config(&upstream);
    let gateways = [
        TestGateway::start(config.clone()).await,
        TestGateway::start(config).await,
    ];
    for gw in &gateways {
        gw.wait_upstream("down").await;
    }
    for i in 0..20 {
        let (status, _, _) = post(&gateways[i % 2].url("/slow/20"), &format!("s{i}"), &[]).await;
        assert_eq!(status, 202);
    }
    upstream.restart().await;
    for _ in 0..1500 {
        let status = gateways[1].admin_get("/_outpost/v1/gateway").await;
        if status["queue"]["depth"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies: Vec<String> = upstream
        .writes()
        .iter()
        .map(|w| String::from_utf8_lossy(&w.body).into_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_eq!(bodies, expected);
    let most = upstream
        .state
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 1, "one ordering key had {most} deliveries in flight");
    for gw in gateways {
        gw.stop().await;
    }
}

/// A TCP relay to PostgreSQL that the test can cut, as a network failure or a database restart
/// would, and restore on the same port.
struct Relay {
    addr: std::net::SocketAddr,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let mut relay = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            target,
            task: None,
        };
        relay.restore().await;
        relay
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set when the relay is cut closes every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let rest = url.split_once("://").unwrap().1;
    let start = url.len() - rest.len() + rest.find('@').map_or(0, |i| i + 1);
    let end = start + url[start..].find(['/', '?']).unwrap_or(url.len() - start);
    let authority = &url[start..end];
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    (format!("{}{addr}{}", &url[..start], &url[end..]), target)
}

async fn ready_status(gw: &TestGateway) -> u16 {
    client()
        .get(gw.url("/_outpost/v1/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_ready_status(gw: &TestGateway, want: u16) {
    for _ in 0..500 {
        if ready_status(gw).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("readiness never answered {want}");
}

/// Readiness follows the database: a gateway that cannot reach its PostgreSQL queue answers
/// 503 to readiness probes and to writes (nothing is acknowledged that is not stored), and
/// recovers by itself when the database is back.
#[tokio::test]
async fn readiness_fails_while_the_database_is_unreachable() {
    let Some(store) =
        TestStore::postgres("readiness_fails_while_the_database_is_unreachable").await
    else {
        return;
    };
    let upstream = TestUpstream::stopped().await;
    let url = store.schema.as_ref().unwrap().url.clone();
    let mut relay = Relay::start(through(&url, "127.0.0.1:0".parse().unwrap()).1).await;
    let mut config = store.config(&upstream);
    let outpost_gateway::QueueStore::Postgres(pg) = &mut config.store else {
        unreachable!("a PostgreSQL store");
    };
    pg.url = through(&url, relay.addr).0;
    let gw = TestGateway::start(config).await;
    assert_eq!(ready_status(&gw).await, 200);
    let (status, _, _) = post(&gw.url("/w"), "before", &[]).await;
    assert_eq!(status, 202);

    relay.cut().await;
    wait_ready_status(&gw, 503).await;
    let resp = client()
        .get(gw.url("/_outpost/v1/ready"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, _, body) = post(&gw.url("/w"), "during", &[]).await;
    assert_eq!(status, 503, "{body}");

    relay.restore().await;
    wait_ready_status(&gw, 200).await;
    let (status, _, _) = post(&gw.url("/w"), "after", &[]).await;
    assert_eq!(status, 202);
    let status = gw.admin_get("/_outpost/v1/gateway").await;
    assert_eq!(status["queue"]["depth"], 2);
    gw.stop().await;
}
