//! Outpost's own versioned API under `/_outpost/v1/`: `metrics` (also at CouchDB's
//! `GET /_node/_local/_prometheus`), the Prometheus exposition; `ready`, readiness for load balancers and orchestrators; and
//! `openapi.json`, the OpenAPI document of these routes, generated from the `#[utoipa::path]`
//! attributes on their handlers. Liveness is CouchDB's `GET /_up` ([`super::server::up`]).

use std::time::SystemTime;

use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use metrics::{counter, gauge};
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
