//! Outpost's own operational endpoints: `GET /_outpost/v1/metrics` (and `GET /metrics`), the
//! Prometheus exposition, and `GET /_outpost/v1/ready`, readiness for load balancers and
//! orchestrators. Liveness is CouchDB's `GET /_up` ([`super::server::up`]).

use axum::response::Response;
use std::time::SystemTime;

use http::{HeaderValue, Method, StatusCode, header};
use metrics::{counter, gauge};
use serde_json::json;

use super::{json, not_allowed};
use crate::dispatch::Req;
use crate::{ApiError, AppState};

/// Seconds a client is told to wait before asking an unready server again.
const RETRY_AFTER_SECONDS: u64 = 5;

/// `GET /_outpost/v1/metrics`: every metric in the Prometheus text format.
pub fn metrics(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    publish_replications(state);
    let mut response = Response::new(axum::body::Body::from(outpost_telemetry::render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outpost_telemetry::CONTENT_TYPE),
    );
    Ok(response)
}

/// Copies each long-lived replication job's status into the `outpost_replication_*` series,
/// labelled `replication` by its `_replicator` document id, or by its replication id for a continuous
/// `_replicate`. One-shot `_replicate` calls are left out: each has a new id, so labelling by
/// them would grow the series without bound.
fn publish_replications(state: &AppState) {
    let now = SystemTime::now();
    for job in state.replications.jobs() {
        let label = match (&job.doc_id, job.continuous) {
            (Some(doc), _) => doc.clone(),
            (None, true) => job.id.clone(),
            (None, false) => continue,
        };
        let status = job.status.borrow().clone();
        let stats = &status.stats;
        counter!("outpost_replication_docs_read_total", "replication" => label.clone())
            .absolute(stats.docs_read);
        counter!("outpost_replication_docs_written_total", "replication" => label.clone())
            .absolute(stats.docs_written);
        counter!("outpost_replication_doc_write_failures_total", "replication" => label.clone())
            .absolute(stats.doc_write_failures);
        gauge!("outpost_replication_consecutive_failures", "replication" => label.clone())
            .set(f64::from(status.consecutive_failures));
        gauge!("outpost_replication_pending_changes", "replication" => label.clone())
            .set(status.pending.unwrap_or(0) as f64);
        // Never synced yet: the age counts from the job's start, so a job that cannot make its
        // first checkpoint still ages into the alert.
        let since = status.last_sync.unwrap_or(status.started_at);
        let age = now.duration_since(since).unwrap_or_default();
        gauge!("outpost_replication_checkpoint_age_seconds", "replication" => label)
            .set(age.as_secs_f64());
    }
}

/// `GET /_outpost/v1/ready`: 200 while the store answers and the server is not shutting down,
/// otherwise 503 with `Retry-After`, so a balancer stops sending traffic before the listener
/// closes.
pub async fn ready(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let problem = if state.shutdown.is_cancelled() {
        Some("the server is shutting down")
    } else {
        match state.store.all_dbs().await {
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check: the store does not answer");
                Some("the store does not answer")
            }
        }
    };
    Ok(match problem {
        None => json(StatusCode::OK, json!({ "status": "ready" }).to_string()),
        Some(reason) => {
            let mut response = json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "unavailable", "error": "service_unavailable", "reason": reason }).to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
    })
}
