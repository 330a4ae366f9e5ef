//! The embedded engine: one SQLite file in WAL mode, one writer thread with group commit, and a
//! small pool of read connections used from `spawn_blocking`.

mod access;
mod compaction;
mod doctx;
mod index;
pub mod key;
pub mod lock;
mod read;
pub mod replay;
pub mod retention;
mod schema;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use outpost_core::{Policy, Rev};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};

use crate::{
    AccessCounts, AllDocsQuery, ChangeRow, ChangesQuery, CompactionMark, Compactions, DbInfo,
    DbOptions, DbUpdate, DocAccess, DocError, DocRecord, DocRow, DocUpdate, Event, EventsQuery,
    IndexQuery, IndexRow, IndexState, IndexUpdate, LocalDoc, LocalDocRow, PurgeOutcome,
    PurgeRequest, Retention, Store, StoreError, StoredBody,
};
use writer::{Job, WriteOp, WriteReply};

/// The name of the database file inside the data directory.
pub const FILE_NAME: &str = "outpost.sqlite";

/// How many idle read connections are kept.
const MAX_IDLE_READERS: usize = 8;

pub use key::StoreKey;
pub use lock::DataDirLock;
pub use read::PENDING_EXACT_UP_TO;

/// A [`Store`] on one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    uuid: String,
    /// Sends jobs to the writer thread; the thread ends when this (the last sender) is dropped.
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    /// Idle read connections. A reader is taken out for the duration of one query and put back;
    /// more are opened on demand when all are busy.
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Live feed listeners, per database: the writer publishes each database's new update
    /// sequence after every commit.
    watchers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// The `_db_updates` sequence, published by the writer after every commit that moved it.
    db_updates: watch::Sender<u64>,
    /// Databases being compacted, for `compact_running`.
    compactions: Compactions,
    /// Leases: the data directory belongs to this process, so they live in its memory.
    leases: crate::lease::LocalLeases,
    /// The key of an encrypted file, for every read connection opened later.
    key: Option<Arc<StoreKey>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the plain, unencrypted store in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_key(dir, None)
    }

    /// Opens (creating if needed) the store in `dir`, encrypted with `key` when one is given
    /// (see [`key`]). [`StoreError::Key`] when the key does not fit the file.
    pub fn open_with_key(dir: &Path, key: Option<StoreKey>) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Corrupt(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let mut conn = key::open(&path, OpenFlags::default(), key.as_ref())?;
        schema::configure(&conn)?;
        schema::migrate(&conn)?;
        // No commit waits for a checkpoint: a thread of its own copies the WAL into the file.
        let checkpointer = key::open(&path, OpenFlags::default(), key.as_ref())?;
        schema::configure(&checkpointer)?;
        outpost_sqlite_wal::start(&mut conn, checkpointer, "outpost-wal")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let uuid = match conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'server_uuid'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            Some(u) => u,
            None => {
                let u = uuid::Uuid::new_v4().simple().to_string();
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('server_uuid', ?1)",
                    [&u],
                )?;
                u
            }
        };
        let watchers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>> = Arc::default();
        let db_updates_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM db_updates", [], |r| {
                r.get(0)
            })?;
        let db_updates_seq = db_updates_seq as u64;
        let db_updates = watch::Sender::new(db_updates_seq);
        let announce_to = watchers.clone();
        let announce_updates = db_updates.clone();
        let announce: writer::Announce = Box::new(move |what| match what {
            writer::Announcement::Db(db, seq) => {
                let mut map = announce_to.lock().unwrap_or_else(|e| e.into_inner());
                match seq {
                    Some(seq) => {
                        if let Some(tx) = map.get(db) {
                            tx.send_replace(seq);
                        }
                    }
                    // Dropping the sender ends every live feed of the deleted database.
                    None => {
                        map.remove(db);
                    }
                }
            }
            writer::Announcement::DbUpdates(seq) => {
                announce_updates.send_replace(seq);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("outpost-writer".into())
            .spawn(move || writer::run(conn, rx, announce, db_updates_seq))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path,
            uuid,
            writer: Mutex::new(Some(tx)),
            readers: Arc::default(),
            watchers,
            db_updates,
            compactions: Compactions::default(),
            leases: crate::lease::LocalLeases::default(),
            key: key.map(Arc::new),
        })
    }

    /// The server's identity (see [`Store::server_uuid`]).
    pub fn server_uuid_str(&self) -> &str {
        &self.uuid
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&path, key.as_deref())?,
            };
            let result = f(&conn);
            let mut idle = readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?
    }
}

fn open_reader(path: &Path, key: Option<&StoreKey>) -> Result<Connection, StoreError> {
    let conn = key::open(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
        key,
    )?;
    conn.execute_batch("PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;")?;
    Ok(conn)
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
    };
    StoreError::Corrupt(format!("writer answered {what} to another request"))
}

#[async_trait]
impl Store for SqliteStore {
    fn server_uuid(&self) -> &str {
        &self.uuid
    }

    async fn all_dbs(&self) -> Result<Vec<String>, StoreError> {
        self.read(read::all_dbs).await
    }

    async fn create_db_with(&self, name: &str, options: &DbOptions) -> Result<(), StoreError> {
        self.write(WriteOp::CreateDb {
            name: name.to_owned(),
            access: options.access,
        })
        .await
        .map(|_| ())
    }

    async fn delete_db(&self, name: &str) -> Result<(), StoreError> {
        self.write(WriteOp::DeleteDb {
            name: name.to_owned(),
        })
        .await
        .map(|_| ())
    }

    async fn db_info(&self, name: &str) -> Result<DbInfo, StoreError> {
        let owned = name.to_owned();
        let path = self.path.clone();
        let info = self.read(move |c| read::db_info(c, &owned, &path)).await?;
        Ok(DbInfo {
            compact_running: self.compactions.is_running(name),
            ..info
        })
    }

    async fn set_revs_limit(&self, db: &str, limit: u64) -> Result<(), StoreError> {
        self.write(WriteOp::SetRevsLimit {
            db: db.to_owned(),
            limit,
        })
        .await
        .map(|_| ())
    }

    async fn purge(
        &self,
        db: &str,
        requests: Vec<PurgeRequest>,
    ) -> Result<PurgeOutcome, StoreError> {
        match self
            .write(WriteOp::Purge {
                db: db.to_owned(),
                requests,
            })
            .await?
        {
            WriteReply::Purged(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn set_purged_infos_limit(&self, db: &str, limit: u64) -> Result<(), StoreError> {
        self.write(WriteOp::SetPurgedInfosLimit {
            db: db.to_owned(),
            limit,
        })
        .await
        .map(|_| ())
    }

    async fn security(&self, db: &str) -> Result<Option<String>, StoreError> {
        let db = db.to_owned();
        self.read(move |c| read::security(c, &db)).await
    }

    async fn set_security(&self, db: &str, body: String) -> Result<(), StoreError> {
        self.write(WriteOp::SetSecurity {
            db: db.to_owned(),
            body,
        })
        .await
        .map(|_| ())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(WriteOp::Ping).await.map(|_| ())
    }

    async fn set_policy(&self, db: &str, policy: Policy) -> Result<(), StoreError> {
        self.write(WriteOp::SetPolicy {
            db: db.to_owned(),
            policy,
        })
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
        let (db, start) = (db.to_owned(), start.map(str::to_owned));
        self.read(move |c| read::conflicts(c, &db, start.as_deref(), limit))
            .await
    }

    async fn compact(&self, db: &str) -> Result<(), StoreError> {
        // Already marked when the caller started it in the background.
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
        let plan = self.read(compaction::plan_sweep).await?;
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
        // Stops when nothing is left, or when a step frees nothing (a file not in incremental
        // auto-vacuum mode keeps its free pages for reuse).
        let mut left = u64::MAX;
        loop {
            match self.write(WriteOp::Vacuum).await? {
                WriteReply::Count(now) if now > 0 && now < left => left = now,
                WriteReply::Count(_) => break,
                other => return Err(unexpected(other)),
            }
        }
        self.write(WriteOp::Checkpoint).await.map(|_| ())
    }

    async fn set_retention(&self, db: &str, retention: Retention) -> Result<(), StoreError> {
        self.write(WriteOp::SetRetention {
            db: db.to_owned(),
            retention,
        })
        .await
        .map(|_| ())
    }

    async fn write_docs(
        &self,
        db: &str,
        updates: Vec<DocUpdate>,
    ) -> Result<Vec<Result<Rev, DocError>>, StoreError> {
        match self
            .write(WriteOp::Docs {
                db: db.to_owned(),
                updates,
            })
            .await?
        {
            WriteReply::Docs(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    async fn doc(&self, db: &str, id: &str) -> Result<Option<DocRecord>, StoreError> {
        let (db, id) = (db.to_owned(), id.to_owned());
        self.read(move |c| read::doc(c, &db, &id)).await
    }

    async fn docs(&self, db: &str, ids: &[String]) -> Result<Vec<Option<DocRecord>>, StoreError> {
        let (db, ids) = (db.to_owned(), ids.to_vec());
        self.read(move |c| read::docs(c, &db, &ids)).await
    }

    async fn bodies(
        &self,
        db: &str,
        wanted: &[(String, Rev)],
    ) -> Result<Vec<Option<StoredBody>>, StoreError> {
        let (db, wanted) = (db.to_owned(), wanted.to_vec());
        self.read(move |c| read::bodies(c, &db, &wanted)).await
    }

    async fn rev_bodies(
        &self,
        db: &str,
        id: &str,
        revs: &[Rev],
    ) -> Result<Vec<(Rev, StoredBody)>, StoreError> {
        let (db, id, revs) = (db.to_owned(), id.to_owned(), revs.to_vec());
        self.read(move |c| read::rev_bodies(c, &db, &id, &revs))
            .await
    }

    async fn all_docs(&self, db: &str, query: &AllDocsQuery) -> Result<Vec<DocRow>, StoreError> {
        let (db, query) = (db.to_owned(), query.clone());
        self.read(move |c| read::all_docs(c, &db, &query)).await
    }

    async fn count_before(
        &self,
        db: &str,
        id: &str,
        descending: bool,
        cap: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (db, id) = (db.to_owned(), id.to_owned());
        self.read(move |c| read::count_before(c, &db, &id, descending, cap))
            .await
    }

    async fn changes(&self, db: &str, query: &ChangesQuery) -> Result<Vec<ChangeRow>, StoreError> {
        let (db, query) = (db.to_owned(), query.clone());
        self.read(move |c| read::changes(c, &db, &query)).await
    }

    async fn index_state(&self, db: &str, name: &str) -> Result<Option<IndexState>, StoreError> {
        let (db, name) = (db.to_owned(), name.to_owned());
        self.read(move |c| index::index_state(c, &db, &name)).await
    }

    async fn indexes(&self, db: &str) -> Result<Vec<(String, IndexState)>, StoreError> {
        let db = db.to_owned();
        self.read(move |c| index::indexes(c, &db)).await
    }

    async fn update_index(&self, db: &str, update: IndexUpdate) -> Result<bool, StoreError> {
        match self
            .write(WriteOp::UpdateIndex {
                db: db.to_owned(),
                update,
            })
            .await?
        {
            WriteReply::Count(n) => Ok(n == 1),
            other => Err(unexpected(other)),
        }
    }

    async fn drop_index(&self, db: &str, name: &str) -> Result<bool, StoreError> {
        match self
            .write(WriteOp::DropIndex {
                db: db.to_owned(),
                name: name.to_owned(),
            })
            .await?
        {
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
        let (db, name, query) = (db.to_owned(), name.to_owned(), query.clone());
        self.read(move |c| index::scan(c, &db, &name, &query)).await
    }

    async fn count_index(
        &self,
        db: &str,
        name: &str,
        query: &IndexQuery,
        cap: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (db, name, query) = (db.to_owned(), name.to_owned(), query.clone());
        self.read(move |c| index::count(c, &db, &name, &query, cap))
            .await
    }

    async fn changes_pending(&self, db: &str, since: u64) -> Result<u64, StoreError> {
        let db = db.to_owned();
        self.read(move |c| read::changes_pending(c, &db, since))
            .await
    }

    async fn local_docs(
        &self,
        db: &str,
        query: &AllDocsQuery,
    ) -> Result<Vec<LocalDocRow>, StoreError> {
        let (db, query) = (db.to_owned(), query.clone());
        self.read(move |c| read::local_docs(c, &db, &query)).await
    }

    async fn local_doc(&self, db: &str, id: &str) -> Result<Option<LocalDoc>, StoreError> {
        let (db, id) = (db.to_owned(), id.to_owned());
        self.read(move |c| read::local_doc(c, &db, &id)).await
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
        let digest = digest.to_owned();
        self.read(move |c| read::attachment(c, &digest)).await
    }

    async fn attachment_range(
        &self,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let digest = digest.to_owned();
        self.read(move |c| read::attachment_range(c, &digest, offset, len))
            .await
    }

    async fn events(&self, db: &str, query: &EventsQuery) -> Result<Vec<Event>, StoreError> {
        let (db, query) = (db.to_owned(), query.clone());
        self.read(move |c| read::events(c, &db, &query)).await
    }

    async fn db_updates(&self, since: u64, limit: u64) -> Result<Vec<DbUpdate>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, name, type FROM db_updates WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![
                    since.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as u64) as i64
                ],
                |r| {
                    Ok(DbUpdate {
                        seq: r.get::<_, i64>(0)? as u64,
                        db_name: r.get(1)?,
                        kind: r.get(2)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
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
        Ok(self.leases.try_lease(name, holder, ttl))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.leases.release_lease(name, holder);
        Ok(())
    }

    async fn access_changes(
        &self,
        db: &str,
        reader: &[String],
        query: &ChangesQuery,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        let (db, reader, query) = (db.to_owned(), reader.to_vec(), query.clone());
        self.read(move |c| access::changes(c, &db, &reader, &query))
            .await
    }

    async fn access_all_docs(
        &self,
        db: &str,
        reader: &[String],
        query: &AllDocsQuery,
    ) -> Result<Vec<DocRow>, StoreError> {
        let (db, reader, query) = (db.to_owned(), reader.to_vec(), query.clone());
        self.read(move |c| access::all_docs(c, &db, &reader, &query))
            .await
    }

    async fn access_counts(&self, db: &str, reader: &[String]) -> Result<AccessCounts, StoreError> {
        let (db, reader) = (db.to_owned(), reader.to_vec());
        self.read(move |c| access::counts(c, &db, &reader)).await
    }

    async fn access_pending(
        &self,
        db: &str,
        reader: &[String],
        since: u64,
    ) -> Result<u64, StoreError> {
        let (db, reader) = (db.to_owned(), reader.to_vec());
        self.read(move |c| access::pending(c, &db, &reader, since))
            .await
    }

    async fn doc_access(
        &self,
        db: &str,
        reader: &[String],
        ids: &[String],
    ) -> Result<Vec<DocAccess>, StoreError> {
        let (db, reader, ids) = (db.to_owned(), reader.to_vec(), ids.to_vec());
        self.read(move |c| access::doc_access(c, &db, &reader, &ids))
            .await
    }

    fn watch(&self, db: &str) -> watch::Receiver<u64> {
        let mut map = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(db) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(db.to_owned(), tx);
                rx
            }
        }
    }
}
