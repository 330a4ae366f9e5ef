//! The batch endpoints of replication: `_bulk_docs`, `_bulk_get` and `_revs_diff`.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::{DocError, Origin};
use serde_json::{Map, Value, json};

use super::doc::{OpenRev, open_revs_entries, render_opts};
use super::{json, not_allowed, ok};
use crate::dispatch::Req;
use crate::docjson::{ok_json, parse_doc, parse_rev};
use crate::{ApiError, AppState};

/// Most documents in one `_bulk_docs` or `_bulk_get` request.
pub const MAX_BATCH_DOCS: usize = 100_000;
/// Most document ids in one `_revs_diff` request.
pub const MAX_REVS_DIFF_IDS: usize = 100_000;

fn error_entry(id: Option<&str>, error: &str, reason: &str) -> Value {
    json!({ "id": id, "error": error, "reason": reason })
}

fn doc_error_entry(id: &str, e: &DocError) -> Value {
    let api: ApiError = e.clone().into();
    error_entry(Some(id), api.status_and_code().1, &api.reason())
}

/// `POST /{db}/_bulk_docs`: results in request order, one per document, errors per document.
pub async fn bulk_docs(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let mut body = req.json().await?;
    // Taken out of the body, not cloned: a batch can be tens of megabytes.
    let Some(Value::Array(docs)) = body.get_mut("docs").map(Value::take) else {
        return Err(ApiError::bad_request(
            "POST body must include `docs` parameter.",
        ));
    };
    if docs.len() > MAX_BATCH_DOCS {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_BATCH_DOCS} documents per request"
        )));
    }
    let new_edits = match body.get("new_edits") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("new_edits must be a boolean")),
    };
    let origin = if new_edits {
        Origin::Client
    } else {
        Origin::Replication { peer: None }
    };
    // Parse every document first; refused ones keep their place in the answer.
    let mut slots: Vec<Result<usize, Value>> = Vec::with_capacity(docs.len());
    let mut updates = Vec::new();
    for doc in docs {
        let id = doc.get("_id").and_then(Value::as_str).map(str::to_owned);
        let id = id.as_deref();
        if id.is_some_and(|id| id.starts_with("_local/")) {
            slots.push(Err(error_entry(
                id,
                "bad_request",
                "write _local documents with PUT",
            )));
            continue;
        }
        match parse_doc(doc, None, new_edits, origin.clone()) {
            Ok(update) => {
                slots.push(Ok(updates.len()));
                updates.push(update);
            }
            Err(e) => slots.push(Err(error_entry(id, e.status_and_code().1, &e.reason()))),
        }
    }
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let results = if updates.is_empty() {
        state.store.db_info(db).await?;
        Vec::new()
    } else {
        state.store.write_docs(db, updates).await?
    };
    let mut out: Vec<String> = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Ok(i) => match &results[i] {
                Ok(rev) if new_edits => out.push(ok_json(&ids[i], rev)),
                // With new_edits=false only failures are reported, as CouchDB does.
                Ok(_) => {}
                Err(e) => out.push(doc_error_entry(&ids[i], e).to_string()),
            },
            Err(entry) => out.push(entry.to_string()),
        }
    }
    Ok(json(StatusCode::CREATED, format!("[{}]", out.join(","))))
}

/// `POST /{db}/_bulk_get` with `revs`, `latest` and `attachments`.
pub async fn bulk_get(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let opts = render_opts(req)?;
    let latest = req.query.flag("latest")?;
    let body = req.json().await?;
    let docs = body
        .get("docs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("POST body must include `docs` parameter."))?;
    if docs.len() > MAX_BATCH_DOCS {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_BATCH_DOCS} documents per request"
        )));
    }
    state.store.db_info(db).await?;
    let mut results = Vec::with_capacity(docs.len());
    for item in docs {
        let id = item.get("id").and_then(Value::as_str);
        let asked = item.get("rev").and_then(Value::as_str);
        let error_doc = |rev: &str, error: &str, reason: &str| json!({ "error": { "id": id, "rev": rev, "error": error, "reason": reason } });
        let error = |error: &str, reason: &str| {
            json!({ "id": id, "docs": [error_doc(asked.unwrap_or("undefined"), error, reason)] })
                .to_string()
        };
        let Some(id) = id else {
            results.push(error("bad_request", "missing document id"));
            continue;
        };
        let rev = match asked.map(parse_rev).transpose() {
            Ok(rev) => rev,
            Err(e) => {
                results.push(error("bad_request", &e.reason()));
                continue;
            }
        };
        let Some(record) = state.store.doc(db, id).await? else {
            results.push(error("not_found", "missing"));
            continue;
        };
        crate::observe::documents_read(1);
        let wanted: Vec<Rev> = match rev {
            Some(rev) => vec![rev],
            None => record.tree.winner().map(|w| w.rev).into_iter().collect(),
        };
        let entries = open_revs_entries(state, db, &record, &wanted, latest, &opts).await?;
        let entries: Vec<String> = entries
            .into_iter()
            .map(|entry| match entry {
                OpenRev::Found(doc) => format!("{{\"ok\":{doc}}}"),
                OpenRev::Missing(rev) => {
                    error_doc(&rev.to_string(), "not_found", "missing").to_string()
                }
            })
            .collect();
        results.push(format!(
            "{{\"id\":{},\"docs\":[{}]}}",
            Value::String(id.to_owned()),
            entries.join(",")
        ));
    }
    Ok(ok(format!("{{\"results\":[{}]}}", results.join(","))))
}

/// `POST /{db}/_revs_diff`: which of the given revisions this database lacks.
pub async fn revs_diff(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let body = req.json().await?;
    let Value::Object(asked) = body else {
        return Err(ApiError::bad_request(
            "_revs_diff takes an object of document ids to revision lists",
        ));
    };
    if asked.len() > MAX_REVS_DIFF_IDS {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_REVS_DIFF_IDS} documents per request"
        )));
    }
    state.store.db_info(db).await?;
    let mut out = Map::new();
    for (id, revs) in asked {
        let revs: Vec<Rev> = revs
            .as_array()
            .ok_or_else(|| ApiError::bad_request(format!("revisions of {id} must be an array")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::bad_request("Invalid rev format"))
                    .and_then(parse_rev)
            })
            .collect::<Result<_, _>>()?;
        let tree = state.store.doc(db, &id).await?.map(|r| r.tree);
        let missing: Vec<&Rev> = revs
            .iter()
            .filter(|r| !tree.as_ref().is_some_and(|t| t.contains(r)))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let mut entry = Map::new();
        entry.insert(
            "missing".into(),
            json!(missing.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
        );
        if let Some(tree) = &tree {
            let mut ancestors: Vec<Rev> = Vec::new();
            for rev in &missing {
                for a in tree.possible_ancestors(rev) {
                    if !ancestors.contains(&a) {
                        ancestors.push(a);
                    }
                }
            }
            if !ancestors.is_empty() {
                ancestors.sort();
                entry.insert(
                    "possible_ancestors".into(),
                    json!(ancestors.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
                );
            }
        }
        out.insert(id, Value::Object(entry));
    }
    Ok(ok(Value::Object(out).to_string()))
}
