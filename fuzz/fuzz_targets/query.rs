//! Query parameters, as every read route parses them: the input is a query string sent to the
//! routes a sync client reads from (a real router over SQLite in a temporary directory, with a
//! few documents, a conflict and a deletion). Whatever the parameters, the answer is never a
//! 5xx, and a successful JSON answer is whole JSON.
//!
//! `feed=normal` is appended (a later parameter wins) so that no input can start a live feed.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use outpost_server::{AppState, Config, app};
use outpost_store::sqlite::SqliteStore;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/db/_all_docs",
    "/db/_changes",
    "/db/_events",
    "/db/_conflicts",
    "/db/doc",
    "/db/gone",
    "/db/_local/l",
    "/db",
    "/_all_dbs",
    "/_uuids",
    "/_scheduler/jobs",
];

struct Server {
    runtime: Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let router = runtime.block_on(async {
            let state = AppState::new(store, Config::default(), Default::default());
            let router = app(state);
            let setup: &[(&str, &str, &str)] = &[
                ("PUT", "/db", ""),
                ("PUT", "/db/doc", r#"{"v":1}"#),
                ("PUT", "/db/gone", r#"{"v":2}"#),
                ("PUT", "/db/_local/l", r#"{"v":3}"#),
                (
                    "POST",
                    "/db/_bulk_docs",
                    r#"{"new_edits":false,"docs":[{"_id":"doc","_rev":"1-aaaa","w":1},{"_id":"b","_rev":"3-cc","_revisions":{"start":3,"ids":["cc","bb","aa"]}}]}"#,
                ),
            ];
            let send = |method: &str, path: &str, body: &str| {
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_owned()))
                    .unwrap();
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await.unwrap();
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
                }
            };
            for (method, path, body) in setup {
                send(method, path, body).await;
            }
            let gone = send("GET", "/db/gone", "").await;
            let rev = gone["_rev"].as_str().unwrap();
            let deleted = send("DELETE", &format!("/db/gone?rev={rev}"), "").await;
            assert_eq!(deleted["ok"], true, "{deleted}");
            router
        });
        Server {
            runtime,
            router,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let server = server();
    for route in ROUTES {
        let uri = format!("{route}?{query}&feed=normal");
        let Ok(request) = Request::builder()
            .method("GET")
            .uri(&uri)
            .body(Body::empty())
        else {
            return;
        };
        server.runtime.block_on(async {
            let response = server.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let json = response
                .headers()
                .get("content-type")
                .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert!(
                !status.is_server_error(),
                "GET {uri} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            if status.is_success() && json {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                    "GET {uri} answered a broken body: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        });
    }
});
