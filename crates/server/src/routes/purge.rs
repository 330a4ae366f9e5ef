//! `POST /{db}/_purge` and `/{db}/_purged_infos_limit`, as CouchDB 3.5.0 answers them.
//!
//! A purge removes leaf revisions (and the ancestors only they kept) as if they had never been
//! written; a document that loses every leaf is gone from every listing and index. The store does
//! the work in one transaction ([`outpost_store::Store::purge`]); this is the request's checks and
//! CouchDB's answer. Bodies a purge dropped may have been the last to refer to some attachment
//! bytes: those are collected in the background, as after a database deletion.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::PurgeRequest;
use serde_json::{Map, Value, json};

use super::{json, not_allowed, ok};
use crate::request::{MAX_DOC_ID_BYTES, Req};
use crate::{ApiError, AppState};

/// The most documents one request may name (CouchDB 3.5.0's `max_document_id_number`).
pub const MAX_DOCUMENTS: usize = 100;
/// The most revisions one request may name in all (CouchDB 3.5.0's `max_revisions_number`).
pub const MAX_REVISIONS: usize = 1000;

/// `POST /{db}/_purge` with `{"docid": ["rev", ...], ...}`: 201 with the leaves purged per
/// document.
pub async fn purge(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let requests = parse(req.json().await?)?;
    state.store.db_info(db).await?;
    metrics::counter!("outpost_purge_requests_total").increment(1);
    metrics::counter!("outpost_purge_documents_total").increment(requests.len() as u64);
    let outcome = state.store.purge(db, requests).await?;
    let design_purged = outcome
        .purged
        .iter()
        .any(|(id, revs)| id.starts_with("_design/") && !revs.is_empty());
    if design_purged {
        // As when a design document is deleted: the view indexes no design document uses any
        // more go with it.
        crate::design::drop_unused_indexes(state, db).await?;
    }
    if outcome.attachments {
        super::db::in_background(state, "reclaim", {
            let store = state.store.clone();
            async move { store.reclaim().await }
        });
    }
    let purged: Map<String, Value> = outcome
        .purged
        .into_iter()
        .map(|(id, revs)| {
            let revs = revs.iter().map(|r| Value::String(r.to_string())).collect();
            (id, Value::Array(revs))
        })
        .collect();
    Ok(json(
        StatusCode::CREATED,
        json!({ "purge_seq": null, "purged": purged }).to_string(),
    ))
}

/// The body of a purge request, checked against CouchDB's limits before anything is written.
fn parse(body: Value) -> Result<Vec<PurgeRequest>, ApiError> {
    let Value::Object(docs) = body else {
        return Err(ApiError::bad_request("Request body must be a JSON object"));
    };
    if docs.len() > MAX_DOCUMENTS {
        return Err(ApiError::bad_request(
            "Exceeded maximum number of documents.",
        ));
    }
    let mut total = 0usize;
    let mut requests = Vec::with_capacity(docs.len());
    for (id, revs) in docs {
        if id.len() > MAX_DOC_ID_BYTES {
            return Err(ApiError::bad_request(format!(
                "document id is longer than {MAX_DOC_ID_BYTES} bytes"
            )));
        }
        let Value::Array(revs) = revs else {
            return Err(ApiError::bad_request(format!(
                "the revisions to purge of {id:?} must be an array of revision strings"
            )));
        };
        total = total.saturating_add(revs.len());
        if total > MAX_REVISIONS {
            return Err(ApiError::bad_request(
                "Exceeded maximum number of revisions.",
            ));
        }
        let revs = revs
            .iter()
            .map(|r| {
                r.as_str()
                    .and_then(|s| s.parse::<Rev>().ok())
                    .ok_or_else(|| ApiError::bad_request("Invalid rev format"))
            })
            .collect::<Result<Vec<Rev>, _>>()?;
        requests.push(PurgeRequest { id, revs });
    }
    Ok(requests)
}

/// `GET`/`PUT /{db}/_purged_infos_limit`: the number is kept and reported. Outpost keeps no
/// purge tree for internal replication to read (see docs/compat.md), so nothing else reads it.
pub async fn limit(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => Ok(ok(state
            .store
            .db_info(db)
            .await?
            .purged_infos_limit
            .to_string())),
        Method::PUT => {
            let limit = match req.json().await? {
                Value::Number(n) => n.as_u64().filter(|n| *n > 0 && *n <= i64::MAX as u64),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::bad_request("`purged_infos_limit` must be positive integer")
            })?;
            state.store.set_purged_infos_limit(db, limit).await?;
            Ok(ok(json!({ "ok": true }).to_string()))
        }
        _ => Err(not_allowed("Only GET,PUT allowed")),
    }
}
