//! Reading a view: a key range of its rows, or those rows reduced (grouped by key prefix).

use std::cmp::Ordering;

use outpost_core::collate::collate;
use outpost_js::{ReduceOutcome, Sandbox};
use outpost_store::{IndexQuery, IndexRow, KeyBound, Store, StoreError};
use serde_json::Value;

use crate::{ViewDef, ViewError, ViewSet};

/// Rows read from the store per page.
const PAGE: u64 = 1000;
/// Values handed to a reduce function at once; more are reduced in chunks, then rereduced.
const REDUCE_CHUNK: usize = 1000;
/// Up to how many rows before a range's start `offset` is counted; beyond, it is `null`.
const OFFSET_COUNTED_UP_TO: u64 = 10_000;

/// A view query's parameters, as CouchDB names them.
#[derive(Debug, Clone)]
pub struct ViewQuery {
    pub key: Option<Value>,
    pub keys: Option<Vec<Value>>,
    pub start_key: Option<Value>,
    pub start_key_doc_id: Option<String>,
    pub end_key: Option<Value>,
    pub end_key_doc_id: Option<String>,
    pub inclusive_end: bool,
    pub descending: bool,
    pub skip: u64,
    pub limit: u64,
    /// `None`: reduce when the view has a reduce function.
    pub reduce: Option<bool>,
    pub group: bool,
    pub group_level: Option<u64>,
    pub include_docs: bool,
}

impl Default for ViewQuery {
    fn default() -> ViewQuery {
        ViewQuery {
            key: None,
            keys: None,
            start_key: None,
            start_key_doc_id: None,
            end_key: None,
            end_key_doc_id: None,
            inclusive_end: true,
            descending: false,
            skip: 0,
            limit: u64::MAX,
            reduce: None,
            group: false,
            group_level: None,
            include_docs: false,
        }
    }
}

/// What a view query answers.
#[derive(Debug)]
pub enum ViewResult {
    /// Map rows, in order, with `total_rows` and `offset` (`None` when not counted).
    Rows {
        total_rows: u64,
        offset: Option<u64>,
        rows: Vec<IndexRow>,
    },
    /// Reduced rows: `(group key, value)`, the key `null` without grouping.
    Reduced(Vec<(Value, Value)>),
}

/// Reads a view of a set whose indexes are as up to date as the caller wants them.
pub async fn query(
    store: &dyn Store,
    sandbox: &Sandbox,
    db: &str,
    set: &ViewSet,
    view: &ViewDef,
    q: &ViewQuery,
) -> Result<ViewResult, ViewError> {
    let reduce = match (q.reduce, &view.reduce) {
        (Some(true), None) => {
            return Err(ViewError::QueryParse(
                "Reduce is invalid for map-only views.".into(),
            ));
        }
        (Some(false), _) | (None, None) => false,
        (_, Some(_)) => true,
    };
    let grouping = q.group || q.group_level.is_some();
    if !reduce && grouping {
        return Err(ViewError::QueryParse(
            "Invalid use of grouping on a map view.".into(),
        ));
    }
    if reduce && q.include_docs {
        return Err(ViewError::QueryParse(
            "`include_docs` is invalid for reduce".into(),
        ));
    }
    if q.key.is_some() && q.keys.is_some() {
        return Err(ViewError::QueryParse(
            "`keys` is incompatible with `key`, `start_key` and `end_key`".into(),
        ));
    }
    if reduce && q.keys.is_some() && !grouping {
        return Err(ViewError::QueryParse(
            "Multi-key fetches for reduce views must use `group=true`".into(),
        ));
    }
    if q.keys.is_none()
        && let (Some(start), Some(end)) = (&q.start_key, &q.end_key)
    {
        let order = collate(start, end);
        let reversed = if q.descending {
            order == Ordering::Less
        } else {
            order == Ordering::Greater
        };
        if reversed {
            return Err(ViewError::QueryParse(
                "No rows can match your key range, reverse your start_key and end_key or set descending=true".into(),
            ));
        }
    }
    let name = set.index_name(&view.name);
    let state = store
        .index_state(db, &name)
        .await?
        .filter(|s| s.signature == set.signature);
    let total_rows = state.as_ref().map_or(0, |s| s.rows);
    let ranges = ranges(q);
    if state.is_none() {
        // Never built (`update=false` on a new view): no rows, as CouchDB answers.
        return Ok(if reduce {
            ViewResult::Reduced(Vec::new())
        } else {
            ViewResult::Rows {
                total_rows: 0,
                offset: Some(0),
                rows: Vec::new(),
            }
        });
    }
    if !reduce {
        let rows = read_rows(store, db, &name, ranges, q).await?;
        let offset = match (&q.keys, q.key.as_ref().or(q.start_key.as_ref())) {
            (None, Some(start)) => {
                let doc = q.start_key_doc_id.as_deref();
                // The rows before the start, in the query's direction.
                let before = if q.descending {
                    IndexQuery {
                        lower: Some(match doc {
                            Some(d) => KeyBound::lower_with_doc(start, d, false),
                            None => KeyBound::lower(start, false),
                        }),
                        ..IndexQuery::default()
                    }
                } else {
                    IndexQuery {
                        upper: Some(match doc {
                            Some(d) => KeyBound::upper_with_doc(start, d, false),
                            None => KeyBound::upper(start, false),
                        }),
                        ..IndexQuery::default()
                    }
                };
                let n = match store
                    .count_index(db, &name, &before, OFFSET_COUNTED_UP_TO)
                    .await
                {
                    Err(StoreError::NotFound) => Some(0),
                    other => other?,
                };
                n.map(|n| n.saturating_add(q.skip).min(total_rows))
            }
            _ => Some(q.skip.min(total_rows)),
        };
        return Ok(ViewResult::Rows {
            total_rows,
            offset,
            rows,
        });
    }
    let level = if q.group {
        None
    } else {
        q.group_level
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
    };
    let mut groups: Vec<(Value, Value)> = Vec::new();
    let wanted = q.skip.saturating_add(q.limit);
    'ranges: for mut range in ranges {
        range.include_docs = false;
        range.limit = PAGE;
        let mut current: Option<Group> = None;
        let mut cursor = Cursor::default();
        loop {
            let page = scan(store, db, &name, &range).await?;
            let got = page.len() as u64;
            cursor.advance(&mut range, &page);
            for row in page {
                let key: Value = outpost_core::json::from_str(&row.key).unwrap_or(Value::Null);
                let value: Value = outpost_core::json::from_str(&row.value).unwrap_or(Value::Null);
                let group_key = if grouping {
                    group_key(&key, level)
                } else {
                    Value::Null
                };
                let same = current
                    .as_ref()
                    .is_some_and(|g| collate(&g.key, &group_key) == Ordering::Equal);
                if !same {
                    if let Some(done) = current.take() {
                        groups.push(done.finish(sandbox, set, view).await?);
                        if groups.len() as u64 >= wanted {
                            break 'ranges;
                        }
                    }
                    current = Some(Group::new(group_key));
                }
                if let Some(group) = current.as_mut() {
                    group
                        .add(sandbox, set, view, key, row.doc_id, value)
                        .await?;
                }
            }
            if got < PAGE {
                break;
            }
        }
        if let Some(done) = current {
            groups.push(done.finish(sandbox, set, view).await?);
        }
    }
    let skip = usize::try_from(q.skip).unwrap_or(usize::MAX);
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    Ok(ViewResult::Reduced(
        groups.into_iter().skip(skip).take(limit).collect(),
    ))
}

/// The key ranges a query reads, in order: one per key of `keys`, else one.
fn ranges(q: &ViewQuery) -> Vec<IndexQuery> {
    match &q.keys {
        Some(keys) => keys
            .iter()
            .map(|k| range(q, Some(k), Some(k), None, None, true))
            .collect(),
        None => {
            // `key` is both ends; descending swaps which end each of start and end bounds.
            let (start, end) = match &q.key {
                Some(k) => (Some(k), Some(k)),
                None => (q.start_key.as_ref(), q.end_key.as_ref()),
            };
            vec![range(
                q,
                start,
                end,
                q.start_key_doc_id.as_deref(),
                q.end_key_doc_id.as_deref(),
                q.inclusive_end,
            )]
        }
    }
}

/// A page of a map view's rows (`q.skip` and `q.limit` bound it), without `total_rows` or
/// `offset`: what a streamed answer reads after its first page.
pub async fn rows(
    store: &dyn Store,
    db: &str,
    set: &ViewSet,
    view: &ViewDef,
    q: &ViewQuery,
) -> Result<Vec<IndexRow>, ViewError> {
    read_rows(store, db, &set.index_name(&view.name), ranges(q), q).await
}

/// The map rows of some ranges, in order, after skipping `q.skip` of them (across ranges) and
/// at most `q.limit`, read a bounded page at a time.
async fn read_rows(
    store: &dyn Store,
    db: &str,
    name: &str,
    ranges: Vec<IndexQuery>,
    q: &ViewQuery,
) -> Result<Vec<IndexRow>, ViewError> {
    let mut rows = Vec::new();
    let mut to_skip = q.skip;
    let mut remaining = q.limit;
    for mut range in ranges {
        if remaining == 0 {
            break;
        }
        range.include_docs = q.include_docs;
        range.skip = to_skip;
        let mut read = 0u64;
        let mut cursor = Cursor::default();
        loop {
            range.limit = remaining.min(PAGE);
            let page = scan(store, db, name, &range).await?;
            let got = page.len() as u64;
            if got < range.limit {
                // The range is done; what it did not skip carries to the next one.
                let first_page = read == 0 && range.skip == to_skip;
                rows.extend(page);
                remaining -= got;
                to_skip = if got > 0 || !first_page {
                    0
                } else {
                    to_skip.saturating_sub(count(store, db, name, &range, to_skip).await?)
                };
                break;
            }
            cursor.advance(&mut range, &page);
            rows.extend(page);
            remaining -= got;
            read += got;
            if remaining == 0 {
                break;
            }
        }
    }
    Ok(rows)
}

async fn scan(
    store: &dyn Store,
    db: &str,
    name: &str,
    query: &IndexQuery,
) -> Result<Vec<IndexRow>, ViewError> {
    match store.scan_index(db, name, query).await {
        Ok(rows) => Ok(rows),
        Err(StoreError::NotFound) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// How many of `skip` rows a range holds (so the rest of `skip` carries to the next key).
async fn count(
    store: &dyn Store,
    db: &str,
    name: &str,
    range: &IndexQuery,
    skip: u64,
) -> Result<u64, ViewError> {
    if skip == 0 {
        return Ok(0);
    }
    let mut all = range.clone();
    all.skip = 0;
    all.limit = skip;
    all.include_docs = false;
    Ok(scan(store, db, name, &all).await?.len() as u64)
}

/// Where the next page of a range starts: just after the last row read, found through the index
/// (its key and document id) rather than by skipping every row before it, so reading a view of
/// any size costs one index seek per page.
///
/// A document may emit the same key more than once; such rows share their `(key, doc id)` and are
/// ordered among themselves, so the next page starts at that pair, inclusive, skipping the ones
/// of them already read.
#[derive(Default)]
struct Cursor {
    /// The `(key, doc id)` of the last row read, as the row holds it.
    last: Option<(String, String)>,
    /// Rows at `last` already read.
    at_last: u64,
}

impl Cursor {
    /// Moves `range` past `page` (a full page of it).
    fn advance(&mut self, range: &mut IndexQuery, page: &[IndexRow]) {
        let Some(end) = page.last() else {
            return;
        };
        let same = |r: &IndexRow| r.key == end.key && r.doc_id == end.doc_id;
        let trailing = page.iter().rev().take_while(|r| same(r)).count() as u64;
        let continues = trailing == page.len() as u64
            && self
                .last
                .as_ref()
                .is_some_and(|(k, d)| *k == end.key && *d == end.doc_id);
        self.at_last = if continues {
            self.at_last + trailing
        } else {
            trailing
        };
        self.last = Some((end.key.clone(), end.doc_id.clone()));
        let key: Value = outpost_core::json::from_str(&end.key).unwrap_or(Value::Null);
        if range.descending {
            range.upper = Some(KeyBound::upper_with_doc(&key, &end.doc_id, true));
        } else {
            range.lower = Some(KeyBound::lower_with_doc(&key, &end.doc_id, true));
        }
        range.skip = self.at_last;
    }
}

/// The range of rows between two keys in the query's direction.
fn range(
    q: &ViewQuery,
    start: Option<&Value>,
    end: Option<&Value>,
    start_doc: Option<&str>,
    end_doc: Option<&str>,
    inclusive_end: bool,
) -> IndexQuery {
    let start_bound = |key: &Value, lower: bool| match (start_doc, lower) {
        (Some(doc), true) => KeyBound::lower_with_doc(key, doc, true),
        (Some(doc), false) => KeyBound::upper_with_doc(key, doc, true),
        (None, true) => KeyBound::lower(key, true),
        (None, false) => KeyBound::upper(key, true),
    };
    let end_bound = |key: &Value, lower: bool| match (end_doc, lower) {
        (Some(doc), true) => KeyBound::lower_with_doc(key, doc, inclusive_end),
        (Some(doc), false) => KeyBound::upper_with_doc(key, doc, inclusive_end),
        (None, true) => KeyBound::lower(key, inclusive_end),
        (None, false) => KeyBound::upper(key, inclusive_end),
    };
    let (lower, upper) = if q.descending {
        (
            end.map(|k| end_bound(k, true)),
            start.map(|k| start_bound(k, false)),
        )
    } else {
        (
            start.map(|k| start_bound(k, true)),
            end.map(|k| end_bound(k, false)),
        )
    };
    IndexQuery {
        lower,
        upper,
        descending: q.descending,
        skip: 0,
        limit: u64::MAX,
        include_docs: false,
    }
}

/// The key a row is grouped under: the whole key, or the first `level` elements of an array
/// key (other keys are their own group).
fn group_key(key: &Value, level: Option<usize>) -> Value {
    match (level, key) {
        (Some(level), Value::Array(items)) => {
            Value::Array(items.iter().take(level).cloned().collect())
        }
        _ => key.clone(),
    }
}

/// The rows of one group being reduced: values are reduced a chunk at a time into partial
/// results, so a group of any size holds at most a chunk of values and its partials.
struct Group {
    key: Value,
    keys: Vec<Value>,
    values: Vec<Value>,
    partials: Vec<Value>,
    /// Rows seen (for `_count`) and distinct keys seen (for `_approx_count_distinct`).
    count: u64,
    distinct: u64,
    last_key: Option<Value>,
}

impl Group {
    fn new(key: Value) -> Group {
        Group {
            key,
            keys: Vec::new(),
            values: Vec::new(),
            partials: Vec::new(),
            count: 0,
            distinct: 0,
            last_key: None,
        }
    }

    async fn add(
        &mut self,
        sandbox: &Sandbox,
        set: &ViewSet,
        view: &ViewDef,
        key: Value,
        doc_id: String,
        value: Value,
    ) -> Result<(), ViewError> {
        self.count += 1;
        if self
            .last_key
            .as_ref()
            .is_none_or(|last| collate(last, &key) != Ordering::Equal)
        {
            self.distinct += 1;
        }
        match view.reduce.as_deref() {
            Some("_count") | Some("_approx_count_distinct") | None => {
                self.last_key = Some(key);
                return Ok(());
            }
            _ => {}
        }
        self.last_key = Some(key.clone());
        self.keys
            .push(Value::Array(vec![key, Value::String(doc_id)]));
        self.values.push(value);
        if self.values.len() >= REDUCE_CHUNK {
            self.flush(sandbox, set, view).await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        sandbox: &Sandbox,
        set: &ViewSet,
        view: &ViewDef,
    ) -> Result<(), ViewError> {
        if self.values.is_empty() {
            return Ok(());
        }
        let source = view.reduce.as_deref().unwrap_or("_count");
        let keys = std::mem::take(&mut self.keys);
        let values = std::mem::take(&mut self.values);
        let partial = run_reduce(
            sandbox,
            &set.reduce_sig(view),
            source,
            set,
            &keys,
            &values,
            false,
        )
        .await?;
        self.partials.push(partial);
        Ok(())
    }

    async fn finish(
        mut self,
        sandbox: &Sandbox,
        set: &ViewSet,
        view: &ViewDef,
    ) -> Result<(Value, Value), ViewError> {
        let source = view.reduce.as_deref().unwrap_or("_count");
        match source {
            "_count" => return Ok((self.key, Value::from(self.count))),
            // Exact for what one query reduces: the distinct keys of the group.
            "_approx_count_distinct" => return Ok((self.key, Value::from(self.distinct))),
            _ => {}
        }
        self.flush(sandbox, set, view).await?;
        let sig = set.reduce_sig(view);
        let mut partials = self.partials;
        while partials.len() > 1 {
            let mut next = Vec::new();
            for chunk in partials.chunks(REDUCE_CHUNK) {
                next.push(run_reduce(sandbox, &sig, source, set, &[], chunk, true).await?);
            }
            partials = next;
        }
        Ok((self.key, partials.pop().unwrap_or(Value::Null)))
    }
}

async fn run_reduce(
    sandbox: &Sandbox,
    sig: &str,
    source: &str,
    set: &ViewSet,
    keys: &[Value],
    values: &[Value],
    rereduce: bool,
) -> Result<Value, ViewError> {
    match sandbox
        .reduce(sig, source, set.lib.as_ref(), keys, values, rereduce)
        .await?
    {
        ReduceOutcome::Value(v) => Ok(v),
        ReduceOutcome::BuiltinError(e) => Err(ViewError::BuiltinReduce(e)),
        // A reduce function that throws gives `null` for that group (logged), as PouchDB and
        // pouchdb-server answer; the query goes on.
        ReduceOutcome::Failed(e) => {
            tracing::info!(ddoc = %set.ddoc_id, error = %e, "reduce function failed");
            Ok(Value::Null)
        }
    }
}
