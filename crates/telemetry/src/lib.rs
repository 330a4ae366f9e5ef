//! The process-wide metrics recorder, shared by the sync server and the gateway.
//!
//! Code everywhere records through the `metrics` facade (`metrics::counter!` and friends); this
//! crate installs the one Prometheus recorder behind it and renders the text exposition format
//! for the `/_outpost/v1/metrics` endpoints. It sits below `server` and `gateway` so that both,
//! when they run in one process, publish into the same registry instead of racing to install
//! their own.
//!
//! Gauges that describe the outside world (file sizes, process memory, open descriptors) are not
//! kept up to date in the background: [`render`] samples them on each scrape, which is when
//! Prometheus wants them.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds, in seconds, of every `_seconds` histogram: from a cached read (~100 µs) to a
/// long poll that ran into its timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Database files whose sizes are sampled on each scrape, with the `store` label they go under.
static DATABASES: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process, and
/// returns the handle that renders it. Later calls return the same handle.
///
/// If another recorder was installed first (an embedding application's), Outpost's metrics go
/// to that one and [`render`] shows only the sampled gauges.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // An error means another recorder is installed; see the doc comment.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// Samples the file, memory and descriptor gauges, then renders every metric in the Prometheus
/// text format.
pub fn render() -> String {
    let handle = install();
    sample_databases();
    sample_process();
    handle.run_upkeep();
    handle.render()
}

/// What one metric family holds now, for views other than Prometheus's (CouchDB's `_stats`).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The metric's name, `outpost_…`.
    pub name: String,
    /// Its `# HELP` text.
    pub help: String,
    pub kind: Kind,
    /// One entry per label set, labels in the order they were recorded with.
    pub series: Vec<Series>,
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One labelled series of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    /// A counter's or gauge's value; a histogram's sum.
    pub value: f64,
    /// A histogram's observations, as cumulative `(upper bound, count)` buckets, the last
    /// `+Inf`; empty for other kinds.
    pub buckets: Vec<(f64, u64)>,
    /// A histogram's number of observations.
    pub count: u64,
}

/// Every metric family recorded so far, with the sampled gauges fresh, as [`render`] shows them.
pub fn snapshot() -> Vec<Family> {
    parse(&render())
}

/// Reads the text exposition format the recorder writes.
fn parse(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    let mut help: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(
                    name.to_owned(),
                    text.replace("\\n", "\n").replace("\\\\", "\\"),
                );
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let Some((name, kind)) = rest.split_once(' ') else {
                continue;
            };
            let kind = match kind.trim() {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                _ => continue,
            };
            families.push(Family {
                name: name.to_owned(),
                help: help.get(name).cloned().unwrap_or_default(),
                kind,
                series: Vec::new(),
            });
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(family) = families.last_mut() else {
            continue;
        };
        match family.kind {
            Kind::Counter | Kind::Gauge if name == family.name => family.series.push(Series {
                labels,
                value,
                buckets: Vec::new(),
                count: 0,
            }),
            Kind::Histogram => {
                let suffix = name.strip_prefix(family.name.as_str()).unwrap_or("");
                let (mut labels, le) = match suffix {
                    "_bucket" => {
                        let mut labels = labels;
                        let le = labels
                            .iter()
                            .position(|(k, _)| k == "le")
                            .map(|i| labels.remove(i).1);
                        (labels, le)
                    }
                    "_sum" | "_count" => (labels, None),
                    _ => continue,
                };
                let series = match family.series.iter_mut().find(|s| s.labels == labels) {
                    Some(series) => series,
                    None => {
                        family.series.push(Series {
                            labels: std::mem::take(&mut labels),
                            value: 0.0,
                            buckets: Vec::new(),
                            count: 0,
                        });
                        family.series.last_mut().expect("pushed above")
                    }
                };
                match (suffix, le) {
                    ("_bucket", Some(le)) => {
                        let bound = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::INFINITY)
                        };
                        series.buckets.push((bound, value as u64));
                    }
                    ("_sum", _) => series.value = value,
                    ("_count", _) => series.count = value as u64,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    families
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value`.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut text = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                '"' => break,
                c => text.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), text));
        match chars.peek() {
            Some(',') => {
                chars.next();
            }
            _ => break,
        }
    }
    Some((name, labels, value))
}

/// Publishes the size of a SQLite database file and of its write-ahead log as
/// `outpost_storage_database_bytes{store}` and `outpost_storage_wal_bytes{store}`.
///
/// `store` names the file's role (`sync`, `gateway_queue`); it is a label value, so it must come
/// from a small fixed set, never from user input.
pub fn watch_database(store: &'static str, path: PathBuf) {
    install();
    let mut files = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    files.retain(|(s, _)| *s != store);
    files.push((store, path));
}

fn sample_databases() {
    let files = DATABASES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (store, path) in files {
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        gauge!("outpost_storage_database_bytes", "store" => store).set(size(&path) as f64);
        gauge!("outpost_storage_wal_bytes", "store" => store).set(size(wal.as_ref()) as f64);
    }
}

/// Reads the resident set size and the number of open descriptors from `/proc/self`. On systems
/// without `/proc` the gauges are simply absent.
fn sample_process() {
    if let Some(rss) = resident_bytes() {
        gauge!("outpost_process_resident_memory_bytes").set(rss as f64);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge!("outpost_process_open_fds").set(dir.count() as f64);
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:` line of `/proc/self/status`, which is in kB, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The `# HELP` text of every metric Outpost records, in one place so the list in
/// `docs/operations.md` can be checked against it.
fn describe() {
    describe_counter!(
        "outpost_http_requests_total",
        "HTTP requests answered, by route template, method and status."
    );
    describe_histogram!(
        "outpost_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its response head, by route template and method."
    );
    describe_counter!(
        "outpost_documents_written_total",
        "Document revisions stored, by what they did (created, updated, deleted, conflict, resolved)."
    );
    describe_counter!(
        "outpost_documents_purged_total",
        "Documents that lost revisions to _purge (one per document of a request that purged any)."
    );
    describe_counter!("outpost_purge_requests_total", "_purge requests accepted.");
    describe_counter!(
        "outpost_purge_documents_total",
        "Documents named in accepted _purge requests."
    );
    describe_counter!(
        "outpost_documents_read_total",
        "Documents read by clients (single reads, _bulk_get, _all_docs with include_docs)."
    );
    describe_counter!(
        "outpost_conflicts_detected_total",
        "Revisions that opened a new conflicting branch, by the database's conflict policy."
    );
    describe_counter!(
        "outpost_conflicts_resolved_total",
        "Conflicts resolved, by the policy that resolved them (lww, merge, or manual via _resolve)."
    );
    describe_counter!(
        "outpost_conflicts_unresolved_total",
        "Conflicts an automatic policy left for a replica holding what it lacks, by policy and reason."
    );
    describe_gauge!(
        "outpost_changes_feeds_open",
        "Change feeds being served, by feed type."
    );
    describe_gauge!(
        "outpost_feed_connections",
        "Connections of the multiplexed feed (WebSocket or event stream) open now."
    );
    describe_counter!(
        "outpost_feed_slow_clients_total",
        "Multiplexed feed connections cut because their client left its buffer full too long."
    );
    describe_gauge!(
        "outpost_storage_database_bytes",
        Unit::Bytes,
        "Size of a SQLite database file, by store."
    );
    describe_gauge!(
        "outpost_storage_wal_bytes",
        Unit::Bytes,
        "Size of a SQLite database's write-ahead log, by store."
    );
    describe_gauge!(
        "outpost_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(
        "outpost_process_open_fds",
        "File descriptors the process holds open."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_format_is_read_back() {
        let text = "# HELP outpost_x_total Things done.\n# TYPE outpost_x_total counter\n\
outpost_x_total{kind=\"a\\\"b\",route=\"/{db}\"} 3\n\
outpost_x_total{kind=\"c\",route=\"/\"} 4\n\n\
# TYPE outpost_g gauge\noutpost_g 1.5\n\
# TYPE outpost_t_seconds histogram\n\
outpost_t_seconds_bucket{m=\"GET\",le=\"0.5\"} 1\n\
outpost_t_seconds_bucket{m=\"GET\",le=\"+Inf\"} 2\n\
outpost_t_seconds_sum{m=\"GET\"} 2.25\n\
outpost_t_seconds_count{m=\"GET\"} 2\n";
        let families = parse(text);
        assert_eq!(families.len(), 3);
        assert_eq!(families[0].help, "Things done.");
        assert_eq!(families[0].kind, Kind::Counter);
        assert_eq!(
            families[0].series[0].labels,
            [
                ("kind".to_owned(), "a\"b".to_owned()),
                ("route".to_owned(), "/{db}".to_owned())
            ]
        );
        assert_eq!(families[0].series[1].value, 4.0);
        assert_eq!(families[1].series[0].value, 1.5);
        assert!(families[1].series[0].labels.is_empty());
        let h = &families[2].series[0];
        assert_eq!(h.labels, [("m".to_owned(), "GET".to_owned())]);
        assert_eq!(h.buckets, [(0.5, 1), (f64::INFINITY, 2)]);
        assert_eq!((h.value, h.count), (2.25, 2));
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\toutpost\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\toutpost\n"), None);
    }

    #[test]
    fn render_samples_watched_files_and_the_process() {
        let dir = std::env::temp_dir().join(format!("outpost-telemetry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.sqlite3");
        std::fs::write(&db, vec![0u8; 4096]).unwrap();
        std::fs::write(dir.join("t.sqlite3-wal"), vec![0u8; 100]).unwrap();
        watch_database("test", db);
        let text = render();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.contains("outpost_storage_database_bytes{store=\"test\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("outpost_storage_wal_bytes{store=\"test\"} 100"),
            "{text}"
        );
        if cfg!(target_os = "linux") {
            assert!(text.contains("outpost_process_open_fds "), "{text}");
            assert!(
                text.contains("# TYPE outpost_process_resident_memory_bytes gauge"),
                "{text}"
            );
        }
    }
}
