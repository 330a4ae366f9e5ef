//! Operating `outpost serve` as a process: the Prometheus rules and the scraped exposition pass
//! `promtool`, metrics move under a small workload, JSON log lines carry the request id,
//! SIGTERM during live change feeds exits 0 without losing an acknowledged write, and
//! `outpost db verify` and `outpost db rebuild` check and rebuild a database from its event log.
//!
//! `promtool` comes with Debian's `prometheus` package (`apt-get install prometheus`); where it is
//! not on `PATH` the promtool checks say so on stderr and are skipped, the rest still runs, except
//! with `CI=true` (as `.ci/run` sets), where a missing promtool fails them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../../gateway/tests/it/pg.rs"]
mod pg;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// Most time `outpost serve` may take to stop after SIGTERM (its own grace period is 10 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
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

/// Starts `outpost serve` on `data`, logging JSON at `info` into `log`.
async fn start(data: &Path, log: PathBuf) -> Server {
    start_on(data, log, free_port()).await
}

/// [`start`] on a given port.
async fn start_on(data: &Path, log: PathBuf, port: u16) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--data"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("OUTPOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/_up")).await.is_err() {
        assert!(Instant::now() < deadline, "outpost did not start on {base}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, base, log }
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/_outpost/v1/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

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

/// `promtool` on `PATH`, or `None` after saying on stderr that its checks are skipped.
fn promtool(check: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{check}: promtool is not on PATH, and CI must run the promtool checks \
             (.ci/run installs Debian's `prometheus` package)"
        );
        eprintln!(
            "SKIPPED: {check}: promtool is not on PATH (install Debian's `prometheus` package)"
        );
    }
    found
}

/// Runs `promtool check metrics` on a scraped exposition (linting names, types and help).
fn check_metrics(text: &str, what: &str) {
    let Some(promtool) = promtool(&format!("promtool check metrics ({what})")) else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics ({what}) failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/prometheus")
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool("promtool check rules / test rules") else {
        return;
    };
    let dir = ops_dir();
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_queries_parse_and_name_documented_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/grafana/outpost.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's variables, as Grafana would fill them in.
            exprs.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$instance", ".*"),
            );
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("outpost_"))
        {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                docs.contains(&format!("`{base}`")),
                "{base} is on the dashboard but not in docs/operations.md"
            );
        }
    }
    let Some(promtool) = promtool("promtool check rules (dashboard queries)") else {
        return;
    };
    // promtool has no query linter, so the queries are checked as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_move_under_a_small_workload_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), dir.path().join("log")).await;
    let base = &server.base;
    let before = scrape(base).await;

    call(reqwest::Method::PUT, &format!("{base}/notes"), None).await;
    for i in 0..5 {
        let url = format!("{base}/notes/n{i}");
        let (status, _) = call(reqwest::Method::PUT, &url, Some(json!({"i": i}))).await;
        assert_eq!(status, 201);
        let (status, _) = call(reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200);
    }
    // A live feed held open while scraping.
    let feed = reqwest::get(format!(
        "{base}/notes/_changes?feed=continuous&heartbeat=1000"
    ))
    .await
    .unwrap();
    assert_eq!(feed.status(), 200);
    let after = scrape(base).await;

    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let puts = [
        ("route", "/{db}/{docid}"),
        ("method", "PUT"),
        ("status", "201"),
    ];
    assert_eq!(grew("outpost_http_requests_total", &puts), 5.0, "{after}");
    let gets = [("route", "/{db}/{docid}"), ("method", "GET")];
    assert_eq!(
        grew("outpost_http_request_duration_seconds_count", &gets),
        5.0
    );
    assert_eq!(
        grew("outpost_documents_written_total", &[("kind", "created")]),
        5.0
    );
    assert_eq!(grew("outpost_documents_read_total", &[]), 5.0);
    assert_eq!(
        sample(
            &after,
            "outpost_changes_feeds_open",
            &[("feed", "continuous")]
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "outpost_storage_database_bytes",
            &[("store", "sync")]
        ) > 0.0
    );
    assert!(sample(&after, "outpost_process_resident_memory_bytes", &[]) > 0.0);
    assert!(sample(&after, "outpost_process_open_fds", &[]) > 0.0);

    // The feed's end is counted too: the gauge is back to 0 once its client is gone.
    drop(feed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(base).await;
        if sample(
            &now,
            "outpost_changes_feeds_open",
            &[("feed", "continuous")],
        ) == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed feed is still counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    check_metrics(&after, "sync server");
}

#[tokio::test]
async fn the_server_runs_without_transparent_huge_pages() {
    // The kernel shows the process-wide flag in /proc/<pid>/status (`THP_enabled`, Linux 5.0+).
    let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !own.contains("THP_enabled:") {
        eprintln!("skipped: this kernel does not report THP_enabled");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), dir.path().join("log")).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}

#[tokio::test]
async fn json_log_lines_parse_and_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), dir.path().join("log")).await;
    let base = &server.base;
    let client = reqwest::Client::new();
    client.put(format!("{base}/logs")).send().await.unwrap();
    let resp = client
        .put(format!("{base}/logs/private-id"))
        .header("x-request-id", "ops-test-42")
        .header("authorization", "Basic c2VjcmV0LXVzZXI6aHVudGVyMg==")
        .header("content-type", "application/json")
        .body(r#"{"secret":"body-marker-7f3a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-request-id"], "ops-test-42");

    let log = read_log_until(&server.log, "ops-test-42").await;
    let mut ours = 0;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        if entry["span"]["request_id"] == "ops-test-42" {
            ours += 1;
            assert_eq!(entry["span"]["route"], "/{db}/{docid}", "{line}");
            assert_eq!(entry["span"]["method"], "PUT", "{line}");
            assert_eq!(entry["status"], 201, "{line}");
        }
    }
    assert!(ours >= 1, "no line carries the request id:\n{log}");
    for secret in ["body-marker-7f3a", "c2VjcmV0", "hunter2", "private-id"] {
        assert!(!log.contains(secret), "the log shows `{secret}`:\n{log}");
    }
}

/// The log file's content once it mentions `needle` (lines are flushed as they are written,
/// but the request may be answered before its log line is).
async fn read_log_until(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` never logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_during_change_feeds_exits_0_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, dir.path().join("log")).await;
    let base = server.base.clone();
    call(reqwest::Method::PUT, &format!("{base}/live"), None).await;

    // Change feeds of every live kind, read until they end.
    let mut feeds = Vec::new();
    call(reqwest::Method::PUT, &format!("{base}/quiet"), None).await;
    // The longpoll watches a database nobody writes to, so it is still waiting at the signal.
    for (db, kind) in [
        ("live", "continuous"),
        ("live", "eventsource"),
        ("quiet", "longpoll"),
        ("live", "continuous"),
    ] {
        let url =
            format!("{base}/{db}/_changes?feed={kind}&since=now&heartbeat=500&timeout=600000");
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200);
        feeds.push((
            kind,
            tokio::spawn(async move {
                let mut resp = resp;
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>(body)
            }),
        ));
    }

    // Writers keep going through the signal; only the writes answered 201 count.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let base = base.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acked = Vec::new();
                for i in 0.. {
                    let id = format!("w{w}-{i}");
                    let sent = client
                        .put(format!("{base}/live/{id}"))
                        .header("content-type", "application/json")
                        .body(json!({"i": i}).to_string())
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 201 => acked.push(id),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = sample(&scrape(&base).await, "outpost_changes_feeds_open", &[]);
    assert_eq!(open, 4.0, "the feeds are not all open before the signal");

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < EXIT_DEADLINE,
            "outpost serve did not exit within {EXIT_DEADLINE:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "outpost serve exited with {exit}");

    for (kind, feed) in feeds {
        let body = feed
            .await
            .unwrap()
            .expect("a feed was cut instead of ended");
        let body = String::from_utf8(body).unwrap();
        // JSON feeds end with their `last_seq`, so a client resumes where it stopped.
        if kind != "eventsource" {
            assert!(
                body.contains("\"last_seq\""),
                "{kind} feed ended without last_seq: {body}"
            );
        }
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the signal"
    );

    // Every acknowledged write is there after a restart on the same data.
    let server = start(&data, dir.path().join("log2")).await;
    let (status, all) = call(
        reqwest::Method::POST,
        &format!("{}/live/_all_docs", server.base),
        Some(json!({ "keys": acked })),
    )
    .await;
    assert_eq!(status, 200);
    let rows = all["rows"].as_array().unwrap();
    assert_eq!(rows.len(), acked.len());
    for row in rows {
        assert!(
            row["value"]["rev"].is_string(),
            "lost an acknowledged write: {row}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    for line in BufReader::new(log.as_bytes()).lines() {
        let line = line.unwrap();
        let entry: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(entry["level"], "ERROR", "{line}");
    }
}

#[tokio::test]
async fn gateway_metrics_and_readiness_while_the_upstream_is_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nobody = free_port();
    let mut child = Command::new(BIN)
        .args([
            "gateway",
            "--upstream",
            &format!("http://127.0.0.1:{nobody}"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .args(["--admin-token", "ops-token", "--probe-interval", "100ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(resp) = client.get(format!("{base}/_outpost/v1/ready")).send().await {
            let body: Value = resp.json().await.unwrap();
            if body["upstream"] == "down" {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never saw its upstream down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Down upstream, yet ready: this is when the gateway must keep taking writes.
    assert_eq!(ready["status"], "ready");

    let resp = client
        .post(format!("{base}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = client
        .get(format!("{base}/_outpost/v1/metrics"))
        .bearer_auth("ops-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(
        sample(&text, "outpost_gateway_upstream_up", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(sample(&text, "outpost_gateway_queue_pending", &[]), 1.0);
    assert_eq!(sample(&text, "outpost_gateway_queued_total", &[]), 1.0);
    assert_eq!(
        sample(&text, "outpost_gateway_enqueue_duration_seconds_count", &[]),
        1.0
    );
    assert!(
        sample(
            &text,
            "outpost_gateway_queue_oldest_pending_age_seconds",
            &[]
        ) >= 0.0
    );
    assert!(text.contains("# TYPE outpost_gateway_queue_oldest_pending_age_seconds gauge"));
    let queue_file = [("store", "gateway_queue")];
    assert!(sample(&text, "outpost_storage_database_bytes", &queue_file) > 0.0);

    check_metrics(&text, "gateway");
}

/// The gateway on a PostgreSQL queue adds its pool's and its leases' series, which pass the
/// same lint; the queue's gauges are the shared queue's.
#[tokio::test]
async fn gateway_on_postgres_exposes_pool_and_lease_metrics() {
    let Some(schema) = pg::TestSchema::create("gateway_on_postgres_metrics").await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (port, nobody) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "gateway",
            "--upstream",
            &format!("http://127.0.0.1:{nobody}"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .args(["--store", &schema.url, "--store-pool-size", "6"])
        .args(["--admin-token", "ops-token", "--probe-interval", "100ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = client.get(format!("{base}/_outpost/v1/ready")).send().await
            && resp.status() == 200
        {
            let body: Value = resp.json().await.unwrap();
            if body["upstream"] == "down" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = client
        .post(format!("{base}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let text = client
        .get(format!("{base}/_outpost/v1/metrics"))
        .bearer_auth("ops-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(
        sample(&text, "outpost_gateway_queue_pending", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "outpost_gateway_pool_max_connections", &[]),
        6.0
    );
    let open = sample(&text, "outpost_gateway_pool_connections", &[]);
    assert!((1.0..=6.0).contains(&open), "{open} connections");
    assert!(text.contains("outpost_gateway_pool_connections{state=\"idle\"}"));
    assert!(text.contains("# TYPE outpost_gateway_pool_waiting gauge"));
    assert!(text.contains("# TYPE outpost_gateway_leases_held gauge"));
    // No file of its own to size: the queue is in the database.
    assert_eq!(
        sample(
            &text,
            "outpost_storage_database_bytes",
            &[("store", "gateway_queue")]
        ),
        0.0
    );
    check_metrics(&text, "gateway on PostgreSQL");
}

#[tokio::test]
async fn sigterm_during_a_replication_exits_0_and_the_job_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, dir.path().join("log")).await;
    let base = server.base.clone();
    call(reqwest::Method::PUT, &format!("{base}/src"), None).await;
    call(reqwest::Method::PUT, &format!("{base}/_replicator"), None).await;
    // A continuous job from a local database to the same server over HTTP.
    let (status, body) = call(
        reqwest::Method::PUT,
        &format!("{base}/_replicator/to-dst"),
        Some(json!({
            "source": "src",
            "target": format!("{base}/dst"),
            "create_target": true,
            "continuous": true,
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for i in 0..40 {
        let id = format!("r{i}");
        let resp = client
            .put(format!("{base}/src/{id}"))
            .header("content-type", "application/json")
            .body(json!({ "i": i }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        acked.push(id);
    }
    // The job's series are there (and moving) before the signal.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&base).await;
        let job = [("replication", "to-dst")];
        if sample(&text, "outpost_replication_docs_written_total", &job) > 0.0 {
            assert!(text.contains("outpost_replication_checkpoint_age_seconds{"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replication progress:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // More writes while the job copies them and the signal arrives.
    let writer = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 40.. {
                let id = format!("r{i}");
                let sent = client
                    .put(format!("{base}/src/{id}"))
                    .header("content-type", "application/json")
                    .body(json!({ "i": i }).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 201 => acked.push(id),
                    _ => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < EXIT_DEADLINE,
            "outpost serve did not exit within {EXIT_DEADLINE:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "outpost serve exited with {exit}");
    acked.extend(writer.await.unwrap());

    // After a restart (on the same port: the job's target is a URL) the job resumes and the
    // target ends with every acknowledged document.
    let port = server.base.rsplit(':').next().unwrap().parse().unwrap();
    let server = start_on(&data, dir.path().join("log2"), port).await;
    let base = server.base.clone();
    let target_url = format!("{base}/dst/_all_docs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, all) = call(
            reqwest::Method::POST,
            &target_url,
            Some(json!({ "keys": acked })),
        )
        .await;
        let complete = status == 200
            && all["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["value"]["rev"].is_string()));
        if complete {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&Value> = all["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| !r["value"]["rev"].is_string())
                .collect();
            let (_, src) = call(
                reqwest::Method::POST,
                &format!("{base}/src/_all_docs"),
                Some(json!({ "keys": missing.iter().map(|r| &r["key"]).collect::<Vec<_>>() })),
            )
            .await;
            let (_, jobs) = call(
                reqwest::Method::GET,
                &format!("{base}/_scheduler/docs"),
                None,
            )
            .await;
            panic!("the resumed job did not copy {missing:?}; in the source: {src}; jobs: {jobs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Idempotency keys an upstream received; while `hang` is set it records and never answers.
#[derive(Clone, Default)]
struct HangingUpstream {
    keys: Arc<Mutex<Vec<String>>>,
    hang: Arc<AtomicBool>,
}

async fn hanging_upstream_on(listener: tokio::net::TcpListener, upstream: HangingUpstream) {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let upstream = upstream.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            upstream.keys.lock().unwrap().push(key);
            if upstream.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            axum::http::StatusCode::CREATED
        }
    });
    axum::serve(listener, app).await.unwrap();
}

#[tokio::test]
async fn sigterm_during_a_gateway_replay_exits_0_and_the_entry_is_delivered_later() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream_listener.local_addr().unwrap();
    let port = free_port();
    let gateway = |grace: &str| {
        Command::new(BIN)
            .args(["gateway", "--upstream", &format!("http://{upstream_addr}")])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.path())
            .args(["--probe-interval", "100ms", "--shutdown-grace", grace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let wait_ready = async || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client
            .get(format!("{base}/_outpost/v1/ready"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // Writes queued while nothing listens upstream.
    drop(upstream_listener);
    let mut child = gateway("2s");
    wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let resp = client
            .post(format!("{base}/orders"))
            .header("idempotency-key", format!("k{i}"))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        ids.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // The upstream comes back, takes the first delivery and never answers it.
    let upstream = HangingUpstream::default();
    upstream.hang.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
    let server = tokio::spawn(hanging_upstream_on(listener, upstream.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.keys.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < EXIT_DEADLINE,
            "the gateway did not exit within {EXIT_DEADLINE:?} of SIGTERM with a delivery hanging"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "the gateway exited with {exit}");

    // Restarted with an upstream that answers, every acknowledged write is delivered.
    upstream.hang.store(false, Ordering::SeqCst);
    let mut child = gateway("10s");
    wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let entry: Value = client
                .get(format!("{base}/_outpost/v1/queue/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if entry["state"] == "done" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not delivered after restart: {entry}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let keys = upstream.keys.lock().unwrap().clone();
    for i in 0..5 {
        assert!(
            keys.contains(&format!("k{i}")),
            "k{i} never delivered: {keys:?}"
        );
    }
    // The delivery cut by the shutdown went out again, with the same key.
    let first = keys.iter().filter(|k| *k == &keys[0]).count();
    assert!(
        first >= 2,
        "the interrupted delivery was not retried: {keys:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
}

#[tokio::test]
async fn serve_with_a_gateway_table_runs_both_in_one_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (sync_port, gateway_port) = (free_port(), free_port());
    let sync = format!("http://127.0.0.1:{sync_port}");
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\ndata = {:?}\nlisten = \"127.0.0.1:{sync_port}\"\n\n\
             [gateway]\nupstream = \"{sync}\"\nlisten = \"127.0.0.1:{gateway_port}\"\n\
             data = {:?}\nadmin_token = \"t0ken\"\nprobe_interval = \"100ms\"\n",
            dir.path().join("sync"),
            dir.path().join("gateway"),
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("OUTPOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for base in [&sync, &gateway] {
        while reqwest::get(format!("{base}/_outpost/v1/ready"))
            .await
            .is_err()
        {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(Instant::now() < deadline, "{base} did not start: {log}");
            assert!(child.try_wait().unwrap().is_none(), "exited early: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A write through the gateway reaches the sync server of the same process.
    let resp = reqwest::Client::new()
        .put(format!("{gateway}/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-outpost-upstream"], "up");
    assert_eq!(resp.headers()["x-outpost-queue-depth"], "0");
    let (status, info) = call(reqwest::Method::GET, &format!("{sync}/notes"), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["db_name"], "notes");

    // One registry: the sync server's scrape carries the gateway's series too.
    let text = scrape(&sync).await;
    assert!(text.contains("outpost_http_requests_total"), "{text}");
    assert!(text.contains("outpost_gateway_upstream_up"), "{text}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < EXIT_DEADLINE,
            "outpost serve did not exit within {EXIT_DEADLINE:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(exit.success(), "outpost serve exited with {exit}: {log}");
    assert!(log.contains("gateway stopped"), "{log}");
    for base in [&sync, &gateway] {
        assert!(reqwest::get(format!("{base}/_up")).await.is_err());
    }
}

/// Edits document `id` of `db` `times` times in a row; answers its last revision.
async fn edit_times(base: &str, db: &str, id: &str, times: u32) -> String {
    let mut rev: Option<String> = None;
    for n in 0..times {
        let mut body = json!({ "n": n });
        if let Some(rev) = &rev {
            body["_rev"] = json!(rev);
        }
        let (status, answer) = call(
            reqwest::Method::PUT,
            &format!("{base}/{db}/{id}"),
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        rev = answer["rev"].as_str().map(str::to_owned);
    }
    rev.unwrap()
}

/// Runs `outpost` with `args`.
fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Every document of `db` as a client sees it: each leaf with its `_revisions`, the winner,
/// and the sequence of its latest change; and the database's sequence and counters.
async fn visible_state(base: &str, db: &str) -> Value {
    let (_, changes) = call(
        reqwest::Method::GET,
        &format!("{base}/{db}/_changes?style=all_docs"),
        None,
    )
    .await;
    let mut docs = serde_json::Map::new();
    for row in changes["results"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        let (_, leaves) = call(
            reqwest::Method::GET,
            &format!("{base}/{db}/{id}?open_revs=all&revs=true"),
            None,
        )
        .await;
        let (_, winner) = call(
            reqwest::Method::GET,
            &format!("{base}/{db}/{id}?conflicts=true&deleted_conflicts=true&revs_info=true"),
            None,
        )
        .await;
        docs.insert(
            id.to_owned(),
            json!({"seq": row["seq"], "leaves": leaves, "winner": winner}),
        );
    }
    let (_, info) = call(reqwest::Method::GET, &format!("{base}/{db}"), None).await;
    let (_, limit) = call(
        reqwest::Method::GET,
        &format!("{base}/{db}/_revs_limit"),
        None,
    )
    .await;
    json!({
        "docs": docs,
        "update_seq": info["update_seq"],
        "doc_count": info["doc_count"],
        "doc_del_count": info["doc_del_count"],
        "revs_limit": limit,
        "outpost": info["outpost"]["conflict_policy"],
    })
}

/// Issue 17, defect 11: `outpost db rebuild` only compared. Now `verify` compares (beside a
/// running server) and `rebuild` rebuilds the tables from the log alone, with the server
/// stopped.
#[tokio::test]
async fn db_rebuild_restores_damaged_tables_from_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let server = start(&data, dir.path().join("log")).await;
    let base = server.base.clone();
    let put = |path: String, body: Value| async move {
        let (status, answer) = call(reqwest::Method::PUT, &path, Some(body)).await;
        assert!(status < 300, "{path}: {answer}");
        answer
    };
    call(reqwest::Method::PUT, &format!("{base}/db"), None).await;
    // A history written under the default `_revs_limit`, one under a smaller one, a deletion,
    // a conflict resolved by a policy, and a conflict left for a person.
    edit_times(&base, "db", "early", 6).await;
    put(format!("{base}/db/_revs_limit"), json!(3)).await;
    let rev = edit_times(&base, "db", "late", 6).await;
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{base}/db/late?rev={rev}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let branches = |id: &str| {
        json!({"new_edits": false, "docs": [
            {"_id": id, "_rev": "1-aaa", "at": 1},
            {"_id": id, "_rev": "1-bbb", "at": 2},
        ]})
    };
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{base}/db/_bulk_docs"),
        Some(branches("manual")),
    )
    .await;
    assert_eq!(status, 201);
    put(
        format!("{base}/db/_outpost"),
        json!({"conflict_policy": "lww", "lww_field": "at"}),
    )
    .await;
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{base}/db/_bulk_docs"),
        Some(branches("resolved")),
    )
    .await;
    assert_eq!(status, 201);
    let before = visible_state(&base, "db").await;
    assert_eq!(
        before["docs"]["early"]["winner"]["_revs_info"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        before["docs"]["late"]["leaves"][0]["ok"]["_revisions"]["ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Verification reads beside the running server; a rebuild is refused while it runs.
    let verified = outpost(&["db", "verify", "--data", data_arg, "db"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let refused = outpost(&["db", "rebuild", "--data", data_arg, "db"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("in use by another process"), "{said}");
    drop(server);

    // Rows lost and damaged behind the store's back.
    let conn = rusqlite::Connection::open(data.join("outpost.sqlite")).unwrap();
    conn.execute_batch(
        "DELETE FROM docs WHERE id IN ('early', 'manual');
         UPDATE docs SET seq = 1000, deleted = 0, tree = '[]' WHERE id = 'late';
         UPDATE dbs SET update_seq = 2, doc_count = 40, revs_limit = 1000, policy = 'manual';",
    )
    .unwrap();
    drop(conn);
    let damaged = outpost(&["db", "verify", "--data", data_arg, "db"]);
    assert_eq!(damaged.status.code(), Some(1));
    let listed = String::from_utf8_lossy(&damaged.stdout);
    for line in [
        "early: in the event log but not in the document table",
        "manual: in the event log but not in the document table",
        "late: revision tree differs",
        "late: sequence differs",
        "database: revs_limit differs (log 3, table 1000)",
    ] {
        assert!(listed.contains(line), "{line}: {listed}");
    }

    let rebuilt = outpost(&["db", "rebuild", "--data", data_arg, "db"]);
    assert!(
        rebuilt.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rebuilt.stdout),
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let verified = outpost(&["db", "verify", "--data", data_arg, "db"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let server = start(&data, dir.path().join("log2")).await;
    assert_eq!(visible_state(&server.base, "db").await, before);
    // The rebuilt database goes on stemming with the limit from the log.
    edit_times(&server.base, "db", "later", 5).await;
    let (_, later) = call(
        reqwest::Method::GET,
        &format!("{}/db/later?revs=true", server.base),
        None,
    )
    .await;
    assert_eq!(later["_revisions"]["ids"].as_array().unwrap().len(), 3);
}
