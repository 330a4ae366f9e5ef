//! Mango json index definitions, kept as CouchDB keeps them: one view of a design document with
//! `"language": "query"`:
//!
//! ```json
//! {"_id": "_design/by-name", "language": "query", "views": {"name-index": {
//!   "map": {"fields": {"name": "asc"}, "partial_filter_selector": {}},
//!   "reduce": "_count", "options": {"def": {"fields": ["name"]}}}}}
//! ```
//!
//! Because they are ordinary design documents they replicate, and an index created on one
//! replica is used on every other one.

use md5::{Digest, Md5};
use outpost_core::Rev;
use outpost_core::selector::{self, Selector};
use outpost_store::{AllDocsQuery, DocUpdate, Origin, Store, UpdateMode};
use serde_json::{Map, Value, json};

use crate::QueryError;

/// One field of a json index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexField {
    /// The field as written (`a.b`).
    pub name: String,
    /// The field's path (`["a", "b"]`).
    pub path: Vec<String>,
    pub descending: bool,
}

/// A json index defined by a design document.
#[derive(Debug, Clone)]
pub struct MangoIndex {
    /// The design document's id (`_design/...`).
    pub ddoc: String,
    pub name: String,
    pub fields: Vec<IndexField>,
    /// Only documents matching it are indexed.
    pub partial_filter: Option<Selector>,
}

impl MangoIndex {
    /// The index's name in the store: unique per design document and view, and apart from the
    /// names map/reduce views use.
    pub fn store_name(&self) -> String {
        format!("mango/{}/{}", self.ddoc, self.name)
    }

    /// What the rows are derived from: a changed definition builds a new index.
    pub fn signature(&self) -> String {
        hex_digest(&self.def())
    }

    /// The definition as `GET /{db}/_index` shows it.
    pub fn def(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|f| {
                let mut m = Map::new();
                m.insert(
                    f.name.clone(),
                    Value::from(if f.descending { "desc" } else { "asc" }),
                );
                Value::Object(m)
            })
            .collect();
        let mut def = json!({ "fields": fields });
        if let Some(partial) = &self.partial_filter {
            def["partial_filter_selector"] = partial.as_json().clone();
        }
        def
    }

    /// The entry of `GET /{db}/_index`.
    pub fn listing(&self) -> Value {
        json!({
            "ddoc": self.ddoc,
            "name": self.name,
            "type": "json",
            "partitioned": false,
            "def": self.def(),
        })
    }

    /// The key a document has in this index: the array of its indexed fields' values, or
    /// `None` when it lacks one of them or fails the partial filter (then it is not indexed).
    pub fn key_of(&self, doc: &Value) -> Option<Value> {
        if let Some(partial) = &self.partial_filter
            && !partial.matches(doc)
        {
            return None;
        }
        let values: Option<Vec<Value>> = self
            .fields
            .iter()
            .map(|f| selector::field(doc, &f.path).cloned())
            .collect();
        values.map(Value::Array)
    }

    /// The names of the indexed fields, in order.
    pub fn columns(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

/// The `_all_docs` special index as `GET /{db}/_index` and `_explain` show it.
pub fn all_docs_listing() -> Value {
    json!({
        "ddoc": null,
        "name": "_all_docs",
        "type": "special",
        "def": { "fields": [{ "_id": "asc" }] },
    })
}

fn hex_digest(v: &Value) -> String {
    let mut canonical = Vec::new();
    outpost_core::hash::write_canonical(v, &mut canonical);
    outpost_core::hash::hex(&Md5::digest(&canonical))
}

/// Parses index fields: names, or `{name: "asc"|"desc"}` objects.
fn parse_fields(fields: &Value) -> Result<Vec<IndexField>, QueryError> {
    let bad = || {
        QueryError::BadRequest("index fields must be a non-empty array of field names or {field: \"asc\"|\"desc\"} objects".into())
    };
    let items = fields
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let (name, descending) = match item {
            Value::String(name) => (name.clone(), false),
            Value::Object(m) if m.len() == 1 => {
                let (name, dir) = m.iter().next().expect("one member");
                match dir.as_str() {
                    Some("asc") => (name.clone(), false),
                    Some("desc") => (name.clone(), true),
                    _ => return Err(bad()),
                }
            }
            _ => return Err(bad()),
        };
        let path = selector::parse_field(&name)
            .map_err(|e| QueryError::BadRequest(format!("invalid index field {name}: {e}")))?;
        out.push(IndexField {
            name,
            path,
            descending,
        });
    }
    if out.iter().any(|f| f.descending != out[0].descending) {
        return Err(QueryError::MixedSort);
    }
    Ok(out)
}

/// A partial filter; an empty one (what CouchDB writes when there is none) filters nothing.
fn parse_partial(value: Option<&Value>) -> Result<Option<Selector>, QueryError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(v) => Selector::parse(v)
            .map(Some)
            .map_err(|e| QueryError::BadRequest(format!("invalid partial_filter_selector: {e}"))),
    }
}

/// The json indexes a design document defines (none unless its language is `query`).
fn indexes_of(ddoc: &str, body: &Value) -> Vec<MangoIndex> {
    if body.get("language").and_then(Value::as_str) != Some("query") {
        return Vec::new();
    }
    let Some(views) = body.get("views").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, view) in views {
        let map = view.get("map");
        let def = view.get("options").and_then(|o| o.get("def"));
        // `map.fields` is an object of directions; `options.def.fields` the form written.
        let fields = match map.and_then(|m| m.get("fields")) {
            Some(Value::Object(m)) => {
                let list: Vec<Value> = m
                    .iter()
                    .map(|(k, v)| {
                        let mut o = Map::new();
                        o.insert(k.clone(), v.clone());
                        Value::Object(o)
                    })
                    .collect();
                parse_fields(&Value::Array(list))
            }
            _ => match def.and_then(|d| d.get("fields")) {
                Some(f) => parse_fields(f),
                None => continue,
            },
        };
        let partial = map
            .and_then(|m| m.get("partial_filter_selector"))
            .or_else(|| def.and_then(|d| d.get("partial_filter_selector")));
        match (fields, parse_partial(partial)) {
            (Ok(fields), Ok(partial_filter)) => out.push(MangoIndex {
                ddoc: ddoc.to_owned(),
                name: name.clone(),
                fields,
                partial_filter,
            }),
            // A design document written by hand may hold anything; an unreadable index is
            // not an index, and the document stays as it is.
            _ => tracing::warn!(ddoc, index = %name, "ignoring an invalid mango index definition"),
        }
    }
    out
}

/// Every json index of a database, ordered by design document and name.
pub async fn load_indexes(store: &dyn Store, db: &str) -> Result<Vec<MangoIndex>, QueryError> {
    let query = AllDocsQuery {
        start: Some("_design/".into()),
        start_inclusive: true,
        end: Some("_design0".into()),
        end_inclusive: false,
        limit: u64::MAX,
        include_docs: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    for row in store.all_docs(db, &query).await? {
        let Some(body) = row.body.as_deref() else {
            continue;
        };
        let Ok(body) = outpost_core::json::from_str(body) else {
            continue;
        };
        out.extend(indexes_of(&row.id, &body));
    }
    out.sort_by(|a, b| (&a.ddoc, &a.name).cmp(&(&b.ddoc, &b.name)));
    Ok(out)
}

/// `GET /{db}/_index`: the special `_all_docs` index, then every json index; `skip` and
/// `limit` page the list (`total_rows` counts them all).
pub async fn list_indexes(
    store: &dyn Store,
    db: &str,
    skip: u64,
    limit: Option<u64>,
) -> Result<Value, QueryError> {
    let mut indexes = vec![all_docs_listing()];
    indexes.extend(
        load_indexes(store, db)
            .await?
            .iter()
            .map(MangoIndex::listing),
    );
    let total = indexes.len();
    let page: Vec<Value> = indexes
        .into_iter()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)))
        .collect();
    Ok(json!({ "total_rows": total, "indexes": page }))
}

fn design_id(ddoc: &str) -> String {
    if ddoc.starts_with("_design/") {
        ddoc.to_owned()
    } else {
        format!("_design/{ddoc}")
    }
}

/// The design document's current winner: its revision and body, when it exists and is live.
async fn load_ddoc(
    store: &dyn Store,
    db: &str,
    id: &str,
) -> Result<Option<(Rev, Map<String, Value>)>, QueryError> {
    let Some(record) = store.doc(db, id).await? else {
        return Ok(None);
    };
    let Some(winner) = record.tree.winner().filter(|w| !w.deleted) else {
        return Ok(None);
    };
    let bodies = store
        .rev_bodies(db, id, std::slice::from_ref(&winner.rev))
        .await?;
    let Some((_, body)) = bodies.into_iter().next() else {
        return Ok(None);
    };
    match outpost_core::json::from_str(&body.json) {
        Ok(Value::Object(map)) => Ok(Some((winner.rev, map))),
        _ => Err(QueryError::Store(outpost_store::StoreError::Corrupt(
            format!("body of {id} is not an object"),
        ))),
    }
}

async fn save_ddoc(
    store: &dyn Store,
    db: &str,
    id: &str,
    base: Option<Rev>,
    body: Map<String, Value>,
    deleted: bool,
) -> Result<(), QueryError> {
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base },
        deleted,
        body,
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    let mut results = store.write_docs(db, vec![update]).await?;
    match results.pop() {
        Some(Ok(_)) => Ok(()),
        Some(Err(outpost_store::DocError::Conflict)) => Err(QueryError::Conflict),
        Some(Err(e)) => Err(QueryError::BadRequest(e.to_string())),
        None => Err(QueryError::Store(outpost_store::StoreError::Corrupt(
            "a write answered nothing".into(),
        ))),
    }
}

/// `POST /{db}/_index`: adds a json index to its design document (created when needed) and
/// answers `{"result": "created"|"exists", "id", "name"}`.
pub async fn create_index(store: &dyn Store, db: &str, body: &Value) -> Result<Value, QueryError> {
    let req = body
        .as_object()
        .ok_or_else(|| QueryError::BadRequest("request body must be a json object".into()))?;
    let index = req.get("index").ok_or(QueryError::MissingKey("index"))?;
    let index = index
        .as_object()
        .ok_or_else(|| QueryError::BadRequest("index must be a json object".into()))?;
    match req.get("type") {
        None => {}
        Some(Value::String(t)) if t == "json" => {}
        Some(other) => {
            return Err(QueryError::BadRequest(format!(
                "unsupported index type: {other}; only json indexes are supported"
            )));
        }
    }
    let fields_json = index
        .get("fields")
        .ok_or(QueryError::MissingKey("fields"))?;
    let fields = parse_fields(fields_json)?;
    let partial_json = index
        .get("partial_filter_selector")
        .or_else(|| req.get("partial_filter_selector"));
    let partial_filter = parse_partial(partial_json)?;
    let probe = MangoIndex {
        ddoc: String::new(),
        name: String::new(),
        fields,
        partial_filter,
    };
    // Two indexes on the same fields under different names get different design documents.
    let digest = hex_digest(&json!([probe.def(), req.get("name")]));
    let string_opt = |key: &str| -> Result<Option<String>, QueryError> {
        match req.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(QueryError::BadRequest(format!(
                "{key} must be a non-empty string"
            ))),
        }
    };
    let ddoc = design_id(&string_opt("ddoc")?.unwrap_or_else(|| digest.clone()));
    let name = string_opt("name")?.unwrap_or_else(|| digest.clone());
    let def = probe.def();

    let existing = load_ddoc(store, db, &ddoc).await?;
    let (base, mut body) = match existing {
        Some((rev, body)) => (Some(rev), body),
        None => (None, Map::new()),
    };
    match body.get("language") {
        None if base.is_none() => {
            body.insert("language".into(), Value::from("query"));
        }
        Some(Value::String(l)) if l == "query" => {}
        // A design document of another language (JavaScript when it names none).
        _ => {
            return Err(QueryError::BadRequest(format!(
                "{ddoc} is not a query design document"
            )));
        }
    }
    let index = MangoIndex {
        ddoc: ddoc.clone(),
        name: name.clone(),
        ..probe
    };
    let views = body
        .entry("views")
        .or_insert_with(|| Value::Object(Map::new()));
    let views = views.as_object_mut().ok_or_else(|| {
        QueryError::BadRequest(format!("{ddoc} has views that are not an object"))
    })?;
    let same = indexes_of(
        &ddoc,
        &json!({"language": "query", "views": {name.clone(): views.get(&name).cloned().unwrap_or(Value::Null)}}),
    )
    .first()
    .is_some_and(|old| old.def() == def);
    if same {
        return Ok(json!({ "result": "exists", "id": ddoc, "name": name }));
    }
    let mut map_fields = Map::new();
    for f in &index.fields {
        map_fields.insert(
            f.name.clone(),
            Value::from(if f.descending { "desc" } else { "asc" }),
        );
    }
    let mut map = json!({ "fields": map_fields });
    let mut options_def = json!({ "fields": fields_json });
    if let Some(p) = partial_json.filter(|_| index.partial_filter.is_some()) {
        // Stored normalized, as CouchDB stores it.
        map["partial_filter_selector"] = crate::normalize::normalize(p);
        options_def["partial_filter_selector"] = p.clone();
    }
    views.insert(
        name.clone(),
        json!({ "map": map, "reduce": "_count", "options": { "def": options_def } }),
    );
    save_ddoc(store, db, &ddoc, base, body, false).await?;
    Ok(json!({ "result": "created", "id": ddoc, "name": name }))
}

/// `DELETE /{db}/_index/{ddoc}/json/{name}`: removes the index from its design document (the
/// document goes when it has no index left) and drops its rows.
pub async fn delete_index(
    store: &dyn Store,
    db: &str,
    ddoc: &str,
    name: &str,
) -> Result<(), QueryError> {
    let ddoc = design_id(ddoc);
    let (rev, mut body) = load_ddoc(store, db, &ddoc)
        .await?
        .ok_or(QueryError::IndexNotFound)?;
    let index = indexes_of(&ddoc, &Value::Object(body.clone()))
        .into_iter()
        .find(|i| i.name == name)
        .ok_or(QueryError::IndexNotFound)?;
    let views = body
        .get_mut("views")
        .and_then(Value::as_object_mut)
        .ok_or(QueryError::IndexNotFound)?;
    views.shift_remove(name);
    let empty = views.is_empty();
    if empty {
        save_ddoc(store, db, &ddoc, Some(rev), Map::new(), true).await?;
    } else {
        save_ddoc(store, db, &ddoc, Some(rev), body, false).await?;
    }
    store.drop_index(db, &index.store_name()).await?;
    Ok(())
}
