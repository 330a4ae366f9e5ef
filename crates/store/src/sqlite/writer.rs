//! The single writer: one thread owns the only write connection and applies every change.
//!
//! Writes wait in a channel. The thread takes every job that is waiting, applies them all in one
//! transaction (each in its own savepoint, so one failing job does not undo the others), commits
//! once, and only then answers each job. Many concurrent writers thus share one fsync (group
//! commit) and nobody hears "ok" before their data is durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc;

use outpost_core::{Policy, Rev};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::docwrite::{DocsProgress, apply_docs_step, apply_manual_resolution, apply_purge};
use crate::replay::Setting;
use crate::{DocError, DocUpdate, StoreError};

/// The most jobs applied in one transaction; bounds the latency a single commit adds.
const MAX_BATCH: usize = 512;

/// The most document updates applied in one transaction (a single document's revisions are never
/// split, so one chunk may hold more when one document has more). Bounds how long one request
/// holds the writer before other databases' writes get their turn (see [`run`]).
const MAX_UPDATES_PER_COMMIT: usize = 2_000;

/// A change for the writer to apply.
pub(super) enum WriteOp {
    CreateDb {
        name: String,
        /// Per-document access ([`crate::DbOptions::access`]).
        access: bool,
    },
    DeleteDb {
        name: String,
    },
    SetRevsLimit {
        db: String,
        limit: u64,
    },
    SetSecurity {
        db: String,
        body: String,
    },
    SetPolicy {
        db: String,
        policy: Policy,
    },
    Resolve {
        db: String,
        id: String,
        leaves: Vec<Rev>,
        update: DocUpdate,
    },
    Docs {
        db: String,
        updates: Vec<DocUpdate>,
    },
    /// `_purge`.
    Purge {
        db: String,
        requests: Vec<crate::PurgeRequest>,
    },
    SetPurgedInfosLimit {
        db: String,
        limit: u64,
    },
    PutLocal {
        db: String,
        id: String,
        base: u64,
        body: String,
    },
    DeleteLocal {
        db: String,
        id: String,
        base: u64,
    },
    /// Applies the database's history retention.
    Compact {
        db: String,
    },
    /// Sets the database's history retention.
    SetRetention {
        db: String,
        retention: super::retention::Retention,
    },
    /// A step of compaction: drops superseded bodies of the documents after `after`.
    DropSuperseded {
        db: String,
        after: String,
    },
    /// A step of compaction: deletes attachments that were unreferenced in a snapshot and still
    /// are.
    SweepAttachments {
        candidates: Vec<String>,
        seen: Vec<(i64, i64, i64)>,
    },
    /// A step of compaction: gives free pages back to the file system.
    Vacuum,
    /// Folds the WAL back into the main file.
    Checkpoint,
    /// A step of an index's incremental update (see [`crate::index`]).
    UpdateIndex {
        db: String,
        update: crate::IndexUpdate,
    },
    /// Drops an index and its rows.
    DropIndex {
        db: String,
        name: String,
    },
    /// Takes the write lock and commits nothing: proves the writer is alive and the file
    /// writable, for readiness checks.
    Ping,
}

/// What a job answers.
pub(super) enum WriteReply {
    Done,
    Docs(Vec<Result<Rev, DocError>>),
    Resolved(Result<Rev, DocError>),
    LocalRev(u64),
    /// Where the next step of a stepped job starts (`None`: done).
    Cursor(Option<String>),
    /// How many things a job found or removed.
    Count(u64),
    Purged(crate::PurgeOutcome),
}

pub(super) struct Job {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// What a commit changed, for the live feeds waiting on it.
pub(super) enum Announcement<'a> {
    /// A database's new update sequence, or `None` when the database was deleted.
    Db(&'a str, Option<u64>),
    /// The new server-wide sequence of `_db_updates`.
    DbUpdates(u64),
}

/// Where committed changes are announced.
pub(super) type Announce = Box<dyn Fn(Announcement<'_>) + Send>;

/// Runs the writer loop until every sender is gone.
///
/// Jobs wait in `queue` in arrival order. Each transaction takes jobs from its front until it
/// holds [`MAX_BATCH`] jobs or [`MAX_UPDATES_PER_COMMIT`] document updates. A request with more
/// updates than that is applied a bounded chunk at a time (whole documents per chunk), and
/// between chunks it goes to the back of the queue, behind every job that arrived meanwhile: a
/// write to another database waits for at most one bounded transaction, never for the whole of
/// a pathological request. The request is answered when its last chunk is committed. Like
/// CouchDB's `_bulk_docs`, such a request is not atomic: should a later chunk fail, the
/// documents of earlier chunks stay written and the request answers the failure.
///
/// `db_updates_seq` is the `_db_updates` sequence the file holds when the writer starts; the
/// writer, the only one to advance it, keeps it from then on.
pub(super) fn run(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    announce: Announce,
    mut db_updates_seq: u64,
) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match jobs.recv() {
                Ok(job) => queue.push_back(Pending::new(job)),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            queue.push_back(Pending::new(job));
        }
        let mut batch = Vec::new();
        let mut budget = MAX_UPDATES_PER_COMMIT;
        while batch.len() < MAX_BATCH && budget > 0 {
            let Some(pending) = queue.pop_front() else {
                break;
            };
            let weight = pending.weight().min(budget);
            batch.push((pending, budget));
            budget -= weight;
        }
        let mut moved = Moved {
            db_updates_before: db_updates_seq,
            ..Moved::default()
        };
        let outcome = apply_batch(&mut conn, &mut batch, &mut moved);
        match outcome {
            Ok(results) => {
                for db in &moved.deleted {
                    announce(Announcement::Db(db, None));
                }
                for (db, seq) in &moved.seqs {
                    announce(Announcement::Db(db, Some(*seq)));
                }
                if let Some(seq) = moved.db_updates_seq {
                    db_updates_seq = seq;
                    announce(Announcement::DbUpdates(seq));
                }
                for ((pending, _), result) in batch.into_iter().zip(results) {
                    match result {
                        Some(result) => {
                            let _ = pending.job.reply.send(result);
                        }
                        // A chunked request with documents left: behind whatever arrived.
                        None => {
                            while let Ok(job) = jobs.try_recv() {
                                queue.push_back(Pending::new(job));
                            }
                            queue.push_back(pending);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "write transaction failed");
                let reason = e.to_string();
                for (pending, _) in batch {
                    let _ = pending
                        .job
                        .reply
                        .send(Err(StoreError::Corrupt(reason.clone())));
                }
            }
        }
    }
}

/// A job in the writer's queue, with how far a chunked document write got.
struct Pending {
    job: Job,
    docs: Option<DocsProgress>,
}

impl Pending {
    fn new(job: Job) -> Pending {
        Pending { job, docs: None }
    }

    /// How many document updates the job still has to apply (at least 1).
    fn weight(&self) -> usize {
        match (&self.job.op, &self.docs) {
            (_, Some(progress)) => progress.remaining().max(1),
            (WriteOp::Docs { updates, .. }, None) => updates.len().max(1),
            (WriteOp::Purge { requests, .. }, None) => requests.len().max(1),
            _ => 1,
        }
    }
}

/// What the announcements after a commit say: the databases deleted (their live feeds end, even
/// when a database of the same name was created again in the same transaction), and the new
/// update sequence of every database that moved.
#[derive(Default)]
struct Moved {
    deleted: BTreeSet<String>,
    seqs: BTreeMap<String, u64>,
    /// Databases created, with what happened to each since, in order, for `_db_updates`.
    updates: BTreeMap<String, &'static str>,
    /// The `_db_updates` sequence before the transaction.
    db_updates_before: u64,
    /// The `_db_updates` sequence the commit reached, when it recorded any.
    db_updates_seq: Option<u64>,
}

impl Moved {
    fn seq(&mut self, db: &str, seq: u64) {
        self.seqs.insert(db.to_owned(), seq);
        self.updates.entry(db.to_owned()).or_insert("updated");
    }

    fn created(&mut self, db: &str) {
        self.seqs.insert(db.to_owned(), 0);
        self.updates.insert(db.to_owned(), "created");
    }

    fn deleted(&mut self, db: &str) {
        self.seqs.remove(db);
        self.deleted.insert(db.to_owned());
        self.updates.insert(db.to_owned(), "deleted");
    }
}

/// Records the databases a transaction created, changed or deleted in `db_updates`, each under
/// a new server-wide sequence, replacing its previous row (CouchDB's `_db_updates` lists each
/// database once, at its latest event).
fn record_db_updates(tx: &Connection, moved: &mut Moved) -> Result<(), StoreError> {
    if moved.updates.is_empty() {
        return Ok(());
    }
    let mut seq = moved.db_updates_before;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO db_updates (name, seq, type) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, type = excluded.type",
    )?;
    for (name, kind) in &moved.updates {
        seq += 1;
        upsert.execute(params![name, seq as i64, kind])?;
    }
    moved.db_updates_seq = Some(seq);
    Ok(())
}

/// Applies a batch in one transaction; the outer error means nothing was committed. Each job
/// comes with the number of document updates it may apply; a job's result is `None` when it has
/// more to apply in a later transaction.
fn apply_batch(
    conn: &mut Connection,
    batch: &mut [(Pending, usize)],
    moved: &mut Moved,
) -> Result<Vec<Option<Result<WriteReply, StoreError>>>, StoreError> {
    if batch
        .iter()
        .all(|(p, _)| matches!(p.job.op, WriteOp::Checkpoint))
    {
        if !outpost_sqlite_wal::checkpoint_truncate(conn, std::time::Duration::from_secs(10))? {
            tracing::warn!("the WAL could not be truncated: checkpoint blocked");
        }
        return Ok(batch.iter().map(|_| Some(Ok(WriteReply::Done))).collect());
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut results = Vec::with_capacity(batch.len());
    for (pending, allowance) in batch.iter_mut() {
        let mut sp = tx.savepoint()?;
        let result = match &mut pending.job.op {
            WriteOp::Docs { db, updates } => {
                apply_docs_chunk(&sp, db, updates, &mut pending.docs, *allowance, now, moved)
            }
            op => apply(&sp, op, now, moved).map(Some),
        };
        match &result {
            Ok(_) => sp.commit()?,
            Err(_) => sp.rollback()?,
        }
        results.push(result.transpose());
    }
    record_db_updates(&tx, moved)?;
    tx.set_drop_behavior(rusqlite::DropBehavior::Rollback);
    tx.commit()?;
    Ok(results)
}

/// Applies the next chunk of a document write: whole documents, up to `allowance` updates (at
/// least one document). Answers `None` while documents remain.
fn apply_docs_chunk(
    tx: &Connection,
    db: &str,
    updates: &mut [DocUpdate],
    progress: &mut Option<DocsProgress>,
    allowance: usize,
    now: i64,
    moved: &mut Moved,
) -> Result<Option<WriteReply>, StoreError> {
    let (results, seq) = apply_docs_step(tx, db, updates, progress, allowance, now)?;
    moved.seq(db, seq);
    Ok(results.map(WriteReply::Docs))
}

fn apply(
    tx: &Connection,
    op: &WriteOp,
    now: i64,
    moved: &mut Moved,
) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::CreateDb { name, access } => {
            let inserted = tx.execute(
                "INSERT INTO dbs (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, now],
            )?;
            if inserted == 0 {
                return Err(StoreError::DbExists);
            }
            if *access {
                super::access::mark(tx, name)?;
            }
            moved.created(name);
            Ok(WriteReply::Done)
        }
        WriteOp::DeleteDb { name } => {
            let db = db_id(tx, name)?;
            for table in [
                "docs",
                "revs",
                "local_docs",
                "events",
                "event_baselines",
                "settings_events",
                "db_security",
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE db = ?1"), [db])?;
            }
            super::index::drop_all(tx, db)?;
            super::access::drop_db(tx, db)?;
            tx.execute("DELETE FROM dbs WHERE id = ?1", [db])?;
            moved.deleted(name);
            Ok(WriteReply::Done)
        }
        WriteOp::SetRevsLimit { db, limit } => {
            let id = db_id(tx, db)?;
            tx.execute(
                "UPDATE dbs SET revs_limit = ?2 WHERE id = ?1",
                params![id, *limit as i64],
            )?;
            // Stemming depends on it: replay must know from which write on it applies.
            super::retention::record_setting(tx, id, &Setting::RevsLimit(*limit), now / 1000)?;
            Ok(WriteReply::Done)
        }
        WriteOp::SetSecurity { db, body } => {
            let id = db_id(tx, db)?;
            tx.execute(
                "INSERT INTO db_security (db, body) VALUES (?1, ?2)
                 ON CONFLICT (db) DO UPDATE SET body = excluded.body",
                params![id, body],
            )?;
            Ok(WriteReply::Done)
        }
        WriteOp::SetPolicy { db, policy } => {
            let id = db_id(tx, db)?;
            tx.execute(
                "UPDATE dbs SET policy = ?2, lww_field = ?3 WHERE id = ?1",
                params![id, policy.name(), policy.lww_field()],
            )?;
            let setting = Setting::Policy(policy.clone());
            super::retention::record_setting(tx, id, &setting, now / 1000)?;
            Ok(WriteReply::Done)
        }
        WriteOp::Resolve {
            db,
            id,
            leaves,
            update,
        } => {
            let (result, seq) = apply_manual_resolution(tx, db, id, leaves, update, now)?;
            moved.seq(db, seq);
            Ok(WriteReply::Resolved(result))
        }
        WriteOp::Purge { db, requests } => {
            let (outcome, seq) = apply_purge(tx, db, requests, now)?;
            moved.seq(db, seq);
            Ok(WriteReply::Purged(outcome))
        }
        WriteOp::SetPurgedInfosLimit { db, limit } => {
            let n = tx.execute(
                "UPDATE dbs SET purged_infos_limit = ?2 WHERE name = ?1",
                params![db, i64::try_from(*limit).unwrap_or(i64::MAX)],
            )?;
            if n == 0 {
                return Err(StoreError::NoDb);
            }
            Ok(WriteReply::Done)
        }
        WriteOp::Docs { .. } => Err(StoreError::Corrupt(
            "document writes are applied in chunks, above".into(),
        )),
        WriteOp::PutLocal { db, id, base, body } => {
            let db = db_id(tx, db)?;
            let current = local_rev(tx, db, id)?.unwrap_or(0);
            if current != *base {
                return Err(StoreError::Conflict);
            }
            let rev = current + 1;
            tx.execute(
                "INSERT INTO local_docs (db, id, rev, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (db, id) DO UPDATE SET rev = excluded.rev, body = excluded.body",
                params![db, id, rev as i64, body],
            )?;
            Ok(WriteReply::LocalRev(rev))
        }
        WriteOp::DeleteLocal { db, id, base } => {
            let db = db_id(tx, db)?;
            match local_rev(tx, db, id)? {
                None => Err(StoreError::NotFound),
                Some(current) if current != *base => Err(StoreError::Conflict),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM local_docs WHERE db = ?1 AND id = ?2",
                        params![db, id],
                    )?;
                    Ok(WriteReply::Done)
                }
            }
        }
        WriteOp::Compact { db } => {
            let (id, count, age): (i64, Option<i64>, Option<i64>) = tx
                .query_row(
                    "SELECT id, retention_count, retention_age FROM dbs WHERE name = ?1",
                    [db],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
                .ok_or(StoreError::NoDb)?;
            let retention = super::retention::Retention {
                max_events_per_doc: count.map(|c| c as u64),
                max_age_seconds: age.map(|a| a as u64),
            };
            let dropped = super::retention::apply(tx, id, retention, now / 1000)?;
            if dropped > 0 {
                tracing::info!(db = %db, events = dropped, "retention trimmed the event log");
            }
            Ok(WriteReply::Done)
        }
        WriteOp::SetRetention { db, retention } => {
            let n = tx.execute(
                "UPDATE dbs SET retention_count = ?2, retention_age = ?3 WHERE name = ?1",
                params![
                    db,
                    retention.max_events_per_doc.map(|c| c as i64),
                    retention.max_age_seconds.map(|a| a as i64)
                ],
            )?;
            if n == 0 {
                return Err(StoreError::NoDb);
            }
            Ok(WriteReply::Done)
        }
        WriteOp::DropSuperseded { db, after } => Ok(WriteReply::Cursor(
            super::compaction::drop_superseded(tx, db, after)?,
        )),
        WriteOp::SweepAttachments { candidates, seen } => Ok(WriteReply::Count(
            super::compaction::sweep(tx, candidates, seen)?,
        )),
        WriteOp::UpdateIndex { db, update } => Ok(WriteReply::Count(u64::from(
            super::index::apply_update(tx, db, update)?,
        ))),
        WriteOp::DropIndex { db, name } => Ok(WriteReply::Count(u64::from(
            super::index::drop_index(tx, db, name)?,
        ))),
        WriteOp::Vacuum => Ok(WriteReply::Count(super::compaction::vacuum_step(tx)?)),
        WriteOp::Checkpoint | WriteOp::Ping => Ok(WriteReply::Done),
    }
}

fn db_id(tx: &Connection, name: &str) -> Result<i64, StoreError> {
    tx.query_row("SELECT id FROM dbs WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)
}

fn local_rev(tx: &Connection, db: i64, id: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT rev FROM local_docs WHERE db = ?1 AND id = ?2",
            params![db, id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|r| r as u64))
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
