//! The batch endpoints of replication: `_bulk_docs`, `_bulk_get` and `_revs_diff`.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::{DocRecord, DocUpdate, Origin};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::doc::{OpenRev, open_revs_batch, render_opts};
use super::{json, not_allowed, ok};
use crate::docjson::{ok_json, parse_doc, parse_rev};
use crate::request::{Req, decode_json};
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

/// The documents of a `_bulk_docs` body: each one's text, or decoded with the whole body.
enum Docs<'a> {
    Raw(Vec<&'a RawValue>),
    Decoded(Vec<Value>),
}

impl Docs<'_> {
    fn len(&self) -> usize {
        match self {
            Docs::Raw(raw) => raw.len(),
            Docs::Decoded(docs) => docs.len(),
        }
    }
}

/// A document of a `_bulk_docs` request, checked and ready for the store.
enum Prepared {
    Doc(DocUpdate),
    Local(String, Value),
}

/// Why a document of a `_bulk_docs` request refuses the request.
enum Refusal {
    /// Its text does not decode (nested too deep): the whole body is invalid JSON.
    Json,
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

/// Bodies from this size on are decoded on two threads: below it a thread costs more than it
/// saves.
const PARALLEL_BODY_BYTES: usize = 64 * 1024;

/// `prepare` of every document, in order; the second half on a thread of its own when the body
/// is large, since decoding is most of a request's own work and nothing else runs meanwhile on
/// the request's behalf (the writer waits for the documents).
fn prepare_all<F>(
    raw: &[&RawValue],
    body_bytes: usize,
    prepare: F,
) -> Vec<Result<Prepared, Refusal>>
where
    F: Fn(&RawValue) -> Result<Prepared, Refusal> + Sync,
{
    if body_bytes < PARALLEL_BODY_BYTES || raw.len() < 2 {
        return raw.iter().map(|r| prepare(r)).collect();
    }
    let (first, second) = raw.split_at(raw.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| second.iter().map(|r| prepare(r)).collect::<Vec<_>>());
        let mut out: Vec<_> = first.iter().map(|r| prepare(r)).collect();
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

/// The id of a `_local` document, which is written without a revision tree.
fn local_id(doc: &Value) -> Option<&str> {
    doc.get("_id")
        .and_then(Value::as_str)
        .filter(|id| id.starts_with("_local/"))
}

fn no_docs() -> ApiError {
    ApiError::bad_request("POST body must include `docs` parameter.")
}

/// The error of a body that does not decode, as decoding it whole words it.
fn invalid_body(bytes: &[u8]) -> ApiError {
    match decode_json(bytes) {
        Err(e) => e,
        Ok(_) => ApiError::bad_request("invalid JSON"),
    }
}

/// `POST /{db}/_bulk_docs`: results in request order, one per document, errors per document.
pub async fn bulk_docs(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let bytes = req.json_bytes().await?;
    // The documents are decoded one by one from their own text, on two threads for a large
    // request; `_users` documents go through `users::before_write`, which awaits the store.
    let split = if db == crate::auth::USERS_DB {
        None
    } else {
        outpost_core::json::split(&bytes, "docs")
    };
    let (docs, members) = match split {
        Some(split) => (Docs::Raw(split.items), split.members),
        None => match decode_json(&bytes)? {
            Value::Object(mut body) => match body.get_mut("docs").map(Value::take) {
                // Taken out of the body, not cloned: a batch can be tens of megabytes.
                Some(Value::Array(docs)) => (Docs::Decoded(docs), body),
                _ => return Err(no_docs()),
            },
            _ => return Err(no_docs()),
        },
    };
    if docs.len() > MAX_BATCH_DOCS {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_BATCH_DOCS} documents per request"
        )));
    }
    let new_edits = match members.get("new_edits") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("new_edits must be a boolean")),
    };
    if members.get("all_or_nothing") == Some(&Value::Bool(true)) {
        // CouchDB 3 dropped all-or-nothing commits and says so per document, with 417.
        let docs = match docs {
            Docs::Decoded(docs) => docs,
            Docs::Raw(raw) => raw
                .iter()
                .map(|r| outpost_core::json::element(r, 2))
                .collect::<Result<_, _>>()
                .map_err(|_| invalid_body(&bytes))?,
        };
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
    match docs {
        Docs::Raw(raw) => {
            let prepare = |raw: &RawValue| -> Result<Prepared, Refusal> {
                let doc = outpost_core::json::element(raw, 2).map_err(|_| Refusal::Json)?;
                let prepared = if let Some(id) = local_id(&doc) {
                    outpost_core::names::classify_doc_id(id).map_err(ApiError::from)?;
                    Prepared::Local(id.to_owned(), doc)
                } else {
                    let update = parse_doc(doc, None, new_edits, origin.clone())?;
                    crate::users::before_write_outside_users(req, &update)?;
                    // As in CouchDB, one document above the limits refuses the whole request.
                    crate::limits::check(&update, &state.config)?;
                    Prepared::Doc(update)
                };
                Ok(prepared)
            };
            let prepared = prepare_all(&raw, bytes.len(), prepare);
            // Decoding the whole body would have failed before any document was looked at.
            if prepared.iter().any(|p| matches!(p, Err(Refusal::Json))) {
                return Err(invalid_body(&bytes));
            }
            for item in prepared {
                match item {
                    Ok(Prepared::Local(id, doc)) => slots.push(Slot::Local(id, doc)),
                    Ok(Prepared::Doc(update)) => {
                        slots.push(Slot::Doc(updates.len()));
                        updates.push(update);
                    }
                    Err(Refusal::Api(e)) => return Err(e),
                    Err(Refusal::Json) => unreachable!("refused above"),
                }
            }
        }
        Docs::Decoded(docs) => {
            for doc in docs {
                if let Some(id) = local_id(&doc) {
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
        }
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
