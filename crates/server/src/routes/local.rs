//! `/{db}/_local/{id}`: documents that are never replicated (replication checkpoints). Their
//! revisions are `0-N`; a delete answers `0-0`. They never appear in `_changes` or `_all_docs`.
//!
//! As in CouchDB, a `_local` document has no attachments: `_attachments` in a body written to one
//! is accepted and dropped; and `_deleted: true` deletes it.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_store::StoreError;
use serde_json::{Value, json};

use super::{json, not_allowed, ok};
use crate::request::Req;
use crate::{ApiError, AppState};

/// A `_local` revision, `0-N`. Any other well-formed revision (`1-abc`, which PouchDB may send)
/// is taken as one that matches no stored `_local` revision: an update with it conflicts, and
/// a deletion with it of a document that is not there succeeds, as in CouchDB.
fn parse_local_rev(s: &str) -> Result<u64, ApiError> {
    if let Some(n) = s.strip_prefix("0-").and_then(|n| n.parse().ok()) {
        return Ok(n);
    }
    match s.parse::<outpost_core::Rev>() {
        Ok(_) => Ok(u64::MAX),
        Err(_) => Err(ApiError::bad_request(format!(
            "Invalid rev format for a _local document: {s:?}"
        ))),
    }
}

/// Writes a `_local` document from a client's JSON (a `PUT`, or one document of `_bulk_docs`):
/// the base revision is the body's `_rev`, else `query_rev`; `_deleted: true` deletes. Returns
/// the new revision (`0-0` for a deletion).
pub async fn write(
    state: &AppState,
    db: &str,
    id: &str,
    mut body: Value,
    query_rev: Option<&str>,
) -> Result<String, ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request("Document must be a JSON object"));
    };
    fields.shift_remove("_id");
    let base = match (fields.shift_remove("_rev"), query_rev) {
        (Some(Value::String(r)), _) => parse_local_rev(&r)?,
        (Some(Value::Null) | None, Some(r)) => parse_local_rev(r)?,
        (Some(Value::Null) | None, None) => 0,
        (Some(_), _) => return Err(ApiError::bad_request("Invalid rev format")),
    };
    fields.shift_remove("_revisions");
    fields.shift_remove("_attachments");
    let deleted = match fields.shift_remove("_deleted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::bad_request("_deleted must be a boolean")),
    };
    if deleted {
        // Deleting one that is not there is done already, as CouchDB answers it.
        return match state.store.delete_local(db, id, base).await {
            Ok(()) | Err(StoreError::NotFound) => Ok("0-0".to_owned()),
            Err(e) => Err(e.into()),
        };
    }
    let rev = state
        .store
        .put_local(db, id, base, body.to_string())
        .await?;
    Ok(format!("0-{rev}"))
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
            let body = req.json().await?;
            let rev = write(state, db, id, body, req.query.get("rev")).await?;
            Ok(json(
                StatusCode::CREATED,
                json!({ "ok": true, "id": id, "rev": rev }).to_string(),
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
