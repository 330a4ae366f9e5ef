//! `/_outpost/gateway/{rest}`: the admin API of the offline request gateway when one runs in
//! this process (`outpost serve --gateway-upstream`), for server admins, so the console can show
//! and work the gateway's queue with the same session as everything else. The request is handed
//! to the gateway's embedded admin router as `/{rest}`; that router asks for no credentials of
//! its own, because the authorization table lets only server admins reach this route.
//! `GET /_outpost/gateway` itself answers `{"running": true|false}`, so the console can tell
//! whether to show the gateway's page without provoking an error.

use axum::body::Body;
use axum::response::Response;
use http::header;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use tower::ServiceExt;

use super::ok;
use crate::request::Req;
use crate::{ApiError, AppState};

pub async fn forward(state: &AppState, rest: &[&str], req: &mut Req) -> Result<Response, ApiError> {
    if rest.is_empty() {
        if req.method != http::Method::GET {
            return Err(super::not_allowed("Only GET, HEAD allowed"));
        }
        return Ok(ok(json!({ "running": state.gateway.is_some() }).to_string()));
    }
    let Some(router) = state.gateway.clone() else {
        return Err(ApiError::NotFound("no gateway runs in this process".into()));
    };
    let path: Vec<String> = rest
        .iter()
        .map(|s| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string())
        .collect();
    let query = req.query.encode();
    let uri = if query.is_empty() {
        format!("/{}", path.join("/"))
    } else {
        format!("/{}?{query}", path.join("/"))
    };
    let body = req.bytes().await?;
    let mut request = http::Request::builder().method(req.method.clone()).uri(uri);
    if let Some(media) = req.headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, media);
    }
    let request = request
        .body(Body::from(body))
        .map_err(|e| ApiError::Internal(format!("cannot build the gateway request: {e}")))?;
    match router.oneshot(request).await {
        Ok(response) => Ok(response),
        Err(never) => match never {},
    }
}
