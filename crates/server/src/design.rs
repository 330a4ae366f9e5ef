//! A database's design documents as the functions in them see them, and `validate_doc_update`.
//!
//! The design documents of a database are listed on each use (a range read of `_design/` ids in
//! the id index, a few rows) and their bodies are read again only when a revision changed, so a
//! write pays one small read to learn which validation functions apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outpost_core::Rev;
use outpost_js::Verdict;
use outpost_store::{AllDocsQuery, DocUpdate, UpdateMode};
use serde_json::{Map, Value, json};

use crate::request::Req;
use crate::{ApiError, AppState};

/// One live design document.
#[derive(Debug)]
pub struct DesignDoc {
    pub id: String,
    pub rev: Rev,
    /// The whole document, `_id` and `_rev` included.
    pub body: Value,
}

impl DesignDoc {
    /// A key for the sandbox's compiled-function cache: revisions are content hashes, so the
    /// id, revision and function name identify the source and everything it can `require`.
    pub fn sig(&self, what: &str) -> String {
        format!("{}\u{0}{}\u{0}{what}", self.id, self.rev)
    }

    /// A function's source at a path of the document (`["filters", "name"]`).
    pub fn function(&self, path: &[&str]) -> Option<&str> {
        let mut at = &self.body;
        for key in path {
            at = at.get(key)?;
        }
        at.as_str()
    }
}

/// The design documents of one database at some moment, sorted by id.
#[derive(Debug, Default)]
pub struct DesignDocs {
    pub docs: Vec<Arc<DesignDoc>>,
}

/// The last design documents read per database.
#[derive(Debug, Default)]
pub struct DesignCache {
    dbs: Mutex<HashMap<String, Arc<DesignDocs>>>,
}

/// The upper end of the `_design/` id range.
const DESIGN_END: &str = "_design0";

impl DesignCache {
    /// The live design documents of `db`.
    pub async fn load(&self, state: &AppState, db: &str) -> Result<Arc<DesignDocs>, ApiError> {
        let mut query = AllDocsQuery {
            start: Some("_design/".to_owned()),
            start_inclusive: true,
            end: Some(DESIGN_END.to_owned()),
            end_inclusive: false,
            limit: u64::MAX,
            ..AllDocsQuery::default()
        };
        let rows = state.store.all_docs(db, &query).await?;
        let current: Vec<(String, Rev)> = rows
            .iter()
            .filter_map(|r| r.tree.winner().map(|w| (r.id.clone(), w.rev)))
            .collect();
        let cached = self.dbs.lock().ok().and_then(|m| m.get(db).cloned());
        if let Some(cached) = cached {
            let same = cached.docs.len() == current.len()
                && cached
                    .docs
                    .iter()
                    .zip(&current)
                    .all(|(d, (id, rev))| &d.id == id && &d.rev == rev);
            if same {
                return Ok(cached);
            }
        }
        query.include_docs = true;
        let rows = state.store.all_docs(db, &query).await?;
        let mut docs = Vec::with_capacity(rows.len());
        for row in rows {
            let (Some(winner), Some(body)) = (row.tree.winner(), row.body) else {
                continue;
            };
            let mut object = Map::new();
            object.insert("_id".into(), Value::String(row.id.clone()));
            object.insert("_rev".into(), Value::String(winner.rev.to_string()));
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&body) {
                object.extend(fields);
            }
            docs.push(Arc::new(DesignDoc {
                id: row.id,
                rev: winner.rev,
                body: Value::Object(object),
            }));
        }
        let loaded = Arc::new(DesignDocs { docs });
        if let Ok(mut map) = self.dbs.lock() {
            map.insert(db.to_owned(), loaded.clone());
        }
        Ok(loaded)
    }

    /// One design document by its name (after `_design/`).
    pub async fn get(
        &self,
        state: &AppState,
        db: &str,
        name: &str,
    ) -> Result<Option<Arc<DesignDoc>>, ApiError> {
        let id = format!("_design/{name}");
        Ok(self
            .load(state, db)
            .await?
            .docs
            .iter()
            .find(|d| d.id == id)
            .cloned())
    }
}

/// Who is writing, as `validate_doc_update` sees it (CouchDB's `userCtx`): the request's
/// authenticated user (a server admin on a server without admins, as CouchDB's admin party).
pub fn user_ctx(req: &Req, db: &str) -> Value {
    json!({ "db": db, "name": req.user.name, "roles": req.user.roles })
}

/// The `userCtx` of the server itself (replications it runs).
pub fn admin_ctx(db: &str) -> Value {
    json!({ "db": db, "name": null, "roles": ["_admin"] })
}

/// Runs every `validate_doc_update` of the database on each update: `None` where the write may
/// go ahead, the refusal where not (403 `forbidden`, 401 `unauthorized`, or the function's
/// failure). Design documents and `_local` documents are not validated, as in CouchDB.
pub async fn validate(
    state: &AppState,
    db: &str,
    updates: &[DocUpdate],
    user_ctx: &Value,
) -> Result<Vec<Option<ApiError>>, ApiError> {
    let mut verdicts: Vec<Option<ApiError>> = updates.iter().map(|_| None).collect();
    let design = state.design.load(state, db).await?;
    let validators: Vec<&Arc<DesignDoc>> = design
        .docs
        .iter()
        .filter(|d| d.function(&["validate_doc_update"]).is_some())
        .collect();
    let checked: Vec<usize> = (0..updates.len())
        .filter(|&i| !updates[i].id.starts_with("_design/"))
        .collect();
    if validators.is_empty() || checked.is_empty() {
        return Ok(verdicts);
    }
    let olds = old_docs(state, db, updates, &checked).await?;
    // The database's `_security` object, as the validation's `secObj`.
    let sec = serde_json::to_value(crate::authz::security(state, db).await?)
        .map_err(|e| ApiError::Internal(format!("security object of {db}: {e}")))?;
    for (i, old) in checked.into_iter().zip(olds) {
        let new_doc = new_doc(&updates[i]);
        for ddoc in &validators {
            let Some(source) = ddoc.function(&["validate_doc_update"]) else {
                continue;
            };
            let verdict = state
                .js
                .validate(
                    &ddoc.sig("validate_doc_update"),
                    source,
                    &ddoc.body,
                    &new_doc,
                    old.as_ref(),
                    user_ctx,
                    &sec,
                )
                .await;
            let refusal = match verdict {
                Ok(Verdict::Allowed) => None,
                Ok(Verdict::Forbidden(message)) => Some(ApiError::Forbidden(message_text(message))),
                Ok(Verdict::Unauthorized(message)) => {
                    Some(ApiError::Unauthorized(message_text(message)))
                }
                Ok(Verdict::Failed(message)) => {
                    tracing::info!(db, ddoc = %ddoc.id, doc = %updates[i].id, error = %message,
                        "validate_doc_update failed");
                    Some(ApiError::FunctionFailed(message))
                }
                Err(e) => {
                    tracing::warn!(db, ddoc = %ddoc.id, doc = %updates[i].id, error = %e,
                        "validate_doc_update stopped");
                    Some(ApiError::FunctionFailed(e.to_string()))
                }
            };
            if refusal.is_some() {
                verdicts[i] = refusal;
                break;
            }
        }
    }
    Ok(verdicts)
}

fn message_text(message: Value) -> String {
    match message {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The document as the validation sees it: the body with `_id`, the revision it edits (or was
/// given by replication) and `_deleted`.
fn new_doc(update: &DocUpdate) -> Value {
    let mut object = Map::new();
    object.insert("_id".into(), Value::String(update.id.clone()));
    match &update.mode {
        UpdateMode::Edit { base: Some(rev) } => {
            object.insert("_rev".into(), Value::String(rev.to_string()));
        }
        UpdateMode::Replicate { path } => {
            if let Some(rev) = path.first() {
                object.insert("_rev".into(), Value::String(rev.to_string()));
            }
        }
        UpdateMode::Edit { base: None } => {}
    }
    if update.deleted {
        object.insert("_deleted".into(), Value::Bool(true));
    }
    for (k, v) in &update.body {
        object.insert(k.clone(), v.clone());
    }
    Value::Object(object)
}

/// The revision each checked update replaces, as `oldDoc`: the edited revision for an edit, the
/// nearest stored ancestor on the path for a replicated revision, else the live winner for a
/// new edit; `None` for a document that is new (or deleted).
async fn old_docs(
    state: &AppState,
    db: &str,
    updates: &[DocUpdate],
    checked: &[usize],
) -> Result<Vec<Option<Value>>, ApiError> {
    let ids: Vec<String> = checked.iter().map(|&i| updates[i].id.clone()).collect();
    let records = state.store.docs(db, &ids).await?;
    let mut wanted: Vec<(String, Rev)> = Vec::new();
    let mut which: Vec<Option<usize>> = Vec::with_capacity(checked.len());
    for (&i, record) in checked.iter().zip(&records) {
        let Some(record) = record else {
            which.push(None);
            continue;
        };
        let rev = match &updates[i].mode {
            UpdateMode::Edit { base: Some(rev) } => Some(rev.clone()),
            UpdateMode::Edit { base: None } => {
                record.tree.winner().filter(|w| !w.deleted).map(|w| w.rev)
            }
            UpdateMode::Replicate { path } => path
                .iter()
                .skip(1)
                .find(|r| record.tree.contains(r))
                .cloned(),
        };
        match rev {
            Some(rev) => {
                which.push(Some(wanted.len()));
                wanted.push((record.id.clone(), rev));
            }
            None => which.push(None),
        }
    }
    let bodies = if wanted.is_empty() {
        Vec::new()
    } else {
        state.store.bodies(db, &wanted).await?
    };
    Ok(which
        .into_iter()
        .map(|slot| {
            let slot = slot?;
            let body = bodies.get(slot)?.as_ref()?;
            if body.deleted {
                return None;
            }
            let (id, rev) = &wanted[slot];
            let mut object = Map::new();
            object.insert("_id".into(), Value::String(id.clone()));
            object.insert("_rev".into(), Value::String(rev.to_string()));
            if let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&body.json) {
                // The document as a client reads it.
                outpost_core::attachment::strip_encoding_info(&mut fields);
                object.extend(fields);
            }
            Some(Value::Object(object))
        })
        .collect())
}

/// Validates and writes updates: one result per update, in order; refused ones are not written.
pub async fn write_validated(
    state: &AppState,
    db: &str,
    updates: Vec<DocUpdate>,
    user_ctx: &Value,
) -> Result<Vec<Result<Rev, ApiError>>, ApiError> {
    let mut verdicts = validate(state, db, &updates, user_ctx).await?;
    // Per-document access comes first: a member's write that `_access` refuses is refused
    // whatever the validation functions say.
    let user: outpost_auth::UserCtx = serde_json::from_value(json!({
        "name": user_ctx.get("name").cloned().unwrap_or(Value::Null),
        "roles": user_ctx.get("roles").cloned().unwrap_or(json!([])),
    }))
    .unwrap_or_default();
    let refusals = crate::access::check_writes(state, db, &user, &updates).await?;
    for (verdict, refusal) in verdicts.iter_mut().zip(refusals) {
        if refusal.is_some() {
            *verdict = refusal;
        }
    }
    let mut out: Vec<Option<Result<Rev, ApiError>>> = Vec::with_capacity(updates.len());
    let mut passing = Vec::with_capacity(updates.len());
    let mut slots = Vec::with_capacity(updates.len());
    for (update, verdict) in updates.into_iter().zip(verdicts) {
        match verdict {
            Some(refusal) => out.push(Some(Err(refusal))),
            None => {
                slots.push(out.len());
                out.push(None);
                passing.push(update);
            }
        }
    }
    let passing = crate::encoding::store_form(state, passing).await?;
    let design_deleted = passing
        .iter()
        .any(|u| u.deleted && u.id.starts_with("_design/"));
    if !passing.is_empty() {
        let results = state.store.write_docs(db, passing).await?;
        for (slot, result) in slots.into_iter().zip(results) {
            out[slot] = Some(result.map_err(ApiError::from));
        }
    }
    if design_deleted {
        // The indexes of a design document that is gone go with it (unless another design
        // document with the same views still uses them).
        drop_unused_indexes(state, db).await?;
    }
    Ok(out
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(ApiError::Internal(
                    "the store answered no result for a write".into(),
                ))
            })
        })
        .collect())
}

/// Drops the view indexes of `db` that no live design document uses; returns how many.
pub async fn drop_unused_indexes(state: &AppState, db: &str) -> Result<usize, ApiError> {
    let live: Vec<String> = state
        .design
        .load(state, db)
        .await?
        .docs
        .iter()
        .filter_map(|d| {
            outpost_views::ViewSet::from_ddoc(&d.id, &d.body)
                .ok()
                .flatten()
        })
        .map(|s| s.signature)
        .collect();
    Ok(outpost_views::cleanup(state.store.as_ref(), db, &live).await?)
}
