//! The admin API's OpenAPI document matches the routes the gateway serves.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{TOKEN, TestGateway, TestUpstream, client, test_config};

/// (path, method) of every route `api::routes` declares (for `api::router` and the embedded router), read from its source so that a route
/// added without documentation fails here.
fn served_routes(prefix: &str) -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api.rs"),
    )
    .unwrap();
    let router = source
        .split("fn routes(")
        .nth(1)
        .unwrap()
        .split("\n}\n")
        .next()
        .unwrap();
    let mut routes = BTreeSet::new();
    for line in router
        .lines()
        .filter(|l| l.trim_start().starts_with(".route("))
    {
        let path = line
            .split("\"{p}")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .replace("{{", "{")
            .replace("}}", "}");
        let handlers = line.split("),").nth(1).unwrap();
        for method in ["get", "post", "delete", "put", "patch"] {
            if handlers.contains(&format!("{method}(")) {
                routes.insert((format!("{prefix}{path}"), method.to_owned()));
            }
        }
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((path.clone(), method.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_lists_every_admin_route() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    // Open without the token, like the status of a queued request.
    let resp = client()
        .get(gw.url("/_outpost/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let served = served_routes("/_outpost/");
    assert!(served.len() >= 8, "{served:?}");
    assert_eq!(documented(&doc), served);

    // Every documented answer of an unknown entry is one the document lists.
    for (path, method) in &served {
        let url = gw.url(&path.replace("{id}", "no-such-entry"));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let status = client()
            .request(method.clone(), url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status();
        let responses = doc["paths"][path][method.as_str().to_lowercase()]["responses"]
            .as_object()
            .unwrap();
        assert!(
            responses.contains_key(status.as_str()),
            "{method} {path} answered {status}, not documented"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_configured_prefix_is_the_one_documented() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&upstream, dir.path());
    config.prefix = "/_gw/".into();
    let gw = TestGateway::start(config).await;
    let doc: Value = client()
        .get(gw.url("/_gw/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(documented(&doc), served_routes("/_gw/"));
    gw.stop().await;
}

/// Issue 15, defect 12: the document said dropping an entry in flight or delivered is a 409 and
/// that only dead entries can be retried; the code drops entries in any state and retries
/// pending ones too. What the document says is checked against what the gateway does.
#[tokio::test]
async fn drop_and_retry_are_documented_as_they_behave() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    let doc: Value = client()
        .get(gw.url("/_outpost/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &doc["paths"]["/_outpost/v1/queue/{id}"]["delete"];
    let retry = &doc["paths"]["/_outpost/v1/queue/{id}/retry"]["post"];
    assert!(entry["responses"].get("409").is_none(), "{entry}");
    assert!(
        retry["responses"]["409"]["description"]
            .as_str()
            .unwrap()
            .contains("delivered"),
        "{retry}"
    );

    // Pending entries can be retried and dropped; a delivered one can be dropped.
    let (_, _, a) = crate::support::post(&gw.url("/a"), "a", &[]).await;
    let (_, _, b) = crate::support::post(&gw.url("/b"), "b", &[]).await;
    let admin = |method: reqwest::Method, path: String| {
        client()
            .request(method, gw.url(&path))
            .bearer_auth(TOKEN)
            .send()
    };
    let id_a = a["id"].as_str().unwrap();
    let resp = admin(
        reqwest::Method::POST,
        format!("/_outpost/v1/queue/{id_a}/retry"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = admin(
        reqwest::Method::DELETE,
        format!("/_outpost/v1/queue/{id_a}"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    upstream.restart().await;
    let id_b = b["id"].as_str().unwrap();
    gw.wait_state(id_b, "done").await;
    let resp = admin(
        reqwest::Method::DELETE,
        format!("/_outpost/v1/queue/{id_b}"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    gw.stop().await;
}
