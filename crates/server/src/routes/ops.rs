//! Outpost's own operational endpoints: `GET /_outpost/v1/metrics` (and `GET /metrics`), the
//! Prometheus exposition, and `GET /_outpost/v1/ready`, readiness for load balancers and
//! orchestrators. Liveness is CouchDB's `GET /_up` ([`super::server::up`]).

use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::{json, not_allowed};
use crate::dispatch::Req;
use crate::{ApiError, AppState};

/// Seconds a client is told to wait before asking an unready server again.
const RETRY_AFTER_SECONDS: u64 = 5;

/// `GET /_outpost/v1/metrics`: every metric in the Prometheus text format.
pub fn metrics(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let mut response = Response::new(axum::body::Body::from(outpost_telemetry::render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outpost_telemetry::CONTENT_TYPE),
    );
    Ok(response)
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
