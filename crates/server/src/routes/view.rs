//! `/{db}/_design/{ddoc}/_view/{view}` (GET, POST, and POST `.../queries`),
//! `/{db}/_design/{ddoc}/_info` and `/{db}/_view_cleanup`: the HTTP face of `views`.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::StoredBody;
use outpost_views::{ViewError, ViewQuery, ViewResult, ViewSet};
use serde_json::{Map, Value, json};

use super::{json as json_response, not_allowed, ok};
use crate::design::DesignDoc;
use crate::docjson::RenderOpts;
use crate::request::Req;
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

/// Most queries in one `.../queries` request, and most `keys` in one query.
const MAX_QUERIES: usize = 1000;
const MAX_KEYS: usize = 100_000;

impl From<ViewError> for ApiError {
    fn from(e: ViewError) -> ApiError {
        match e {
            ViewError::Store(e) => e.into(),
            ViewError::Js(outpost_js::JsError::Closed) => ApiError::Unavailable,
            ViewError::Js(e) => ApiError::FunctionFailed(e.to_string()),
            ViewError::QueryParse(reason) => ApiError::QueryParse(reason),
            ViewError::BuiltinReduce(reason) => ApiError::BuiltinReduce(reason),
            ViewError::Unsupported(reason) => ApiError::NotImplemented(reason),
        }
    }
}

/// When a query brings the index up to date (`update`, or the older `stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    Before,
    Never,
    After,
}

/// A query's parameters with the ones only the HTTP layer uses.
#[derive(Clone)]
struct Params {
    view: ViewQuery,
    update: Update,
    update_seq: bool,
    render: RenderOpts,
}

/// The design document and the view set in it, or CouchDB's 404s.
async fn view_set(
    state: &AppState,
    db: &str,
    ddoc: &str,
) -> Result<(Arc<DesignDoc>, Option<ViewSet>), ApiError> {
    let Some(doc) = state.design.get(state, db, ddoc).await? else {
        let record = super::load_doc(state, db, &format!("_design/{ddoc}")).await?;
        super::live_winner(&record)?;
        return Err(ApiError::missing());
    };
    let set = ViewSet::from_ddoc(&doc.id, &doc.body)?;
    Ok((doc, set))
}

/// Views of a database with per-document access are for its admins: a view's rows (and above
/// all its reductions) are computed over every document, so a member would learn of documents
/// their `_access` hides. Members query with `_find`, which filters document by document.
async fn refuse_readers(state: &AppState, db: &str, req: &Req) -> Result<(), ApiError> {
    if crate::access::reader(state, req, db).await?.is_some() {
        return Err(ApiError::Forbidden(
            "views of a database with per-document access are only for its admins".into(),
        ));
    }
    Ok(())
}

/// `/{db}/_design/{ddoc}/_view/{view}` and `.../{view}/queries`.
pub async fn handle(
    state: &AppState,
    db: &str,
    ddoc: &str,
    view: &str,
    queries: bool,
    req: &mut Req,
) -> Result<Response, ApiError> {
    refuse_readers(state, db, req).await?;
    let body = match (&req.method, queries) {
        (&Method::GET, false) => Value::Null,
        (&Method::POST, _) => req.json().await?,
        (_, false) => return Err(not_allowed("Only GET,POST,HEAD allowed")),
        (_, true) => return Err(not_allowed("Only POST allowed")),
    };
    let (_, set) = view_set(state, db, ddoc).await?;
    let set = set.ok_or_else(|| ApiError::NotFound("missing_named_view".into()))?;
    let def = set
        .view(view)
        .ok_or_else(|| ApiError::NotFound("missing_named_view".into()))?
        .clone();
    if queries {
        let list = body
            .get("queries")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad_request("`queries` must be an array of query objects"))?;
        if list.len() > MAX_QUERIES {
            return Err(ApiError::TooLarge(format!("at most {MAX_QUERIES} queries")));
        }
        let mut results = Vec::with_capacity(list.len());
        for one in list {
            let params = params(&Map::new(), one)?;
            results.push(run(state, db, &set, &def, &params).await?);
        }
        let text = format!("{{\"results\":[{}]}}", results.join(","));
        return Ok(ok(text));
    }
    let params = params(&req.query.to_json_map(), &body)?;
    streamed(state, db, set, def, params).await
}

/// Rows of a map view read and written per page.
const PAGE: u64 = 500;

/// One query whose map rows are written a page at a time, so memory does not grow with the
/// rows a client asks for; a reduced answer (one row per group) is written whole.
async fn streamed(
    state: &AppState,
    db: &str,
    set: ViewSet,
    def: outpost_views::ViewDef,
    params: Params,
) -> Result<Response, ApiError> {
    let limit = params.view.limit;
    let mut first = params.view.clone();
    first.limit = limit.min(PAGE);
    let first_params = Params {
        view: first,
        ..params.clone()
    };
    let (result, update_seq) = start(state, db, &set, &def, &first_params).await?;
    let (total_rows, offset, rows) = match result {
        ViewResult::Reduced(_) => {
            return Ok(ok(render(state, db, result, &update_seq, &params).await?));
        }
        ViewResult::Rows {
            total_rows,
            offset,
            rows,
        } => (total_rows, offset, rows),
    };
    let head = format!(
        "{{\"total_rows\":{total_rows},\"offset\":{}{update_seq},\"rows\":[\n",
        offset.map_or_else(|| "null".to_owned(), |n| n.to_string())
    );
    let (state2, db) = (state.clone(), db.to_owned());
    Ok(crate::stream::respond(
        state,
        StatusCode::OK,
        move |mut out| async move {
            let state = state2;
            out.write(&head).await?;
            let mut page = rows;
            let mut asked = limit.min(PAGE);
            let mut written: u64 = 0;
            loop {
                let got = page.len() as u64;
                for row in page {
                    if written > 0 {
                        out.write(",\n").await?;
                    }
                    written += 1;
                    out.write(&row_text(&state, &db, &row, &params).await?)
                        .await?;
                }
                if got < asked || written >= limit {
                    break;
                }
                let mut next = params.view.clone();
                next.skip = params.view.skip.saturating_add(written);
                asked = (limit - written).min(PAGE);
                next.limit = asked;
                page = outpost_views::rows(state.store.as_ref(), &db, &set, &def, &next)
                    .await
                    .map_err(ApiError::from)?;
            }
            out.write("\n]}\n").await?;
            Ok(out)
        },
    ))
}

/// Runs one query and renders its answer.
async fn run(
    state: &AppState,
    db: &str,
    set: &ViewSet,
    def: &outpost_views::ViewDef,
    params: &Params,
) -> Result<String, ApiError> {
    let (result, update_seq) = start(state, db, set, def, params).await?;
    render(state, db, result, &update_seq, params).await
}

/// Brings the index up to date as asked, runs the query, and gives the `update_seq` member
/// (empty unless asked for).
async fn start(
    state: &AppState,
    db: &str,
    set: &ViewSet,
    def: &outpost_views::ViewDef,
    params: &Params,
) -> Result<(ViewResult, String), ApiError> {
    if params.update == Update::Before {
        outpost_views::update(state.store.as_ref(), &state.js, db, set).await?;
    }
    let result =
        outpost_views::query(state.store.as_ref(), &state.js, db, set, def, &params.view).await?;
    if params.update == Update::After {
        let (state2, db, set) = (state.clone(), db.to_owned(), set.clone());
        state.tasks.spawn(async move {
            if let Err(e) =
                outpost_views::update(state2.store.as_ref(), &state2.js, &db, &set).await
            {
                tracing::warn!(db = %db, ddoc = %set.ddoc_id, error = %e, "view update failed");
            }
        });
    }
    let update_seq = if params.update_seq {
        let seq = state
            .store
            .index_state(db, &set.index_name(&def.name))
            .await?
            .map_or(0, |s| s.seq);
        // Shown as the database's sequences are, as CouchDB does here (not in `_info`).
        let info = state.store.db_info(db).await?;
        let seq = Incarnation::of_db(&info.name, info.created_at)
            .seq(seq)
            .json();
        format!(",\"update_seq\":{seq}")
    } else {
        String::new()
    };
    Ok((result, update_seq))
}

/// One map row as JSON text, with its document when asked for.
async fn row_text(
    state: &AppState,
    db: &str,
    row: &outpost_store::IndexRow,
    params: &Params,
) -> Result<String, ApiError> {
    let id = Value::String(row.doc_id.clone()).to_string();
    let mut out = format!("{{\"id\":{id},\"key\":{},\"value\":{}", row.key, row.value);
    if params.view.include_docs {
        out.push_str(",\"doc\":");
        out.push_str(&joined_doc(state, db, row, &params.render).await?);
    }
    out.push('}');
    Ok(out)
}

/// A whole answer as JSON text.
async fn render(
    state: &AppState,
    db: &str,
    result: ViewResult,
    update_seq: &str,
    params: &Params,
) -> Result<String, ApiError> {
    match result {
        ViewResult::Reduced(rows) => {
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|(key, value)| json!({ "key": key, "value": value }))
                .collect();
            Ok(format!("{{\"rows\":{}{update_seq}}}", Value::Array(rows)))
        }
        ViewResult::Rows {
            total_rows,
            offset,
            rows,
        } => {
            let mut out = String::with_capacity(64 + rows.len() * 64);
            out.push_str(&format!("{{\"total_rows\":{total_rows},\"offset\":"));
            match offset {
                Some(n) => out.push_str(&n.to_string()),
                None => out.push_str("null"),
            }
            out.push_str(update_seq);
            out.push_str(",\"rows\":[");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                out.push_str(&row_text(state, db, row, params).await?);
            }
            out.push_str("]}");
            Ok(out)
        }
    }
}

/// The document `include_docs` joins to a row: the one an emitted `{"_id": ...}` value names
/// (CouchDB's linked documents, at its `_rev` when given), else the row's own.
async fn joined_doc(
    state: &AppState,
    db: &str,
    row: &outpost_store::IndexRow,
    opts: &RenderOpts,
) -> Result<String, ApiError> {
    let value: Value = serde_json::from_str(&row.value).unwrap_or(Value::Null);
    if let Some(linked) = value.get("_id").and_then(Value::as_str) {
        let Some(record) = state.store.doc(db, linked).await? else {
            return Ok("null".into());
        };
        let rev: Option<Rev> = match value.get("_rev").and_then(Value::as_str) {
            Some(r) => r.parse().ok(),
            None => record.tree.winner().filter(|w| !w.deleted).map(|w| w.rev),
        };
        let Some(rev) = rev else {
            return Ok("null".into());
        };
        let bodies = state
            .store
            .rev_bodies(db, linked, std::slice::from_ref(&rev))
            .await?;
        let Some((_, body)) = bodies.into_iter().next() else {
            return Ok("null".into());
        };
        return crate::docjson::render(
            state,
            db,
            linked,
            &record.tree,
            record.seq,
            &rev,
            &body,
            opts,
        )
        .await;
    }
    let Some(doc) = &row.doc else {
        return Ok("null".into());
    };
    let Some(winner) = doc.tree.winner() else {
        return Ok("null".into());
    };
    if doc.deleted {
        return Ok("null".into());
    }
    let body = StoredBody {
        deleted: false,
        json: doc.body.clone(),
    };
    crate::docjson::render(
        state,
        db,
        &row.doc_id,
        &doc.tree,
        doc.seq,
        &winner.rev,
        &body,
        opts,
    )
    .await
}

/// Reads CouchDB's view parameters from the query string (values as text, JSON where CouchDB
/// takes JSON) and a body object (JSON values), the body winning.
fn params(query: &Map<String, Value>, body: &Value) -> Result<Params, ApiError> {
    let mut all: Map<String, Value> = Map::new();
    for (k, v) in query {
        all.insert(k.clone(), from_text(k, v)?);
    }
    if let Some(obj) = body.as_object() {
        for (k, v) in obj {
            all.insert(k.clone(), v.clone());
        }
    }
    let get = |names: &[&str]| names.iter().find_map(|n| all.get(*n)).cloned();
    let flag = |name: &str, default: bool| -> Result<bool, ApiError> {
        match all.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::QueryParse(format!(
                "Invalid boolean parameter: {other} for {name}"
            ))),
        }
    };
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        match all.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                ApiError::QueryParse(format!(
                    "Invalid value for {name}: {n}; must be a non-negative integer"
                ))
            }),
            Some(other) => Err(ApiError::QueryParse(format!(
                "Invalid value for {name}: {other}; must be a non-negative integer"
            ))),
        }
    };
    let doc_id = |names: &[&str]| -> Result<Option<String>, ApiError> {
        match get(names) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::QueryParse(format!("Invalid doc id: {other}"))),
        }
    };
    let keys = match get(&["keys"]) {
        None | Some(Value::Null) => None,
        Some(Value::Array(keys)) if keys.len() <= MAX_KEYS => Some(keys),
        Some(Value::Array(_)) => {
            return Err(ApiError::TooLarge(format!(
                "at most {MAX_KEYS} keys per query"
            )));
        }
        Some(_) => return Err(ApiError::QueryParse("`keys` must be an array".into())),
    };
    let update = match (all.get("update"), all.get("stale")) {
        (Some(Value::String(s)), _) if s == "lazy" => Update::After,
        (Some(Value::Bool(false)), _) => Update::Never,
        (Some(Value::String(s)), _) if s == "false" => Update::Never,
        (Some(Value::Bool(true)) | None, None) => Update::Before,
        (Some(Value::String(s)), _) if s == "true" => Update::Before,
        (None, Some(Value::String(s))) if s == "ok" => Update::Never,
        (None, Some(Value::String(s))) if s == "update_after" => Update::After,
        (u, st) => {
            return Err(ApiError::QueryParse(format!(
                "Invalid value for update/stale: {}",
                u.or(st).map(Value::to_string).unwrap_or_default()
            )));
        }
    };
    let group_level = number("group_level")?;
    let limit = number("limit")?;
    let view = ViewQuery {
        key: get(&["key"]),
        keys,
        start_key: get(&["startkey", "start_key"]),
        start_key_doc_id: doc_id(&["startkey_docid", "start_key_doc_id"])?,
        end_key: get(&["endkey", "end_key"]),
        end_key_doc_id: doc_id(&["endkey_docid", "end_key_doc_id"])?,
        inclusive_end: flag("inclusive_end", true)?,
        descending: flag("descending", false)?,
        skip: number("skip")?.unwrap_or(0),
        limit: limit.unwrap_or(u64::MAX),
        reduce: match all.get("reduce") {
            None | Some(Value::Null) => None,
            Some(_) => Some(flag("reduce", true)?),
        },
        group: flag("group", false)?,
        group_level,
        include_docs: flag("include_docs", false)?,
    };
    Ok(Params {
        view,
        update,
        update_seq: flag("update_seq", false)?,
        render: RenderOpts {
            conflicts: flag("conflicts", false)?,
            attachments: flag("attachments", false)?,
            att_encoding_info: flag("att_encoding_info", false)?,
            ..RenderOpts::default()
        },
    })
}

/// A query-string value as the JSON CouchDB reads it: keys are JSON, flags and numbers are
/// parsed, anything else stays text.
fn from_text(name: &str, value: &Value) -> Result<Value, ApiError> {
    let Value::String(text) = value else {
        return Ok(value.clone());
    };
    match name {
        "key" | "keys" | "startkey" | "start_key" | "endkey" | "end_key" => {
            outpost_core::json::from_str(text)
                .map_err(|_| ApiError::QueryParse(format!("Invalid JSON for {name}: {text}")))
        }
        "inclusive_end" | "descending" | "reduce" | "group" | "include_docs" | "conflicts"
        | "update_seq" | "attachments" | "stable" | "sorted" | "att_encoding_info" => {
            match text.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(ApiError::QueryParse(format!(
                    "Invalid boolean parameter: {text} for {name}"
                ))),
            }
        }
        "limit" | "skip" | "group_level" => text.parse::<u64>().map(Value::from).map_err(|_| {
            ApiError::QueryParse(format!(
                "Invalid value for {name}: {text}; must be a non-negative integer"
            ))
        }),
        _ => Ok(value.clone()),
    }
}

/// `GET /{db}/_design/{ddoc}/_info`.
pub async fn info(state: &AppState, db: &str, ddoc: &str, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET,HEAD allowed"));
    }
    refuse_readers(state, db, req).await?;
    let (doc, set) = view_set(state, db, ddoc).await?;
    let language = doc
        .body
        .get("language")
        .and_then(Value::as_str)
        .unwrap_or("javascript")
        .to_owned();
    let (signature, update_seq) = match &set {
        Some(set) => {
            let mut seq: Option<u64> = None;
            for view in &set.views {
                let s = state
                    .store
                    .index_state(db, &set.index_name(&view.name))
                    .await?
                    .filter(|s| s.signature == set.signature)
                    .map_or(0, |s| s.seq);
                seq = Some(seq.map_or(s, |m| m.min(s)));
            }
            (set.signature.clone(), seq.unwrap_or(0))
        }
        None => (String::new(), 0),
    };
    // Plain integers: CouchDB sums its shards' sequences here instead of packing them.
    Ok(ok(json!({
        "name": ddoc,
        "view_index": {
            "signature": signature,
            "language": language,
            "update_seq": update_seq,
            "purge_seq": 0,
            "updater_running": false,
            "compact_running": false,
            "waiting_clients": 0,
            "waiting_commit": false,
        },
    })
    .to_string()))
}

/// `POST /{db}/_view_cleanup`: drops the indexes no live design document uses.
pub async fn cleanup(state: &AppState, db: &str, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let dropped = crate::design::drop_unused_indexes(state, db).await?;
    tracing::info!(db, dropped, "view cleanup");
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({ "ok": true }).to_string(),
    ))
}
