//! The single writer: one thread owns the only write connection and applies every change.
//!
//! Writes wait in a channel. The thread takes every job that is waiting, applies them all in one
//! transaction (each in its own savepoint, so one failing job does not undo the others), commits
//! once, and only then answers each job. Many concurrent writers thus share one fsync (group
//! commit) and nobody hears "ok" before their data is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::mpsc;

use outpost_core::rev::MAX_GENERATION;
use outpost_core::{Policy, Rev, RevTree, hash, policy};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::{DocError, DocUpdate, NewAttachment, Origin, StoreError, UpdateMode};

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
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
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
    let mut state = load_state(tx, db)?;
    let progress = progress.get_or_insert_with(|| DocsProgress::new(state.id, updates));
    if progress.db_id != state.id {
        // Deleted and created again between two chunks: the rest is not for this database.
        return Err(StoreError::NoDb);
    }
    let mut applied = 0;
    while applied < allowance.max(1) {
        let Some(group) = progress.groups.get(progress.next) else {
            break;
        };
        applied += group.len();
        apply_doc_group(tx, &mut state, updates, group, &mut progress.results, now)?;
        progress.next += 1;
    }
    save_state(tx, &state)?;
    moved.seq(db, state.seq);
    if progress.next < progress.groups.len() {
        return Ok(None);
    }
    let results = std::mem::take(&mut progress.results)
        .into_iter()
        .map(|r| r.unwrap_or(Err(DocError::Conflict)))
        .collect();
    Ok(Some(WriteReply::Docs(results)))
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
            let n = tx.execute(
                "UPDATE dbs SET revs_limit = ?2 WHERE name = ?1",
                params![db, *limit as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NoDb);
            }
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
            let n = tx.execute(
                "UPDATE dbs SET policy = ?2, lww_field = ?3 WHERE name = ?1",
                params![db, policy.name(), policy.lww_field()],
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
            let (result, seq) = apply_manual_resolution(tx, db, id, leaves, update, now)?;
            moved.seq(db, seq);
            Ok(WriteReply::Resolved(result))
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
            let (id, count, age, revs_limit): (i64, Option<i64>, Option<i64>, i64) = tx
                .query_row(
                    "SELECT id, retention_count, retention_age, revs_limit FROM dbs WHERE name = ?1",
                    [db],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?
                .ok_or(StoreError::NoDb)?;
            let retention = super::retention::Retention {
                max_events_per_doc: count.map(|c| c as u64),
                max_age_seconds: age.map(|a| a as u64),
            };
            let dropped =
                super::retention::apply(tx, id, retention, revs_limit as usize, now / 1000)?;
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

/// The per-database state a batch of document updates works on.
struct DbState {
    id: i64,
    seq: u64,
    revs_limit: usize,
    doc_count: i64,
    doc_del_count: i64,
    active_size: i64,
    policy: Policy,
    /// Whether the database keeps an access index (per-document access).
    access: bool,
}

/// Either a per-document refusal or a failure of the whole transaction.
enum ApplyError {
    Doc(DocError),
    Store(StoreError),
}

impl From<DocError> for ApplyError {
    fn from(e: DocError) -> Self {
        ApplyError::Doc(e)
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Store(e.into())
    }
}

fn load_state(tx: &Connection, db: &str) -> Result<DbState, StoreError> {
    tx.query_row(
        "SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size, policy, lww_field,
                EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id)
         FROM dbs WHERE name = ?1",
        [db],
        |r| {
            Ok(DbState {
                id: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                revs_limit: r.get::<_, i64>(2)? as usize,
                doc_count: r.get(3)?,
                doc_del_count: r.get(4)?,
                active_size: r.get(5)?,
                policy: Policy::from_parts(&r.get::<_, String>(6)?, r.get(7)?).unwrap_or_default(),
                access: r.get(8)?,
            })
        },
    )
    .optional()?
    .ok_or(StoreError::NoDb)
}

fn save_state(tx: &Connection, state: &DbState) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE dbs SET update_seq = ?2, doc_count = ?3, doc_del_count = ?4, active_size = ?5 WHERE id = ?1",
        params![state.id, state.seq as i64, state.doc_count, state.doc_del_count, state.active_size],
    )?;
    Ok(())
}

/// How far the writer got with one request's document updates.
struct DocsProgress {
    /// The database's row id when the first chunk ran: a later chunk that finds another database
    /// of that name (deleted and created again in between) stops.
    db_id: i64,
    /// Indexes of the updates, grouped by document, documents in order of first appearance.
    groups: Vec<Vec<usize>>,
    /// The next group to apply.
    next: usize,
    /// One result per update, in request order, filled in as groups are applied.
    results: Vec<Option<Result<Rev, DocError>>>,
}

impl DocsProgress {
    fn new(db_id: i64, updates: &[DocUpdate]) -> DocsProgress {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (i, update) in updates.iter().enumerate() {
            let group = *by_id.entry(update.id.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(i);
        }
        DocsProgress {
            db_id,
            groups,
            next: 0,
            results: vec![None; updates.len()],
        }
    }

    /// Updates not applied yet.
    fn remaining(&self) -> usize {
        self.groups[self.next.min(self.groups.len())..]
            .iter()
            .map(Vec::len)
            .sum()
    }
}

/// Applies every update of one document in request order, on its tree loaded once, then
/// resolves it once and stores it once.
fn apply_doc_group(
    tx: &Connection,
    state: &mut DbState,
    updates: &mut [DocUpdate],
    group: &[usize],
    results: &mut [Option<Result<Rev, DocError>>],
    now: i64,
) -> Result<(), StoreError> {
    let mut doc = DocWrite::load(tx, state.id, &updates[group[0]].id)?;
    let mut accepted = false;
    for &i in group {
        results[i] = Some(match apply_doc(tx, state, &mut doc, &mut updates[i]) {
            Ok(rev) => {
                accepted = true;
                Ok(rev)
            }
            Err(ApplyError::Doc(e)) => Err(e),
            Err(ApplyError::Store(e)) => return Err(e),
        });
    }
    // Automatic policies resolve once per document after all of its revisions in the request,
    // so the revisions a replicator sends together (a peer's resolution and its tombstones) are
    // judged together.
    if accepted && state.policy != Policy::Manual {
        resolve_automatically(tx, state, &mut doc)?;
    }
    doc.store(tx, state, now)
}

/// One document as a request writes it: its tree, loaded once; every revision the request adds
/// goes into it, and the document row, the tree and the events are written once at the end, with
/// one new sequence for the document however many revisions it received (as CouchDB does).
struct DocWrite {
    id: String,
    tree: RevTree,
    /// The stored row's `deleted` flag, for the counters; `None` when the document had no row.
    was_deleted: Option<bool>,
    /// Events of the revisions added, in order; they are written with the document's sequence.
    events: Vec<PendingEvent>,
}

/// An accepted revision's event, waiting for its document's sequence.
struct PendingEvent {
    kind: &'static str,
    rev: Rev,
    parent: Option<Rev>,
    origin: String,
    detail: Option<String>,
}

impl DocWrite {
    fn load(tx: &Connection, db: i64, id: &str) -> Result<DocWrite, StoreError> {
        let row: Option<(bool, String)> = tx
            .prepare_cached("SELECT deleted, tree FROM docs WHERE db = ?1 AND id = ?2")?
            .query_row(params![db, id], |r| Ok((r.get::<_, bool>(0)?, r.get(1)?)))
            .optional()?;
        let (was_deleted, tree) = match row {
            Some((deleted, json)) => {
                let tree = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("revision tree of {id}: {e}")))?;
                (Some(deleted), tree)
            }
            None => (None, RevTree::new()),
        };
        Ok(DocWrite {
            id: id.to_owned(),
            tree,
            was_deleted,
            events: Vec::new(),
        })
    }

    /// Stores a revision just added to the tree: its body now (later revisions of the request may
    /// take attachment stubs from it, and policies read it), its event with the document.
    fn add(
        &mut self,
        tx: &Connection,
        state: &mut DbState,
        revision: &NewRevision<'_>,
        origin: &Origin,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let body_json =
            serde_json::to_string(revision.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        state.active_size += body_json.len() as i64;
        tx.prepare_cached(
            "INSERT INTO revs (db, doc, rev, deleted, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (db, doc, rev) DO NOTHING",
        )?
        .execute(params![
            state.id,
            self.id,
            revision.rev.to_string(),
            revision.deleted,
            body_json
        ])?;
        self.events.push(PendingEvent {
            kind: revision.kind,
            rev: revision.rev.clone(),
            parent: revision.parent.cloned(),
            origin: origin.label(),
            detail,
        });
        // Counted when stored in the transaction, so a rolled-back batch is counted too; rare
        // enough (a failed commit) not to matter for rates.
        metrics::counter!("outpost_documents_written_total", "kind" => revision.kind).increment(1);
        match revision.kind {
            "conflict" => {
                metrics::counter!("outpost_conflicts_detected_total", "policy" => state.policy.name())
                    .increment(1)
            }
            "resolved" => {
                metrics::counter!("outpost_conflicts_resolved_total", "policy" => state.policy.name())
                    .increment(1)
            }
            _ => {}
        }
        Ok(())
    }

    /// Stems the tree and writes the document row, the counters and the events, under one new
    /// sequence. Does nothing when no revision was added.
    fn store(&mut self, tx: &Connection, state: &mut DbState, now: i64) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        self.tree.stem(state.revs_limit);
        state.seq += 1;
        let deleted = self.tree.is_deleted();
        let winner = self
            .tree
            .winner()
            .map(|l| l.rev.to_string())
            .unwrap_or_default();
        let tree_json =
            serde_json::to_string(&self.tree).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.prepare_cached(
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (db, id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted,
                 conflicted = excluded.conflicted, winner = excluded.winner, tree = excluded.tree",
        )?
        .execute(params![
            state.id,
            self.id,
            state.seq as i64,
            deleted,
            self.tree.is_conflicted(),
            winner,
            tree_json
        ])?;
        if state.access {
            super::access::index_doc(tx, state.id, &self.id, state.seq, &winner, deleted)?;
        }
        match (self.was_deleted, deleted) {
            (None, false) => state.doc_count += 1,
            (None, true) => state.doc_del_count += 1,
            (Some(true), false) => {
                state.doc_del_count -= 1;
                state.doc_count += 1;
            }
            (Some(false), true) => {
                state.doc_count -= 1;
                state.doc_del_count += 1;
            }
            _ => {}
        }
        self.was_deleted = Some(deleted);
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (pos, event) in self.events.drain(..).enumerate() {
            insert.execute(params![
                state.id,
                state.seq as i64,
                pos as i64,
                event.kind,
                self.id,
                event.rev.to_string(),
                event.parent.as_ref().map(Rev::to_string),
                event.origin,
                now / 1000,
                event.detail,
            ])?;
        }
        Ok(())
    }
}

fn load_bodies(
    tx: &Connection,
    db: i64,
    id: &str,
    revs: &[Rev],
) -> Result<HashMap<Rev, Value>, StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
    let mut out = HashMap::new();
    for rev in revs {
        let body: Option<String> = stmt
            .query_row(params![db, id, rev.to_string()], |r| r.get(0))
            .optional()?;
        if let Some(body) = body {
            let value =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.insert(rev.clone(), value);
        }
    }
    Ok(out)
}

/// Whether an edit of `rev` would pass [`MAX_GENERATION`].
fn at_generation_limit(rev: &Rev) -> bool {
    rev.generation >= MAX_GENERATION
}

fn generation_limit_error(rev: &Rev) -> DocError {
    DocError::Invalid(format!(
        "revision {rev} is at the highest generation ({MAX_GENERATION}) and cannot be edited"
    ))
}

/// Applies the database's policy to a document that may have live conflicts.
fn resolve_automatically(
    tx: &Connection,
    state: &mut DbState,
    doc: &mut DocWrite,
) -> Result<(), StoreError> {
    let needed = policy::needed_bodies(&state.policy, &doc.tree);
    if needed.is_empty() {
        return Ok(());
    }
    let bodies = load_bodies(tx, state.id, &doc.id, &needed)?;
    let resolution = match policy::resolve(&state.policy, &doc.tree, &bodies) {
        Ok(Some(resolution)) => resolution,
        Ok(None) => return Ok(()),
        Err(why) => {
            // Another replica, one that holds what this one lacks, resolves it.
            tracing::debug!(doc = %doc.id, reason = why.as_str(), "conflict left for a replica that can resolve it");
            metrics::counter!("outpost_conflicts_unresolved_total", "policy" => state.policy.name(), "reason" => why.as_str())
                .increment(1);
            return Ok(());
        }
    };
    if resolution.superseded().iter().any(at_generation_limit) {
        // Its revisions would pass the highest generation: the conflict stays for a client.
        tracing::warn!(doc = %doc.id, "conflict at the highest generation left unresolved");
        return Ok(());
    }
    let detail = serde_json::json!({
        "policy": state.policy.name(),
        "superseded": resolution.superseded().iter().map(Rev::to_string).collect::<Vec<_>>(),
    })
    .to_string();
    let kept = match &resolution.merged {
        Some((rev, Value::Object(body))) => Some((rev, body)),
        Some(_) => {
            return Err(StoreError::Corrupt(format!(
                "merged body of {} is not an object",
                doc.id
            )));
        }
        None => None,
    };
    let written = Resolved {
        winner: &resolution.winner,
        kept,
        tombstones: &resolution.tombstones,
        origin: &Origin::Resolver,
        detail: &detail,
    };
    commit_resolution(tx, state, doc, &written)
}

/// `_resolve`: the client's body becomes a child of the winner and the other leaves it names are
/// tombstoned. The leaves named must be exactly the live ones, so a resolution made from a
/// stale read is refused as a conflict. Answers the result and the database's sequence.
fn apply_manual_resolution(
    tx: &Connection,
    db: &str,
    id: &str,
    leaves: &[Rev],
    update: &DocUpdate,
    now: i64,
) -> Result<(Result<Rev, DocError>, u64), StoreError> {
    let mut state = load_state(tx, db)?;
    let seq = state.seq;
    let mut doc = DocWrite::load(tx, state.id, id)?;
    if doc.tree.is_empty() {
        return Ok((Err(DocError::Conflict), seq));
    }
    let mut live: Vec<Rev> = doc
        .tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect();
    let mut named = leaves.to_vec();
    live.sort();
    named.sort();
    named.dedup();
    let Some(winner) = doc.tree.winner().filter(|w| !w.deleted).map(|w| w.rev) else {
        return Ok((Err(DocError::Conflict), seq));
    };
    if live != named {
        return Ok((Err(DocError::Conflict), seq));
    }
    if let Some(top) = live.iter().find(|r| at_generation_limit(r)) {
        return Ok((Err(generation_limit_error(top)), seq));
    }
    let mut body = update.body.clone();
    match resolve_attachments(
        tx,
        state.id,
        id,
        &mut body,
        &live,
        winner.generation + 1,
        false,
    ) {
        Ok(()) => {}
        Err(ApplyError::Doc(e)) => return Ok((Err(e), seq)),
        Err(ApplyError::Store(e)) => return Err(e),
    }
    for att in &update.new_attachments {
        store_attachment(tx, att)?;
    }
    let rev = hash::next_rev_of_fields(Some(&winner), false, &body);
    if doc.tree.contains(&rev) {
        return Ok((Err(DocError::Conflict), seq));
    }
    let detail = serde_json::json!({
        "policy": "manual",
        "superseded": live.iter().map(Rev::to_string).collect::<Vec<_>>(),
    })
    .to_string();
    let tombstones: Vec<(Rev, Rev)> = live
        .iter()
        .filter(|r| **r != winner)
        .map(|loser| {
            (
                loser.clone(),
                hash::next_rev_of_fields(Some(loser), true, &Map::new()),
            )
        })
        .collect();
    let written = Resolved {
        winner: &winner,
        kept: Some((&rev, &body)),
        tombstones: &tombstones,
        origin: &update.origin,
        detail: &detail,
    };
    commit_resolution(tx, &mut state, &mut doc, &written)?;
    doc.store(tx, &mut state, now)?;
    save_state(tx, &state)?;
    Ok((Ok(rev), state.seq))
}

/// The revisions one resolution writes.
struct Resolved<'a> {
    winner: &'a Rev,
    /// The body kept, written as a child of `winner` (absent when the winner stays as it is).
    kept: Option<(&'a Rev, &'a Map<String, Value>)>,
    /// (losing leaf, its tombstone).
    tombstones: &'a [(Rev, Rev)],
    origin: &'a Origin,
    /// The event detail: policy and superseded leaves.
    detail: &'a str,
}

/// Adds a resolution's revisions to the document as `resolved` events.
fn commit_resolution(
    tx: &Connection,
    state: &mut DbState,
    doc: &mut DocWrite,
    resolved: &Resolved<'_>,
) -> Result<(), StoreError> {
    let empty = Map::new();
    let kept = resolved
        .kept
        .map(|(rev, body)| (rev, resolved.winner, false, body));
    let tombstones = resolved
        .tombstones
        .iter()
        .map(|(loser, tomb)| (tomb, loser, true, &empty));
    for (rev, parent, deleted, body) in kept.into_iter().chain(tombstones) {
        doc.tree
            .add_edit(Some(parent), rev.clone(), deleted)
            .map_err(|_| {
                StoreError::Corrupt(format!("resolution of {} does not extend a leaf", doc.id))
            })?;
        let revision = NewRevision {
            rev,
            parent: Some(parent),
            deleted,
            body,
            kind: "resolved",
        };
        doc.add(
            tx,
            state,
            &revision,
            resolved.origin,
            Some(resolved.detail.to_owned()),
        )?;
    }
    Ok(())
}

fn apply_doc(
    tx: &Connection,
    state: &mut DbState,
    doc: &mut DocWrite,
    update: &mut DocUpdate,
) -> Result<Rev, ApplyError> {
    let tree = &mut doc.tree;
    // What the event log needs to know about the document before this revision.
    let was_empty = tree.is_empty();
    let was_deleted_doc = tree.is_deleted();
    // Taken, not cloned: a write is applied once, and its body is not needed afterwards.
    let mut body = std::mem::take(&mut update.body);

    let (rev, parent, detail, extends_leaf) = match &update.mode {
        UpdateMode::Edit { base } => {
            let parent = match base {
                Some(b) if tree.is_leaf(b) => Some(b.clone()),
                Some(_) => return Err(DocError::Conflict.into()),
                None if tree.is_empty() => None,
                // CouchDB lets a deleted document be written again without a revision: the new
                // revision continues the deleted winner's branch.
                None if tree.is_deleted() => tree.winner().map(|w| w.rev),
                None => return Err(DocError::Conflict.into()),
            };
            if let Some(p) = parent.as_ref().filter(|p| at_generation_limit(p)) {
                return Err(generation_limit_error(p).into());
            }
            let generation = parent.as_ref().map_or(1, |p| p.generation + 1);
            let sources: Vec<Rev> = parent.iter().cloned().collect();
            resolve_attachments(
                tx, state.id, &doc.id, &mut body, &sources, generation, false,
            )?;
            let rev = hash::next_rev_of_fields(parent.as_ref(), update.deleted, &body);
            tree.add_edit(parent.as_ref(), rev.clone(), update.deleted)
                .map_err(|_| DocError::Conflict)?;
            // An interactive edit always continues a leaf (or starts the document).
            let extends_leaf = parent.is_some();
            (rev, parent, None, extends_leaf)
        }
        UpdateMode::Replicate { path } => {
            let leaf = path.first().ok_or(DocError::InvalidPath)?.clone();
            if tree.contains(&leaf) {
                // Already known: receiving a revision twice changes nothing and takes no sequence.
                return Ok(leaf);
            }
            if leaf.generation > MAX_GENERATION {
                return Err(DocError::InvalidPath.into());
            }
            // Stubs take their metadata from the path, then from the current leaves; the leaves
            // are only listed when there is an attachment to resolve.
            if body.contains_key("_attachments") {
                let mut sources: Vec<Rev> = path.iter().skip(1).cloned().collect();
                sources.extend(tree.leaves().into_iter().map(|l| l.rev));
                resolve_attachments(
                    tx,
                    state.id,
                    &doc.id,
                    &mut body,
                    &sources,
                    leaf.generation,
                    true,
                )?;
            }
            let extends_leaf = path.get(1).is_some_and(|p| tree.is_leaf(p));
            let added = tree
                .merge_path(path, update.deleted)
                .map_err(|_| DocError::InvalidPath)?;
            let parent = tree.parent(&leaf).cloned();
            // The path is kept with the event so that replaying the log rebuilds the same tree.
            let detail = serde_json::json!({ "path": path.iter().map(Rev::to_string).collect::<Vec<_>>(), "added": added.len() });
            (leaf, parent, Some(detail.to_string()), extends_leaf)
        }
    };
    for att in &update.new_attachments {
        store_attachment(tx, att)?;
    }
    let kind = event_kind(was_empty, was_deleted_doc, extends_leaf, update.deleted);
    let revision = NewRevision {
        rev: &rev,
        parent: parent.as_ref(),
        deleted: update.deleted,
        body: &body,
        kind,
    };
    doc.add(tx, state, &revision, &update.origin, detail)?;
    Ok(rev)
}

/// A revision already added to the tree, to be stored.
struct NewRevision<'a> {
    rev: &'a Rev,
    parent: Option<&'a Rev>,
    deleted: bool,
    body: &'a Map<String, Value>,
    kind: &'static str,
}

/// What an accepted revision did to its document, for the event log, from what the document
/// was before it (`was_empty`, `was_deleted`) and whether the revision continues a leaf.
fn event_kind(
    was_empty: bool,
    was_deleted: bool,
    extends_leaf: bool,
    deleted: bool,
) -> &'static str {
    if was_empty {
        return if deleted { "deleted" } else { "created" };
    }
    if deleted {
        return "deleted";
    }
    // A new live branch: the revision does not extend an existing leaf, so the document now has
    // a second live leaf (or revives a deleted one on another branch).
    if !extends_leaf && !was_deleted {
        "conflict"
    } else {
        "updated"
    }
}

/// Gives every attachment of `body` its stored form: stubs take their metadata from the first of
/// `sources` (revisions, newest first) that has an attachment of that name; new attachments get
/// `revpos` (kept from the sender when replicating) and become stubs.
fn resolve_attachments(
    tx: &Connection,
    db: i64,
    doc: &str,
    body: &mut Map<String, Value>,
    sources: &[Rev],
    generation: u64,
    replicated: bool,
) -> Result<(), ApplyError> {
    let Some(atts) = body.get_mut("_attachments") else {
        return Ok(());
    };
    let Some(atts) = atts.as_object_mut() else {
        return Err(DocError::Invalid("_attachments must be an object".into()).into());
    };
    let mut source_atts: Option<Vec<Map<String, Value>>> = None;
    for (name, att) in atts.iter_mut() {
        let Some(obj) = att.as_object_mut() else {
            return Err(DocError::Invalid(format!("attachment {name} must be an object")).into());
        };
        if obj.get("stub").and_then(Value::as_bool) == Some(true) {
            if source_atts.is_none() {
                source_atts = Some(load_attachment_maps(tx, db, doc, sources)?);
            }
            let found = source_atts
                .as_ref()
                .into_iter()
                .flatten()
                .find_map(|m| m.get(name).and_then(Value::as_object))
                .filter(|prev| match obj.get("digest") {
                    Some(d) => prev.get("digest") == Some(d),
                    None => true,
                })
                .cloned();
            match found {
                Some(prev) => *obj = prev,
                None => {
                    return Err(DocError::MissingStub {
                        doc: doc.to_owned(),
                        name: name.clone(),
                    }
                    .into());
                }
            }
        } else {
            if !(replicated && obj.get("revpos").and_then(Value::as_u64).is_some()) {
                obj.insert("revpos".into(), Value::from(generation));
            }
            obj.insert("stub".into(), Value::Bool(true));
        }
    }
    Ok(())
}

fn load_attachment_maps(
    tx: &Connection,
    db: i64,
    doc: &str,
    sources: &[Rev],
) -> Result<Vec<Map<String, Value>>, ApplyError> {
    let mut out = Vec::new();
    let mut stmt =
        tx.prepare_cached("SELECT body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
    for rev in sources {
        let body: Option<String> = stmt
            .query_row(params![db, doc, rev.to_string()], |r| r.get(0))
            .optional()?;
        if let Some(body) = body {
            let value: Value =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(Value::Object(atts)) = value.get("_attachments") {
                out.push(atts.clone());
            }
        }
    }
    Ok(out)
}

fn store_attachment(tx: &Connection, att: &NewAttachment) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO attachments (digest, length, data) VALUES (?1, ?2, ?3) ON CONFLICT (digest) DO NOTHING",
    )?
    .execute(params![att.digest, att.data.len() as i64, att.data])?;
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
