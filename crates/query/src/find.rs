//! `_find` and `_explain`.
//!
//! A query scans the range its plan chose a page at a time, joins each row's current document,
//! matches it against the whole selector, skips `skip` matches and stops after `limit`. The
//! bookmark is the position of the last row returned (its key and document id), so the next
//! page starts right after it whatever was written meanwhile.

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outpost_core::selector::{self, Selector};
use outpost_store::{AllDocsQuery, IndexQuery, KeyBound, Store, StoreError};
use serde_json::{Map, Value, json};

use crate::index_def::{all_docs_listing, load_indexes};
use crate::indexer::{self, document};
use crate::plan::{Access, Plan, Sort, UseIndex, plan};
use crate::{MangoIndex, QueryError};

/// Rows read from the store per round trip.
const PAGE: u64 = 200;

/// CouchDB's default `limit`.
pub const DEFAULT_LIMIT: u64 = 25;

/// A parsed `_find` (or `_explain`) body.
#[derive(Debug, Clone)]
pub struct FindRequest {
    pub selector: Selector,
    /// The fields to return, as written and as paths; `None` for whole documents.
    pub fields: Option<Vec<(String, Vec<String>)>>,
    pub sort: Sort,
    pub limit: u64,
    pub skip: u64,
    pub bookmark: Option<String>,
    pub use_index: UseIndex,
    pub conflicts: bool,
    pub update: bool,
    pub stable: bool,
    pub execution_stats: bool,
    pub r: u64,
    raw_sort: Value,
}

fn opt_bool(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, QueryError> {
    match body.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(QueryError::BadRequest(format!("{key} must be a boolean"))),
    }
}

fn opt_count(body: &Map<String, Value>, key: &str, default: u64) -> Result<u64, QueryError> {
    match body.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| QueryError::BadRequest(format!("{key} must be a non-negative integer"))),
    }
}

impl FindRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &Value) -> Result<FindRequest, QueryError> {
        let body = body
            .as_object()
            .ok_or_else(|| QueryError::BadRequest("request body must be a json object".into()))?;
        let selector = body
            .get("selector")
            .ok_or(QueryError::MissingKey("selector"))?;
        let selector =
            Selector::parse(selector).map_err(|e| QueryError::BadRequest(e.to_string()))?;
        let fields = match body.get("fields") {
            None => None,
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for item in list {
                    let name = item.as_str().ok_or_else(|| {
                        QueryError::BadRequest("fields must be an array of strings".into())
                    })?;
                    let path = selector::parse_field(name).map_err(|e| {
                        QueryError::BadRequest(format!("invalid field {name}: {e}"))
                    })?;
                    out.push((name.to_owned(), path));
                }
                // An empty list means every field, as in CouchDB.
                (!out.is_empty()).then_some(out)
            }
            Some(_) => {
                return Err(QueryError::BadRequest(
                    "fields must be an array of strings".into(),
                ));
            }
        };
        let bookmark = match body.get("bookmark") {
            None | Some(Value::Null) => None,
            Some(Value::String(b)) if b == "nil" || b.is_empty() => None,
            Some(Value::String(b)) => Some(b.clone()),
            Some(other) => return Err(QueryError::InvalidBookmark(other.to_string())),
        };
        let r = opt_count(body, "r", 1)?;
        if r == 0 {
            return Err(QueryError::BadRequest("r must be at least 1".into()));
        }
        Ok(FindRequest {
            selector,
            fields,
            sort: Sort::parse(body.get("sort"))?,
            limit: opt_count(body, "limit", DEFAULT_LIMIT)?,
            skip: opt_count(body, "skip", 0)?,
            bookmark,
            use_index: UseIndex::parse(body.get("use_index"))?,
            conflicts: opt_bool(body, "conflicts", false)?,
            update: opt_bool(body, "update", true)?,
            stable: opt_bool(body, "stable", false)?,
            execution_stats: opt_bool(body, "execution_stats", false)?,
            r,
            raw_sort: body.get("sort").cloned().unwrap_or_else(|| json!({})),
        })
    }
}

/// Where a page starts: after the row a bookmark names.
#[derive(Debug)]
enum Cursor {
    Key(Value, String),
    Id(String),
}

fn encode_bookmark(cursor: &Cursor) -> String {
    let v = match cursor {
        Cursor::Key(key, id) => json!([key, id]),
        Cursor::Id(id) => json!([id]),
    };
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn decode_bookmark(text: &str, json_index: bool) -> Result<Cursor, QueryError> {
    let bad = || QueryError::InvalidBookmark(text.to_owned());
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let v = outpost_core::json::from_slice(&bytes).map_err(|_| bad())?;
    match (v, json_index) {
        (Value::Array(mut a), true) if a.len() == 2 && a[1].is_string() => {
            let id = a
                .pop()
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or_else(bad)?;
            let key = a.pop().ok_or_else(bad)?;
            Ok(Cursor::Key(key, id))
        }
        (Value::Array(a), false) if a.len() == 1 => match &a[0] {
            Value::String(id) => Ok(Cursor::Id(id.clone())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// What a query looked at, for `execution_stats`.
#[derive(Debug, Default)]
struct Stats {
    keys: u64,
    docs: u64,
}

/// Puts only the requested fields of a matching document into the answer.
fn project(doc: Value, fields: &Option<Vec<(String, Vec<String>)>>) -> Value {
    let Some(fields) = fields else {
        return doc;
    };
    let mut out = Map::new();
    for (_, path) in fields {
        let Some(value) = selector::field(&doc, path) else {
            continue;
        };
        let mut slot = &mut out;
        for (i, segment) in path.iter().enumerate() {
            if i + 1 == path.len() {
                slot.insert(segment.clone(), value.clone());
            } else {
                let next = slot
                    .entry(segment.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !next.is_object() {
                    *next = Value::Object(Map::new());
                }
                slot = next.as_object_mut().expect("made an object above");
            }
        }
    }
    Value::Object(out)
}

/// Collects matches into a page: skips, limits and remembers where the page ended.
struct Page<'r> {
    req: &'r FindRequest,
    docs: Vec<Value>,
    skipped: u64,
    last: Option<Cursor>,
    stats: Stats,
}

impl Page<'_> {
    fn full(&self) -> bool {
        self.docs.len() as u64 >= self.req.limit
    }

    /// Offers a document read from the store; `at` is where it sits in the index.
    fn offer(&mut self, doc: Value, conflicts: Vec<String>, at: impl FnOnce() -> Cursor) {
        self.stats.docs += 1;
        if !self.req.selector.matches(&doc) {
            return;
        }
        if self.skipped < self.req.skip {
            self.skipped += 1;
            return;
        }
        let mut doc = doc;
        if self.req.conflicts
            && !conflicts.is_empty()
            && let Value::Object(map) = &mut doc
        {
            map.insert(
                "_conflicts".into(),
                Value::Array(conflicts.into_iter().map(Value::String).collect()),
            );
        }
        self.docs.push(project(doc, &self.req.fields));
        self.last = Some(at());
    }
}

async fn run_json(
    store: &dyn Store,
    db: &str,
    index: &MangoIndex,
    mut lower: KeyBound,
    mut upper: KeyBound,
    descending: bool,
    page: &mut Page<'_>,
) -> Result<(), QueryError> {
    if page.req.update {
        indexer::update(store, db, index).await?;
    }
    if let Some(b) = &page.req.bookmark {
        match decode_bookmark(b, true)? {
            Cursor::Key(key, id) if descending => {
                upper = KeyBound::upper_with_doc(&key, &id, false);
            }
            Cursor::Key(key, id) => lower = KeyBound::lower_with_doc(&key, &id, false),
            Cursor::Id(_) => return Err(QueryError::InvalidBookmark(b.clone())),
        }
    }
    let name = index.store_name();
    while !page.full() {
        let query = IndexQuery {
            lower: Some(lower.clone()),
            upper: Some(upper.clone()),
            descending,
            skip: 0,
            limit: PAGE,
            include_docs: true,
        };
        let rows = match store.scan_index(db, &name, &query).await {
            Ok(rows) => rows,
            // `update=false` on an index never built: nothing indexed yet.
            Err(StoreError::NotFound) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let n = rows.len() as u64;
        let mut end = None;
        for row in rows {
            page.stats.keys += 1;
            let key: Value = outpost_core::json::from_str(&row.key).unwrap_or(Value::Null);
            end = Some((key.clone(), row.doc_id.clone()));
            if page.full() {
                break;
            }
            let Some(doc) = row.doc.filter(|d| !d.deleted) else {
                continue;
            };
            let rev = doc.tree.winner().map(|w| w.rev.to_string());
            let conflicts = doc
                .tree
                .conflicts()
                .iter()
                .map(ToString::to_string)
                .collect();
            let value = document(&row.doc_id, rev.as_deref(), Some(&doc.body));
            let id = row.doc_id;
            page.offer(value, conflicts, || Cursor::Key(key, id));
        }
        if n < PAGE {
            break;
        }
        let Some((key, id)) = end else { break };
        if descending {
            upper = KeyBound::upper_with_doc(&key, &id, false);
        } else {
            lower = KeyBound::lower_with_doc(&key, &id, false);
        }
    }
    Ok(())
}

async fn run_all_docs(
    store: &dyn Store,
    db: &str,
    id: Option<String>,
    descending: bool,
    page: &mut Page<'_>,
) -> Result<(), QueryError> {
    let mut after = match &page.req.bookmark {
        Some(b) => match decode_bookmark(b, false)? {
            Cursor::Id(id) => Some(id),
            Cursor::Key(..) => return Err(QueryError::InvalidBookmark(b.clone())),
        },
        None => None,
    };
    while !page.full() {
        // `start` is where the scan begins in its direction; `end` where it stops.
        let (start, start_inclusive) = match (&after, &id) {
            (Some(a), _) => (Some(a.clone()), false),
            (None, Some(id)) => (Some(id.clone()), true),
            (None, None) => (None, true),
        };
        let query = AllDocsQuery {
            start,
            start_inclusive,
            end: id.clone(),
            end_inclusive: true,
            descending,
            limit: PAGE,
            skip: 0,
            include_docs: true,
        };
        let rows = store.all_docs(db, &query).await?;
        let n = rows.len() as u64;
        for row in rows {
            page.stats.keys += 1;
            after = Some(row.id.clone());
            if page.full() {
                break;
            }
            // Design documents are not query results, as in CouchDB.
            if row.id.starts_with("_design/") {
                continue;
            }
            let rev = row.tree.winner().map(|w| w.rev.to_string());
            let conflicts = row
                .tree
                .conflicts()
                .iter()
                .map(ToString::to_string)
                .collect();
            let value = document(&row.id, rev.as_deref(), row.body.as_deref());
            let id = row.id;
            page.offer(value, conflicts, || Cursor::Id(id));
        }
        if n < PAGE {
            break;
        }
    }
    Ok(())
}

/// Runs `POST /{db}/_find`.
pub async fn find(store: &dyn Store, db: &str, req: &FindRequest) -> Result<Value, QueryError> {
    let started = Instant::now();
    let indexes = load_indexes(store, db).await?;
    let plan = plan(&indexes, &req.selector, &req.sort, &req.use_index)?;
    let mut page = Page {
        req,
        docs: Vec::new(),
        skipped: 0,
        last: None,
        stats: Stats::default(),
    };
    if req.limit > 0 {
        match &plan.access {
            Access::Json {
                index,
                lower,
                upper,
                ..
            } => {
                run_json(
                    store,
                    db,
                    index,
                    lower.clone(),
                    upper.clone(),
                    plan.descending,
                    &mut page,
                )
                .await?
            }
            Access::AllDocs { id } => {
                run_all_docs(store, db, id.clone(), plan.descending, &mut page).await?
            }
        }
    }
    let bookmark = match &page.last {
        Some(cursor) => encode_bookmark(cursor),
        None => req.bookmark.clone().unwrap_or_else(|| "nil".to_owned()),
    };
    let returned = page.docs.len();
    let mut out = Map::new();
    out.insert("docs".into(), Value::Array(page.docs));
    out.insert("bookmark".into(), Value::from(bookmark));
    if !plan.warnings.is_empty() {
        out.insert("warning".into(), Value::from(plan.warnings.join("\n")));
    }
    if req.execution_stats {
        out.insert(
            "execution_stats".into(),
            json!({
                "total_keys_examined": page.stats.keys,
                "total_docs_examined": page.stats.docs,
                "total_quorum_docs_examined": 0,
                "results_returned": returned,
                "execution_time_ms": started.elapsed().as_secs_f64() * 1000.0,
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Answers `POST /{db}/_explain`: the index a `_find` with this body would use and how.
pub async fn explain(store: &dyn Store, db: &str, req: &FindRequest) -> Result<Value, QueryError> {
    let indexes = load_indexes(store, db).await?;
    let plan: Plan<'_> = plan(&indexes, &req.selector, &req.sort, &req.use_index)?;
    let fields = match &req.fields {
        Some(f) => Value::Array(f.iter().map(|(n, _)| Value::from(n.as_str())).collect()),
        None => Value::from("all_fields"),
    };
    let direction = if plan.descending { "rev" } else { "fwd" };
    let (index, mrargs) = match &plan.access {
        Access::Json {
            index,
            start_key,
            end_key,
            ..
        } => (
            index.listing(),
            json!({
                "include_docs": true,
                "view_type": "map",
                "reduce": false,
                "start_key": start_key,
                "end_key": end_key,
                "direction": direction,
                "stable": req.stable,
                "update": if req.update { "true" } else { "false" },
                "conflicts": "undefined",
            }),
        ),
        Access::AllDocs { id } => (
            all_docs_listing(),
            json!({
                "include_docs": true,
                "view_type": "map",
                "reduce": false,
                "start_key": id,
                "end_key": id.clone().map_or(Value::from("<MAX>"), Value::from),
                "direction": direction,
                "stable": req.stable,
                "update": if req.update { "true" } else { "false" },
                "conflicts": "undefined",
            }),
        ),
    };
    Ok(json!({
        "dbname": db,
        "index": index,
        "partitioned": false,
        "selector": req.selector.as_json(),
        "opts": {
            "use_index": req.use_index.as_json(),
            "bookmark": req.bookmark.clone().unwrap_or_else(|| "nil".into()),
            "limit": req.limit,
            "skip": req.skip,
            "sort": req.raw_sort,
            "fields": fields,
            "partition": "",
            "r": req.r,
            "conflicts": req.conflicts,
            "stale": false,
            "update": req.update,
            "stable": req.stable,
            "execution_stats": req.execution_stats,
        },
        "limit": req.limit,
        "skip": req.skip,
        "fields": fields,
        "mrargs": mrargs,
        "covering": false,
    }))
}
