//! `/{db}/_local/{id}`: documents that are never replicated (replication checkpoints). Their
//! revisions are `0-N`; a delete answers `0-0`. They never appear in `_changes` or `_all_docs`.

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{json, not_allowed, ok};
use crate::dispatch::Req;
use crate::{ApiError, AppState};

fn parse_local_rev(s: &str) -> Result<u64, ApiError> {
    s.strip_prefix("0-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("Invalid rev format for a _local document: {s:?}"))
        })
}

pub async fn handle(
    state: &AppState,
    db: &str,
    id: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {
            let doc = state
                .store
                .local_doc(db, id)
                .await?
                .ok_or_else(ApiError::missing)?;
            let text =
                crate::docjson::splice(id, &format_args!("0-{}", doc.rev), false, &doc.body, &[]);
            Ok(ok(text))
        }
        Method::PUT => {
            let mut body = req.json().await?;
            let Some(fields) = body.as_object_mut() else {
                return Err(ApiError::bad_request("Document must be a JSON object"));
            };
            fields.remove("_id");
            let base = match (fields.remove("_rev"), req.query.get("rev")) {
                (Some(Value::String(r)), _) => parse_local_rev(&r)?,
                (Some(Value::Null) | None, Some(r)) => parse_local_rev(r)?,
                (Some(Value::Null) | None, None) => 0,
                (Some(_), _) => return Err(ApiError::bad_request("Invalid rev format")),
            };
            if fields.contains_key("_attachments") {
                return Err(ApiError::bad_request(
                    "_local documents do not have attachments",
                ));
            }
            fields.remove("_revisions");
            fields.remove("_deleted");
            let rev = state
                .store
                .put_local(db, id, base, body.to_string())
                .await?;
            Ok(json(
                StatusCode::CREATED,
                json!({ "ok": true, "id": id, "rev": format!("0-{rev}") }).to_string(),
            ))
        }
        Method::DELETE => {
            let base = match req.query.get("rev") {
                Some(r) => parse_local_rev(r)?,
                None => return Err(ApiError::Conflict),
            };
            state.store.delete_local(db, id, base).await?;
            Ok(ok(json!({ "ok": true, "id": id, "rev": "0-0" }).to_string()))
        }
        _ => Err(not_allowed("Only DELETE,GET,HEAD,PUT allowed")),
    }
}
