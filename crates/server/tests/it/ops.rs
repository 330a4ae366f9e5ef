//! The operational endpoints: metrics that move with traffic, readiness, request ids.
//!
//! Metrics are process-wide and the other tests of this binary run alongside, so counters are
//! compared as "grew by at least what this test did", never as exact values.

use std::sync::Arc;

use http::StatusCode;
use outpost_server::{AppState, Config, app};
use outpost_store::sqlite::SqliteStore;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::TestServer;

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(server: &TestServer, path: &str) -> String {
    let (status, headers, body) = server.raw("GET", path, &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn metrics_move_with_a_small_workload() {
    let s = TestServer::new();
    s.expect("PUT", "/opsdb", None, 201).await;
    s.expect("PUT", "/opsdb/a", Some(json!({"n": 1})), 201)
        .await;
    let before = scrape(&s, "/_outpost/v1/metrics").await;

    for i in 0..3 {
        s.expect("PUT", &format!("/opsdb/doc{i}"), Some(json!({"n": i})), 201)
            .await;
        s.expect("GET", &format!("/opsdb/doc{i}"), None, 200).await;
    }
    s.expect("GET", "/opsdb/missing", None, 404).await;
    // A second branch of `a` from a replication: a conflict under the default manual policy.
    s.expect(
        "POST",
        "/opsdb/_bulk_docs",
        Some(json!({"new_edits": false, "docs": [
            {"_id": "a", "_rev": "1-0123456789abcdef0123456789abcdef", "n": 2}
        ]})),
        201,
    )
    .await;
    let after = scrape(&s, "/_node/_local/_prometheus").await;

    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let put = [
        ("route", "/{db}/{docid}"),
        ("method", "PUT"),
        ("status", "201"),
    ];
    assert!(grew("outpost_http_requests_total", &put) >= 3.0, "{after}");
    let missing = [
        ("route", "/{db}/{docid}"),
        ("method", "GET"),
        ("status", "404"),
    ];
    assert!(grew("outpost_http_requests_total", &missing) >= 1.0);
    let timed = [("route", "/{db}/{docid}"), ("method", "GET")];
    assert!(grew("outpost_http_request_duration_seconds_count", &timed) >= 4.0);
    assert!(grew("outpost_documents_written_total", &[("kind", "created")]) >= 3.0);
    assert!(grew("outpost_documents_read_total", &[]) >= 3.0);
    assert!(grew("outpost_conflicts_detected_total", &[("policy", "manual")]) >= 1.0);
    // No raw path or document id ever becomes a label.
    assert!(
        !after.contains("doc1") && !after.contains("opsdb"),
        "{after}"
    );
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let s = TestServer::new();
    let (_, headers, _) = s
        .raw("GET", "/_up", &[("x-request-id", "client-42")], None)
        .await;
    assert_eq!(headers["x-request-id"], "client-42");
    let (_, headers, _) = s.raw("GET", "/_up", &[], None).await;
    let generated = headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 32, "{generated}");
    let (_, headers, _) = s
        .raw(
            "GET",
            "/_up",
            &[("x-request-id", "forged\" level=\"error")],
            None,
        )
        .await;
    assert_ne!(headers["x-request-id"], "forged\" level=\"error");
}

#[tokio::test]
async fn ready_until_shutdown_begins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let s = TestServer {
        router: app(AppState::new(store, Config::default(), shutdown.clone())),
        dir,
    };
    let (status, body) = s.call("GET", "/_outpost/v1/ready", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ready"}));

    shutdown.cancel();
    let (status, headers, body) = s.raw("GET", "/_outpost/v1/ready", &[], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "service_unavailable", "{body}");
}

#[tokio::test]
async fn ops_endpoints_refuse_writes() {
    let s = TestServer::new();
    let (status, _) = s.call("POST", "/_outpost/v1/metrics", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = s.call("DELETE", "/_outpost/v1/ready", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_openapi_document_lists_every_v1_route() {
    let s = TestServer::new();
    let (status, doc) = s.call("GET", "/_outpost/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();

    // The routes `ops::route` serves, read from its match arms, so a new route that is not in
    // the document fails here.
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes/ops.rs"),
    )
    .unwrap();
    let body = source
        .split("pub async fn route(")
        .nth(1)
        .unwrap()
        .split("\n}\n")
        .next()
        .unwrap();
    let served: Vec<String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\"")?.split_once("\"] =>"))
        .map(|(name, _)| format!("/_outpost/v1/{name}"))
        .collect();
    assert!(served.len() >= 3, "{served:?}");
    for path in &served {
        assert!(
            paths.contains_key(path),
            "{path} is served but not in the document"
        );
    }
    // And everything documented is served, with a documented status.
    for (path, item) in paths {
        assert!(served.contains(path), "{path} is documented but not served");
        let responses = item["get"]["responses"].as_object().unwrap();
        let (status, _, _) = s.raw("GET", path, &[], None).await;
        assert!(
            responses.contains_key(status.as_str()),
            "GET {path} answered {status}, not documented"
        );
    }
    // Schemas referenced are defined.
    let text = doc.to_string();
    for schema in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(text.contains(&format!("#/components/schemas/{schema}")));
    }
    let (status, _) = s.call("GET", "/_outpost/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn database_info_reports_the_last_sync_per_peer() {
    let s = TestServer::new();
    for db in ["/here", "/there"] {
        assert_eq!(s.call("PUT", db, None).await.0, StatusCode::CREATED);
    }
    let (_, info) = s.call("GET", "/here", None).await;
    assert_eq!(info["outpost"]["replications"], json!([]), "{info}");
    assert_eq!(info["outpost"]["conflict_policy"], "manual", "{info}");

    s.call("PUT", "/here/doc", Some(json!({"v": 1}))).await;
    let (status, result) = s
        .call(
            "POST",
            "/_replicate",
            Some(json!({"source": "here", "target": "there"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");

    let check = |info: &serde_json::Value, peer: &str, direction: &str| {
        let reps = info["outpost"]["replications"].as_array().unwrap();
        assert_eq!(reps.len(), 1, "{info}");
        let rep = &reps[0];
        assert_eq!(rep["peer"], peer, "{info}");
        assert_eq!(rep["direction"], direction, "{info}");
        assert_eq!(rep["state"], "completed", "{info}");
        let time = rep["last_sync"]
            .as_str()
            .unwrap_or_else(|| panic!("{info}"));
        assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
    };
    check(&s.call("GET", "/here", None).await.1, "there", "push");
    check(&s.call("GET", "/there", None).await.1, "here", "pull");

    // A database deleted and created again has no history.
    s.call("DELETE", "/there", None).await;
    s.call("PUT", "/there", None).await;
    let (_, info) = s.call("GET", "/there", None).await;
    assert_eq!(info["outpost"]["replications"], json!([]), "{info}");
}

/// A replication job's series exist while the job does and go with it; a job that cannot make
/// progress shows as `crashing` in the state counts and its failures in its own series.
#[tokio::test]
async fn replication_series_follow_the_jobs_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let state = AppState::new(store, Config::default(), CancellationToken::new());
    outpost_server::replication::start_jobs(&state).await;
    let s = TestServer {
        router: app(state),
        dir,
    };
    // `_replicator` exists as soon as the jobs are started, before any request is served.
    s.expect("GET", "/_replicator", None, 200).await;
    s.expect("PUT", "/src", None, 201).await;
    let doc = json!({"source": "src", "target": "http://127.0.0.1:1/nowhere", "continuous": true});
    let rev = s.expect("PUT", "/_replicator/stuck", Some(doc), 201).await["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = [("replication", "stuck")];
    let scrape_until = |what: &'static str, done: fn(&str) -> bool| {
        let s = &s;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let text = scrape(s, "/_node/_local/_prometheus").await;
                if done(&text) {
                    return text;
                }
                assert!(std::time::Instant::now() < deadline, "{what}:\n{text}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let text = scrape_until("no failure counted", |t| {
        sample(
            t,
            "outpost_replication_consecutive_failures",
            &[("replication", "stuck")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        sample(&text, "outpost_replication_jobs", &[("state", "crashing")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "outpost_replication_docs_written_total", &job),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("outpost_replication_checkpoint_age_seconds{replication=\"stuck\"}"),
        "{text}"
    );
    // The job wrote its state into the document meanwhile.
    let current = s.expect("GET", "/_replicator/stuck", None, 200).await;
    assert_ne!(current["_rev"], rev.as_str(), "{current}");
    let rev = current["_rev"].as_str().unwrap();
    s.expect(
        "DELETE",
        &format!("/_replicator/stuck?rev={rev}"),
        None,
        200,
    )
    .await;
    let text = scrape_until("the job's series stayed", |t| {
        !t.contains("replication=\"stuck\"")
    })
    .await;
    assert_eq!(
        sample(&text, "outpost_replication_jobs", &[("state", "crashing")]),
        0.0,
        "{text}"
    );
}

/// A `_replicator` job that completed keeps its counters in `_scheduler/docs`, as CouchDB's
/// scheduler shows them (Fauxton's replication page and the console read them there).
#[tokio::test]
async fn a_completed_job_keeps_its_counters_in_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let state = AppState::new(store, Config::default(), CancellationToken::new());
    outpost_server::replication::start_jobs(&state).await;
    let s = TestServer {
        router: app(state),
        dir,
    };
    s.expect("PUT", "/src", None, 201).await;
    for id in ["a", "b"] {
        s.expect("PUT", &format!("/src/{id}"), Some(json!({"v": id})), 201)
            .await;
    }
    let job = json!({"source": "src", "target": "dst", "create_target": true});
    s.expect("PUT", "/_replicator/once", Some(job), 201).await;
    let mut doc = json!(null);
    for _ in 0..500 {
        let docs = s.expect("GET", "/_scheduler/docs", None, 200).await;
        doc = docs["docs"][0].clone();
        if doc["state"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(doc["info"]["docs_written"], 2, "{doc}");
    assert_eq!(doc["info"]["docs_read"], 2, "{doc}");
    assert_eq!(doc["info"]["doc_write_failures"], 0, "{doc}");
}

/// `_scheduler/jobs` in CouchDB's shape where Fauxton depends on it: a `_replicate` job's
/// `history` starts with its newest event (Fauxton reads `history[0].type`), and a URL ends
/// with `/` (Fauxton drops the last character before showing it).
#[tokio::test]
async fn scheduler_jobs_have_a_history_and_couchdb_urls() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote_store = Arc::new(SqliteStore::open(remote_dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    outpost_store::Store::create_db(remote_store.as_ref(), "src")
        .await
        .unwrap();
    let remote = AppState::new(remote_store, Config::default(), shutdown.clone());
    let base = format!("http://{}", crate::support::serve_on_loopback(remote).await);

    let s = TestServer::new();
    let body = json!({"source": format!("{base}/src"), "target": "dst", "create_target": true, "continuous": true});
    let started = s.expect("POST", "/_replicate", Some(body), 202).await;
    let jobs = s.expect("GET", "/_scheduler/jobs", None, 200).await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["id"], started["_local_id"], "{jobs}");
    assert_eq!(job["database"], json!(null), "{job}");
    assert_eq!(job["source"], format!("{base}/src/"), "{job}");
    assert_eq!(job["target"], "dst", "{job}");
    let history = job["history"].as_array().unwrap();
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["started", "added"], "{job}");
    assert_eq!(history[0]["timestamp"], job["start_time"], "{job}");
    s.expect(
        "POST",
        "/_replicate",
        Some(json!({"replication_id": started["_local_id"], "cancel": true})),
        200,
    )
    .await;
    shutdown.cancel();
}
