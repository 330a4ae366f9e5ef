//! Conflict handling: the per-database policy (`/{db}/_outpost`), the list of conflicted
//! documents with the reason each is left (`/{db}/_conflicts`) and manual resolution
//! (`/{db}/_resolve`).

use axum::response::Response;
use http::{Method, StatusCode};
use std::collections::HashMap;

use outpost_core::{Policy, Rev, policy};
use outpost_store::{DbInfo, Origin, Retention};
use serde_json::{Value, json};

use super::{json, not_allowed, ok, with_etag};
use crate::docjson::{ok_json, parse_doc, parse_rev};
use crate::request::Req;
use crate::{ApiError, AppState};

/// Most rows of one `_conflicts` page.
const MAX_CONFLICTS_PAGE: u64 = 10_000;

/// The JSON form of a database's Outpost settings.
pub fn settings_json(info: &DbInfo) -> Value {
    let retention = if info.retention.keeps_everything() {
        Value::Null
    } else {
        json!({
            "max_events_per_doc": info.retention.max_events_per_doc,
            "max_age_seconds": info.retention.max_age_seconds,
        })
    };
    json!({
        "conflict_policy": info.policy.name(),
        "lww_field": info.policy.lww_field(),
        "retention": retention,
    })
}

fn parse_retention(value: &Value) -> Result<Retention, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "retention must be null or {\"max_events_per_doc\": N, \"max_age_seconds\": S} with positive integers",
        )
    };
    match value {
        Value::Null => Ok(Retention::default()),
        Value::Object(fields) => {
            if fields
                .keys()
                .any(|k| k != "max_events_per_doc" && k != "max_age_seconds")
            {
                return Err(bad());
            }
            let get = |name: &str| match fields.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().filter(|n| *n >= 1).map(Some).ok_or_else(bad),
            };
            Ok(Retention {
                max_events_per_doc: get("max_events_per_doc")?,
                max_age_seconds: get("max_age_seconds")?,
            })
        }
        _ => Err(bad()),
    }
}

/// `GET/PUT /{db}/_outpost`: the database's Outpost settings.
pub async fn settings(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => Ok(ok(
            settings_json(&state.store.db_info(db).await?).to_string()
        )),
        Method::PUT => {
            let body = req.json().await?;
            let Value::Object(fields) = body else {
                return Err(ApiError::bad_request("settings must be a JSON object"));
            };
            let known = ["conflict_policy", "lww_field", "retention"];
            if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ApiError::bad_request(format!(
                    "unknown setting {unknown:?}"
                )));
            }
            // Only the settings named change; all are validated before any is stored.
            let retention = fields.get("retention").map(parse_retention).transpose()?;
            let field = match fields.get("lww_field") {
                None | Some(Value::Null) => None,
                Some(Value::String(f)) if !f.is_empty() && f.len() <= 256 => Some(f.clone()),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "lww_field must be a non-empty field name",
                    ));
                }
            };
            let policy = match fields.get("conflict_policy") {
                Some(Value::String(name)) => {
                    Some(Policy::from_parts(name, field).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown conflict_policy {name:?}: expected manual, lww or merge"
                        ))
                    })?)
                }
                None if fields.contains_key("lww_field") => {
                    return Err(ApiError::bad_request(
                        "lww_field is set together with conflict_policy",
                    ));
                }
                None => None,
                Some(_) => return Err(ApiError::bad_request("conflict_policy must be a string")),
            };
            if let Some(policy) = policy {
                state.store.set_policy(db, policy).await?;
            }
            if let Some(retention) = retention {
                state.store.set_retention(db, retention).await?;
            }
            if fields.is_empty() {
                state.store.db_info(db).await?;
            }
            Ok(ok(json!({ "ok": true }).to_string()))
        }
        _ => Err(not_allowed("Only GET,HEAD,PUT allowed")),
    }
}

/// `GET /{db}/_conflicts?limit=&startkey=`: documents with more than one live leaf, by id.
pub async fn list(state: &AppState, db: &str, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET,HEAD allowed"));
    }
    let limit = req
        .query
        .u64("limit")?
        .unwrap_or(1000)
        .min(MAX_CONFLICTS_PAGE);
    let start = match req.query.json_any(&["startkey", "start_key"])? {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(ApiError::bad_request(
                "startkey must be a document id (a JSON string)",
            ));
        }
    };
    // One row more than asked tells whether there is a next page, and where it starts.
    let mut rows = match crate::access::reader(state, req, db).await? {
        Some(reader) => readable_conflicts(state, db, &reader, start, limit).await?,
        None => {
            state
                .store
                .conflicts(db, start.as_deref(), limit + 1)
                .await?
        }
    };
    let next = if rows.len() as u64 > limit {
        rows.pop().map(|r| r.id)
    } else {
        None
    };
    // Why each is still conflicted, from the leaves' bodies (and, under `merge`, their common
    // ancestors'): one read for the page.
    let policy = state.store.db_info(db).await?.policy;
    let wanted: Vec<(String, Rev)> = rows
        .iter()
        .flat_map(|r| {
            policy::standing_bodies(&policy, &r.tree)
                .into_iter()
                .map(|rev| (r.id.clone(), rev))
        })
        .collect();
    let mut bodies: HashMap<String, HashMap<Rev, Value>> = HashMap::new();
    let found = state.store.bodies(db, &wanted).await?;
    for ((id, rev), body) in wanted.into_iter().zip(found) {
        if let Some(body) = body.and_then(|b| serde_json::from_str(&b.json).ok()) {
            bodies.entry(id).or_default().insert(rev, body);
        }
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let winner = r.tree.winner().map(|w| w.rev.to_string());
            let conflicts: Vec<String> = r.tree.conflicts().iter().map(Rev::to_string).collect();
            let own = bodies.remove(&r.id).unwrap_or_default();
            let reason = policy::standing(&policy, &r.tree, &own).as_str();
            json!({ "id": r.id, "rev": winner, "conflicts": conflicts, "reason": reason })
        })
        .collect();
    Ok(ok(json!({ "rows": rows, "next": next }).to_string()))
}

/// Up to `limit + 1` conflicted documents from `start` that `reader` can read, so that the next
/// page starts at one they can read too (never at an id hidden from them).
async fn readable_conflicts(
    state: &AppState,
    db: &str,
    reader: &crate::access::Reader,
    start: Option<String>,
    limit: u64,
) -> Result<Vec<outpost_store::DocRecord>, ApiError> {
    let page = limit.saturating_add(1).max(2);
    let mut out = Vec::new();
    let mut cursor = start;
    let mut after: Option<String> = None;
    loop {
        let mut rows = state.store.conflicts(db, cursor.as_deref(), page).await?;
        let exhausted = (rows.len() as u64) < page;
        // The cursor is inclusive: the row it names was looked at already.
        if let Some(after) = &after {
            rows.retain(|r| r.id > *after);
        }
        after = rows.last().map(|r| r.id.clone());
        let records = rows.into_iter().map(Some).collect();
        for seen in crate::access::see(state, Some(reader), db, records).await? {
            if let crate::access::Seen::Full(record) = seen {
                out.push(record);
            }
        }
        if out.len() as u64 > limit || exhausted || after.is_none() {
            out.truncate(usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX));
            return Ok(out);
        }
        cursor = after.clone();
    }
}

/// `POST /{db}/_resolve {"id", "doc", "revs"}`: keeps `doc` as a child of the winner and
/// tombstones every other live leaf, in one transaction.
pub async fn resolve(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let body = req.json().await?;
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("`id` must name the document to resolve"))?
        .to_owned();
    let revs: Vec<Rev> = body
        .get("revs")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad_request("`revs` must list every live leaf the resolution supersedes")
        })?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| ApiError::bad_request("Invalid rev format"))
                .and_then(parse_rev)
        })
        .collect::<Result<_, _>>()?;
    let mut doc = body
        .get("doc")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("`doc` must be the body to keep"))?;
    if let Some(fields) = doc.as_object_mut() {
        fields.shift_remove("_rev");
        fields.shift_remove("_deleted");
        fields.shift_remove("_revisions");
    }
    let update = parse_doc(doc, Some(&id), true, Origin::Client)?;
    crate::limits::check(&update, &state.config)?;
    let update = crate::encoding::store_form(state, vec![update])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("no update to resolve with".into()))?;
    let rev = state
        .store
        .resolve(db, &id, revs, update)
        .await?
        .map_err(ApiError::from)?;
    Ok(with_etag(
        json(StatusCode::CREATED, ok_json(&id, &rev)),
        &rev,
    ))
}
