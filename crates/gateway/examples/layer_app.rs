//! An axum backend that keeps accepting writes while its database is down.
//!
//! The `POST /notes` handler reports `database_unavailable()` while the (simulated) database is
//! offline; the [`OfflineQueueLayer`](outpost_gateway::layer::OfflineQueueLayer) queues the
//! request durably, answers `202` with a status URL, and the worker replays it into the same
//! handler once the database is back.
//!
//! ```text
//! cargo run -p outpost-gateway --example layer_app
//! curl -X POST localhost:3000/db/offline
//! curl -i -X POST localhost:3000/notes -d 'first note'      # 202 + Location
//! curl -X POST localhost:3000/db/online                     # replayed within a second
//! curl localhost:3000/notes
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use outpost_gateway::Ordering as ReplayOrdering;
use outpost_gateway::layer::{LayerConfig, OfflineQueue, database_unavailable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stand-in for a real database connection pool that can be switched off.
#[derive(Default)]
struct Db {
    online: AtomicBool,
    /// (idempotency key, text); the key makes a replayed request apply once.
    notes: Mutex<Vec<(String, String)>>,
}

async fn create_note(State(db): State<Arc<Db>>, headers: HeaderMap, text: String) -> Response {
    if !db.online.load(Ordering::SeqCst) {
        return database_unavailable();
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut notes = db.notes.lock().expect("notes lock");
    if !key.is_empty() && notes.iter().any(|(k, _)| *k == key) {
        return (StatusCode::OK, "already stored").into_response();
    }
    notes.push((key, text));
    (StatusCode::CREATED, format!("note {}", notes.len())).into_response()
}

async fn list_notes(State(db): State<Arc<Db>>) -> Response {
    let notes = db.notes.lock().expect("notes lock");
    let lines: Vec<String> = notes.iter().map(|(_, t)| t.clone()).collect();
    lines.join("\n").into_response()
}

async fn set_online(State(db): State<Arc<Db>>, online: bool) -> &'static str {
    db.online.store(online, Ordering::SeqCst);
    if online { "online\n" } else { "offline\n" }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Arc::new(Db {
        online: AtomicBool::new(true),
        ..Db::default()
    });
    let routes = Router::new()
        .route("/notes", post(create_note).get(list_notes))
        .route("/db/online", post(|s| set_online(s, true)))
        .route("/db/offline", post(|s| set_online(s, false)))
        .with_state(db);

    let mut config = LayerConfig::new("./layer-app-data".into());
    // One replay order per first path segment: queued notes must not hold back `/db/online`.
    config.ordering = ReplayOrdering::PathSegments(1);
    let offline = OfflineQueue::open(config)?;
    let app = routes.clone().layer(offline.layer());

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(offline.worker(routes).supervise(shutdown.clone()));

    let addr = std::env::var("LAYER_APP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await?;
    tracker.close();
    tracker.wait().await;
    Ok(())
}
