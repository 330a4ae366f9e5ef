//! [`Endpoint`] for a database of this process, straight on the [`Store`](outpost_store::Store)
//! without HTTP: what `POST /_replicate` and `_replicator` jobs use when a side names a database
//! of this server.
//!
//! It answers exactly what [`outpost_replicator::HttpEndpoint`] would read from our own HTTP API
//! (same replication id, same checkpoint documents, same revisions), so a replication may switch
//! between the two and still resume from its checkpoints. Writes are recorded in the event log
//! as coming from the other side of the replication (`Origin::Replication { peer }`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outpost_core::{Rev, Selector};
use outpost_replicator::{
    Change, ChangesFilter, ChangesPage, ChangesRequest, DbInfo, DocRevs, Endpoint, Feed,
    ReplicationError, RevsDiffEntry, Seq, WriteFailure,
};
use outpost_store::{ChangesQuery, DocRecord, Origin, StoreError};
use serde_json::{Map, Value};

use crate::docjson::{RenderOpts, parse_doc, selector_admits, splice};
use crate::feed::{Filter as FeedFilter, function_admits};
use crate::routes::doc::{OpenRev, open_revs_batch};
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

/// Rows read from the store per page when a filter may leave some out.
const SCAN_PAGE: u64 = 500;

/// A database of this server.
pub struct LocalEndpoint {
    state: AppState,
    db: String,
    /// The other side of the replication, redacted, recorded as the origin of what we write.
    peer: Option<String>,
}

impl LocalEndpoint {
    pub fn new(state: AppState, db: impl Into<String>, peer: Option<String>) -> LocalEndpoint {
        LocalEndpoint {
            state,
            db: db.into(),
            peer,
        }
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    fn store_error(&self, op: &'static str, e: StoreError) -> ReplicationError {
        let endpoint = self.to_string();
        match e {
            StoreError::NoDb => ReplicationError::NotFound {
                endpoint,
                op,
                reason: "Database does not exist.".into(),
            },
            StoreError::NotFound => ReplicationError::NotFound {
                endpoint,
                op,
                reason: "missing".into(),
            },
            StoreError::Conflict => ReplicationError::Conflict { endpoint, op },
            // A closing store is the local equivalent of a server going away: retry later.
            StoreError::Closed => ReplicationError::Unreachable {
                endpoint,
                op,
                reason: "the store is closed".into(),
            },
            StoreError::Unavailable(reason) => ReplicationError::Unreachable {
                endpoint,
                op,
                reason,
            },
            other => ReplicationError::Http {
                endpoint,
                op,
                status: 500,
                error: "internal_server_error".into(),
                reason: other.to_string(),
            },
        }
    }

    fn api_error(&self, op: &'static str, e: ApiError) -> ReplicationError {
        match e {
            ApiError::NotFound(reason) => ReplicationError::NotFound {
                endpoint: self.to_string(),
                op,
                reason,
            },
            ApiError::Unavailable => ReplicationError::Unreachable {
                endpoint: self.to_string(),
                op,
                reason: "the store is closed".into(),
            },
            other => {
                let (status, error) = other.status_and_code();
                ReplicationError::Http {
                    endpoint: self.to_string(),
                    op,
                    status: status.as_u16(),
                    error: error.into(),
                    reason: other.reason(),
                }
            }
        }
    }

    /// A design-document filter as `_changes` runs it; a missing design document or function
    /// fails the replication, as CouchDB's does.
    async fn design_filter(
        &self,
        name: &str,
        view: Option<&str>,
        query_params: Option<&serde_json::Map<String, Value>>,
    ) -> Result<FeedFilter, ReplicationError> {
        let (section, full) = match (name, view) {
            ("_view", Some(view)) => ("views", view),
            (name, _) => ("filters", name),
        };
        let invalid = |reason: String| ReplicationError::InvalidConfig(reason);
        let (ddoc_name, function) = full
            .split_once('/')
            .ok_or_else(|| invalid(format!("invalid filter name {full:?}")))?;
        let ddoc = self
            .state
            .design
            .get(&self.state, &self.db, ddoc_name)
            .await
            .map_err(|e| self.api_error("changes", e))?
            .ok_or_else(|| {
                invalid(format!(
                    "filter {full:?}: no design document _design/{ddoc_name}"
                ))
            })?;
        let path: Vec<&str> = match section {
            "views" => vec!["views", function, "map"],
            _ => vec!["filters", function],
        };
        if ddoc.function(&path).is_none() {
            return Err(invalid(format!(
                "filter {full:?}: missing json key: {function}"
            )));
        }
        Ok(match section {
            "views" => FeedFilter::View {
                ddoc,
                name: function.to_owned(),
            },
            _ => {
                let mut query = serde_json::Map::new();
                for (k, v) in query_params.into_iter().flatten() {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    query.insert(k.clone(), Value::String(text));
                }
                FeedFilter::Function {
                    ddoc,
                    name: function.to_owned(),
                    req: serde_json::json!({
                        "info": { "db_name": self.db },
                        "method": "GET",
                        "query": query,
                        "body": "undefined",
                        "userCtx": crate::design::admin_ctx(&self.db),
                        "headers": {},
                        "cookie": {},
                        "form": {},
                        "peer": "127.0.0.1",
                    }),
                }
            }
        })
    }

    /// Rows after `since` that pass `filter`, at most `limit`; and the last sequence looked at.
    async fn scan(
        &self,
        since: u64,
        limit: usize,
        filter: &Filter,
        incarnation: &Incarnation,
    ) -> Result<(Vec<Change>, u64, bool), ReplicationError> {
        let mut out = Vec::new();
        let mut cursor = since;
        loop {
            let want = (limit - out.len()) as u64;
            let page_size = match filter {
                Filter::All => want,
                _ => SCAN_PAGE,
            };
            let query = ChangesQuery {
                since: cursor,
                limit: page_size,
                descending: false,
                include_docs: matches!(filter, Filter::Selector(_) | Filter::Design(_)),
            };
            let rows = self
                .state
                .store
                .changes(&self.db, &query)
                .await
                .map_err(|e| self.store_error("changes", e))?;
            let full = rows.len() as u64 == page_size;
            for row in rows {
                cursor = row.seq;
                let Some(winner) = row.tree.winner() else {
                    continue;
                };
                let pass = match filter {
                    Filter::All => true,
                    Filter::DocIds(ids) => ids.contains(&row.id),
                    // Tombstones included, as `_changes?filter=_selector` does.
                    Filter::Selector(selector) => match row.body.as_deref() {
                        Some(body) => {
                            selector_admits(selector, &row.id, &winner.rev, winner.deleted, body)
                                .map_err(|e| self.api_error("changes", e))?
                        }
                        None => false,
                    },
                    Filter::Design(design) => match row.body.as_deref() {
                        Some(body) => {
                            let body = outpost_core::attachment::without_encoding_info(body);
                            let doc = splice(&row.id, &winner.rev, winner.deleted, &body, &[]);
                            function_admits(&self.state, &self.db, design, &row.id, &doc)
                                .await
                                .map_err(|e| self.api_error("changes", e))?
                        }
                        None => false,
                    },
                };
                if !pass {
                    continue;
                }
                out.push(Change {
                    seq: Seq(incarnation.seq(row.seq).value()),
                    id: row.id.clone(),
                    revs: row
                        .tree
                        .leaves()
                        .into_iter()
                        .map(|l| l.rev.to_string())
                        .collect(),
                    deleted: winner.deleted,
                });
                if out.len() == limit {
                    return Ok((out, cursor, true));
                }
            }
            if !full {
                return Ok((out, cursor, false));
            }
        }
    }
}

/// A changes filter with the selector parsed once, or the design document loaded once.
enum Filter {
    All,
    DocIds(std::collections::HashSet<String>),
    Selector(Selector),
    Design(FeedFilter),
}

impl fmt::Display for LocalEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.db)
    }
}

#[async_trait]
impl Endpoint for LocalEndpoint {
    async fn id(&self) -> Result<String, ReplicationError> {
        // What `HttpEndpoint::id` computes from our `GET /`, so checkpoints are shared.
        Ok(format!("{}{}", self.state.store.server_uuid(), self.db))
    }

    async fn info(&self) -> Result<DbInfo, ReplicationError> {
        let info = self
            .state
            .store
            .db_info(&self.db)
            .await
            .map_err(|e| self.store_error("info", e))?;
        let update_seq = Incarnation::of_db(&info.name, info.created_at)
            .seq(info.update_seq)
            .value();
        Ok(DbInfo {
            db_name: info.name,
            update_seq: Seq(update_seq),
            doc_count: info.doc_count,
        })
    }

    async fn create(&self) -> Result<(), ReplicationError> {
        match self.state.store.create_db(&self.db).await {
            Ok(()) | Err(StoreError::DbExists) => Ok(()),
            Err(e) => Err(self.store_error("create", e)),
        }
    }

    async fn changes(&self, req: &ChangesRequest) -> Result<ChangesPage, ReplicationError> {
        let filter = match &req.filter {
            ChangesFilter::All => Filter::All,
            ChangesFilter::DocIds(ids) => Filter::DocIds(ids.iter().cloned().collect()),
            ChangesFilter::Selector(s) => {
                Filter::Selector(Selector::parse(s).map_err(|e| {
                    ReplicationError::InvalidConfig(format!("invalid selector: {e}"))
                })?)
            }
            ChangesFilter::Function {
                name,
                view,
                query_params,
            } => Filter::Design(
                self.design_filter(name, view.as_deref(), query_params.as_ref())
                    .await?,
            ),
        };
        // Sequences as our `_changes` shows and reads them, so checkpoints are shared.
        let info = self
            .state
            .store
            .db_info(&self.db)
            .await
            .map_err(|e| self.store_error("changes", e))?;
        let incarnation = Incarnation::of_db(&info.name, info.created_at);
        let since = incarnation
            .since_json(&req.since.0, info.update_seq)
            .map_err(|e| self.api_error("changes", e))?;
        let shown = |n: u64| Seq(incarnation.seq(n).value());
        let limit = req.limit.max(1);
        // Subscribed before the first read, so a write landing in between still wakes us.
        let mut watch = self.state.store.watch(&self.db);
        let deadline = match req.feed {
            Feed::Normal => None,
            Feed::Longpoll { timeout, .. } => Some(tokio::time::Instant::now() + timeout),
        };
        let mut cursor = since;
        loop {
            watch.borrow_and_update();
            let (results, last_seen, truncated) =
                self.scan(cursor, limit, &filter, &incarnation).await?;
            cursor = last_seen;
            let done = !results.is_empty() || deadline.is_none();
            if done {
                let pending = if truncated {
                    self.state
                        .store
                        .changes_pending(&self.db, last_seen)
                        .await
                        .ok()
                } else {
                    Some(0)
                };
                return Ok(ChangesPage {
                    results,
                    last_seq: shown(last_seen),
                    pending,
                });
            }
            let deadline = deadline.expect("longpoll");
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() {
                        // The store is closing; let the caller find out on its next request.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(ChangesPage { results: Vec::new(), last_seq: shown(cursor), pending: Some(0) });
                }
                _ = self.state.shutdown.cancelled() => {
                    return Ok(ChangesPage { results: Vec::new(), last_seq: shown(cursor), pending: None });
                }
            }
        }
    }

    async fn revs_diff(
        &self,
        revs: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, RevsDiffEntry>, ReplicationError> {
        let ids: Vec<String> = revs.keys().cloned().collect();
        let records = self
            .state
            .store
            .docs(&self.db, &ids)
            .await
            .map_err(|e| self.store_error("revs_diff", e))?;
        let mut out = BTreeMap::new();
        for ((id, asked), record) in revs.iter().zip(records) {
            let asked: Vec<Rev> = asked.iter().filter_map(|r| r.parse().ok()).collect();
            let tree = record.map(|r| r.tree);
            let missing: Vec<&Rev> = asked
                .iter()
                .filter(|r| !tree.as_ref().is_some_and(|t| t.contains(r)))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut ancestors: Vec<Rev> = Vec::new();
            if let Some(tree) = &tree {
                for rev in &missing {
                    for a in tree.possible_ancestors(rev) {
                        if !ancestors.contains(&a) {
                            ancestors.push(a);
                        }
                    }
                }
            }
            out.insert(
                id.clone(),
                RevsDiffEntry {
                    missing: missing.iter().map(|r| r.to_string()).collect(),
                    possible_ancestors: ancestors.iter().map(Rev::to_string).collect(),
                },
            );
        }
        Ok(out)
    }

    async fn get_revs(&self, docs: &[DocRevs]) -> Result<Vec<Value>, ReplicationError> {
        // Attachments come inline: reading them here costs what fetching them one by one would.
        let opts = RenderOpts {
            revs: true,
            attachments: true,
            ..RenderOpts::default()
        };
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        let records = self
            .state
            .store
            .docs(&self.db, &ids)
            .await
            .map_err(|e| self.store_error("get_revs", e))?;
        let found: Vec<(DocRecord, Vec<Rev>)> = docs
            .iter()
            .zip(records)
            .filter_map(|(doc, record)| {
                let wanted = doc.revs.iter().filter_map(|r| r.parse().ok()).collect();
                record.map(|record| (record, wanted))
            })
            .collect();
        let batch: Vec<(&DocRecord, &[Rev])> =
            found.iter().map(|(r, w)| (r, w.as_slice())).collect();
        let rendered = open_revs_batch(&self.state, &self.db, &batch, true, &opts)
            .await
            .map_err(|e| self.api_error("get_revs", e))?;
        let mut out = Vec::new();
        for entry in rendered.into_iter().flatten() {
            // A revision compacted away since the feed listed it is skipped, as over HTTP.
            if let OpenRev::Found(doc) = entry {
                let text = doc
                    .into_string(&self.state)
                    .await
                    .map_err(|e| self.api_error("get_revs", e))?;
                let value =
                    serde_json::from_str(&text).map_err(|e| ReplicationError::InvalidResponse {
                        endpoint: self.to_string(),
                        op: "get_revs",
                        reason: e.to_string(),
                    })?;
                out.push(value);
            }
        }
        Ok(out)
    }

    async fn bulk_docs(&self, docs: &[Value]) -> Result<Vec<WriteFailure>, ReplicationError> {
        let origin = Origin::Replication {
            peer: self.peer.clone(),
        };
        let mut failures = Vec::new();
        let mut updates = Vec::with_capacity(docs.len());
        for doc in docs {
            let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
            match parse_doc(doc.clone(), None, false, origin.clone()) {
                Ok(update) => updates.push(update),
                Err(e) => failures.push(WriteFailure {
                    id: id.to_owned(),
                    rev: doc.get("_rev").and_then(Value::as_str).map(str::to_owned),
                    error: e.status_and_code().1.to_owned(),
                    reason: e.reason(),
                }),
            }
        }
        if updates.is_empty() {
            return Ok(failures);
        }
        let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
        let user_ctx = crate::design::admin_ctx(&self.db);
        let results = crate::design::write_validated(&self.state, &self.db, updates, &user_ctx)
            .await
            .map_err(|e| self.api_error("bulk_docs", e))?;
        for (id, result) in ids.into_iter().zip(results) {
            if let Err(api) = result {
                failures.push(WriteFailure {
                    id,
                    rev: None,
                    error: api.status_and_code().1.to_owned(),
                    reason: api.reason(),
                });
            }
        }
        Ok(failures)
    }

    async fn get_local(&self, id: &str) -> Result<Option<Value>, ReplicationError> {
        let Some(doc) = self
            .state
            .store
            .local_doc(&self.db, id)
            .await
            .map_err(|e| self.store_error("get checkpoint", e))?
        else {
            return Ok(None);
        };
        let mut body: Map<String, Value> =
            serde_json::from_str(&doc.body).map_err(|e| ReplicationError::InvalidResponse {
                endpoint: self.to_string(),
                op: "get checkpoint",
                reason: e.to_string(),
            })?;
        body.insert("_id".into(), Value::String(id.to_owned()));
        body.insert("_rev".into(), Value::String(format!("0-{}", doc.rev)));
        Ok(Some(Value::Object(body)))
    }

    async fn put_local(&self, doc: &Value) -> Result<String, ReplicationError> {
        let mut body = doc.as_object().cloned().unwrap_or_default();
        let id = match body.shift_remove("_id") {
            Some(Value::String(id)) => id,
            _ => {
                return Err(ReplicationError::InvalidConfig(
                    "a checkpoint document needs an _id".into(),
                ));
            }
        };
        let base = match body.shift_remove("_rev") {
            Some(Value::String(r)) => r
                .strip_prefix("0-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        let rev = self
            .state
            .store
            .put_local(&self.db, &id, base, Value::Object(body).to_string())
            .await
            .map_err(|e| self.store_error("put checkpoint", e))?;
        Ok(format!("0-{rev}"))
    }

    async fn get_attachment(
        &self,
        doc_id: &str,
        name: &str,
        rev: &str,
    ) -> Result<Bytes, ReplicationError> {
        let op = "get attachment";
        let missing = || ReplicationError::NotFound {
            endpoint: self.to_string(),
            op,
            reason: "missing".into(),
        };
        let rev: Rev = rev.parse().map_err(|_| missing())?;
        let bodies = self
            .state
            .store
            .rev_bodies(&self.db, doc_id, std::slice::from_ref(&rev))
            .await
            .map_err(|e| self.store_error(op, e))?;
        let (_, body) = bodies.into_iter().next().ok_or_else(missing)?;
        let value: Value = serde_json::from_str(&body.json).map_err(|_| missing())?;
        let att = value
            .get("_attachments")
            .and_then(|a| a.get(name))
            .ok_or_else(missing)?;
        let digest = att
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(missing)?;
        let bytes = self
            .state
            .store
            .attachment(digest)
            .await
            .map_err(|e| self.store_error(op, e))?
            .ok_or_else(missing)?;
        // The identity bytes, as an HTTP source sends them to a client that does not take gzip.
        if outpost_core::attachment::encoded_length(att).is_some() {
            let length = att.get("length").and_then(Value::as_u64).unwrap_or(0);
            let decoded = outpost_core::attachment::gunzip(&bytes, length).map_err(|e| {
                self.store_error(op, StoreError::Corrupt(format!("attachment {digest}: {e}")))
            })?;
            return Ok(Bytes::from(decoded));
        }
        Ok(Bytes::from(bytes))
    }
}
