//! Storage for Outpost's document databases.
//!
//! [`Store`] is the one interface the server sees; [`sqlite::SqliteStore`] is the embedded
//! default engine. This is the only crate that speaks SQL.
//!
//! Writes go through [`Store::write_docs`] and friends, and return only once the transaction that
//! holds them is durable on disk. Reads are served from committed state, so a reader never sees a
//! write that could still be lost.

mod compacting;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod docwrite;
mod error;
pub mod index;
pub mod lease;
pub mod replay;
pub mod sqlite;
mod types;

pub use compacting::{CompactionMark, Compactions};
pub use error::{DocError, StoreError};
pub use index::{
    IndexDocRows, IndexEntry, IndexQuery, IndexRow, IndexState, IndexUpdate, IndexedDoc, KeyBound,
};
pub use sqlite::retention::Retention;
pub use types::*;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

use outpost_core::{Policy, Rev};
use tokio::sync::watch;

/// A document store: named databases of revisioned JSON documents.
///
/// Every method that changes data returns after the change is committed to disk.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The server's identity, created once per data directory and kept forever (replication
    /// checkpoints are keyed on it).
    fn server_uuid(&self) -> &str;

    /// Names of every database, sorted.
    async fn all_dbs(&self) -> Result<Vec<String>, StoreError>;
    /// Creates a database; [`StoreError::DbExists`] when it is already there.
    async fn create_db(&self, name: &str) -> Result<(), StoreError> {
        self.create_db_with(name, &DbOptions::default()).await
    }
    /// Creates a database with options (per-document access); [`StoreError::DbExists`] when it
    /// is already there. The options are fixed for the database's life and reported by
    /// [`Store::db_info`].
    async fn create_db_with(&self, name: &str, options: &DbOptions) -> Result<(), StoreError>;
    /// Deletes a database and everything in it.
    async fn delete_db(&self, name: &str) -> Result<(), StoreError>;
    /// Counters and sequence of a database.
    async fn db_info(&self, name: &str) -> Result<DbInfo, StoreError>;
    /// Sets how many revisions each path of a revision tree keeps.
    async fn set_revs_limit(&self, db: &str, limit: u64) -> Result<(), StoreError>;
    /// A database's `_security` object as stored (JSON text), `None` when none was set.
    async fn security(&self, db: &str) -> Result<Option<String>, StoreError>;
    /// Replaces a database's `_security` object.
    async fn set_security(&self, db: &str, body: String) -> Result<(), StoreError>;
    /// Takes the write lock through the writer and commits nothing: succeeds when writes can be
    /// accepted (the writer runs and the file is writable), for readiness checks.
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// Sets how conflicts are resolved in a database from now on.
    async fn set_policy(&self, db: &str, policy: Policy) -> Result<(), StoreError>;
    /// Sets how much history `compact` keeps.
    async fn set_retention(&self, db: &str, retention: Retention) -> Result<(), StoreError>;
    /// Resolves a document's conflict by hand: `body` becomes a child of the winner and every
    /// other live leaf is tombstoned, in one transaction. `leaves` must be exactly the current
    /// live leaves ([`DocError::Conflict`] otherwise).
    async fn resolve(
        &self,
        db: &str,
        id: &str,
        leaves: Vec<Rev>,
        update: DocUpdate,
    ) -> Result<Result<Rev, DocError>, StoreError>;
    /// Documents with more than one live leaf, in id order, from `start` (inclusive).
    async fn conflicts(
        &self,
        db: &str,
        start: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DocRecord>, StoreError>;
    /// Compacts a database and returns when done: applies its history retention, drops the
    /// bodies of revisions that are no longer leaves (superseded or stemmed), then does what
    /// [`Store::reclaim`] does. [`DbInfo::compact_running`] is true meanwhile.
    async fn compact(&self, db: &str) -> Result<(), StoreError>;
    /// Marks `db` as compacting ([`DbInfo::compact_running`]) until the mark is dropped, so a
    /// compaction started in the background shows from the moment it is accepted; `None` when a
    /// compaction of `db` is already marked.
    fn mark_compacting(&self, db: &str) -> Option<CompactionMark>;
    /// Collects attachment bytes no stored revision refers to any more (in any database) and
    /// gives free pages back to the file system; returns when done.
    async fn reclaim(&self) -> Result<(), StoreError>;

    /// `_purge`: for each request, removes the leaves named (those that are leaves; others are
    /// ignored) with every ancestor no other leaf keeps, and their bodies, in one durable
    /// transaction with the database's other writes. A document that keeps a leaf moves to a new
    /// sequence with its new winner; one that loses every leaf is gone (its row, its event
    /// history, its index and access rows), as if never written. Each purged leaf is recorded
    /// as a `purged` event at the document's new sequence; replay applies it. The purge
    /// sequence advances by one per request.
    async fn purge(
        &self,
        db: &str,
        requests: Vec<PurgeRequest>,
    ) -> Result<PurgeOutcome, StoreError>;
    /// Sets the database's `purged_infos_limit`.
    async fn set_purged_infos_limit(&self, db: &str, limit: u64) -> Result<(), StoreError>;

    /// Applies document updates in one durable transaction; one result per update, in order.
    async fn write_docs(
        &self,
        db: &str,
        updates: Vec<DocUpdate>,
    ) -> Result<Vec<Result<Rev, DocError>>, StoreError>;

    /// A document's revision tree and latest sequence, or `None` if it was never written.
    async fn doc(&self, db: &str, id: &str) -> Result<Option<DocRecord>, StoreError>;
    /// Several documents' trees read from one snapshot, one per id in order (`None` for a
    /// document never written): what `_revs_diff` and `_bulk_get` use instead of one
    /// [`Store::doc`] per document, which costs a round trip to the blocking pool each.
    async fn docs(&self, db: &str, ids: &[String]) -> Result<Vec<Option<DocRecord>>, StoreError>;
    /// Stored bodies of revisions of several documents read from one snapshot, one per
    /// `(id, rev)` in order (`None` when missing: stemmed or never received).
    async fn bodies(
        &self,
        db: &str,
        wanted: &[(String, Rev)],
    ) -> Result<Vec<Option<StoredBody>>, StoreError>;
    /// Stored bodies of some revisions of one document (missing ones are absent: stemmed or
    /// never received).
    async fn rev_bodies(
        &self,
        db: &str,
        id: &str,
        revs: &[Rev],
    ) -> Result<Vec<(Rev, StoredBody)>, StoreError>;
    /// One page of `_all_docs`, live documents only, in id order.
    async fn all_docs(&self, db: &str, query: &AllDocsQuery) -> Result<Vec<DocRow>, StoreError>;
    /// How many live documents sort before `id` (after it when `descending`), the `offset` of
    /// `_all_docs`, counted only up to `cap`: `None` when there are more, since counting them all
    /// costs time in proportion to the database.
    async fn count_before(
        &self,
        db: &str,
        id: &str,
        descending: bool,
        cap: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// One page of the changes feed: each document once, at its latest sequence.
    async fn changes(&self, db: &str, query: &ChangesQuery) -> Result<Vec<ChangeRow>, StoreError>;
    /// How many documents changed after `since` (the `pending` of a truncated feed): exact up
    /// to [`sqlite::PENDING_EXACT_UP_TO`], an upper-bound estimate beyond (see its doc), so a
    /// page never costs time in proportion to the rest of the feed.
    async fn changes_pending(&self, db: &str, since: u64) -> Result<u64, StoreError>;

    /// Where a secondary index stands (see [`index`]); `None` when it was never built, or was
    /// built with another sort-key encoding and must be built again.
    async fn index_state(&self, db: &str, name: &str) -> Result<Option<IndexState>, StoreError>;
    /// Every index of a database with its state, by name.
    async fn indexes(&self, db: &str) -> Result<Vec<(String, IndexState)>, StoreError>;
    /// Applies one step of an index's incremental update in one durable transaction: replaces
    /// the rows of each document in the step and moves the index to `update.upto`. `false`
    /// (and nothing written) when the index is not at `update.since` under
    /// `update.signature`. A `since` of 0 builds the index from scratch when it does not exist
    /// under that signature (its old rows, if any, go first); to rebuild an index under the
    /// same signature, drop it first.
    async fn update_index(&self, db: &str, update: IndexUpdate) -> Result<bool, StoreError>;
    /// Drops an index and its rows; `false` when there was none.
    async fn drop_index(&self, db: &str, name: &str) -> Result<bool, StoreError>;
    /// A range and page of an index's rows in collation order; [`StoreError::NotFound`] when
    /// the index does not exist (or must be rebuilt).
    async fn scan_index(
        &self,
        db: &str,
        name: &str,
        query: &IndexQuery,
    ) -> Result<Vec<IndexRow>, StoreError>;
    /// How many rows of an index lie within `query`'s bounds (its `skip`, `limit`, order and
    /// `include_docs` are ignored), counted only up to `cap`: `None` when there are more. A
    /// view's `offset` is this count for the rows before its start key, read from the index
    /// without loading a row. [`StoreError::NotFound`] when the index does not exist.
    async fn count_index(
        &self,
        db: &str,
        name: &str,
        query: &IndexQuery,
        cap: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// One page of `_local_docs`: `_local` documents in id order within the range (the same
    /// range and page fields as [`Store::all_docs`]), with their bodies when asked for.
    async fn local_docs(
        &self,
        db: &str,
        query: &AllDocsQuery,
    ) -> Result<Vec<LocalDocRow>, StoreError>;
    /// A `_local` document: its revision number and body.
    async fn local_doc(&self, db: &str, id: &str) -> Result<Option<LocalDoc>, StoreError>;
    /// Writes a `_local` document; `base` must match its current revision number (0 when new).
    async fn put_local(
        &self,
        db: &str,
        id: &str,
        base: u64,
        body: String,
    ) -> Result<u64, StoreError>;
    /// Deletes a `_local` document whose current revision number is `base`.
    async fn delete_local(&self, db: &str, id: &str, base: u64) -> Result<(), StoreError>;

    /// The bytes of an attachment, by digest.
    async fn attachment(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// At most `len` bytes of an attachment from byte `offset` (fewer at its end, none past
    /// it), by digest; `None` when there is no such attachment. Lets a response stream an
    /// attachment in pieces instead of holding it whole.
    async fn attachment_range(
        &self,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// The event log of a database from `since` (exclusive), oldest first.
    async fn events(&self, db: &str, query: &EventsQuery) -> Result<Vec<Event>, StoreError>;

    /// A receiver that sees the database's update sequence each time it moves, for live feeds.
    fn watch(&self, db: &str) -> watch::Receiver<u64>;

    /// `_db_updates`: the databases created, changed or deleted after the server-wide sequence
    /// `since`, each once (at its latest event), in sequence order, at most `limit`.
    async fn db_updates(&self, since: u64, limit: u64) -> Result<Vec<DbUpdate>, StoreError>;

    /// A receiver that sees the `_db_updates` sequence each time it moves.
    fn watch_db_updates(&self) -> watch::Receiver<u64>;

    /// Takes or renews the lease `name` for `holder` until `ttl` from now (see [`lease`]):
    /// true when `holder` holds it afterwards, false while another holder's lease runs. Every
    /// process sharing the store sees the same leases, on one clock.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives up the lease `name` if `holder` holds it, so another may take it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// The configuration the API changes (server admins added at run time), when this store
    /// keeps it for every process sharing it; `None` when the store belongs to one process,
    /// which keeps that configuration itself (the SQLite engine's data directory).
    fn shared_config(&self) -> Option<&dyn SharedConfig> {
        None
    }

    // Per-document access. A database created with [`DbOptions::access`] keeps, in the
    // transaction of every document write, an index of which principals (user names and roles)
    // the winner's top-level `_access` list names, per principal in sequence order, and of the
    // principals a write dropped (see `sqlite/access.rs` for the layout, which the PostgreSQL
    // engine shares). A *reader* is given as the list of their principals (name and roles). On
    // a database without per-document access these methods see no rows: nothing is readable,
    // the feed is empty.

    /// One page of `reader`'s changes feed: the documents whose winner names one of the
    /// principals, each once at its latest sequence, as [`Store::changes`] gives them; and each
    /// document a write took away from the reader, once, at the sequence of that write, as a
    /// deletion: its tree holds only the path to that write's revision, marked deleted, and its
    /// body (when asked for) is `{}`. Rows have distinct sequences in feed order, so paging with
    /// `since` is exact; the cost is in proportion to the reader's rows, not to the database.
    async fn access_changes(
        &self,
        db: &str,
        reader: &[String],
        query: &ChangesQuery,
    ) -> Result<Vec<ChangeRow>, StoreError>;
    /// One page of `reader`'s `_all_docs`: the live documents they can read, in id order within
    /// the range, `skip` and `limit` counting only those, as [`Store::all_docs`] gives them;
    /// the cost is in proportion to the page and the reader's rows, not to the database.
    async fn access_all_docs(
        &self,
        db: &str,
        reader: &[String],
        query: &AllDocsQuery,
    ) -> Result<Vec<DocRow>, StoreError>;
    /// `reader`'s counts of documents: those they can read (live) and their feed's deletions,
    /// for `doc_count` and `doc_del_count`; costs in proportion to the reader's rows.
    async fn access_counts(&self, db: &str, reader: &[String]) -> Result<AccessCounts, StoreError>;
    /// How many rows `reader`'s feed has after `since` (the `pending` of a truncated page):
    /// exact up to [`sqlite::PENDING_EXACT_UP_TO`], beyond that an upper bound (the reader's
    /// index rows after `since`), so a page does not cost in proportion to the rest of the feed.
    async fn access_pending(
        &self,
        db: &str,
        reader: &[String],
        since: u64,
    ) -> Result<u64, StoreError>;
    /// Where `reader` stands on each of `ids`, in order, read from one snapshot.
    async fn doc_access(
        &self,
        db: &str,
        reader: &[String],
        ids: &[String],
    ) -> Result<Vec<DocAccess>, StoreError>;
}

/// Configuration set through the API and kept in a store that several processes share, so that
/// each of them sees every change: entries of `(section, key) → value`, and a version that moves
/// with every change any process commits.
#[async_trait]
pub trait SharedConfig: Send + Sync {
    /// The entries of `section` (key → value) and the configuration's version they were read at.
    async fn config_section(
        &self,
        section: &str,
    ) -> Result<(u64, BTreeMap<String, String>), StoreError>;
    /// Sets (`Some`) or removes (`None`) one entry, committed when this returns, and moves the
    /// version; whether the entry existed before.
    async fn set_config(
        &self,
        section: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<bool, StoreError>;
    /// A receiver that sees the version each time it moves, whichever process changed it.
    fn watch_config(&self) -> watch::Receiver<u64>;
}
