//! The values that cross the [`Store`](crate::Store) interface.

use outpost_core::{Policy, Rev, RevTree};
use serde_json::{Map, Value};

/// One document change requested by a client or a replicator.
#[derive(Debug, Clone)]
pub struct DocUpdate {
    pub id: String,
    pub mode: UpdateMode,
    /// Whether the new revision is a deletion (a tombstone).
    pub deleted: bool,
    /// The body without `_id`, `_rev`, `_deleted` and `_revisions`. `_attachments`, when present,
    /// holds stubs (`"stub": true`, resolved against the parent revision) or new entries that
    /// carry `content_type`, `digest` and `length` (of the identity bytes) and whose bytes are
    /// in `new_attachments`; an entry whose bytes are stored gzip-encoded also carries
    /// `"encoding": "gzip"` and `encoded_length` (see [`outpost_core::attachment`]).
    pub body: Map<String, Value>,
    /// Bytes of attachments new in this revision, by digest.
    pub new_attachments: Vec<NewAttachment>,
    pub origin: Origin,
}

/// How a revision id is chosen and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateMode {
    /// An interactive edit (`new_edits=true`): `base` must be the current leaf being edited (or
    /// absent for a new or deleted document); the store computes the new revision id.
    Edit { base: Option<Rev> },
    /// A replicated revision (`new_edits=false`): its `_revisions` path, newest first, is merged
    /// into the tree as it is.
    Replicate { path: Vec<Rev> },
}

/// The bytes of an attachment that the store keeps once per digest, as they are stored:
/// identity, or gzip-encoded when the attachment's entry says `"encoding": "gzip"`. The store
/// never looks into them.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// `md5-<base64>` of the bytes stored (as CouchDB's digest of an encoded attachment is).
    pub digest: String,
    pub data: Vec<u8>,
}

/// Where a revision came from, as recorded in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client's interactive write.
    Client,
    /// A replicated revision (`new_edits=false`), with the peer when known.
    Replication { peer: Option<String> },
    /// A revision the server wrote itself to resolve a conflict.
    Resolver,
}

impl Origin {
    /// The form stored in the event log and shown by `_events`.
    pub fn label(&self) -> String {
        match self {
            Origin::Client => "client".to_owned(),
            Origin::Replication { peer: Some(p) } => format!("replication:{p}"),
            Origin::Replication { peer: None } => "replication".to_owned(),
            Origin::Resolver => "resolver".to_owned(),
        }
    }
}

/// What `GET /{db}` reports.
#[derive(Debug, Clone)]
pub struct DbInfo {
    pub name: String,
    pub doc_count: u64,
    pub doc_del_count: u64,
    pub update_seq: u64,
    pub revs_limit: u64,
    /// How conflicts are resolved in this database.
    pub policy: Policy,
    /// How much history `_compact` keeps.
    pub retention: crate::Retention,
    /// Bytes of stored document bodies.
    pub active_size: u64,
    /// Bytes of the whole store file (all databases share one file).
    pub file_size: u64,
    /// Creation time, microseconds since the Unix epoch.
    pub created_at: i64,
    /// Whether a compaction of this database is running.
    pub compact_running: bool,
    /// Whether the database was created with per-document access ([`DbOptions::access`]).
    pub access: bool,
    /// How many document purges the database has had (one per document id of each `_purge`).
    pub purge_seq: u64,
    /// CouchDB's `purged_infos_limit`, kept and reported (see [`crate::Store::purge`]).
    pub purged_infos_limit: u64,
}

/// The default `purged_infos_limit`, CouchDB's.
pub const DEFAULT_PURGED_INFOS_LIMIT: u64 = 1000;

/// One document of a `_purge` request: the leaf revisions to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    pub id: String,
    pub revs: Vec<Rev>,
}

/// What a `_purge` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Per document of the request, in order: the leaves purged (empty when none was a leaf,
    /// or the document does not exist).
    pub purged: Vec<(String, Vec<Rev>)>,
    /// The database's purge sequence afterwards.
    pub purge_seq: u64,
    /// Whether a body removed referred to attachments, whose bytes may now be unreferenced:
    /// [`crate::Store::reclaim`] collects them.
    pub attachments: bool,
}

/// A document's revision tree and where it sits in the changes feed.
#[derive(Debug, Clone)]
pub struct DocRecord {
    pub id: String,
    pub seq: u64,
    pub tree: RevTree,
}

/// The stored form of one revision: its body as JSON text (without `_id` and `_rev`).
#[derive(Debug, Clone)]
pub struct StoredBody {
    pub deleted: bool,
    pub json: String,
}

/// A key range and page of `_all_docs`.
#[derive(Debug, Clone, Default)]
pub struct AllDocsQuery {
    pub start: Option<String>,
    pub start_inclusive: bool,
    pub end: Option<String>,
    pub end_inclusive: bool,
    pub descending: bool,
    pub limit: u64,
    pub skip: u64,
    pub include_docs: bool,
}

/// One live document in `_all_docs`.
#[derive(Debug, Clone)]
pub struct DocRow {
    pub id: String,
    pub seq: u64,
    pub tree: RevTree,
    /// The winner's body, when asked for.
    pub body: Option<String>,
}

/// A page of the changes feed.
#[derive(Debug, Clone, Default)]
pub struct ChangesQuery {
    /// Rows with a sequence above this one (below it when descending; `u64::MAX` for the end).
    pub since: u64,
    pub limit: u64,
    pub descending: bool,
    pub include_docs: bool,
}

/// One document in the changes feed, at its latest sequence.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub id: String,
    pub seq: u64,
    pub tree: RevTree,
    /// The winner's body, when asked for.
    pub body: Option<String>,
}

/// A `_local` document: never replicated, revisions `0-N`.
#[derive(Debug, Clone)]
pub struct LocalDoc {
    pub rev: u64,
    pub body: String,
}

/// One `_local` document in `_local_docs`.
#[derive(Debug, Clone)]
pub struct LocalDocRow {
    pub id: String,
    pub rev: u64,
    /// The body, when asked for.
    pub body: Option<String>,
}

/// A page of the event log.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    pub since: u64,
    pub limit: u64,
    pub doc_id: Option<String>,
    pub include_docs: bool,
}

/// A database's latest creation, change or deletion, as `_db_updates` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbUpdate {
    /// The server-wide sequence of the event.
    pub seq: u64,
    pub db_name: String,
    /// `created`, `updated` or `deleted`.
    pub kind: String,
}

/// An accepted revision, as the immutable event log keeps it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The database sequence the revision was accepted at.
    pub seq: u64,
    /// `created`, `updated`, `deleted`, `conflict` or `resolved`.
    pub kind: String,
    pub id: String,
    pub rev: Rev,
    pub parent: Option<Rev>,
    pub origin: String,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub at: i64,
    /// The revision's body, when asked for.
    pub body: Option<String>,
    /// For replicated revisions the path added; for resolutions the policy and what was
    /// superseded (JSON).
    pub detail: Option<String>,
}

/// How a database is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbOptions {
    /// Per-document access (`PUT /{db}?access=true`): each document's top-level `_access` list
    /// names the principals (user names and roles) who may read it, and the store keeps an
    /// access index of them in the transaction of every write. Fixed at creation.
    pub access: bool,
}

/// Where a reader of a database with per-document access stands on one document, judged by
/// the principals (their name and roles) of the reader and the `_access` list of the
/// document's winning revision.
#[derive(Debug, Clone)]
pub enum DocAccess {
    /// The winner's `_access` names one of the reader's principals.
    Readable,
    /// The reader never could read the document, or it does not exist: it does not exist for
    /// them.
    Hidden,
    /// The reader could read the document once and a write took that away: for them the
    /// document is deleted at the revision of that write. The record holds only the path to
    /// that revision, marked deleted, at the sequence of that write; nothing after it.
    Revoked(DocRecord),
}

/// A reader's view of the size of a database with per-document access.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Documents the reader can read whose winner is not deleted.
    pub doc_count: u64,
    /// Documents in the reader's feed shown as deleted (deleted, or access revoked).
    pub doc_del_count: u64,
}

/// The principals a stored body's (JSON text) top-level `_access` names, sorted, each once;
/// what is not a string, or empty, is ignored. Every engine's access index uses this.
pub fn access_list(body: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => access_names(&map),
        _ => Vec::new(),
    }
}

/// [`access_list`] of a body already decoded (a [`DocUpdate::body`]).
pub fn access_names(body: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = match body.get("_access") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::access_list;

    #[test]
    fn access_lists_are_read_from_the_top_level() {
        assert_eq!(
            access_list(r#"{"_access":["b","a","b",1,""],"x":{"_access":["c"]}}"#),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(access_list(r#"{"_access":"a"}"#).is_empty());
        assert!(access_list(r#"{}"#).is_empty());
        assert!(access_list("not json").is_empty());
    }
}
