//! Pass-through while the upstream is up.

use crate::support::*;

#[tokio::test]
async fn requests_pass_through_with_forwarding_headers() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;

    let resp = client()
        .get(gw.url("/items?q=1&r=%2F"))
        .header("x-custom", "kept")
        .header("authorization", "Bearer abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert_eq!(resp.text().await.unwrap(), "GET /items?q=1&r=%2F ");

    let (status, headers, _) = post(
        &gw.url("/items"),
        "{\"a\":1}",
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-upstream"], "yes");
    let (status, _, _) = post(&gw.url("/items"), "{\"a\":2}", &[]).await;
    assert_eq!(status, 201);

    let got = upstream.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].method, "GET");
    assert_eq!(got[0].headers["x-custom"], "kept");
    assert_eq!(got[0].headers["authorization"], "Bearer abc");
    assert_eq!(got[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got[0].headers["x-forwarded-proto"], "http");
    assert_eq!(
        got[0].headers["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    assert_eq!(got[0].headers["host"], upstream.addr.to_string().as_str());
    // Reads carry no idempotency key; writes always do, the client's own or a new one.
    assert!(got[0].headers.get("idempotency-key").is_none());
    assert_eq!(got[1].body, "{\"a\":1}");
    assert_eq!(got[1].headers["idempotency-key"], "k-1");
    assert_eq!(got[2].headers["idempotency-key"].len(), 36);
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let answer = raw(
        gw.addr,
        b"GET /hop HTTP/1.1\r\nHost: example\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-End: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = upstream.received();
    let headers = &got[0].headers;
    for gone in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(headers.get(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(headers["x-end"], "1");
    assert_eq!(headers["x-forwarded-host"], "example");
    gw.stop().await;
}

#[tokio::test]
async fn large_answers_stream_through_intact() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let body = client()
        .get(gw.url("/big/5000000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 5_000_000);
    assert!(body.iter().all(|b| *b == b'x'));
    gw.stop().await;
}

#[tokio::test]
async fn reads_get_503_or_the_stale_answer_while_down() {
    let mut upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.stale_reads = true;
    let gw = TestGateway::start(config).await;

    let fresh = client()
        .get(gw.url("/page"))
        .header("authorization", "u1")
        .send()
        .await
        .unwrap();
    assert!(fresh.headers().get("x-outpost-stale").is_none());
    assert_eq!(fresh.text().await.unwrap(), "GET /page ");

    upstream.stop().await;
    let stale = client()
        .get(gw.url("/page"))
        .header("authorization", "u1")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-outpost-stale"], "true");
    assert!(stale.headers().get("age").is_some());
    assert_eq!(stale.text().await.unwrap(), "GET /page ");

    // Another user's credentials never see the first user's answer.
    let other = client()
        .get(gw.url("/page"))
        .header("authorization", "u2")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 503);
    assert!(other.headers().get("retry-after").is_some());
    let body: serde_json::Value = other.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(body["reason"].is_string());

    let head = client()
        .head(gw.url("/page"))
        .header("authorization", "u1")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-outpost-stale"], "true");
    gw.stop().await;
}

/// Issue 15, defect 7: a client's `X-Forwarded-Proto`/`-Host` reached the upstream, and
/// `Forwarded` was passed untouched, so any client could claim to be on https or another host.
#[tokio::test]
async fn forwarding_headers_are_written_by_the_gateway() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let (status, _, _) = post(&gw.url("/w"), "x", &spoofed).await;
    assert_eq!(status, 201);
    let host = gw.addr.to_string();
    let got = &upstream.writes()[0].headers;
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["x-forwarded-host"], host.as_str());
    assert_eq!(
        got["forwarded"],
        format!("for=127.0.0.1;host=\"{host}\";proto=http").as_str()
    );
    assert!(got.get("x-real-ip").is_none());
    gw.stop().await;

    // Behind a trusted proxy, its headers are kept and the gateway's hop appended.
    let mut config = test_config(&upstream, dir.path());
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gw = TestGateway::start(config).await;
    let (status, _, _) = post(&gw.url("/w"), "y", &spoofed).await;
    assert_eq!(status, 201);
    let got = &upstream.writes()[1].headers;
    assert_eq!(got["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(got["x-forwarded-proto"], "https");
    assert!(
        got["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=6.6.6.6;proto=https, for=127.0.0.1")
    );
    gw.stop().await;
}

/// Issue 15, defect 8: the stale cache served one user's `Set-Cookie` to another, keyed only on
/// `Authorization` and `Cookie` (users of `X-Api-Key` shared entries), and ignored `Vary` and
/// `private`.
#[tokio::test]
async fn the_stale_cache_follows_http_caching_rules() {
    let mut upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.stale_reads = true;
    let gw = TestGateway::start(config).await;
    let get = |path: &'static str, key: &'static str, lang: &'static str| {
        let url = gw.url(path);
        async move {
            let resp = client()
                .get(url)
                .header("x-api-key", key)
                .header("accept-language", lang)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let cookie = resp.headers().get("set-cookie").cloned();
            (status, cookie, resp.text().await.unwrap())
        }
    };
    for path in ["/page", "/set-cookie", "/private", "/vary"] {
        let (status, _, _) = get(path, "alice", "fr").await;
        assert_eq!(status, 200, "{path}");
    }
    upstream.stop().await;

    let (status, _, body) = get("/page", "alice", "fr").await;
    assert_eq!((status, body.as_str()), (200, "GET /page "));
    let (status, _, body) = get("/page", "bob", "fr").await;
    assert_eq!(status, 503, "bob got alice's answer: {body}");
    let (status, cookie, _) = get("/set-cookie", "alice", "fr").await;
    assert_eq!(
        (status, cookie),
        (503, None),
        "an answer setting a cookie was kept"
    );
    let (status, _, _) = get("/private", "alice", "fr").await;
    assert_eq!(status, 503, "a private answer was kept");
    let (status, _, _) = get("/vary", "alice", "fr").await;
    assert_eq!(status, 200);
    let (status, _, _) = get("/vary", "alice", "en").await;
    assert_eq!(status, 503, "Vary was ignored");
    gw.stop().await;
}

/// Issue 15, defect 11: nothing bounded the connections toward the upstream. Requests beyond
/// `max_upstream_connections` wait for one to be free.
#[tokio::test]
async fn connections_to_the_upstream_are_bounded() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.max_upstream_connections = 2;
    config.response_timeout = std::time::Duration::from_secs(60);
    let gw = TestGateway::start(config).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let url = gw.url("/slow/300");
        set.spawn(async move { client().get(url).send().await.unwrap().status() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let most = upstream
        .state
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} requests at once");
    gw.stop().await;
}
