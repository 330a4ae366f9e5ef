//! The batch endpoints of replication: `_bulk_docs`, `_bulk_get` and `_revs_diff`.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::{DocRecord, Origin};
use serde_json::{Map, Value, json};

use super::doc::{OpenRev, open_revs_batch, render_opts};
use super::{json, not_allowed, ok};
use crate::docjson::{ok_json, parse_doc, parse_rev};
use crate::request::Req;
use crate::stream;
use crate::{ApiError, AppState};

/// Most documents in one `_bulk_docs` or `_bulk_get` request.
pub const MAX_BATCH_DOCS: usize = 100_000;
/// Most document ids in one `_revs_diff` request.
pub const MAX_REVS_DIFF_IDS: usize = 100_000;
/// Documents of a `_bulk_get` whose bodies are read with one store call: a bound on the bodies
/// held at once, whatever the size of the batch.
const BODY_GROUP: usize = 16;

fn error_entry(id: Option<&str>, error: &str, reason: &str) -> Value {
    json!({ "id": id, "error": error, "reason": reason })
}

fn api_error_entry(id: &str, e: &ApiError) -> Value {
    error_entry(Some(id), e.status_and_code().1, &e.reason())
}

/// Where one document of a `_bulk_docs` request goes.
enum Slot {
    /// The index of its update among those sent to the store together.
    Doc(usize),
    /// A `_local` document, written after the others with its id and body.
    Local(String, Value),
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
    if body.get("all_or_nothing") == Some(&Value::Bool(true)) {
        // CouchDB 3 dropped all-or-nothing commits and says so per document, with 417.
        let refused: Vec<Value> = docs
            .iter()
            .map(|d| {
                json!({
                    "id": d.get("_id"),
                    "rev": "0-",
                    "error": "not_implemented",
                    "reason": "all_or_nothing is not supported",
                })
            })
            .collect();
        return Ok(json(
            StatusCode::EXPECTATION_FAILED,
            Value::Array(refused).to_string(),
        ));
    }
    let origin = if new_edits {
        Origin::Client
    } else {
        Origin::Replication { peer: None }
    };
    // Every document is parsed before anything is written, and one that cannot be parsed fails
    // the whole request, as in CouchDB. `_local` documents are written on their own (they have
    // no revision tree) and keep their place in the answer.
    let mut slots: Vec<Slot> = Vec::with_capacity(docs.len());
    let mut updates = Vec::new();
    for doc in docs {
        if let Some(id) = doc
            .get("_id")
            .and_then(Value::as_str)
            .filter(|id| id.starts_with("_local/"))
        {
            outpost_core::names::classify_doc_id(id)?;
            slots.push(Slot::Local(id.to_owned(), doc));
            continue;
        }
        let mut update = parse_doc(doc, None, new_edits, origin.clone())?;
        crate::users::before_write(state, db, req, &mut update).await?;
        // As in CouchDB, one document above the limits refuses the whole request.
        crate::limits::check(&update, &state.config)?;
        slots.push(Slot::Doc(updates.len()));
        updates.push(update);
    }
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let results = if updates.is_empty() {
        state.store.db_info(db).await?;
        Vec::new()
    } else {
        let user_ctx = crate::design::user_ctx(req, db);
        crate::design::write_validated(state, db, updates, &user_ctx).await?
    };
    for (i, result) in results.iter().enumerate() {
        if result.is_ok() {
            crate::users::after_write(state, db, &ids[i]).await?;
        }
    }
    let mut out: Vec<String> = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Doc(i) => match &results[i] {
                Ok(rev) if new_edits => out.push(ok_json(&ids[i], rev)),
                // With new_edits=false only failures are reported, as CouchDB does.
                Ok(_) => {}
                Err(e) => out.push(api_error_entry(&ids[i], e).to_string()),
            },
            Slot::Local(id, doc) => match super::local::write(state, db, &id, doc, None).await {
                Ok(rev) if new_edits => {
                    out.push(json!({ "ok": true, "id": id, "rev": rev }).to_string())
                }
                Ok(_) => {}
                Err(e) => {
                    out.push(error_entry(Some(&id), e.status_and_code().1, &e.reason()).to_string())
                }
            },
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
    // Every item is checked first: a replication batch asks for hundreds of documents at once,
    // so their trees are read with one store call.
    let mut items: Vec<Result<(&str, Option<Rev>), String>> = Vec::with_capacity(docs.len());
    for item in docs {
        let id = item.get("id").and_then(Value::as_str);
        let asked = item.get("rev").and_then(Value::as_str);
        let error = |error: &str, reason: &str| {
            json!({ "id": id, "docs": [bulk_get_error(id, asked.unwrap_or("undefined"), error, reason)] })
                .to_string()
        };
        let Some(id) = id else {
            items.push(Err(error("bad_request", "missing document id")));
            continue;
        };
        match asked.map(parse_rev).transpose() {
            Ok(rev) => items.push(Ok((id, rev))),
            Err(e) => items.push(Err(error("bad_request", &e.reason()))),
        }
    }
    let ids: Vec<String> = items
        .iter()
        .filter_map(|item| item.as_ref().ok().map(|(id, _)| (*id).to_owned()))
        .collect();
    // The trees of the whole batch in one store call, before the answer starts (a missing
    // database is still a 404, even when every item was refused); the bodies are read while
    // the answer is written, a group of documents at a time.
    let reader = crate::access::reader(state, req, db).await?;
    let found = state.store.docs(db, &ids).await?;
    let mut records = crate::access::see(state, reader.as_ref(), db, found)
        .await?
        .into_iter();
    let mut slots: Vec<GetSlot> = Vec::with_capacity(items.len());
    for item in items {
        let (id, rev) = match item {
            Ok(item) => item,
            Err(entry) => {
                slots.push(GetSlot::Done(entry));
                continue;
            }
        };
        let id = id.to_owned();
        let (record, revoked) = match records.next() {
            Some(crate::access::Seen::Full(record)) => (Some(record), false),
            Some(crate::access::Seen::Revoked(record)) => (Some(record), true),
            Some(crate::access::Seen::Hidden) | None => (None, false),
        };
        let Some(record) = record else {
            let asked = rev.as_ref().map(Rev::to_string);
            slots.push(GetSlot::Done(error_result(
                &id,
                asked.as_deref().unwrap_or("undefined"),
                "missing",
            )));
            continue;
        };
        let wanted: Vec<Rev> = match rev {
            Some(rev) => vec![rev],
            // Without a revision the item reads the document as `GET /{db}/{id}` does: a
            // deleted one is `not_found`/`deleted`, not its tombstone.
            None => match record.tree.winner() {
                Some(w) if w.deleted => {
                    slots.push(GetSlot::Done(error_result(&id, "undefined", "deleted")));
                    continue;
                }
                w => w.map(|w| w.rev).into_iter().collect(),
            },
        };
        if revoked {
            // A document taken away from the reader: its tombstone, rendered now (it is small).
            let entries =
                crate::access::revoked_entries(state, db, &record, &wanted, latest, &opts).await?;
            let mut docs = Vec::with_capacity(entries.len());
            for entry in entries {
                docs.push(match entry {
                    OpenRev::Found(doc) => format!("{{\"ok\":{}}}", doc.into_string(state).await?),
                    OpenRev::Missing(rev) => {
                        bulk_get_error(Some(&id), &rev.to_string(), "not_found", "missing")
                            .to_string()
                    }
                });
            }
            slots.push(GetSlot::Done(format!(
                "{{\"id\":{},\"docs\":[{}]}}",
                Value::String(id),
                docs.join(",")
            )));
            continue;
        }
        slots.push(GetSlot::Read(id, record, wanted));
    }
    let state2 = state.clone();
    let db = db.to_owned();
    Ok(stream::respond(
        state,
        StatusCode::OK,
        move |mut out| async move {
            let state = state2;
            out.write("{\"results\":[").await?;
            let mut first = true;
            let mut slots = slots.into_iter();
            loop {
                let group: Vec<GetSlot> = slots.by_ref().take(BODY_GROUP).collect();
                if group.is_empty() {
                    break;
                }
                let batch: Vec<(&DocRecord, &[Rev])> = group
                    .iter()
                    .filter_map(|slot| match slot {
                        GetSlot::Read(_, record, wanted) => Some((record, wanted.as_slice())),
                        GetSlot::Done(_) => None,
                    })
                    .collect();
                crate::observe::documents_read(batch.len());
                let mut rendered = open_revs_batch(&state, &db, &batch, latest, &opts)
                    .await?
                    .into_iter();
                for slot in &group {
                    if !first {
                        out.write(",").await?;
                    }
                    first = false;
                    let id = match slot {
                        GetSlot::Done(entry) => {
                            out.write(entry).await?;
                            continue;
                        }
                        GetSlot::Read(id, _, _) => id,
                    };
                    out.write(&format!(
                        "{{\"id\":{},\"docs\":[",
                        Value::String(id.clone())
                    ))
                    .await?;
                    for (i, entry) in rendered.next().unwrap_or_default().into_iter().enumerate() {
                        if i > 0 {
                            out.write(",").await?;
                        }
                        match entry {
                            OpenRev::Found(doc) => {
                                out.write("{\"ok\":").await?;
                                doc.write(&state, &mut out).await?;
                                out.write("}").await?;
                            }
                            OpenRev::Missing(rev) => {
                                let error = bulk_get_error(
                                    Some(id),
                                    &rev.to_string(),
                                    "not_found",
                                    "missing",
                                );
                                out.write(&error.to_string()).await?;
                            }
                        }
                    }
                    out.write("]}").await?;
                }
            }
            out.write("]}").await?;
            Ok(out)
        },
    ))
}

/// One item of a `_bulk_get` answer: either already known, or a document to read.
enum GetSlot {
    /// The item's whole result.
    Done(String),
    /// The document's id, its record and the revisions to read.
    Read(String, DocRecord, Vec<Rev>),
}

/// A `_bulk_get` result of one `not_found` error.
fn error_result(id: &str, rev: &str, reason: &str) -> String {
    json!({ "id": id, "docs": [bulk_get_error(Some(id), rev, "not_found", reason)] }).to_string()
}

/// One error element of a `_bulk_get` result.
fn bulk_get_error(id: Option<&str>, rev: &str, error: &str, reason: &str) -> Value {
    json!({ "error": { "id": id, "rev": rev, "error": error, "reason": reason } })
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
    let mut parsed: Vec<(String, Vec<Rev>)> = Vec::with_capacity(asked.len());
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
        parsed.push((id, revs));
    }
    let ids: Vec<String> = parsed.iter().map(|(id, _)| id.clone()).collect();
    // One store call for the whole request; it also answers 404 for a missing database.
    let found = state.store.docs(db, &ids).await?;
    // A document hidden from a reader of a database with per-document access lacks every
    // revision, as if it did not exist; one taken away from them has only the path they saw.
    let reader = crate::access::reader(state, req, db).await?;
    let records = crate::access::see(state, reader.as_ref(), db, found).await?;
    let mut out = Map::new();
    for ((id, revs), seen) in parsed.into_iter().zip(records) {
        let tree = seen.record().map(|r| r.tree);
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
