//! End-to-end tests of `outpost gateway` and `outpost queue`, running the built binary against
//! a real upstream server on 127.0.0.1.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;

#[path = "../../gateway/tests/it/pg.rs"]
mod pg;

const TOKEN: &str = "cli-test-token";

/// Every write the upstream received: (idempotency key, target, body).
type Log = Arc<Mutex<Vec<(String, String, String)>>>;

#[derive(Clone, Default)]
struct UpstreamState {
    log: Log,
    /// While set, `/hang` is recorded and then never answered.
    hang: Arc<std::sync::atomic::AtomicBool>,
}

async fn record(
    State(state): State<UpstreamState>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if uri.path() == "/reject" {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    state.log.lock().unwrap().push((key, uri.to_string(), body));
    if uri.path() == "/hang" && state.hang.load(std::sync::atomic::Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    StatusCode::CREATED
}

/// A real upstream on a fixed port that can be started after the gateway.
struct Upstream {
    addr: SocketAddr,
    log: Log,
    state: UpstreamState,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    async fn reserve() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let state = UpstreamState::default();
        Self {
            addr,
            log: state.log.clone(),
            state,
            task: None,
        }
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn start(&mut self) {
        let app = Router::new()
            .route("/probe", axum::routing::get(|| async { "ok" }))
            .fallback(record)
            .with_state(self.state.clone());
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        }));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The gateway binary as a child process.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
}

impl GatewayProcess {
    fn start(upstream: SocketAddr, data: &Path) -> Self {
        Self::start_with(upstream, data, &[])
    }

    fn start_with(upstream: SocketAddr, data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--probe-path",
                "/probe",
            ])
            .args([
                "--probe-interval",
                "50ms",
                "--retry-base",
                "20ms",
                "--retry-max",
                "200ms",
            ])
            .args(["--admin-token", TOKEN, "--upstream"])
            .arg(format!("http://{upstream}"))
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("OUTPOST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn sigkill(mut self) {
        // `Child::kill` sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "gateway exited with {exit}");
    }

    /// The value of an unlabelled metric, 0 when it was never recorded.
    async fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/_outpost/v1/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    async fn status(&self) -> Value {
        client()
            .get(self.url("/_outpost/v1/gateway"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn queue_cli(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("queue")
        .arg("--data")
        .arg(data)
        .args(args)
        .env("OUTPOST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let mut upstream = Upstream::reserve().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(upstream.addr, dir.path());

    // Sixteen clients write as fast as they can; each remembers what was acknowledged.
    const CLIENTS: usize = 16;
    let acked: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); CLIENTS]));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let acked = acked.clone();
        let url = gateway.url(&format!("/stream/{c}"));
        tasks.push(tokio::spawn(async move {
            let client = client();
            for n in 0.. {
                let body = format!("c{c}-{n}");
                match client.post(&url).body(body.clone()).send().await {
                    Ok(resp) if resp.status() == 202 => acked.lock().unwrap()[c].push(body),
                    Ok(resp) => panic!("unexpected answer {}", resp.status()),
                    // The gateway was killed: whatever was not acknowledged may be lost.
                    Err(_) => break,
                }
            }
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 2000 {
            break;
        }
    }
    gateway.sigkill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total >= 2000);

    upstream.start().await;
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    let mut drained = false;
    for _ in 0..3000 {
        let status = gateway.status().await;
        if status["queue"]["depth"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "queue did not drain: {}", gateway.status().await);

    let log = upstream.log.lock().unwrap().clone();
    // Exactly once: no body and no idempotency key delivered twice.
    let mut bodies = HashMap::new();
    let mut keys = HashMap::new();
    for (key, _, body) in &log {
        *bodies.entry(body.clone()).or_insert(0) += 1;
        *keys.entry(key.clone()).or_insert(0) += 1;
    }
    assert!(
        bodies.values().all(|n| *n == 1),
        "a request was delivered twice"
    );
    assert!(
        keys.values().all(|n| *n == 1),
        "an idempotency key was delivered twice"
    );
    // Nothing acknowledged is missing, and each client's writes arrived in its order.
    for (c, acked) in acked.iter().enumerate() {
        let prefix = format!("c{c}-");
        let received: Vec<&String> = log
            .iter()
            .map(|(_, _, b)| b)
            .filter(|b| b.starts_with(&prefix))
            .collect();
        for (i, body) in acked.iter().enumerate() {
            assert_eq!(
                received.get(i).copied(),
                Some(body),
                "client {c} lost or reordered"
            );
        }
        for (n, body) in received.iter().enumerate() {
            assert_eq!(**body, format!("c{c}-{n}"), "client {c} out of order");
        }
        for (_, target, body) in log.iter().filter(|(_, _, b)| b.starts_with(&prefix)) {
            assert_eq!(target, &format!("/stream/{c}"), "{body}");
        }
    }
    gateway.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_operate_on_the_data_directory() {
    let mut upstream = Upstream::reserve().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    let mut ids = Vec::new();
    for path in ["/reject", "/ok", "/later"] {
        let resp = client()
            .post(gateway.url(path))
            .header("authorization", "Bearer SECRET-TOKEN")
            .body(format!("body of {path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // Stop the gateway cleanly before the upstream exists: all three stay pending.
    gateway.sigterm();

    let (ok, out) = queue_cli(dir.path(), &["ls"]);
    assert!(ok, "{out}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert_eq!(out.matches("pending").count(), 3, "{out}");

    let (ok, out) = queue_cli(dir.path(), &["show", &ids[1], "--body"]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["request"]["target"], "/ok");
    assert_eq!(shown["request"]["body"], "body of /ok");
    assert_eq!(shown["request"]["headers"]["authorization"], "[redacted]");
    assert!(!out.contains("SECRET-TOKEN"));
    assert_eq!(shown["delivered_at"], Value::Null, "{out}");

    let (ok, out) = queue_cli(dir.path(), &["drop", &ids[2]]);
    assert!(ok, "{out}");
    let (ok, out) = queue_cli(dir.path(), &["show", &ids[2]]);
    assert!(!ok, "a dropped entry is still shown: {out}");

    // Deliver: /reject is dead-lettered, /ok delivered, the dropped one never sent.
    upstream.start().await;
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    for _ in 0..1000 {
        let status = gateway.status().await;
        if status["queue"]["depth"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.sigterm();
    let log = upstream.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].2, "body of /ok");

    let (ok, out) = queue_cli(dir.path(), &["show", &ids[1]]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"], "done", "{out}");
    let at = shown["delivered_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    assert!(at.ends_with('Z') && at.len() == 24, "{out}");

    let (ok, out) = queue_cli(dir.path(), &["ls", "--state", "dead"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(ids[0].as_str()) && out.contains("422"),
        "{out}"
    );
    let (ok, out) = queue_cli(dir.path(), &["retry", &ids[0]]);
    assert!(ok, "{out}");
    let (ok, out) = queue_cli(dir.path(), &["ls", "--state", "pending"]);
    assert!(ok && out.contains(ids[0].as_str()), "{out}");
    let (ok, out) = queue_cli(dir.path(), &["retry", &ids[1]]);
    assert!(!ok && out.contains("already delivered"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_at_sigkill_is_delivered_again_with_the_same_key() {
    let mut upstream = Upstream::reserve().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    let resp = client()
        .post(gateway.url("/hang"))
        .body("in flight")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The upstream takes the request and never answers: the delivery is in flight.
    upstream
        .state
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    upstream.start().await;
    for _ in 0..1000 {
        if !upstream.log.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        upstream.log.lock().unwrap().len(),
        1,
        "delivery never started"
    );
    gateway.sigkill();

    upstream.stop().await;
    upstream
        .state
        .hang
        .store(false, std::sync::atomic::Ordering::SeqCst);
    upstream.start().await;
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    let mut entry = Value::Null;
    for _ in 0..1000 {
        entry = client()
            .get(gateway.url(&format!("/_outpost/v1/queue/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if entry["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(entry["state"], "done", "{entry}");
    let log = upstream.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log[0].0, log[1].0,
        "the redelivery changed the idempotency key"
    );
    assert_eq!(log[1].2, "in flight");
    gateway.sigterm();
}

/// A backend that honours `Idempotency-Key` and is slow: it applies a key's first request, takes
/// a while to answer, and answers a repeated key from memory without applying it again.
#[derive(Clone, Default)]
struct KeyedBackend {
    /// Bodies in the order they were applied.
    applied: Arc<Mutex<Vec<String>>>,
    /// Keys already applied.
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Requests received, repeats included.
    received: Arc<std::sync::atomic::AtomicUsize>,
}

async fn keyed(State(b): State<KeyedBackend>, headers: HeaderMap, body: String) -> StatusCode {
    b.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if !b.seen.lock().unwrap().insert(key) {
        return StatusCode::CREATED;
    }
    b.applied.lock().unwrap().push(body);
    tokio::time::sleep(Duration::from_millis(5)).await;
    StatusCode::CREATED
}

/// Issue 15, defect 13: the SIGKILL test never had a delivery in flight. Here the gateway is
/// killed while draining toward an up, slow, key-honouring backend: after a restart nothing
/// acknowledged is lost and nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_deliveries_in_flight_loses_nothing_and_applies_nothing_twice() {
    const WRITES: usize = 400;
    let upstream = Upstream::reserve().await;
    let dir = tempfile::tempdir().unwrap();
    let honours = ["--upstream-honours-idempotency-key", "--order-by", "path:2"];
    let gateway = GatewayProcess::start_with(upstream.addr, dir.path(), &honours);
    // Queued while the backend is down, across four ordering keys.
    let client = client();
    for n in 0..WRITES {
        let resp = client
            .post(gateway.url(&format!("/lane/{}", n % 4)))
            .body(format!("w{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let backend = KeyedBackend::default();
    let server = serve_keyed(upstream.addr, &backend).await;

    // Kill it mid-drain, with deliveries in flight.
    for _ in 0..3000 {
        if backend.applied.lock().unwrap().len() >= WRITES / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_kill = backend.applied.lock().unwrap().len();
    assert!((WRITES / 4..WRITES).contains(&at_kill), "{at_kill}");
    gateway.sigkill();

    let gateway = GatewayProcess::start_with(upstream.addr, dir.path(), &honours);
    let mut drained = false;
    for _ in 0..3000 {
        if gateway.status().await["queue"]["depth"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "queue did not drain: {}", gateway.status().await);
    assert_applied_once_in_order(&backend, WRITES);
    gateway.sigterm();
    server.abort();
}

/// Checks that the `writes` bodies `w0`, `w1`, … sent to `/lane/{n % 4}` were each applied
/// once, and each lane's in the order sent.
fn assert_applied_once_in_order(backend: &KeyedBackend, writes: usize) {
    let applied = backend.applied.lock().unwrap().clone();
    let mut counts = HashMap::new();
    for body in &applied {
        *counts.entry(body.clone()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), writes, "an acknowledged write was lost");
    assert!(
        counts.values().all(|n| *n == 1),
        "a write was applied twice"
    );
    // Each ordering key was applied in its order.
    for lane in 0..4 {
        let order: Vec<usize> = applied
            .iter()
            .map(|b| b[1..].parse::<usize>().unwrap())
            .filter(|n| n % 4 == lane)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "lane {lane}: {order:?}"
        );
    }
}

/// Serves `backend` on `addr` (the gateways' upstream, down until now).
async fn serve_keyed(addr: SocketAddr, backend: &KeyedBackend) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/probe", axum::routing::get(|| async { "ok" }))
        .fallback(keyed)
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
}

/// Issue 13: two gateways share one PostgreSQL queue. Writes are queued through both while the
/// backend is down; once it is up, one gateway is SIGKILLed mid-drain. The other takes its
/// ordering keys over when their leases expire: every acknowledged write is applied once, each
/// key's writes in the order they were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_queue_lose_nothing_when_one_is_sigkilled() {
    const WRITES: usize = 400;
    let Some(schema) = pg::TestSchema::create("two_gateways_one_queue_sigkill").await else {
        return;
    };
    let upstream = Upstream::reserve().await;
    // One directory for the key both gateways need; the queue is in PostgreSQL.
    let dir = tempfile::tempdir().unwrap();
    let shared = [
        "--store",
        &schema.url,
        "--lease-ttl",
        "1s",
        "--upstream-honours-idempotency-key",
        "--order-by",
        "path:2",
    ];
    let first = GatewayProcess::start_with(upstream.addr, dir.path(), &shared);
    let second = GatewayProcess::start_with(upstream.addr, dir.path(), &shared);
    let client = client();
    for n in 0..WRITES {
        // Each lane's writes go through both gateways in turn.
        let gateway = if (n / 4) % 2 == 0 { &first } else { &second };
        let resp = client
            .post(gateway.url(&format!("/lane/{}", n % 4)))
            .body(format!("w{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    assert_eq!(second.status().await["queue"]["depth"], WRITES);
    // The operator's command sees the shared queue.
    let (ok, out) = queue_cli(
        dir.path(),
        &[
            "--store",
            &schema.url,
            "ls",
            "--state",
            "pending",
            "--limit",
            "1000",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), WRITES + 1, "{out}");

    let backend = KeyedBackend::default();
    let server = serve_keyed(upstream.addr, &backend).await;
    for _ in 0..3000 {
        if backend.applied.lock().unwrap().len() >= WRITES / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The one delivering more lanes dies, with its leases and deliveries in flight.
    let held = "outpost_gateway_leases_held";
    let (mut a, mut b) = (0.0, 0.0);
    for _ in 0..200 {
        (a, b) = (first.metric(held).await, second.metric(held).await);
        if a + b > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a + b > 0.0, "no gateway holds a lease mid-drain");
    let (victim, survivor) = if a >= b {
        (first, second)
    } else {
        (second, first)
    };
    let at_kill = backend.applied.lock().unwrap().len();
    assert!((WRITES / 4..WRITES).contains(&at_kill), "{at_kill}");
    victim.sigkill();

    let mut drained = false;
    for _ in 0..3000 {
        if survivor.status().await["queue"]["depth"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "queue did not drain: {}", survivor.status().await);
    assert_applied_once_in_order(&backend, WRITES);
    assert!(
        survivor
            .metric("outpost_gateway_lease_takeovers_total")
            .await
            >= 1.0,
        "the survivor never took over the dead gateway's keys"
    );
    survivor.sigterm();
    server.abort();
}

/// Keys rotate: `outpost queue rekey` re-seals every entry with a new key while the gateway is
/// stopped (refused while it runs), and the gateway then delivers everything under the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rekey_rotates_the_key() {
    let mut upstream = Upstream::reserve().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let new_key = keys.path().join("new.key");
    let gateway = GatewayProcess::start(upstream.addr, dir.path());
    for n in 0..3 {
        let resp = client()
            .post(gateway.url("/r"))
            .body(format!("r{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let (ok, out) = queue_cli(
        dir.path(),
        &["rekey", "--new-key-file", new_key.to_str().unwrap()],
    );
    assert!(!ok && out.contains("in use by another process"), "{out}");
    gateway.sigterm();

    let old_key = std::fs::read_to_string(dir.path().join("gateway.key")).unwrap();
    let (ok, out) = queue_cli(
        dir.path(),
        &["rekey", "--new-key-file", new_key.to_str().unwrap()],
    );
    assert!(ok && out.contains("re-sealed 3 entries"), "{out}");
    let key = std::fs::read_to_string(&new_key).unwrap();
    assert_ne!(key, old_key);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gateway.key")).unwrap(),
        key
    );
    let (ok, out) = queue_cli(dir.path(), &["ls", "--state", "pending"]);
    assert!(ok && out.lines().count() == 4, "{out}");

    upstream.start().await;
    let gateway = GatewayProcess::start_with(
        upstream.addr,
        dir.path(),
        &["--key-file", new_key.to_str().unwrap()],
    );
    for _ in 0..1000 {
        if upstream.log.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies: Vec<String> = upstream
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.2.clone())
        .collect();
    assert_eq!(bodies, ["r0", "r1", "r2"]);
    gateway.sigterm();
}
