//! Outpost's own versioned API under `/_outpost/v1/`: `metrics` (also at CouchDB's
//! `GET /_node/_local/_prometheus`), the Prometheus exposition; `ready`, readiness for load balancers and orchestrators; and
//! `openapi.json`, the OpenAPI document of these routes, generated from the `#[utoipa::path]`
//! attributes on their handlers. Liveness is CouchDB's `GET /_up` ([`super::server::up`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use utoipa::OpenApi;

use super::{json, not_allowed};
use crate::request::Req;
use crate::{ApiError, AppState};

/// Seconds a client is told to wait before asking an unready server again.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The OpenAPI document of `/_outpost/v1/`; a route missing from `paths` fails the test that
/// compares it with [`route`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outpost operations API",
        description = "Outpost's own endpoints next to the CouchDB API: metrics, readiness, and this document."
    ),
    paths(metrics, ready, openapi),
    components(schemas(ReadyBody, UnavailableBody))
)]
struct ApiDoc;

/// `/_outpost/v1/{rest}`.
pub async fn route(state: &AppState, rest: &[&str], req: &Req) -> Result<Response, ApiError> {
    match rest {
        ["metrics"] => metrics(state, req),
        ["ready"] => ready(state, req).await,
        ["openapi.json"] => openapi(req),
        _ => Err(ApiError::NotFound(format!(
            "no such resource /_outpost/v1/{}",
            rest.join("/")
        ))),
    }
}

/// Every metric in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/_outpost/v1/metrics",
    tag = "operations",
    description = "Every metric in the Prometheus text format (docs/operations.md lists them). Also served at CouchDB's `GET /_node/_local/_prometheus`.",
    responses((status = 200, description = "The exposition", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub fn metrics(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let mut text = outpost_telemetry::render();
    text.push_str(&replication_series(state));
    let mut response = Response::new(axum::body::Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outpost_telemetry::CONTENT_TYPE),
    );
    Ok(response)
}

/// The `outpost_replication_*` series, rendered at scrape time from the jobs that exist now,
/// so a job's series go when the job goes and its counters are its own (a restarted job starts
/// again from 0, which Prometheus reads as a counter reset).
///
/// Label values stay bounded: `outpost_replication_jobs` counts jobs by scheduler state (a
/// fixed set, failed jobs included); the per-job series carry `replication`, the
/// `_replicator` document id (or the replication id of a continuous `POST /_replicate`), and
/// exist only for jobs that exist. One-shot `_replicate` calls are left out: each has a new
/// id.
fn replication_series(state: &AppState) -> String {
    let now = SystemTime::now();
    let mut states: BTreeMap<&'static str, u64> =
        ["initializing", "running", "crashing", "completed", "failed"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    let docs = state.replications.docs();
    for (_, doc) in &docs {
        *states.entry(doc.state).or_default() += 1;
    }
    let mut per_job: BTreeMap<String, outpost_replicator::Status> = BTreeMap::new();
    for job in state.replications.jobs() {
        let label = match (&job.doc_id, job.continuous) {
            (Some(doc), _) => doc.clone(),
            (None, true) => {
                let status = job.status.borrow();
                let scheduler = match status.state {
                    outpost_replicator::State::Retrying => "crashing",
                    outpost_replicator::State::Starting => "initializing",
                    _ => "running",
                };
                *states.entry(scheduler).or_default() += 1;
                job.id.clone()
            }
            (None, false) => continue,
        };
        per_job.insert(label, job.status.borrow().clone());
    }
    // A `_replicator` document whose job is not running (it failed for good, or cannot even
    // reach its endpoints and is waiting to try again) keeps its series until the document
    // goes, with the failures the scheduler counted.
    for (doc_id, doc) in &docs {
        per_job.entry(doc_id.clone()).or_insert_with(|| {
            let mut status = outpost_replicator::Status::new(doc.start_time);
            status.consecutive_failures = doc.error_count;
            status
        });
    }
    let mut out = String::new();
    let leases = &state.replications.leases;
    let _ = writeln!(
        out,
        "# HELP outpost_replication_leases_held _replicator jobs whose lease this node holds (it runs them).\n\
         # TYPE outpost_replication_leases_held gauge\n\
         outpost_replication_leases_held {}\n\
         # HELP outpost_replication_lease_acquired_total _replicator job leases this node took.\n\
         # TYPE outpost_replication_lease_acquired_total counter\n\
         outpost_replication_lease_acquired_total {}\n\
         # HELP outpost_replication_lease_lost_total _replicator job leases this node found taken by another node (or could not renew for a TTL); the job stopped here.\n\
         # TYPE outpost_replication_lease_lost_total counter\n\
         outpost_replication_lease_lost_total {}",
        leases.held(),
        leases.acquired(),
        leases.lost()
    );
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    family(
        "outpost_replication_jobs",
        "gauge",
        "Replication jobs by scheduler state (initializing, running, crashing, completed, failed).",
        &mut states
            .iter()
            .map(|(s, n)| (format!("state=\"{s}\""), *n as f64)),
    );
    let job = |label: &str| format!("replication=\"{}\"", escape_label(label));
    let series: [Series; 6] = [
        (
            "outpost_replication_docs_read_total",
            "counter",
            "Documents read from the source, by replication job.",
            |s, _| s.stats.docs_read as f64,
        ),
        (
            "outpost_replication_docs_written_total",
            "counter",
            "Documents written to the target, by replication job.",
            |s, _| s.stats.docs_written as f64,
        ),
        (
            "outpost_replication_doc_write_failures_total",
            "counter",
            "Documents the target refused, by replication job.",
            |s, _| s.stats.doc_write_failures as f64,
        ),
        (
            "outpost_replication_consecutive_failures",
            "gauge",
            "Failed attempts since the job last made progress, by replication job.",
            |s, _| f64::from(s.consecutive_failures),
        ),
        (
            "outpost_replication_pending_changes",
            "gauge",
            "Changes the source still has to send, as it last said, by replication job.",
            |s, _| s.pending.unwrap_or(0) as f64,
        ),
        // Never checkpointed yet: the age counts from the job's start, so a job that cannot
        // make its first checkpoint still ages into the alert.
        (
            "outpost_replication_checkpoint_age_seconds",
            "gauge",
            "Seconds since the job last recorded a checkpoint (since its start if it never has), by replication job.",
            |s, now| {
                now.duration_since(s.last_checkpoint.unwrap_or(s.started_at))
                    .unwrap_or_default()
                    .as_secs_f64()
            },
        ),
    ];
    for (name, kind, help, value) in series {
        family(
            name,
            kind,
            help,
            &mut per_job
                .iter()
                .map(|(label, status)| (job(label), value(status, now))),
        );
    }
    out
}

/// One per-job series: name, type, help, and how to read its value from a job's status.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&outpost_replicator::Status, SystemTime) -> f64,
);

/// Escapes a label value for the Prometheus text format.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The answer of a ready server.
#[derive(Serialize, utoipa::ToSchema)]
struct ReadyBody {
    /// Always `ready`.
    status: &'static str,
}

/// The answer of a server that is not ready.
#[derive(Serialize, utoipa::ToSchema)]
struct UnavailableBody {
    /// Always `unavailable`.
    status: &'static str,
    /// Always `service_unavailable`.
    error: &'static str,
    /// Why: shutting down, or the store does not accept writes.
    reason: String,
}

/// Readiness: 200 while the store accepts writes and the server is not shutting down, otherwise 503
/// with `Retry-After`, so a balancer stops sending traffic to a draining server.
#[utoipa::path(
    get,
    path = "/_outpost/v1/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = ReadyBody),
        (status = 503, description = "Shutting down, or the store does not accept writes", body = UnavailableBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again")))
    )
)]
pub async fn ready(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let problem = if state.shutdown.is_cancelled() {
        Some("the server is shutting down")
    } else {
        match state.store.check_writable().await {
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check: the store does not accept writes");
                Some("the store does not accept writes")
            }
        }
    };
    Ok(match problem {
        None => json(
            StatusCode::OK,
            serde_json::to_string(&ReadyBody { status: "ready" }).unwrap_or_default(),
        ),
        Some(reason) => {
            let body = UnavailableBody {
                status: "unavailable",
                error: "service_unavailable",
                reason: reason.to_owned(),
            };
            let mut response = json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::to_string(&body).unwrap_or_default(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
    })
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/_outpost/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub fn openapi(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let text = ApiDoc::openapi()
        .to_json()
        .map_err(|e| ApiError::Internal(format!("cannot serialise the OpenAPI document: {e}")))?;
    Ok(json(StatusCode::OK, text))
}
