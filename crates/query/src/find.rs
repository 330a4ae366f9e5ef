//! `_find` and `_explain`.
//!
//! A query scans the range its plan chose a page at a time, joins each row's current document,
//! matches it against the whole selector, skips `skip` matches and stops after `limit`. The
//! bookmark is the position of the last row returned (its key and document id), so the next
//! page starts right after it whatever was written meanwhile.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outpost_core::selector::{self, Selector};
use outpost_store::{AllDocsQuery, IndexQuery, KeyBound, Store, StoreError};
use serde_json::{Map, Value, json};

use crate::index_def::{all_docs_listing, load_indexes};
use crate::indexer::{self, document};
use crate::plan::{Access, IdRange, Plan, Sort, UseIndex, plan};
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

/// Where a cursor reads next.
#[derive(Debug)]
enum Source {
    Json {
        index: Box<MangoIndex>,
        lower: KeyBound,
        upper: KeyBound,
    },
    AllDocs {
        range: IdRange,
        /// The last id read, exclusive start of the next page.
        after: Option<String>,
    },
}

/// A `_find` in progress: the plan is made and the index brought up to date when it is opened,
/// so that every error that decides the status comes before the first document; then
/// [`FindCursor::next_batch`] reads the answer a bounded page at a time, so that memory does
/// not grow with `limit`.
pub struct FindCursor {
    store: Arc<dyn Store>,
    db: String,
    req: FindRequest,
    source: Source,
    descending: bool,
    warnings: Vec<String>,
    done: bool,
    skipped: u64,
    returned: u64,
    last: Option<Cursor>,
    stats: Stats,
    started: Instant,
    /// On a database with per-document access, the principals of the member asking: only
    /// documents whose winner's `_access` names one of them are candidates (before `skip`
    /// and `limit` count them). `None` reads every document.
    reader: Option<Vec<String>>,
    /// Pages read so far.
    pages: u32,
}

impl std::fmt::Debug for FindCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FindCursor")
            .field("db", &self.db)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl FindCursor {
    /// Plans the query, brings the chosen index up to date (unless `update` is false) and
    /// positions the cursor after the bookmark, if any.
    pub async fn open(
        store: Arc<dyn Store>,
        db: &str,
        req: FindRequest,
    ) -> Result<FindCursor, QueryError> {
        let started = Instant::now();
        let indexes = load_indexes(store.as_ref(), db).await?;
        indexer::drop_orphans(store.as_ref(), db, &indexes).await?;
        let plan = plan(&indexes, &req.selector, &req.sort, &req.use_index)?;
        let descending = plan.descending;
        let source = match plan.access {
            Access::Json {
                index,
                mut lower,
                mut upper,
                ..
            } => {
                if req.update {
                    indexer::update(store.as_ref(), db, &index).await?;
                }
                if let Some(b) = &req.bookmark {
                    match decode_bookmark(b, true)? {
                        Cursor::Key(key, id) if descending => {
                            upper = KeyBound::upper_with_doc(&key, &id, false);
                        }
                        Cursor::Key(key, id) => lower = KeyBound::lower_with_doc(&key, &id, false),
                        Cursor::Id(_) => return Err(QueryError::InvalidBookmark(b.clone())),
                    }
                }
                Source::Json {
                    index,
                    lower,
                    upper,
                }
            }
            Access::AllDocs { range } => {
                let after = match &req.bookmark {
                    Some(b) => match decode_bookmark(b, false)? {
                        Cursor::Id(id) => Some(id),
                        Cursor::Key(..) => return Err(QueryError::InvalidBookmark(b.clone())),
                    },
                    None => None,
                };
                Source::AllDocs { range, after }
            }
        };
        let done = req.limit == 0;
        Ok(FindCursor {
            store,
            db: db.to_owned(),
            req,
            source,
            descending,
            warnings: plan.warnings,
            done,
            skipped: 0,
            returned: 0,
            pages: 0,
            last: None,
            stats: Stats::default(),
            started,
            reader: None,
        })
    }

    /// Restricts the answer to the documents a member of a database with per-document access
    /// may read (see [`Store::doc_access`]).
    pub fn for_reader(mut self, principals: Vec<String>) -> FindCursor {
        self.reader = Some(principals);
        self
    }

    /// Drops the candidates the reader may not read.
    async fn readable(
        &self,
        candidates: Vec<(Value, Vec<String>, Cursor)>,
    ) -> Result<Vec<(Value, Vec<String>, Cursor)>, QueryError> {
        let Some(principals) = &self.reader else {
            return Ok(candidates);
        };
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let ids: Vec<String> = candidates
            .iter()
            .map(|(doc, _, _)| {
                doc.get("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let access = self.store.doc_access(&self.db, principals, &ids).await?;
        Ok(candidates
            .into_iter()
            .zip(access)
            .filter(|(_, a)| matches!(a, outpost_store::DocAccess::Readable))
            .map(|(c, _)| c)
            .collect())
    }

    /// The next matching documents (at most one page of reads' worth), already projected to
    /// `fields`; `None` when the answer is complete.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Value>>, QueryError> {
        while !self.done {
            let candidates = self.read_page().await?;
            let candidates = self.readable(candidates).await?;
            let mut out = Vec::new();
            for (doc, conflicts, at) in candidates {
                if self.returned >= self.req.limit {
                    self.done = true;
                    break;
                }
                self.stats.docs += 1;
                if !self.req.selector.matches(&doc) {
                    continue;
                }
                if self.skipped < self.req.skip {
                    self.skipped += 1;
                    continue;
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
                out.push(project(doc, &self.req.fields));
                self.returned += 1;
                self.last = Some(at);
            }
            if self.returned >= self.req.limit {
                self.done = true;
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    /// Rows to read for the next page. The first reads only as many as the answer still
    /// needs, which is all when the index serves the selector exactly (a `limit: 100` query
    /// reads 100 documents, not a page of 200); once rows were filtered out, full pages.
    fn page_size(&self) -> u64 {
        if self.pages > 0 {
            return PAGE;
        }
        let needed = self
            .req
            .limit
            .saturating_add(self.req.skip)
            .saturating_sub(self.returned.saturating_add(self.skipped));
        needed.clamp(1, PAGE)
    }

    /// Reads one page of candidates: each live document with its conflicts and position.
    #[allow(clippy::type_complexity)]
    async fn read_page(&mut self) -> Result<Vec<(Value, Vec<String>, Cursor)>, QueryError> {
        let mut out = Vec::new();
        let page = self.page_size();
        self.pages += 1;
        match &mut self.source {
            Source::Json {
                index,
                lower,
                upper,
            } => {
                let query = IndexQuery {
                    lower: Some(lower.clone()),
                    upper: Some(upper.clone()),
                    descending: self.descending,
                    skip: 0,
                    limit: page,
                    include_docs: true,
                };
                let rows = match self
                    .store
                    .scan_index(&self.db, &index.store_name(), &query)
                    .await
                {
                    Ok(rows) => rows,
                    // `update=false` on an index never built: nothing indexed yet.
                    Err(StoreError::NotFound) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                if (rows.len() as u64) < page {
                    self.done = true;
                }
                for row in rows {
                    self.stats.keys += 1;
                    let key: Value = outpost_core::json::from_str(&row.key).unwrap_or(Value::Null);
                    if self.descending {
                        *upper = KeyBound::upper_with_doc(&key, &row.doc_id, false);
                    } else {
                        *lower = KeyBound::lower_with_doc(&key, &row.doc_id, false);
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
                    out.push((value, conflicts, Cursor::Key(key, row.doc_id)));
                }
            }
            Source::AllDocs { range, after } => {
                if range.empty {
                    self.done = true;
                    return Ok(out);
                }
                // `_all_docs` takes its bounds in the direction of the scan.
                let (first, last) = if self.descending {
                    (&range.end, &range.start)
                } else {
                    (&range.start, &range.end)
                };
                let (start, start_inclusive) = match (&after, first) {
                    (Some(a), _) => (Some(a.clone()), false),
                    (None, Some((id, inclusive))) => (Some(id.clone()), *inclusive),
                    (None, None) => (None, true),
                };
                let query = AllDocsQuery {
                    start,
                    start_inclusive,
                    end: last.as_ref().map(|(id, _)| id.clone()),
                    end_inclusive: last.as_ref().is_none_or(|(_, inclusive)| *inclusive),
                    descending: self.descending,
                    limit: page,
                    skip: 0,
                    include_docs: true,
                };
                let rows = self.store.all_docs(&self.db, &query).await?;
                if (rows.len() as u64) < page {
                    self.done = true;
                }
                for row in rows {
                    self.stats.keys += 1;
                    *after = Some(row.id.clone());
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
                    out.push((value, conflicts, Cursor::Id(row.id)));
                }
            }
        }
        Ok(out)
    }

    /// The members after `docs`: `bookmark`, `warning` and `execution_stats`, as JSON text
    /// starting with a comma. Call once the batches are exhausted.
    pub fn trailer(&self) -> String {
        let bookmark = match &self.last {
            Some(cursor) => encode_bookmark(cursor),
            None => self
                .req
                .bookmark
                .clone()
                .unwrap_or_else(|| "nil".to_owned()),
        };
        let mut out = Map::new();
        out.insert("bookmark".into(), Value::from(bookmark));
        if !self.warnings.is_empty() {
            out.insert("warning".into(), Value::from(self.warnings.join("\n")));
        }
        if self.req.execution_stats {
            out.insert(
                "execution_stats".into(),
                json!({
                    // A reader is told of the keys of the documents they may read only.
                    "total_keys_examined": if self.reader.is_some() { self.stats.docs } else { self.stats.keys },
                    "total_docs_examined": self.stats.docs,
                    "total_quorum_docs_examined": 0,
                    "results_returned": self.returned,
                    "execution_time_ms": self.started.elapsed().as_secs_f64() * 1000.0,
                }),
            );
        }
        let text = Value::Object(out).to_string();
        format!(",{}", &text[1..text.len() - 1])
    }
}

/// Runs `POST /{db}/_find` and gathers the whole answer (for callers that want it as one
/// value; the server streams with [`FindCursor`] instead).
pub async fn find(store: Arc<dyn Store>, db: &str, req: &FindRequest) -> Result<Value, QueryError> {
    let mut cursor = FindCursor::open(store, db, req.clone()).await?;
    let mut docs = Vec::new();
    while let Some(batch) = cursor.next_batch().await? {
        docs.extend(batch);
    }
    let text = format!("{{\"docs\":{}{}}}", Value::Array(docs), cursor.trailer());
    serde_json::from_str(&text)
        .map_err(|e| QueryError::Store(StoreError::Corrupt(format!("find answer: {e}"))))
}

/// Answers `POST /{db}/_explain`: the index a `_find` with this body would use and how.
pub async fn explain(store: &dyn Store, db: &str, req: &FindRequest) -> Result<Value, QueryError> {
    let indexes = load_indexes(store, db).await?;
    let plan: Plan = plan(&indexes, &req.selector, &req.sort, &req.use_index)?;
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
        Access::AllDocs { range } => (
            all_docs_listing(),
            json!({
                "include_docs": true,
                "view_type": "map",
                "reduce": false,
                "start_key": range.start.as_ref().map(|(id, _)| id.clone()),
                "end_key": range.end.as_ref().map_or(Value::from("<MAX>"), |(id, _)| Value::from(id.as_str())),
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
        "selector": crate::normalize::normalize(req.selector.as_json()),
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
