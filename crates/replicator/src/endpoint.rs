//! The operations the replication protocol needs from a database, whatever serves it.
//!
//! The list is the one in CouchDB's protocol description (docs.couchdb.org,
//! "replication/protocol"): database info and creation, the changes feed, `_revs_diff`,
//! fetching revisions with their history, `_bulk_docs` with `new_edits: false`, `_local`
//! checkpoint documents and attachment downloads. [`crate::HttpEndpoint`] speaks it over HTTP;
//! a database of this process can implement it directly.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ReplicationError;

/// A position in a changes feed. CouchDB's and Outpost's are opaque strings (`"N-…"`),
/// pouchdb-server's numbers; the protocol only ever passes them back as received, so they are
/// kept as raw JSON and never compared but for equality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub Value);

impl Seq {
    /// The start of every feed.
    pub fn zero() -> Seq {
        Seq(Value::from(0))
    }

    /// Whether this is the start of the feed (`0` or `"0"`).
    pub fn is_zero(&self) -> bool {
        match &self.0 {
            Value::Number(n) => n.as_u64() == Some(0),
            Value::String(s) => s == "0",
            Value::Null => true,
            _ => false,
        }
    }

    /// The form used in a `since=` query parameter.
    pub fn to_query(&self) -> String {
        match &self.0 {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl Default for Seq {
    fn default() -> Self {
        Seq::zero()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_query())
    }
}

/// What `GET /{db}/` says about a database.
#[derive(Clone, Debug, PartialEq)]
pub struct DbInfo {
    pub db_name: String,
    pub update_seq: Seq,
    pub doc_count: u64,
}

/// Which changes a replication takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ChangesFilter {
    /// Every document.
    #[default]
    All,
    /// `filter=_doc_ids`: only these documents.
    DocIds(Vec<String>),
    /// `filter=_selector`: documents matching this (already validated) Mango selector.
    Selector(Value),
    /// A design document's filter function (`ddoc/name`), or `_view` with the view's name;
    /// `query_params` are passed to it as the request's query.
    Function {
        name: String,
        view: Option<String>,
        query_params: Option<serde_json::Map<String, Value>>,
    },
}

/// How a changes request waits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Feed {
    /// Answer at once with what exists.
    Normal,
    /// Hold the request until there is a change (or `timeout`), writing a newline every
    /// `heartbeat` so that proxies and our read timeout see a live connection.
    Longpoll {
        heartbeat: Duration,
        timeout: Duration,
    },
}

/// One `_changes` request, always with `style=all_docs` so that every leaf is seen.
#[derive(Clone, Debug)]
pub struct ChangesRequest {
    pub since: Seq,
    pub limit: usize,
    pub filter: ChangesFilter,
    pub feed: Feed,
}

/// One row of a changes feed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub seq: Seq,
    pub id: String,
    /// Every leaf revision of the document (`style=all_docs`).
    pub revs: Vec<String>,
    pub deleted: bool,
}

/// One page of a changes feed.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangesPage {
    pub results: Vec<Change>,
    pub last_seq: Seq,
    /// How many changes remain after this page, when the server says.
    pub pending: Option<u64>,
}

/// What `_revs_diff` says about one document: the revisions the target lacks, and the ones it
/// has that could be their ancestors.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RevsDiffEntry {
    #[serde(default)]
    pub missing: Vec<String>,
    #[serde(default)]
    pub possible_ancestors: Vec<String>,
}

/// The revisions of one document to fetch from the source.
#[derive(Clone, Debug, PartialEq)]
pub struct DocRevs {
    pub id: String,
    pub revs: Vec<String>,
}

/// A document the target refused in `_bulk_docs` (a `validate_doc_update`, an access rule, a
/// size limit): the replicator counts it in `doc_write_failures` and moves on.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WriteFailure {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub rev: Option<String>,
    pub error: String,
    #[serde(default)]
    pub reason: String,
}

/// A database the replicator can read from or write to.
///
/// `Display` names the endpoint for logs and status output and must never show credentials.
#[async_trait]
pub trait Endpoint: fmt::Display + Send + Sync {
    /// A string identifying this database stably across restarts, for the replication id:
    /// PouchDB uses the server's `uuid` followed by the database name.
    async fn id(&self) -> Result<String, ReplicationError>;

    /// Database info; [`ReplicationError::NotFound`] when the database does not exist.
    async fn info(&self) -> Result<DbInfo, ReplicationError>;

    /// Creates the database; succeeds when it already exists.
    async fn create(&self) -> Result<(), ReplicationError>;

    /// One page of the changes feed.
    async fn changes(&self, req: &ChangesRequest) -> Result<ChangesPage, ReplicationError>;

    /// `_revs_diff`: which of these revisions the database lacks. Documents it has every
    /// revision of are absent from the answer.
    async fn revs_diff(
        &self,
        revs: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, RevsDiffEntry>, ReplicationError>;

    /// Fetches these revisions with `_revisions` (history) and `latest`. Attachments may come
    /// back inline (`data`) or as stubs (`stub: true`) to be fetched with
    /// [`Endpoint::get_attachment`]. Revisions that no longer exist (compacted away) are left
    /// out.
    async fn get_revs(&self, docs: &[DocRevs]) -> Result<Vec<Value>, ReplicationError>;

    /// `_bulk_docs` with `new_edits: false`; returns the documents that were refused.
    async fn bulk_docs(&self, docs: &[Value]) -> Result<Vec<WriteFailure>, ReplicationError>;

    /// Writes one revision carrying attachment data (`data`, base64) with `new_edits: false`;
    /// returns the refusal when the target refused the document. An endpoint that can move
    /// attachment bytes without base64 does so (over HTTP, a `multipart/related` PUT, as
    /// CouchDB's replicator writes such documents); by default it is a `_bulk_docs` of one.
    async fn put_with_attachments(
        &self,
        doc: &Value,
    ) -> Result<Option<WriteFailure>, ReplicationError> {
        Ok(self
            .bulk_docs(std::slice::from_ref(doc))
            .await?
            .into_iter()
            .next())
    }

    /// Reads a `_local/` document by its full id; `None` when it does not exist.
    async fn get_local(&self, id: &str) -> Result<Option<Value>, ReplicationError>;

    /// Writes a `_local/` document (with `_rev` when it replaces one); returns its new `_rev`.
    async fn put_local(&self, doc: &Value) -> Result<String, ReplicationError>;

    /// The bytes of one attachment of one revision.
    async fn get_attachment(
        &self,
        doc_id: &str,
        name: &str,
        rev: &str,
    ) -> Result<Bytes, ReplicationError>;
}
