//! Map/reduce views of design documents, on the store's index tables and the `js` sandbox.
//!
//! A design document's views ([`ViewSet`]) are indexed under a signature: a hash of everything
//! that decides their rows (the map functions, `views.lib`, `options`, the language). Each view
//! is one store index named `_view/<signature>/<view>`, so two design documents with the same
//! views share their indexes and a changed map function starts new ones, as in CouchDB; the
//! old ones stay until [`cleanup`] (`_view_cleanup`) drops indexes no live design document
//! uses.
//!
//! [`indexer`] keeps a set's indexes up to date from the changes feed, a bounded page of
//! documents at a time, mapping each changed document once with every map function of the set.
//! [`query`] reads a range of a view's rows and, for reduce views, reduces them at query time
//! (grouped by `group_level`), with the built-ins `_count`, `_sum`, `_stats` and
//! `_approx_count_distinct` or a JavaScript reduce (with `rereduce` over chunks).

pub mod indexer;
pub mod query;

use base64::Engine;
use md5::{Digest, Md5};
use outpost_store::StoreError;
use serde_json::Value;

pub use indexer::update;
pub use query::{ViewQuery, ViewResult, query, rows};

/// Why a view could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The store failed (or the database is gone).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sandbox could not run a function as a whole (shut down, or the engine failed).
    #[error("javascript: {0}")]
    Js(#[from] outpost_js::JsError),
    /// A query parameter or combination CouchDB refuses (`query_parse_error`).
    #[error("{0}")]
    QueryParse(String),
    /// A built-in reduce refused its input (`builtin_reduce_error`).
    #[error("{0}")]
    BuiltinReduce(String),
    /// The design document's language is not JavaScript (CouchDB's Erlang views).
    #[error("{0}")]
    Unsupported(String),
}

/// One view of a design document.
#[derive(Debug, Clone)]
pub struct ViewDef {
    pub name: String,
    pub map: String,
    /// The reduce function's source or a built-in's name (`_sum`, ...).
    pub reduce: Option<String>,
}

/// The views of one design document, and what their rows depend on.
#[derive(Debug, Clone)]
pub struct ViewSet {
    /// The design document's id.
    pub ddoc_id: String,
    pub language: String,
    pub views: Vec<ViewDef>,
    /// `views.lib`, the modules map functions can `require`.
    pub lib: Option<Value>,
    /// `options.include_design`: whether design documents are mapped too.
    pub include_design: bool,
    /// `options.local_seq`: whether documents are mapped with their `_local_seq`.
    pub local_seq: bool,
    /// The hash of everything above that decides the rows.
    pub signature: String,
}

/// The prefix of every view index's name in the store.
pub const INDEX_PREFIX: &str = "_view/";

impl ViewSet {
    /// The views of a design document (`_id`, `views`, `language`, `options`); `None` when it
    /// has no views. Views without a string `map` are left out, as CouchDB leaves them.
    pub fn from_ddoc(ddoc_id: &str, ddoc: &Value) -> Result<Option<ViewSet>, ViewError> {
        let Some(Value::Object(views)) = ddoc.get("views") else {
            return Ok(None);
        };
        let language = ddoc
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("javascript")
            .to_owned();
        if language == "query" {
            // Mango indexes: served by `_find`.
            return Ok(None);
        }
        if language != "javascript" {
            return Err(ViewError::Unsupported(format!(
                "views in {language:?} are not supported; Outpost runs javascript"
            )));
        }
        let mut defs: Vec<ViewDef> = views
            .iter()
            .filter(|(name, _)| name.as_str() != "lib")
            .filter_map(|(name, def)| {
                let map = def.get("map")?.as_str()?.to_owned();
                let reduce = def.get("reduce").and_then(Value::as_str).map(builtin_name);
                Some(ViewDef {
                    name: name.clone(),
                    map,
                    reduce,
                })
            })
            .collect();
        if defs.is_empty() {
            return Ok(None);
        }
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        let lib = views.get("lib").cloned();
        let options = ddoc.get("options");
        let flag = |name: &str| {
            options
                .and_then(|o| o.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let include_design = flag("include_design");
        let local_seq = flag("local_seq");
        let mut hasher = Md5::new();
        hasher.update(language.as_bytes());
        for view in &defs {
            hasher.update([0]);
            hasher.update(view.name.as_bytes());
            hasher.update([0]);
            hasher.update(view.map.as_bytes());
        }
        hasher.update([0]);
        hasher.update(lib.as_ref().map(Value::to_string).unwrap_or_default());
        hasher.update([u8::from(include_design), u8::from(local_seq)]);
        let signature = hex(&hasher.finalize());
        Ok(Some(ViewSet {
            ddoc_id: ddoc_id.to_owned(),
            language,
            views: defs,
            lib,
            include_design,
            local_seq,
            signature,
        }))
    }

    /// A view by name.
    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.iter().find(|v| v.name == name)
    }

    /// The store index holding a view's rows.
    pub fn index_name(&self, view: &str) -> String {
        format!("{INDEX_PREFIX}{}/{view}", self.signature)
    }

    /// The sandbox's cache key for the set's map functions.
    fn map_sig(&self) -> String {
        format!("views\u{0}{}", self.signature)
    }

    /// The sandbox's cache key for a view's reduce function.
    fn reduce_sig(&self, view: &ViewDef) -> String {
        let mut hasher = Md5::new();
        hasher.update(self.signature.as_bytes());
        hasher.update(view.reduce.as_deref().unwrap_or_default().as_bytes());
        format!(
            "reduce\u{0}{}",
            base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
        )
    }
}

/// CouchDB recognises a built-in reduce by its prefix (`"_sum\n..."` is `_sum`); any other
/// source is kept as it is (a JavaScript function, or an unknown `_name` that fails when run).
fn builtin_name(source: &str) -> String {
    const BUILTINS: [&str; 4] = ["_approx_count_distinct", "_count", "_stats", "_sum"];
    let trimmed = source.trim_start();
    BUILTINS
        .iter()
        .find(|b| trimmed.starts_with(*b))
        .map_or_else(|| source.to_owned(), |b| (*b).to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Drops every view index of `db` whose signature is not in `live` (the signatures of the
/// design documents that exist); returns how many were dropped.
pub async fn cleanup(
    store: &dyn outpost_store::Store,
    db: &str,
    live: &[String],
) -> Result<usize, ViewError> {
    let mut dropped = 0;
    for (name, _) in store.indexes(db).await? {
        let Some(rest) = name.strip_prefix(INDEX_PREFIX) else {
            continue;
        };
        let signature = rest.split('/').next().unwrap_or_default();
        if !live.iter().any(|s| s == signature) && store.drop_index(db, &name).await? {
            dropped += 1;
        }
    }
    Ok(dropped)
}
