//! Which index a query reads, and which range of it, as CouchDB 3.5's Mango chooses.
//!
//! A json index is *usable* when every document the selector can match is in it, and it can
//! give the requested sort: each of its fields (other than `_id`, `_rev` and the sort fields) is
//! required to exist by a condition every match meets ([`Selector::conjuncts`]), and the sort
//! fields are its leading fields, after any fixed to one value by `$eq`. Indexes with a
//! `partial_filter_selector` are only used when `use_index` names them, since they leave
//! documents out. Among usable indexes the one whose leading fields the selector bounds the
//! most wins, then the one with fewer fields, then the first by design document and name. With
//! no usable json index the query reads `_all_docs` (with CouchDB's warning), unless it sorts
//! on anything but `_id`: then it is refused with `no_usable_index`.
//!
//! The range read is the longest run of leading fields fixed by `$eq`, then the bounds of the
//! next field. Every document read is still matched against the whole selector, so a range only
//! has to contain the matches, never to be exact.

use std::cmp::Ordering;

use outpost_core::collate::{array_prefix_key, collate};
use outpost_core::selector::{self, Constraint, Selector};
use outpost_store::KeyBound;
use serde_json::Value;

use crate::{MangoIndex, QueryError};

/// CouchDB's warning when a query reads `_all_docs`.
pub const NO_INDEX_WARNING: &str =
    "No matching index found, create an index to optimize query time.";

/// A parsed `sort`: its fields in order and its one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sort {
    pub fields: Vec<String>,
    pub descending: bool,
}

impl Sort {
    /// Parses `["a", {"b": "desc"}]`; anything but an array is refused, as by CouchDB.
    pub fn parse(value: Option<&Value>) -> Result<Sort, QueryError> {
        let bad = || {
            QueryError::BadRequest("invalid sort: expected an array of field names or {field: \"asc\"|\"desc\"} objects".into())
        };
        let Some(value) = value else {
            return Ok(Sort::default());
        };
        let mut items: Vec<(String, bool)> = Vec::new();
        let push_object = |items: &mut Vec<(String, bool)>,
                           m: &serde_json::Map<String, Value>|
         -> Result<(), QueryError> {
            for (name, dir) in m {
                let desc = match dir.as_str() {
                    Some("asc") => false,
                    Some("desc") => true,
                    _ => return Err(bad()),
                };
                items.push((name.clone(), desc));
            }
            Ok(())
        };
        match value {
            Value::Array(list) => {
                for item in list {
                    match item {
                        Value::String(name) => items.push((name.clone(), false)),
                        Value::Object(m) => push_object(&mut items, m)?,
                        _ => return Err(bad()),
                    }
                }
            }
            _ => return Err(bad()),
        }
        let descending = items.first().is_some_and(|(_, d)| *d);
        if items.iter().any(|(_, d)| *d != descending) {
            return Err(QueryError::MixedSort);
        }
        for (name, _) in &items {
            selector::parse_field(name)
                .map_err(|e| QueryError::BadRequest(format!("invalid sort field {name}: {e}")))?;
        }
        Ok(Sort {
            fields: items.into_iter().map(|(n, _)| n).collect(),
            descending,
        })
    }
}

/// A parsed `use_index`: a design document, or a design document and an index name.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum UseIndex {
    #[default]
    Any,
    Ddoc(String),
    DdocName(String, String),
}

impl UseIndex {
    pub fn parse(value: Option<&Value>) -> Result<UseIndex, QueryError> {
        let design = |d: &str| {
            if d.starts_with("_design/") {
                d.to_owned()
            } else {
                format!("_design/{d}")
            }
        };
        let bad = || {
            QueryError::BadRequest(
                "use_index must be a design document name or [design document, index name]".into(),
            )
        };
        match value {
            None | Some(Value::Null) => Ok(UseIndex::Any),
            Some(Value::String(s)) if s.is_empty() => Ok(UseIndex::Any),
            Some(Value::String(s)) => Ok(UseIndex::Ddoc(design(s))),
            Some(Value::Array(a)) => match a.as_slice() {
                [] => Ok(UseIndex::Any),
                [Value::String(d)] => Ok(UseIndex::Ddoc(design(d))),
                [Value::String(d), Value::String(n)] => {
                    Ok(UseIndex::DdocName(design(d), n.clone()))
                }
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    fn selects(&self, index: &MangoIndex) -> bool {
        match self {
            UseIndex::Any => false,
            UseIndex::Ddoc(d) => index.ddoc == *d,
            UseIndex::DdocName(d, n) => index.ddoc == *d && index.name == *n,
        }
    }

    /// `use_index` as `_explain` echoes it.
    pub fn as_json(&self) -> Value {
        match self {
            UseIndex::Any => Value::Array(Vec::new()),
            UseIndex::Ddoc(d) => serde_json::json!([d]),
            UseIndex::DdocName(d, n) => serde_json::json!([d, n]),
        }
    }
}

/// How the query reads its candidates.
#[derive(Debug, Clone)]
pub enum Access {
    /// `_all_docs`, within a range of document ids.
    AllDocs { range: IdRange },
    /// A json index, within key bounds (shown by `_explain` as `start_key` and `end_key`).
    Json {
        index: Box<MangoIndex>,
        lower: KeyBound,
        upper: KeyBound,
        start_key: Value,
        end_key: Value,
    },
}

/// The ids an `_all_docs` scan reads, from the selector's conditions on `_id` read as CouchDB
/// reads them there: in `_all_docs`' raw order, where every id (a string) sorts above numbers,
/// `null`, booleans, objects and arrays. So `{"_id": {"$gt": null}}` reads every document and
/// `{"_id": {"$lt": {}}}` none, as in CouchDB, and string bounds compare byte by byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdRange {
    /// The lowest id, and whether it is included.
    pub start: Option<(String, bool)>,
    /// The highest id, and whether it is included.
    pub end: Option<(String, bool)>,
    /// No id can be in range.
    pub empty: bool,
}

impl IdRange {
    fn from_facts(facts: &Facts<'_>) -> IdRange {
        let mut range = IdRange::default();
        let path = ["_id".to_owned()];
        for c in facts.conjuncts.iter().filter(|c| c.path == path.as_slice()) {
            let (value, lower, upper, inclusive) = match c.constraint {
                Constraint::Eq(v) => (v, true, true, true),
                Constraint::Gt(v) => (v, true, false, false),
                Constraint::Gte(v) => (v, true, false, true),
                Constraint::Lt(v) => (v, false, true, false),
                Constraint::Lte(v) => (v, false, true, true),
                Constraint::Exists(_) | Constraint::Other => continue,
            };
            let Value::String(id) = value else {
                // Everything else sorts below every id: no bound from below, nothing below.
                if upper {
                    range.empty = true;
                }
                continue;
            };
            if lower {
                range.start = Some(match range.start.take() {
                    Some((old, old_incl)) if old > *id => (old, old_incl),
                    Some((old, old_incl)) if old == *id => (old, old_incl && inclusive),
                    _ => (id.clone(), inclusive),
                });
            }
            if upper {
                range.end = Some(match range.end.take() {
                    Some((old, old_incl)) if old < *id => (old, old_incl),
                    Some((old, old_incl)) if old == *id => (old, old_incl && inclusive),
                    _ => (id.clone(), inclusive),
                });
            }
        }
        range
    }
}

/// The chosen access path, its direction and the warnings to send along.
#[derive(Debug, Clone)]
pub struct Plan {
    pub access: Access,
    pub descending: bool,
    pub warnings: Vec<String>,
}

/// The range the selector puts on one field.
#[derive(Debug, Default)]
struct Range<'s> {
    eq: Option<&'s Value>,
    low: Option<(&'s Value, bool)>,
    high: Option<(&'s Value, bool)>,
}

impl Range<'_> {
    fn is_bounded(&self) -> bool {
        self.eq.is_some() || self.low.is_some() || self.high.is_some()
    }
}

/// What the selector says about each field, for planning.
struct Facts<'s> {
    conjuncts: Vec<selector::Conjunct<'s>>,
}

impl<'s> Facts<'s> {
    fn path_of(name: &str) -> Vec<String> {
        selector::parse_field(name).unwrap_or_else(|_| vec![name.to_owned()])
    }

    /// Whether every match has the field.
    fn requires(&self, name: &str) -> bool {
        let path = Facts::path_of(name);
        self.conjuncts.iter().any(|c| {
            c.path == path.as_slice() && !matches!(c.constraint, Constraint::Exists(false))
        })
    }

    fn range(&self, name: &str) -> Range<'s> {
        let path = Facts::path_of(name);
        let mut range = Range::default();
        for c in self.conjuncts.iter().filter(|c| c.path == path.as_slice()) {
            match c.constraint {
                Constraint::Eq(v) => range.eq = range.eq.or(Some(v)),
                Constraint::Gt(v) => tighten(&mut range.low, v, false, Ordering::Greater),
                Constraint::Gte(v) => tighten(&mut range.low, v, true, Ordering::Greater),
                Constraint::Lt(v) => tighten(&mut range.high, v, false, Ordering::Less),
                Constraint::Lte(v) => tighten(&mut range.high, v, true, Ordering::Less),
                Constraint::Exists(_) | Constraint::Other => {}
            }
        }
        range
    }
}

/// Keeps the tighter of two bounds: the greater low bound, the lesser high one.
fn tighten<'s>(
    bound: &mut Option<(&'s Value, bool)>,
    v: &'s Value,
    inclusive: bool,
    tighter: Ordering,
) {
    match bound {
        Some((old, old_incl)) => match collate(v, old) {
            o if o == tighter => *bound = Some((v, inclusive)),
            Ordering::Equal => *bound = Some((v, inclusive && *old_incl)),
            _ => {}
        },
        None => *bound = Some((v, inclusive)),
    }
}

/// A number the sort key cannot hold exactly (beyond 2^53) makes a bound inclusive, so that a
/// value the key encoding rounds onto the bound is still read (and then matched exactly).
fn widen(v: &Value, inclusive: bool) -> bool {
    inclusive
        || matches!(v, Value::Number(n) if n.as_f64().is_none_or(|f| f.abs() >= 9_007_199_254_740_992.0))
}

fn is_usable(index: &MangoIndex, facts: &Facts<'_>, sort: &Sort) -> bool {
    let columns = index.columns();
    let required_ok = columns.iter().all(|c| {
        sort.fields.iter().any(|s| s == c) || *c == "_id" || *c == "_rev" || facts.requires(c)
    });
    required_ok && can_use_sort(&columns, &sort.fields, facts)
}

/// The sort fields must be the index's leading fields, after any fixed by `$eq`.
fn can_use_sort(columns: &[&str], sort: &[String], facts: &Facts<'_>) -> bool {
    let mut columns = columns;
    loop {
        if sort.is_empty() {
            return true;
        }
        let Some((first, rest)) = columns.split_first() else {
            return false;
        };
        if *first == sort[0] {
            return sort.len() <= columns.len()
                && sort.iter().zip(columns.iter()).all(|(s, c)| s == c);
        }
        if facts.range(first).eq.is_none() {
            return false;
        }
        columns = rest;
    }
}

/// How many leading fields of the index the selector bounds.
fn prefix_len(index: &MangoIndex, facts: &Facts<'_>) -> usize {
    index
        .columns()
        .iter()
        .take_while(|c| facts.range(c).is_bounded())
        .count()
}

fn best<'a>(candidates: &[&'a MangoIndex], facts: &Facts<'_>) -> Option<&'a MangoIndex> {
    candidates.iter().copied().min_by(|a, b| {
        prefix_len(b, facts)
            .cmp(&prefix_len(a, facts))
            .then_with(|| a.fields.len().cmp(&b.fields.len()))
            .then_with(|| (&a.ddoc, &a.name).cmp(&(&b.ddoc, &b.name)))
    })
}

/// Chooses the index and range for a query.
pub fn plan(
    indexes: &[MangoIndex],
    selector: &Selector,
    sort: &Sort,
    use_index: &UseIndex,
) -> Result<Plan, QueryError> {
    let facts = Facts {
        conjuncts: selector.conjuncts(),
    };
    let mut warnings = Vec::new();
    let mut chosen = None;
    if *use_index != UseIndex::Any {
        let named: Vec<&MangoIndex> = indexes
            .iter()
            .filter(|i| use_index.selects(i) && is_usable(i, &facts, sort))
            .collect();
        chosen = best(&named, &facts);
        if chosen.is_none() {
            warnings.push(match use_index {
                UseIndex::DdocName(d, n) => {
                    format!("{d}, {n} was not used because it is not a valid index for this query.")
                }
                UseIndex::Ddoc(d) => format!(
                    "{d} was not used because it does not contain a valid index for this query."
                ),
                UseIndex::Any => unreachable!("checked above"),
            });
        }
    }
    if chosen.is_none() {
        let usable: Vec<&MangoIndex> = indexes
            .iter()
            .filter(|i| i.partial_filter.is_none() && is_usable(i, &facts, sort))
            .collect();
        chosen = best(&usable, &facts);
    }
    let access = match chosen {
        Some(index) => json_access(index, &facts),
        None => {
            if !(sort.fields.is_empty() || sort.fields == ["_id"]) {
                return Err(QueryError::NoUsableIndex(
                    "No index exists for this sort, try indexing by the sort fields.".into(),
                ));
            }
            warnings.push(NO_INDEX_WARNING.to_owned());
            Access::AllDocs {
                range: IdRange::from_facts(&facts),
            }
        }
    };
    Ok(Plan {
        access,
        descending: sort.descending,
        warnings,
    })
}

fn json_access(index: &MangoIndex, facts: &Facts<'_>) -> Access {
    let mut fixed: Vec<Value> = Vec::new();
    let max = Value::from("<MAX>");
    for column in index.columns() {
        let range = facts.range(column);
        if let Some(v) = range.eq {
            fixed.push(v.clone());
            continue;
        }
        let (lower, start_key) = match range.low {
            Some((v, incl)) => {
                let mut items = fixed.clone();
                items.push(v.clone());
                (
                    KeyBound::lower_prefix(array_prefix_key(&items), widen(v, incl)),
                    Value::Array(items),
                )
            }
            None => (
                KeyBound::lower_prefix(array_prefix_key(&fixed), true),
                Value::Array(fixed.clone()),
            ),
        };
        let (upper, end_key) = match range.high {
            Some((v, incl)) => {
                let mut items = fixed.clone();
                items.push(v.clone());
                let bound = KeyBound::upper_prefix(array_prefix_key(&items), widen(v, incl));
                if incl {
                    items.push(max.clone());
                }
                (bound, Value::Array(items))
            }
            None => {
                let mut items = fixed.clone();
                items.push(max.clone());
                (
                    KeyBound::upper_prefix(array_prefix_key(&fixed), true),
                    Value::Array(items),
                )
            }
        };
        return Access::Json {
            index: Box::new(index.clone()),
            lower,
            upper,
            start_key,
            end_key,
        };
    }
    let mut end = fixed.clone();
    end.push(max);
    Access::Json {
        index: Box::new(index.clone()),
        lower: KeyBound::lower_prefix(array_prefix_key(&fixed), true),
        upper: KeyBound::upper_prefix(array_prefix_key(&fixed), true),
        start_key: Value::Array(fixed),
        end_key: Value::Array(end),
    }
}
