//! The node's writer: one thread owns a write connection and commits whatever is waiting as one
//! transaction (group commit), each request in its own savepoint as the SQLite writer does, or,
//! in a late-locking transaction, with what it writes buffered in the connection (below).
//!
//! Several nodes write to one PostgreSQL database, so the order of sequences cannot come from a
//! single writer as it does with SQLite. Each database's `update_seq` lives in its `dbs` row and
//! is advanced under the row's lock, held until the transaction commits. A writer on another
//! node that advances it waits for that commit and then finds the advanced counter, so the
//! sequences of one database are handed out in commit order: once sequence N is visible, every
//! sequence below it is too, and `_changes?since=N` read on any node misses nothing. The
//! `_db_updates` sequence works the same way on its row in `counters`.
//!
//! How long the row is held depends on the transaction:
//!
//! - **Late-locking** (the hot path): a batch of document writes only (`Docs`, `Resolve`,
//!   `Ping`, at most [`MAX_DOC_LOCKS`] documents). Its first statement, sent with its `BEGIN`,
//!   takes a transaction-scoped advisory lock on every document it writes (a key hashed from the
//!   schema, the database's name and the document's id), a shared advisory lock on each of its
//!   databases and a shared one on the attachment sweep's key. Holding its documents' locks
//!   from before it reads their rows until it commits, no writer on any node changes those
//!   documents meanwhile, nor creates one of the new ones. Its next statement reads every one of
//!   those documents' rows and their databases' `dbs` rows (without locking them); its requests
//!   then run on what was read, with no statement of their own but for the bodies of earlier
//!   revisions some need, and number their documents tentatively from the sequence read. What
//!   they write (revisions, attachments, document rows, events, access-index rows) waits in the
//!   connection, so a request refused drops its part there and needs no savepoint (a statement
//!   that fails there fails the whole transaction). Then it stores every request's revisions and
//!   attachments in one statement each, advances each database's row by the sequences and counts
//!   it took (`UPDATE … RETURNING`, which locks the row until the commit), numbers what waited
//!   from the sequence it finds there, writes it, and commits: seven round trips for new
//!   documents, one more each for replacing existing documents' rows, storing attachments or
//!   another database, however many requests it holds. So two nodes writing one database read
//!   and write their documents at the same time and take turns only to hand out sequences and
//!   commit (see `crate::conn`).
//! - **Locked up front**, every other batch (database and `_local` changes, purges, compaction
//!   and index steps, configuration, or more documents than [`MAX_DOC_LOCKS`]): it takes its
//!   databases' advisory locks exclusively, then their `dbs` rows in name order
//!   (`SELECT … FOR UPDATE`), as its first statements, and does everything under them. The
//!   exclusive advisory lock waits for the late-locking writers of those databases in flight
//!   and keeps new ones out, so a database deleted, its revision limit or policy changed, a
//!   document purged or compacted never happens between a late-locking writer's read and its
//!   commit. An attachment sweep takes the sweep key exclusively and every database's row, so
//!   no write that refers to an attachment is in flight while unreferenced bytes are deleted.
//!
//! Lock order, for every transaction: advisory locks (all in one statement, in ascending key
//! order), then `dbs` rows (name order), then the `_db_updates` counter, just before the commit.
//! A transaction waiting for an advisory lock holds nothing but advisory locks of smaller keys,
//! and once it has them all it never waits for one again; row locks are taken in one order by
//! everyone. So the writers' own locks cannot deadlock. What is left can still, rarely,
//! deadlock two nodes' transactions (two index steps taken in opposite orders, or the same two
//! new attachments stored by two requests of a batch that locks up front in the opposite order
//! to another batch's; a request's own attachments, and all of a late-locking batch's, are
//! stored in digest order): PostgreSQL then aborts one
//! of them, whose requests answer 503 with `Retry-After` ([`StoreError::Unavailable`]) and are
//! retried by their clients. A late-locking transaction that finds its database's row or a
//! document's row changed under it anyway (by something that takes none of these locks: a
//! node of an older version during an upgrade, a statement by hand) fails the same way,
//! writing nothing.
//!
//! After the commit the writer announces the new sequences to this node's live feeds directly;
//! other nodes hear of it through one `NOTIFY` per transaction (see [`crate::feed`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use outpost_core::{Policy, Rev};
use outpost_store::docwrite::{
    DocsProgress, apply_docs_step, apply_manual_resolution, apply_purge,
};
use outpost_store::replay::Setting;
use outpost_store::{DocError, DocUpdate, IndexUpdate, Retention, StoreError};
use tokio::sync::oneshot;

use crate::conn::{WriterConn, WriterCounts};
use crate::error::pg;

/// The most jobs applied in one transaction; bounds the latency a single commit adds.
const MAX_BATCH: usize = 256;

/// The most document updates applied in one transaction (a document's revisions are never
/// split). A larger request is applied in chunks with other jobs in between, as by the SQLite
/// writer, so one huge `_bulk_docs` holds neither this node's writer nor its database's row lock
/// for long.
const MAX_UPDATES_PER_COMMIT: usize = 2_000;

/// The most documents a late-locking transaction locks one by one; a batch with more locks its
/// databases up front. Advisory locks live in PostgreSQL's shared lock table, sized by
/// `max_locks_per_transaction` × connections (64 × about 120 by default): a few nodes' batches
/// of this size fit in it beside everything else.
const MAX_DOC_LOCKS: usize = 1_024;

/// The channel other nodes listen on for a wake-up after a commit.
pub const CHANNEL: &str = "outpost_changes";

/// A change for the writer to apply.
pub enum WriteOp {
    CreateDb {
        name: String,
        /// Per-document access (see [`crate::access`]).
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
    SetRetention {
        db: String,
        retention: Retention,
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
        requests: Vec<outpost_store::PurgeRequest>,
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
    /// A step of compaction: drops superseded bodies of the documents after `after`.
    DropSuperseded {
        db: String,
        after: String,
    },
    /// A step of compaction: deletes attachments unreferenced in a snapshot that still are.
    SweepAttachments {
        candidates: Vec<String>,
        seen: Vec<(i64, i64, i64)>,
    },
    UpdateIndex {
        db: String,
        update: IndexUpdate,
    },
    DropIndex {
        db: String,
        name: String,
    },
    /// Sets (`Some`) or removes (`None`) an entry of the shared configuration.
    SetConfig {
        section: String,
        key: String,
        value: Option<String>,
    },
    /// Runs a transaction that writes nothing: proves the writer and the database are up.
    Ping,
}

impl WriteOp {
    /// The database whose row the job locks, if any.
    fn db(&self) -> Option<&str> {
        match self {
            WriteOp::DeleteDb { name } => Some(name),
            WriteOp::SetRevsLimit { db, .. }
            | WriteOp::SetSecurity { db, .. }
            | WriteOp::SetPolicy { db, .. }
            | WriteOp::SetRetention { db, .. }
            | WriteOp::Resolve { db, .. }
            | WriteOp::Docs { db, .. }
            | WriteOp::Purge { db, .. }
            | WriteOp::SetPurgedInfosLimit { db, .. }
            | WriteOp::Compact { db }
            | WriteOp::DropSuperseded { db, .. }
            // A `_local` write compares revisions: without the row lock two nodes could both
            // find the same one and both succeed.
            | WriteOp::PutLocal { db, .. }
            | WriteOp::DeleteLocal { db, .. } => Some(db),
            _ => None,
        }
    }
}

/// What a job answers.
pub enum WriteReply {
    Done,
    Docs(Vec<Result<Rev, DocError>>),
    Resolved(Result<Rev, DocError>),
    LocalRev(u64),
    /// Where the next step of a stepped job starts (`None`: done).
    Cursor(Option<String>),
    /// How many things a job found or removed.
    Count(u64),
    /// Whether a configuration entry existed before the job changed it.
    Existed(bool),
    Purged(outpost_store::PurgeOutcome),
}

pub struct Job {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// What a commit changed, for this node's live feeds.
pub enum Announcement<'a> {
    /// A database's new update sequence, or `None` when the database was deleted.
    Db(&'a str, Option<u64>),
    /// The new server-wide sequence of `_db_updates`.
    DbUpdates(u64),
    /// The new version of the shared configuration.
    Config(u64),
}

/// Where committed changes are announced.
pub type Announce = Box<dyn Fn(Announcement<'_>) + Send>;

/// What a transaction changed.
#[derive(Default)]
struct Moved {
    deleted: BTreeSet<String>,
    seqs: BTreeMap<String, u64>,
    /// What happened to each database, for `_db_updates`.
    updates: BTreeMap<String, &'static str>,
    db_updates_seq: Option<u64>,
    /// The shared configuration's new version, when the transaction changed it.
    config: Option<u64>,
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

    fn is_empty(&self) -> bool {
        self.deleted.is_empty()
            && self.seqs.is_empty()
            && self.updates.is_empty()
            && self.config.is_none()
    }
}

/// A job in the writer's queue, with how far a chunked document write got.
struct Pending {
    job: Job,
    progress: Option<DocsProgress>,
}

impl Pending {
    fn new(job: Job) -> Pending {
        Pending {
            job,
            progress: None,
        }
    }

    /// How many document updates the job still has to apply (at least 1).
    fn weight(&self) -> usize {
        match (&self.job.op, &self.progress) {
            (_, Some(progress)) => progress.remaining().max(1),
            (WriteOp::Docs { updates, .. }, None) => updates.len().max(1),
            (WriteOp::Purge { requests, .. }, None) => requests.len().max(1),
            _ => 1,
        }
    }
}

/// Runs the writer loop until every sender is gone. The connection is opened on first use and
/// opened again after it was lost; while the database cannot be reached every job answers
/// [`StoreError::Unavailable`].
///
/// Jobs wait in `queue` in arrival order; each transaction takes jobs from its front until it
/// holds [`MAX_BATCH`] jobs or [`MAX_UPDATES_PER_COMMIT`] document updates. A request with more
/// goes back behind whatever arrived meanwhile after each chunk, and is answered when its last
/// chunk commits (like CouchDB's `_bulk_docs`, such a request is not atomic).
pub fn run(
    config: postgres::Config,
    jobs: mpsc::Receiver<Job>,
    announce: Announce,
    counts: Arc<WriterCounts>,
) {
    let mut conn: Option<WriterConn> = None;
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
        if conn.as_ref().is_none_or(WriterConn::is_closed) {
            conn = match config.connect(postgres::NoTls) {
                Ok(client) => Some(WriterConn::new(client, counts.clone())),
                Err(e) => {
                    let e = pg(e);
                    tracing::warn!(error = %e, "store writer cannot reach postgres");
                    for (pending, _) in batch {
                        let _ = pending.job.reply.send(Err(e.clone_reason()));
                    }
                    // Not a tight loop of failed connections while requests keep coming.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
        }
        let Some(c) = conn.as_ref() else { continue };
        let mut moved = Moved::default();
        match apply_batch(c, &mut batch, &mut moved) {
            Ok(results) => {
                for db in &moved.deleted {
                    announce(Announcement::Db(db, None));
                }
                for (db, seq) in &moved.seqs {
                    announce(Announcement::Db(db, Some(*seq)));
                }
                if let Some(seq) = moved.db_updates_seq {
                    announce(Announcement::DbUpdates(seq));
                }
                if let Some(version) = moved.config {
                    announce(Announcement::Config(version));
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
                let _ = c.batch("ROLLBACK");
                for (pending, _) in batch {
                    let _ = pending.job.reply.send(Err(e.clone_reason()));
                }
            }
        }
    }
}

/// A copy of an error for each job of a failed batch.
trait CloneReason {
    fn clone_reason(&self) -> StoreError;
}

impl CloneReason for StoreError {
    fn clone_reason(&self) -> StoreError {
        match self {
            StoreError::Unavailable(r) => StoreError::Unavailable(r.clone()),
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// Whether a batch's transaction locks late: only document writes (and pings), with few enough
/// documents to lock each one.
fn late_locking(batch: &[(Pending, usize)], docs: usize) -> bool {
    docs <= MAX_DOC_LOCKS
        && batch.iter().all(|(p, _)| {
            matches!(
                p.job.op,
                WriteOp::Docs { .. } | WriteOp::Resolve { .. } | WriteOp::Ping
            )
        })
}

/// The ids of the documents each document-writing job of the batch writes in this transaction,
/// with its database.
fn batch_docs(batch: &[(Pending, usize)]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    for (pending, allowance) in batch {
        match (&pending.job.op, &pending.progress) {
            (WriteOp::Docs { db, updates }, Some(progress)) => out.extend(
                progress
                    .step_ids(updates, *allowance)
                    .into_iter()
                    .map(|id| (db.as_str(), id)),
            ),
            (WriteOp::Docs { db, updates }, None) => out.extend(
                DocsProgress::new(0, updates)
                    .step_ids(updates, *allowance)
                    .into_iter()
                    .map(|id| (db.as_str(), id)),
            ),
            (WriteOp::Resolve { db, id, .. }, _) => out.push((db.as_str(), id.as_str())),
            _ => {}
        }
    }
    out
}

/// Applies a batch in one transaction; the outer error means nothing was committed. Each job
/// comes with the number of document updates it may apply; its result is `None` when it has
/// more to apply in a later transaction.
fn apply_batch(
    c: &WriterConn,
    batch: &mut [(Pending, usize)],
    moved: &mut Moved,
) -> Result<Vec<Option<Result<WriteReply, StoreError>>>, StoreError> {
    let sweeps = batch
        .iter()
        .any(|(p, _)| matches!(p.job.op, WriteOp::SweepAttachments { .. }));
    let names: BTreeSet<&str> = batch.iter().filter_map(|(p, _)| p.job.op.db()).collect();
    let docs = batch_docs(batch);
    let late = late_locking(batch, docs.len());
    // Every advisory lock first, in one statement (see the module's documentation).
    let mut keys: Vec<(i64, bool)> = Vec::new();
    for name in &names {
        keys.push((c.db_key(name)?, late));
    }
    if late {
        if !docs.is_empty() {
            keys.push((c.sweep_key()?, true));
        }
        for (db, id) in &docs {
            keys.push((c.doc_key(db, id)?, false));
        }
    } else if sweeps {
        keys.push((c.sweep_key()?, false));
    }
    c.begin_locked(keys)?;
    c.begin_late(late);
    if late {
        // Every document's row in one statement, under the locks just taken.
        c.read_locked_docs(&docs)?;
    }
    if sweeps {
        // Deleting attachment bytes must not race a write on another node that is about to
        // refer to them: every database's row is held (in the same order as any writer takes
        // them) until the sweep commits, so writes in flight finish first and later ones wait;
        // late-locking writers, which write revisions before they take their database's row,
        // are kept out by the sweep's advisory lock.
        c.query("SELECT id FROM dbs ORDER BY name FOR UPDATE", &[])?;
    } else if !late && !names.is_empty() {
        let names: Vec<&str> = names.into_iter().collect();
        c.query(
            "SELECT id FROM dbs WHERE name = ANY($1) ORDER BY name FOR UPDATE",
            &[&names],
        )?;
    }
    let now = now_micros();
    let mut results = Vec::with_capacity(batch.len());
    for (pending, allowance) in batch.iter_mut() {
        // Late-locking, a job only reads and buffers what it writes in the connection: a job
        // refused drops what it buffered, and needs no savepoint.
        let mark = c.mark_late();
        if !late {
            c.batch("SAVEPOINT job")?;
        }
        let result = match &mut pending.job.op {
            WriteOp::Docs { db, updates } => {
                apply_docs_step(c, db, updates, &mut pending.progress, *allowance, now).map(
                    |(results, seq)| {
                        moved.seq(db, seq);
                        results.map(WriteReply::Docs)
                    },
                )
            }
            op => apply(c, op, now, moved).map(Some),
        };
        match &result {
            Ok(_) if late => {}
            Ok(_) => c.batch("RELEASE SAVEPOINT job")?,
            Err(StoreError::Unavailable(reason)) => {
                // The connection or the transaction is gone: nothing of the batch commits.
                return Err(StoreError::Unavailable(reason.clone()));
            }
            // A statement that failed left the transaction unusable: nothing of the batch
            // commits.
            Err(e) if late && c.statement_failed() => return Err(e.clone_reason()),
            Err(_) if late => c.rewind_late(mark),
            Err(_) => c.batch("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")?,
        }
        results.push(result.transpose());
    }
    // Late-locking: the databases' rows are locked now, their sequences handed out and the
    // documents written under them. What the jobs reported were tentative sequences.
    for (db, seq) in c.finish_late()? {
        if let Some(reported) = moved.seqs.get_mut(&db) {
            *reported = seq;
        }
    }
    if !record_db_updates(c, moved)? && !moved.is_empty() {
        // One wake-up per transaction, whatever it changed: other nodes read what moved from
        // the tables. PostgreSQL delivers it only if the transaction commits.
        c.execute("SELECT pg_notify($1, '')", &[&CHANNEL])?;
    }
    c.batch("COMMIT")?;
    Ok(results)
}

/// Records the databases a transaction created, changed or deleted in `db_updates`, each under
/// a new server-wide sequence taken from the `counters` row (locked until the commit, so these
/// sequences too are in commit order), and sends the transaction's wake-up to other nodes (one
/// per transaction, whatever it changed: they read what moved from the tables; PostgreSQL
/// delivers it only if the transaction commits), all in one statement. Answers whether it
/// recorded anything (and so sent the wake-up).
fn record_db_updates(c: &WriterConn, moved: &mut Moved) -> Result<bool, StoreError> {
    if moved.updates.is_empty() {
        return Ok(false);
    }
    let n = moved.updates.len() as i64;
    let names: Vec<&str> = moved.updates.keys().map(String::as_str).collect();
    let kinds: Vec<&str> = moved.updates.values().copied().collect();
    let end: i64 = c
        .query_opt(
            "WITH counter AS (
                 UPDATE counters SET value = value + $1 WHERE name = 'db_updates' RETURNING value
             ), recorded AS (
                 INSERT INTO db_updates (name, seq, type)
                 SELECT u.name, (SELECT value FROM counter) - $1 + u.i, u.type
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u (name, type, i)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, type = excluded.type
             )
             SELECT value, pg_notify($4, '') FROM counter",
            &[&n, &names, &kinds, &CHANNEL],
        )?
        .ok_or_else(|| StoreError::Corrupt("the _db_updates counter is missing".into()))?
        .get(0);
    moved.db_updates_seq = Some(end as u64);
    Ok(true)
}

fn apply(
    c: &WriterConn,
    op: &mut WriteOp,
    now: i64,
    moved: &mut Moved,
) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::CreateDb { name, access } => {
            let inserted = c.execute(
                "INSERT INTO dbs (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[name, &now],
            )?;
            if inserted == 0 {
                return Err(StoreError::DbExists);
            }
            if *access {
                c.execute(
                    "INSERT INTO access_dbs (db) SELECT id FROM dbs WHERE name = $1",
                    &[name],
                )?;
            }
            moved.created(name);
            Ok(WriteReply::Done)
        }
        WriteOp::DeleteDb { name } => {
            let db = db_id(c, name)?;
            for table in [
                "docs",
                "revs",
                "local_docs",
                "events",
                "event_baselines",
                "settings_events",
                "db_security",
                "access_rows",
                "access_dbs",
            ] {
                c.execute(&format!("DELETE FROM {table} WHERE db = $1"), &[&db])?;
            }
            crate::index::drop_all(c, db)?;
            c.execute("DELETE FROM dbs WHERE id = $1", &[&db])?;
            moved.deleted(name);
            Ok(WriteReply::Done)
        }
        WriteOp::Purge { db, requests } => {
            let (outcome, seq) = apply_purge(c, db, requests, now)?;
            moved.seq(db, seq);
            Ok(WriteReply::Purged(outcome))
        }
        WriteOp::SetPurgedInfosLimit { db, limit } => {
            let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
            let n = c.execute(
                "UPDATE dbs SET purged_infos_limit = $2 WHERE name = $1",
                &[db, &limit],
            )?;
            if n == 0 {
                return Err(StoreError::NoDb);
            }
            Ok(WriteReply::Done)
        }
        WriteOp::SetRevsLimit { db, limit } => {
            let id = crate::replay::lock_db(c, db)?;
            let value = i64::try_from(*limit).unwrap_or(i64::MAX);
            c.execute(
                "UPDATE dbs SET revs_limit = $2 WHERE id = $1",
                &[&id, &value],
            )?;
            // Stemming depends on it: replay must know from which write on it applies.
            crate::replay::record_setting(c, id, &Setting::RevsLimit(*limit), now / 1000)?;
            Ok(WriteReply::Done)
        }
        WriteOp::SetSecurity { db, body } => {
            let id = db_id(c, db)?;
            c.execute(
                "INSERT INTO db_security (db, body) VALUES ($1, $2)
                 ON CONFLICT (db) DO UPDATE SET body = excluded.body",
                &[&id, body],
            )?;
            Ok(WriteReply::Done)
        }
        WriteOp::SetPolicy { db, policy } => {
            let id = crate::replay::lock_db(c, db)?;
            c.execute(
                "UPDATE dbs SET policy = $2, lww_field = $3 WHERE id = $1",
                &[&id, &policy.name(), &policy.lww_field()],
            )?;
            let setting = Setting::Policy(policy.clone());
            crate::replay::record_setting(c, id, &setting, now / 1000)?;
            Ok(WriteReply::Done)
        }
        WriteOp::SetRetention { db, retention } => {
            let count = retention
                .max_events_per_doc
                .map(|c| i64::try_from(c).unwrap_or(i64::MAX));
            let age = retention
                .max_age_seconds
                .map(|a| i64::try_from(a).unwrap_or(i64::MAX));
            let n = c.execute(
                "UPDATE dbs SET retention_count = $2, retention_age = $3 WHERE name = $1",
                &[db, &count, &age],
            )?;
            if n == 0 {
                return Err(StoreError::NoDb);
            }
            Ok(WriteReply::Done)
        }
        WriteOp::Resolve {
            db,
            id,
            leaves,
            update,
        } => {
            let (result, seq) = apply_manual_resolution(c, db, id, leaves, update, now)?;
            moved.seq(db, seq);
            Ok(WriteReply::Resolved(result))
        }
        WriteOp::Docs { .. } => Err(StoreError::Corrupt(
            "document writes are applied in chunks, above".into(),
        )),
        WriteOp::PutLocal { db, id, base, body } => {
            let db = db_id(c, db)?;
            let current = local_rev(c, db, id)?.unwrap_or(0);
            if current != *base {
                return Err(StoreError::Conflict);
            }
            let rev = current + 1;
            c.execute(
                "INSERT INTO local_docs (db, id, rev, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (db, id) DO UPDATE SET rev = excluded.rev, body = excluded.body",
                &[&db, id, &(rev as i64), body],
            )?;
            Ok(WriteReply::LocalRev(rev))
        }
        WriteOp::DeleteLocal { db, id, base } => {
            let db = db_id(c, db)?;
            match local_rev(c, db, id)? {
                None => Err(StoreError::NotFound),
                Some(current) if current != *base => Err(StoreError::Conflict),
                Some(_) => {
                    c.execute(
                        "DELETE FROM local_docs WHERE db = $1 AND id = $2",
                        &[&db, id],
                    )?;
                    Ok(WriteReply::Done)
                }
            }
        }
        WriteOp::Compact { db } => {
            let dropped = crate::compaction::apply_retention(c, db, now / 1000)?;
            if dropped > 0 {
                tracing::info!(db = %db, events = dropped, "retention trimmed the event log");
            }
            Ok(WriteReply::Done)
        }
        WriteOp::DropSuperseded { db, after } => Ok(WriteReply::Cursor(
            crate::compaction::drop_superseded(c, db, after)?,
        )),
        WriteOp::SweepAttachments { candidates, seen } => Ok(WriteReply::Count(
            crate::compaction::sweep(c, candidates, seen)?,
        )),
        WriteOp::UpdateIndex { db, update } => Ok(WriteReply::Count(u64::from(
            crate::index::apply_update(c, db, update)?,
        ))),
        WriteOp::DropIndex { db, name } => Ok(WriteReply::Count(u64::from(
            crate::index::drop_index(c, db, name)?,
        ))),
        WriteOp::SetConfig {
            section,
            key,
            value,
        } => {
            // The version row is locked first and until the commit, so changes to the
            // configuration are serialized across nodes and versions follow commit order: a
            // node that reads version N reads every change made up to it.
            let version: i64 = c
                .query_opt(
                    "UPDATE counters SET value = value + 1 WHERE name = 'config' RETURNING value",
                    &[],
                )?
                .ok_or_else(|| StoreError::Corrupt("the config version is missing".into()))?
                .get(0);
            let existed = c
                .query_opt(
                    "SELECT 1 FROM config WHERE section = $1 AND key = $2",
                    &[section, key],
                )?
                .is_some();
            match value {
                Some(value) => c.execute(
                    "INSERT INTO config (section, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (section, key) DO UPDATE SET value = excluded.value",
                    &[section, key, value],
                )?,
                None => c.execute(
                    "DELETE FROM config WHERE section = $1 AND key = $2",
                    &[section, key],
                )?,
            };
            moved.config = Some(version as u64);
            Ok(WriteReply::Existed(existed))
        }
        WriteOp::Ping => {
            c.query("SELECT 1", &[])?;
            Ok(WriteReply::Done)
        }
    }
}

pub fn db_id(c: &WriterConn, name: &str) -> Result<i64, StoreError> {
    c.query_opt("SELECT id FROM dbs WHERE name = $1", &[&name])?
        .map(|r| r.get(0))
        .ok_or(StoreError::NoDb)
}

fn local_rev(c: &WriterConn, db: i64, id: &str) -> Result<Option<u64>, StoreError> {
    Ok(c.query_opt(
        "SELECT rev FROM local_docs WHERE db = $1 AND id = $2",
        &[&db, &id],
    )?
    .map(|r| r.get::<_, i64>(0) as u64))
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
