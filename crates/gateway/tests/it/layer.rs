//! The tower layer: an axum app whose handler reports its database unavailable.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing;
use outpost_gateway::layer::{LayerConfig, OfflineQueue, database_unavailable};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[derive(Default)]
struct Db {
    up: AtomicBool,
    rows: Mutex<Vec<(String, String)>>,
}

async fn insert(State(db): State<Arc<Db>>, headers: HeaderMap, body: String) -> Response {
    if !db.up.load(Ordering::SeqCst) {
        return database_unavailable();
    }
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    let mut rows = db.rows.lock().unwrap();
    // The handler honours Idempotency-Key, as the layer expects.
    if !rows.iter().any(|(k, _)| *k == key) {
        rows.push((key, body));
    }
    (axum::http::StatusCode::CREATED, "stored").into_response()
}

#[tokio::test]
async fn writes_are_queued_while_the_database_is_down_and_replayed_into_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::default());
    let routes = Router::new()
        .route("/rows", routing::post(insert))
        .with_state(db.clone());
    let mut config = LayerConfig::new(dir.path().to_owned());
    config.retry.base_delay = std::time::Duration::from_millis(20);
    config.retry.max_delay = std::time::Duration::from_millis(100);
    let offline = OfflineQueue::open(config).unwrap();
    let app = routes.clone().layer(offline.layer());

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(offline.worker(routes).run(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
            .unwrap()
    });

    let url = format!("http://{addr}/rows");
    let mut ids = Vec::new();
    for i in 0..10 {
        let (status, headers, body) = post(&url, &format!("row-{i}"), &[]).await;
        assert_eq!(status, 202);
        assert_eq!(headers["location"], body["status_url"].as_str().unwrap());
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let status_url = format!("http://{addr}/_outpost/v1/queue/{}", ids[0]);
    let entry: serde_json::Value = client()
        .get(&status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entry["state"], "pending");
    assert!(db.rows.lock().unwrap().is_empty());

    db.up.store(true, Ordering::SeqCst);
    for _ in 0..1000 {
        if offline.queue().pending_count().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let rows: Vec<String> = db
        .rows
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("row-{i}")).collect();
    assert_eq!(rows, expected);
    let entry: serde_json::Value = client()
        .get(&status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entry["state"], "done");
    assert_eq!(entry["response"]["status"], 201);
    assert_eq!(entry["response"]["body"], "stored");

    // With the database up, writes go straight to the handler.
    let (status, _, _) = post(&url, "row-10", &[]).await;
    assert_eq!(status, 201);
    assert_eq!(db.rows.lock().unwrap().len(), 11);

    shutdown.cancel();
    worker.await.unwrap();
    server.await.unwrap();
}

#[derive(Clone, Debug)]
struct Tenant(String);

/// Issue 15, defect 12: the layer's replay dropped the request extensions that layers outside
/// it set (here the tenant), so the handler failed on every replay. `worker_with` restores them,
/// and replays are marked.
#[tokio::test]
async fn replayed_requests_get_their_extensions_back() {
    use axum::Extension;
    use outpost_gateway::layer::Replayed;

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::default());
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let routes = {
        let db = db.clone();
        let seen = seen.clone();
        Router::new().route(
            "/rows",
            routing::post(
                move |Extension(tenant): Extension<Tenant>,
                      replayed: Option<Extension<Replayed>>| {
                    let db = db.clone();
                    let seen = seen.clone();
                    async move {
                        if !db.up.load(Ordering::SeqCst) {
                            return database_unavailable();
                        }
                        seen.lock().unwrap().push((tenant.0, replayed.is_some()));
                        axum::http::StatusCode::CREATED.into_response()
                    }
                },
            ),
        )
    };
    let tenant_from_header = |req: &mut axum::http::Request<axum::body::Body>| {
        if let Some(tenant) = req.headers().get("x-tenant") {
            let tenant = Tenant(tenant.to_str().unwrap().to_owned());
            req.extensions_mut().insert(tenant);
        }
    };
    let mut config = LayerConfig::new(dir.path().to_owned());
    config.retry.base_delay = std::time::Duration::from_millis(20);
    config.retry.max_delay = std::time::Duration::from_millis(100);
    let offline = OfflineQueue::open(config).unwrap();
    let app = routes
        .clone()
        .layer(offline.layer())
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: axum::http::Request<axum::body::Body>| {
                tenant_from_header(&mut req);
                req
            },
        ));
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        offline
            .worker_with(routes, tenant_from_header)
            .supervise(shutdown.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
            .unwrap()
    });
    let (status, _, body) = post(&format!("http://{addr}/rows"), "r", &[("x-tenant", "t1")]).await;
    assert_eq!(status, 202);
    db.up.store(true, Ordering::SeqCst);
    let id = body["id"].as_str().unwrap();
    let mut state = serde_json::Value::Null;
    for _ in 0..1500 {
        let entry: serde_json::Value = client()
            .get(format!("http://{addr}/_outpost/v1/queue/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = entry["state"].clone();
        if state == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, "done");
    assert_eq!(*seen.lock().unwrap(), [("t1".to_owned(), true)]);
    shutdown.cancel();
    worker.await.unwrap();
    server.await.unwrap();
}
