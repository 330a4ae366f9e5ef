//! The PostgreSQL engine behind [`outpost_store::Store`], so that any number of Outpost nodes
//! can share one database.
//!
//! Each node (each [`PgStore`]) has one writer thread that commits whatever requests are
//! waiting as one transaction, each in its own savepoint (group commit, as with SQLite), on a
//! blocking connection; reads go through a pool of async connections. The document logic is
//! the engine-neutral writer of `outpost_store::docwrite`, so both engines write the same
//! trees, revisions and events. What changes with several nodes is ordering: sequences come
//! from counter rows locked until commit, so they are handed out in commit order (see
//! [`writer`]), and live feeds hear of other nodes' commits through `LISTEN`/`NOTIFY` with a
//! fallback poll (see [`feed`]).

mod access;
mod compaction;
mod config;
mod conn;
mod error;
pub mod feed;
mod index;
mod lease;
pub mod migrate;
mod read;
pub mod replay;
mod schema;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use outpost_core::{Policy, Rev};
use outpost_store::{
    AccessCounts, AllDocsQuery, ChangeRow, ChangesQuery, CompactionMark, Compactions, DbInfo,
    DbOptions, DbUpdate, DocAccess, DocError, DocRecord, DocRow, DocUpdate, Event, EventsQuery,
    IndexQuery, IndexRow, IndexState, IndexUpdate, LocalDoc, LocalDocRow, PurgeOutcome,
    PurgeRequest, Retention, SharedConfig, Store, StoreError, StoredBody,
};
use tokio::sync::{oneshot, watch};

use feed::{Watched, Watchers};
use read::Reader;
use writer::{Job, WriteOp, WriteReply};

/// The schema version this build writes.
pub use schema::VERSION as SCHEMA_VERSION;
pub use schema::quote_ident;

/// How long a connection attempt may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// tokio-postgres's default idle time before TCP keepalives start, and ours.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// Connections in each node's read pool.
const READ_POOL_SIZE: usize = 16;

/// Whether `location` (a `--store` value) names a PostgreSQL database rather than a directory.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// A [`Store`] on a PostgreSQL database, one of any number of nodes sharing it.
pub struct PgStore {
    uuid: String,
    /// Sends jobs to the writer thread; the thread ends when this (the last sender) is dropped.
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    /// The pool every read borrows a connection from, so reads never wait for the writer.
    reader: Reader,
    /// This node's live feeds, woken by its writer and by the listener.
    watchers: Watchers,
    /// The `_db_updates` sequence as this node last saw it.
    db_updates: watch::Sender<u64>,
    /// The shared configuration's version as this node last saw it (see [`config`]).
    config: watch::Sender<u64>,
    /// Databases this node is compacting, for `compact_running` (per node: another node's
    /// compaction is not shown).
    compactions: Compactions,
    /// The PostgreSQL database's size in bytes, sampled by the listener, for `file_size`.
    database_bytes: Arc<AtomicU64>,
    /// The listener task (see [`feed`]); aborted when the store is dropped.
    listener: tokio::task::JoinHandle<()>,
    /// What the writer has done, for [`PgStore::writer_counts`].
    writer_counts: Arc<conn::WriterCounts>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("uuid", &self.uuid)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Opens the store in the database at `url` (`postgres://user@host/db`), creating or
    /// upgrading its tables. With `schema`, every table lives in that schema (created if
    /// needed) instead of the connection's default one, so that one database can hold
    /// several independent stores.
    pub async fn open(url: &str, schema: Option<&str>) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("invalid postgres url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // TCP keepalives find a connection to a server that vanished (a failover, a cut network)
        // in about a minute instead of the system's default two hours, so the writer and the
        // listener connect again instead of waiting on it.
        if config.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
            config.keepalives_idle(KEEPALIVES_IDLE);
        }
        if config.get_application_name().is_none() {
            config.application_name("outpost");
        }
        if let Some(schema) = schema {
            config.options(format!("-c search_path={}", quote_ident(schema)));
        }
        let blocking = postgres::Config::from(config.clone());
        let migrate_schema = schema.map(str::to_owned);
        let uuid = tokio::task::spawn_blocking(move || {
            let mut client = blocking.connect(postgres::NoTls).map_err(error::pg)?;
            schema::migrate(&mut client, migrate_schema.as_deref())
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("migration task failed: {e}")))??;

        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(READ_POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Corrupt(format!("cannot build the read pool: {e}")))?;
        let reader = Reader::new(pool);

        let watchers = Watchers::default();
        let db_updates = watch::Sender::new(0);
        let config_version = watch::Sender::new(0);
        let announce_to = watchers.clone();
        let announce_updates = db_updates.clone();
        let announce_config = config_version.clone();
        let announce: writer::Announce = Box::new(move |what| match what {
            writer::Announcement::Db(db, Some(seq)) => announce_to.advance(db, seq),
            // Dropping the sender ends every live feed of the deleted database.
            writer::Announcement::Db(db, None) => announce_to.end(db),
            writer::Announcement::DbUpdates(seq) => feed::advance(&announce_updates, seq),
            writer::Announcement::Config(version) => feed::advance(&announce_config, version),
        });
        let (tx, rx) = mpsc::channel();
        let writer_config = postgres::Config::from(config.clone());
        let writer_counts = Arc::new(conn::WriterCounts::default());
        let counts = writer_counts.clone();
        std::thread::Builder::new()
            .name("outpost-pg-writer".into())
            .spawn(move || writer::run(writer_config, rx, announce, counts))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        let database_bytes = Arc::new(AtomicU64::new(0));
        let listener = tokio::spawn(feed::listen(
            config,
            watchers.clone(),
            feed::Counters {
                db_updates: db_updates.clone(),
                config: config_version.clone(),
            },
            reader.clone(),
            database_bytes.clone(),
        ));
        let store = PgStore {
            uuid,
            writer: Mutex::new(Some(tx)),
            reader,
            watchers,
            db_updates,
            config: config_version,
            compactions: Compactions::default(),
            database_bytes,
            listener,
            writer_counts,
        };
        // The current `_db_updates` sequence, so the first feed does not start from 0, and the
        // configuration's version.
        let c = store.reader.client().await?;
        for row in store
            .reader
            .query(
                &c,
                "SELECT name, value FROM counters WHERE name IN ('db_updates', 'config')",
                &[],
            )
            .await?
        {
            let value = row.get::<_, i64>(1).max(0) as u64;
            match row.get::<_, &str>(0) {
                "db_updates" => feed::advance(&store.db_updates, value),
                _ => feed::advance(&store.config, value),
            }
        }
        Ok(store)
    }

    /// The server's identity, shared by every node on the database.
    /// How many transactions this node's writer began and how many round trips to PostgreSQL
    /// it made so far.
    pub fn writer_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.writer_counts.transactions.load(Ordering::Relaxed),
            self.writer_counts.round_trips.load(Ordering::Relaxed),
        )
    }

    pub fn server_uuid_str(&self) -> &str {
        &self.uuid
    }

    /// Stops accepting writes; jobs already queued are still committed.
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply, StoreError> {
        let (reply, answer) = oneshot::channel();
        {
            let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Job { op, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn unexpected(reply: WriteReply) -> StoreError {
    let what = match reply {
        WriteReply::Done => "done",
        WriteReply::Docs(_) => "docs",
        WriteReply::LocalRev(_) => "local rev",
        WriteReply::Resolved(_) => "resolved",
        WriteReply::Purged(_) => "purged",
        WriteReply::Cursor(_) => "cursor",
        WriteReply::Count(_) => "count",
        WriteReply::Existed(_) => "existed",
    };
    StoreError::Corrupt(format!("writer answered {what} to another request"))
}

#[async_trait]
impl Store for PgStore {
    fn server_uuid(&self) -> &str {
        &self.uuid
    }

    async fn all_dbs(&self) -> Result<Vec<String>, StoreError> {
        read::all_dbs(&self.reader).await
    }

    async fn create_db_with(&self, name: &str, options: &DbOptions) -> Result<(), StoreError> {
        let name = name.to_owned();
        let access = options.access;
        self.write(WriteOp::CreateDb { name, access })
            .await
            .map(|_| ())
    }

    async fn access_changes(
        &self,
        db: &str,
        reader: &[String],
        q: &ChangesQuery,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        access::changes(&self.reader, db, reader, q).await
    }

    async fn access_all_docs(
        &self,
        db: &str,
        reader: &[String],
        q: &AllDocsQuery,
    ) -> Result<Vec<DocRow>, StoreError> {
        access::all_docs(&self.reader, db, reader, q).await
    }

    async fn access_counts(&self, db: &str, reader: &[String]) -> Result<AccessCounts, StoreError> {
        access::counts(&self.reader, db, reader).await
    }

    async fn access_pending(
        &self,
        db: &str,
        reader: &[String],
        since: u64,
    ) -> Result<u64, StoreError> {
        access::pending(&self.reader, db, reader, since).await
    }

    async fn doc_access(
        &self,
        db: &str,
        reader: &[String],
        ids: &[String],
    ) -> Result<Vec<DocAccess>, StoreError> {
        access::doc_access(&self.reader, db, reader, ids).await
    }

    async fn delete_db(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(WriteOp::DeleteDb { name }).await.map(|_| ())
    }

    async fn db_info(&self, name: &str) -> Result<DbInfo, StoreError> {
        let size = self.database_bytes.load(Ordering::Relaxed);
        let info = read::db_info(&self.reader, name, size).await?;
        Ok(DbInfo {
            compact_running: self.compactions.is_running(name),
            ..info
        })
    }

    async fn set_revs_limit(&self, db: &str, limit: u64) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.write(WriteOp::SetRevsLimit { db, limit })
            .await
            .map(|_| ())
    }

    async fn purge(
        &self,
        db: &str,
        requests: Vec<PurgeRequest>,
    ) -> Result<PurgeOutcome, StoreError> {
        let db = db.to_owned();
        match self.write(WriteOp::Purge { db, requests }).await? {
            WriteReply::Purged(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn set_purged_infos_limit(&self, db: &str, limit: u64) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.write(WriteOp::SetPurgedInfosLimit { db, limit })
            .await
            .map(|_| ())
    }

    async fn security(&self, db: &str) -> Result<Option<String>, StoreError> {
        read::security(&self.reader, db).await
    }

    async fn set_security(&self, db: &str, body: String) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.write(WriteOp::SetSecurity { db, body })
            .await
            .map(|_| ())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(WriteOp::Ping).await.map(|_| ())
    }

    async fn set_policy(&self, db: &str, policy: Policy) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.write(WriteOp::SetPolicy { db, policy })
            .await
            .map(|_| ())
    }

    async fn set_retention(&self, db: &str, retention: Retention) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.write(WriteOp::SetRetention { db, retention })
            .await
            .map(|_| ())
    }

    async fn resolve(
        &self,
        db: &str,
        id: &str,
        leaves: Vec<Rev>,
        update: DocUpdate,
    ) -> Result<Result<Rev, DocError>, StoreError> {
        let op = WriteOp::Resolve {
            db: db.to_owned(),
            id: id.to_owned(),
            leaves,
            update,
        };
        match self.write(op).await? {
            WriteReply::Resolved(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    async fn conflicts(
        &self,
        db: &str,
        start: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DocRecord>, StoreError> {
        read::conflicts(&self.reader, db, start, limit).await
    }

    async fn compact(&self, db: &str) -> Result<(), StoreError> {
        let _mark = self.compactions.mark(db);
        self.write(WriteOp::Compact { db: db.to_owned() }).await?;
        let mut after = String::new();
        loop {
            let op = WriteOp::DropSuperseded {
                db: db.to_owned(),
                after,
            };
            match self.write(op).await? {
                WriteReply::Cursor(Some(next)) => after = next,
                WriteReply::Cursor(None) => break,
                other => return Err(unexpected(other)),
            }
        }
        self.reclaim().await
    }

    fn mark_compacting(&self, db: &str) -> Option<CompactionMark> {
        self.compactions.mark(db)
    }

    async fn reclaim(&self) -> Result<(), StoreError> {
        let plan = {
            let mut c = self.reader.client().await?;
            compaction::plan_sweep(&mut c).await?
        };
        let mut collected = 0;
        for chunk in plan.candidates.chunks(compaction::ATTACHMENTS_PER_STEP) {
            let op = WriteOp::SweepAttachments {
                candidates: chunk.to_vec(),
                seen: plan.seen.clone(),
            };
            match self.write(op).await? {
                WriteReply::Count(n) => collected += n,
                other => return Err(unexpected(other)),
            }
        }
        if collected > 0 {
            tracing::info!(attachments = collected, "compaction collected attachments");
        }
        Ok(())
    }

    async fn write_docs(
        &self,
        db: &str,
        updates: Vec<DocUpdate>,
    ) -> Result<Vec<Result<Rev, DocError>>, StoreError> {
        let db = db.to_owned();
        match self.write(WriteOp::Docs { db, updates }).await? {
            WriteReply::Docs(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    async fn doc(&self, db: &str, id: &str) -> Result<Option<DocRecord>, StoreError> {
        let mut found = read::docs(&self.reader, db, &[id.to_owned()]).await?;
        Ok(found.pop().flatten())
    }

    async fn docs(&self, db: &str, ids: &[String]) -> Result<Vec<Option<DocRecord>>, StoreError> {
        read::docs(&self.reader, db, ids).await
    }

    async fn bodies(
        &self,
        db: &str,
        wanted: &[(String, Rev)],
    ) -> Result<Vec<Option<StoredBody>>, StoreError> {
        read::bodies(&self.reader, db, wanted).await
    }

    async fn rev_bodies(
        &self,
        db: &str,
        id: &str,
        revs: &[Rev],
    ) -> Result<Vec<(Rev, StoredBody)>, StoreError> {
        let wanted: Vec<(String, Rev)> = revs.iter().map(|r| (id.to_owned(), r.clone())).collect();
        let found = read::bodies(&self.reader, db, &wanted).await?;
        Ok(revs
            .iter()
            .cloned()
            .zip(found)
            .filter_map(|(rev, body)| body.map(|b| (rev, b)))
            .collect())
    }

    async fn all_docs(&self, db: &str, query: &AllDocsQuery) -> Result<Vec<DocRow>, StoreError> {
        read::all_docs(&self.reader, db, query).await
    }

    async fn count_before(
        &self,
        db: &str,
        id: &str,
        descending: bool,
        cap: u64,
    ) -> Result<Option<u64>, StoreError> {
        read::count_before(&self.reader, db, id, descending, cap).await
    }

    async fn changes(&self, db: &str, query: &ChangesQuery) -> Result<Vec<ChangeRow>, StoreError> {
        read::changes(&self.reader, db, query).await
    }

    async fn changes_pending(&self, db: &str, since: u64) -> Result<u64, StoreError> {
        read::changes_pending(&self.reader, db, since).await
    }

    async fn index_state(&self, db: &str, name: &str) -> Result<Option<IndexState>, StoreError> {
        index::index_state(&self.reader, db, name).await
    }

    async fn indexes(&self, db: &str) -> Result<Vec<(String, IndexState)>, StoreError> {
        index::indexes(&self.reader, db).await
    }

    async fn update_index(&self, db: &str, update: IndexUpdate) -> Result<bool, StoreError> {
        let db = db.to_owned();
        match self.write(WriteOp::UpdateIndex { db, update }).await? {
            WriteReply::Count(n) => Ok(n == 1),
            other => Err(unexpected(other)),
        }
    }

    async fn drop_index(&self, db: &str, name: &str) -> Result<bool, StoreError> {
        let (db, name) = (db.to_owned(), name.to_owned());
        match self.write(WriteOp::DropIndex { db, name }).await? {
            WriteReply::Count(n) => Ok(n == 1),
            other => Err(unexpected(other)),
        }
    }

    async fn scan_index(
        &self,
        db: &str,
        name: &str,
        query: &IndexQuery,
    ) -> Result<Vec<IndexRow>, StoreError> {
        index::scan(&self.reader, db, name, query).await
    }

    async fn count_index(
        &self,
        db: &str,
        name: &str,
        query: &IndexQuery,
        cap: u64,
    ) -> Result<Option<u64>, StoreError> {
        index::count(&self.reader, db, name, query, cap).await
    }

    async fn local_docs(
        &self,
        db: &str,
        query: &AllDocsQuery,
    ) -> Result<Vec<LocalDocRow>, StoreError> {
        read::local_docs(&self.reader, db, query).await
    }

    async fn local_doc(&self, db: &str, id: &str) -> Result<Option<LocalDoc>, StoreError> {
        read::local_doc(&self.reader, db, id).await
    }

    async fn put_local(
        &self,
        db: &str,
        id: &str,
        base: u64,
        body: String,
    ) -> Result<u64, StoreError> {
        let op = WriteOp::PutLocal {
            db: db.to_owned(),
            id: id.to_owned(),
            base,
            body,
        };
        match self.write(op).await? {
            WriteReply::LocalRev(rev) => Ok(rev),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_local(&self, db: &str, id: &str, base: u64) -> Result<(), StoreError> {
        let op = WriteOp::DeleteLocal {
            db: db.to_owned(),
            id: id.to_owned(),
            base,
        };
        self.write(op).await.map(|_| ())
    }

    async fn attachment(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read::attachment(&self.reader, digest).await
    }

    async fn attachment_range(
        &self,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        read::attachment_range(&self.reader, digest, offset, len).await
    }

    async fn events(&self, db: &str, query: &EventsQuery) -> Result<Vec<Event>, StoreError> {
        read::events(&self.reader, db, query).await
    }

    fn watch(&self, db: &str) -> watch::Receiver<u64> {
        let mut map = self.watchers.dbs.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(db) {
            Some(w) => w.tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(db.to_owned(), Watched { tx, id: None });
                rx
            }
        }
    }

    async fn db_updates(&self, since: u64, limit: u64) -> Result<Vec<DbUpdate>, StoreError> {
        read::db_updates(&self.reader, since, limit).await
    }

    fn watch_db_updates(&self) -> watch::Receiver<u64> {
        self.db_updates.subscribe()
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        lease::try_lease(&self.reader, name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        lease::release_lease(&self.reader, name, holder).await
    }

    fn shared_config(&self) -> Option<&dyn SharedConfig> {
        Some(self)
    }
}

#[async_trait]
impl SharedConfig for PgStore {
    async fn config_section(
        &self,
        section: &str,
    ) -> Result<(u64, std::collections::BTreeMap<String, String>), StoreError> {
        config::section(&self.reader, section).await
    }

    async fn set_config(
        &self,
        section: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<bool, StoreError> {
        let op = WriteOp::SetConfig {
            section: section.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.write(op).await? {
            WriteReply::Existed(existed) => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    fn watch_config(&self) -> watch::Receiver<u64> {
        self.config.subscribe()
    }
}
