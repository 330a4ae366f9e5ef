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

/// Most `keys` in one `_local_docs` request.
const MAX_KEYS: usize = 100_000;

/// `/{db}/_local_docs`: `_local` documents in id order, as CouchDB lists them (`total_rows` and
/// `offset` are `null`), with `startkey`/`endkey`, `descending`, `limit`, `skip`,
/// `include_docs` and `keys`.
pub async fn list(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    let body = match req.method {
        Method::GET => Value::Null,
        Method::POST => req.json().await?,
        _ => return Err(not_allowed("Only GET,HEAD,POST allowed")),
    };
    let q = &req.query;
    state.store.db_info(db).await?;
    let include_docs = q.flag("include_docs")?;
    let descending = q.flag("descending")?;
    let limit = q.u64("limit")?.unwrap_or(u64::MAX);
    let skip = q.u64("skip")?.unwrap_or(0);
    let row = |id: &str, rev: u64, body: Option<&str>| -> Value {
        let mut row = json!({ "id": id, "key": id, "value": { "rev": format!("0-{rev}") } });
        if include_docs {
            let mut doc = serde_json::Map::new();
            doc.insert("_id".into(), Value::String(id.to_owned()));
            doc.insert("_rev".into(), Value::String(format!("0-{rev}")));
            if let Some(Value::Object(fields)) = body.and_then(|b| serde_json::from_str(b).ok()) {
                doc.extend(fields);
            }
            row["doc"] = Value::Object(doc);
        }
        row
    };
    let keys = match body.get("keys") {
        Some(k) => Some(k.clone()),
        None => q.json("keys")?,
    };
    let mut rows = Vec::new();
    if let Some(keys) = keys {
        let keys = keys
            .as_array()
            .ok_or_else(|| ApiError::bad_request("`keys` must be an array"))?;
        if keys.len() > MAX_KEYS {
            return Err(ApiError::TooLarge(format!(
                "at most {MAX_KEYS} keys per request"
            )));
        }
        let ordered: Box<dyn Iterator<Item = &Value> + Send> = if descending {
            Box::new(keys.iter().rev())
        } else {
            Box::new(keys.iter())
        };
        for key in ordered
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            let found = match key.as_str() {
                Some(id) => state.store.local_doc(db, id).await?.map(|d| (id, d)),
                None => None,
            };
            rows.push(match found {
                Some((id, doc)) => row(id, doc.rev, Some(&doc.body)),
                None => json!({ "key": key, "error": "not_found" }),
            });
        }
    } else {
        let key = q.json("key")?;
        let start = key.clone().or(q.json_any(&["startkey", "start_key"])?);
        let end = key.or(q.json_any(&["endkey", "end_key"])?);
        let as_id = |v: Option<Value>| -> Result<Option<String>, ApiError> {
            match v {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(ApiError::bad_request(
                    "_local_docs keys are document ids (strings)",
                )),
            }
        };
        let mut query = outpost_store::AllDocsQuery {
            start: as_id(start)?,
            start_inclusive: true,
            end: as_id(end)?,
            end_inclusive: q.bool("inclusive_end")?.unwrap_or(true),
            descending,
            // A page is bounded; a client wanting more pages with `skip`/`startkey`, as CouchDB
            // lets it.
            limit: limit.min(10_000),
            skip,
            include_docs,
        };
        // `_local/` ids only, whatever range was asked for.
        let (lower, upper) = if descending {
            (&mut query.end, &mut query.start)
        } else {
            (&mut query.start, &mut query.end)
        };
        if lower.as_deref().is_none_or(|l| l < "_local/") {
            *lower = Some("_local/".to_owned());
        }
        if upper.is_none() {
            *upper = Some("_local0".to_owned());
        }
        for doc in state.store.local_docs(db, &query).await? {
            rows.push(row(&doc.id, doc.rev, doc.body.as_deref()));
        }
    }
    Ok(ok(
        json!({ "total_rows": null, "offset": null, "rows": rows }).to_string(),
    ))
}
