//! The admin API accepts a server admin's Basic credentials and a JWT with the `_admin` role
//! besides its token, and nothing else.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outpost_auth::{Credentials, JwtConfig};
use outpost_gateway::accounts::AdminAccounts;

use crate::support::{TOKEN, TestGateway, TestUpstream, client, test_config};

fn jwt(claims: &str, secret: &[u8]) -> String {
    use hmac::Mac;
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body.as_bytes());
    format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
async fn admin_api_takes_basic_and_jwt_of_a_server_admin() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    let mut jwt_config = JwtConfig::default();
    jwt_config.set_hs256_secret(b"gateway jwt secret");
    config.admin_accounts = Some(Arc::new(AdminAccounts::new(
        vec![("root".into(), Credentials::hash("root-pass", 10))],
        jwt_config,
    )));
    let gw = TestGateway::start(config).await;
    let status = |auth: Option<String>| {
        let mut request = client().get(gw.url("/_outpost/v1/gateway"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    assert_eq!(status(Some(format!("Bearer {TOKEN}"))).await, 200);
    assert_eq!(status(Some(basic("root", "root-pass"))).await, 200);
    // Twice: the second check is answered from the cache, with the same outcome.
    assert_eq!(status(Some(basic("root", "root-pass"))).await, 200);
    assert_eq!(status(Some(basic("root", "wrong"))).await, 401);
    assert_eq!(status(Some(basic("nobody", "root-pass"))).await, 401);
    let admin = jwt(
        r#"{"sub":"ops","_couchdb.roles":["_admin"]}"#,
        b"gateway jwt secret",
    );
    assert_eq!(status(Some(format!("Bearer {admin}"))).await, 200);
    let user = jwt(
        r#"{"sub":"ops","_couchdb.roles":["staff"]}"#,
        b"gateway jwt secret",
    );
    assert_eq!(status(Some(format!("Bearer {user}"))).await, 401);
    let forged = jwt(r#"{"sub":"ops","_couchdb.roles":["_admin"]}"#, b"other");
    assert_eq!(status(Some(format!("Bearer {forged}"))).await, 401);
    assert_eq!(status(None).await, 401);
    gw.stop().await;
}

#[tokio::test]
async fn accounts_alone_enable_the_admin_api() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.admin_token = None;
    config.admin_accounts = Some(Arc::new(AdminAccounts::new(
        vec![("root".into(), Credentials::hash("root-pass", 10))],
        JwtConfig::default(),
    )));
    let gw = TestGateway::start(config).await;
    let response = client()
        .get(gw.url("/_outpost/v1/gateway"))
        .basic_auth("root", Some("root-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .get(gw.url("/_outpost/v1/gateway"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    gw.stop().await;
}

/// The router a host process embeds (the sync server's console reaches the queue through it,
/// after checking the caller is one of its admins) asks for no credentials and answers under
/// `/v1/`; the gateway's own listener still refuses the same request without them.
#[tokio::test]
async fn the_embedded_admin_router_trusts_its_host() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = outpost_gateway::Gateway::bind(test_config(&upstream, dir.path()))
        .await
        .unwrap();
    let embedded = gateway.embedded_admin();
    let addr = gateway.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(gateway.run(shutdown.clone()));

    let request = axum::http::Request::get("/v1/queue?state=dead")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = embedded.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listing["entries"], serde_json::json!([]), "{listing}");

    let status = client()
        .get(format!("http://{addr}/_outpost/v1/queue?state=dead"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let status = client()
        .get(format!("http://{addr}/_outpost/v1/queue?state=dead"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
