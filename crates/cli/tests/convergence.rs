//! Three `outpost serve` processes edit the same documents while replicating with each other
//! (`outpost replicate`) on a random schedule with links cut and restored; for each conflict
//! policy, every replica must end with identical documents and revision trees, no live conflicts
//! under `lww` and `merge`, the same conflicts listed everywhere under `manual`, and an event log
//! that replays into its tables.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

struct Replica {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("OUTPOST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&base).await.is_err() {
        assert!(Instant::now() < deadline, "outpost did not start on {base}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Replica {
        child,
        base,
        _dir: dir,
        data,
    }
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json");
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One-shot `outpost replicate`; returns the number of documents it wrote.
fn replicate(from: &Replica, to: &Replica) -> u64 {
    let out = Command::new(BIN)
        .args([
            "replicate",
            &format!("{}/conv", from.base),
            &format!("{}/conv", to.base),
        ])
        .env("OUTPOST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replicate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    result["docs_written"].as_u64().unwrap()
}

/// Every document of a replica with all its leaves and their histories, comparable across
/// replicas.
async fn snapshot(r: &Replica) -> Vec<(String, Value)> {
    let (_, changes) = call(
        reqwest::Method::GET,
        &format!("{}/conv/_changes", r.base),
        None,
    )
    .await;
    let mut ids: Vec<String> = changes["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        let url = format!("{}/conv/{id}?open_revs=all&revs=true", r.base);
        let (_, mut leaves) = call(reqwest::Method::GET, &url, None).await;
        leaves
            .as_array_mut()
            .unwrap()
            .sort_by_key(|l| l["ok"]["_rev"].as_str().unwrap_or_default().to_owned());
        out.push((id, leaves));
    }
    out
}

async fn scenario(policy: &str, seed: u64) {
    let replicas = [start().await, start().await, start().await];
    for r in &replicas {
        assert_eq!(
            call(reqwest::Method::PUT, &format!("{}/conv", r.base), None)
                .await
                .0,
            201
        );
        let settings = json!({"conflict_policy": policy, "lww_field": "at"});
        assert_eq!(
            call(
                reqwest::Method::PUT,
                &format!("{}/conv/_outpost", r.base),
                Some(settings)
            )
            .await
            .0,
            200
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = 0u64;
    for _round in 0..6 {
        // Every replica edits while (some) links are cut: the same few documents, so edits collide.
        for (i, r) in replicas.iter().enumerate() {
            for _ in 0..4 {
                clock += 1;
                let id = format!("d{}", rng.random_range(0..5));
                let (status, current) =
                    call(reqwest::Method::GET, &format!("{}/conv/{id}", r.base), None).await;
                let mut body = if status == 200 { current } else { json!({}) };
                body["at"] = json!(clock);
                body[format!("by{i}")] = json!(rng.random_range(0..100));
                if rng.random_bool(0.1) && status == 200 {
                    let rev = body["_rev"].as_str().unwrap().to_owned();
                    call(
                        reqwest::Method::DELETE,
                        &format!("{}/conv/{id}?rev={rev}", r.base),
                        None,
                    )
                    .await;
                } else {
                    let (s, _) = call(
                        reqwest::Method::PUT,
                        &format!("{}/conv/{id}", r.base),
                        Some(body),
                    )
                    .await;
                    assert_eq!(s, 201);
                }
            }
        }
        // A random subset of the six directed links is up this round.
        for from in 0..3 {
            for to in 0..3 {
                if from != to && rng.random_bool(0.4) {
                    replicate(&replicas[from], &replicas[to]);
                }
            }
        }
    }
    // All links restored: replicate until a full round writes nothing anywhere.
    let mut quiet = false;
    for _ in 0..8 {
        let mut written = 0;
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    written += replicate(&replicas[from], &replicas[to]);
                }
            }
        }
        if written == 0 {
            quiet = true;
            break;
        }
    }
    assert!(
        quiet,
        "{policy}: replicas kept writing to each other (resolutions ping-pong)"
    );

    let first = snapshot(&replicas[0]).await;
    assert!(!first.is_empty());
    for other in &replicas[1..] {
        assert_eq!(snapshot(other).await, first, "{policy}: replicas differ");
    }
    let mut listed = Vec::new();
    for r in &replicas {
        let (_, conflicts) = call(
            reqwest::Method::GET,
            &format!("{}/conv/_conflicts", r.base),
            None,
        )
        .await;
        listed.push(conflicts["rows"].clone());
    }
    if policy == "manual" {
        assert!(
            listed.iter().all(|l| *l == listed[0]),
            "{policy}: conflicts listed differently: {listed:?}"
        );
        assert_ne!(
            listed[0],
            json!([]),
            "the schedule made no conflict, so it tests nothing"
        );
    } else {
        for l in &listed {
            assert_eq!(*l, json!([]), "{policy}: a live conflict is left");
        }
        let (_, events) = call(
            reqwest::Method::GET,
            &format!("{}/conv/_events", replicas[0].base),
            None,
        )
        .await;
        let resolved = events["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "resolved")
            .count();
        assert!(
            resolved > 0,
            "{policy}: nothing was resolved, so the schedule tests nothing"
        );
    }
    for r in &replicas {
        let out = Command::new(BIN)
            .args(["db", "verify", "--data", r.data.to_str().unwrap(), "conv"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{policy}: replay differs: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_converge_under_manual() {
    install_crypto();
    scenario("manual", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_converge_under_lww() {
    install_crypto();
    scenario("lww", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_converge_under_merge() {
    install_crypto();
    scenario("merge", 3).await;
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
