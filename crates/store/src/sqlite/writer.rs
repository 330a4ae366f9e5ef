//! The single writer: one thread owns the only write connection and applies every change.
//!
//! Writes wait in a channel. The thread takes every job that is waiting, applies them all in one
//! transaction (each in its own savepoint, so one failing job does not undo the others), commits
//! once, and only then answers each job. Many concurrent writers thus share one fsync (group
//! commit) and nobody hears "ok" before their data is durable.

use std::collections::BTreeMap;
use std::sync::mpsc;

use outpost_core::{Rev, RevTree, hash};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::{DocError, DocUpdate, NewAttachment, StoreError, UpdateMode};

/// The most jobs applied in one transaction; bounds the latency a single commit adds.
const MAX_BATCH: usize = 512;

/// A change for the writer to apply.
pub(super) enum WriteOp {
    CreateDb {
        name: String,
    },
    DeleteDb {
        name: String,
    },
    SetRevsLimit {
        db: String,
        limit: u64,
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
    /// Folds the WAL back into the main file.
    Checkpoint,
}

/// What a job answers.
pub(super) enum WriteReply {
    Done,
    Docs(Vec<Result<Rev, DocError>>),
    LocalRev(u64),
}

pub(super) struct Job {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// Where committed changes are announced: database name and its new update sequence, or `None`
/// when the database was deleted.
pub(super) type Announce = Box<dyn Fn(&str, Option<u64>) + Send>;

/// Runs the writer loop until every sender is gone.
pub(super) fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>, announce: Announce) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut moved: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let outcome = apply_batch(&mut conn, &batch, &mut moved);
        match outcome {
            Ok(results) => {
                for (db, seq) in &moved {
                    announce(db, *seq);
                }
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "write transaction failed");
                let reason = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Corrupt(reason.clone())));
                }
            }
        }
    }
}

/// Applies a batch in one transaction; the outer error means nothing was committed.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
    moved: &mut BTreeMap<String, Option<u64>>,
) -> Result<Vec<Result<WriteReply, StoreError>>, StoreError> {
    if batch.iter().all(|j| matches!(j.op, WriteOp::Checkpoint)) {
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        return Ok(batch.iter().map(|_| Ok(WriteReply::Done)).collect());
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.savepoint()?;
        let result = apply(&sp, &job.op, now, moved);
        match result {
            Ok(_) => sp.commit()?,
            Err(_) => sp.rollback()?,
        }
        results.push(result);
    }
    tx.set_drop_behavior(rusqlite::DropBehavior::Rollback);
    tx.commit()?;
    Ok(results)
}

fn apply(
    tx: &Connection,
    op: &WriteOp,
    now: i64,
    moved: &mut BTreeMap<String, Option<u64>>,
) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::CreateDb { name } => {
            let inserted = tx.execute(
                "INSERT INTO dbs (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, now],
            )?;
            if inserted == 0 {
                return Err(StoreError::DbExists);
            }
            moved.insert(name.clone(), Some(0));
            Ok(WriteReply::Done)
        }
        WriteOp::DeleteDb { name } => {
            let db = db_id(tx, name)?;
            for table in ["docs", "revs", "local_docs", "events"] {
                tx.execute(&format!("DELETE FROM {table} WHERE db = ?1"), [db])?;
            }
            tx.execute("DELETE FROM dbs WHERE id = ?1", [db])?;
            moved.insert(name.clone(), None);
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
        WriteOp::Docs { db, updates } => {
            let results = apply_docs(tx, db, updates, now)?;
            let seq: i64 =
                tx.query_row("SELECT update_seq FROM dbs WHERE name = ?1", [db], |r| {
                    r.get(0)
                })?;
            moved.insert(db.clone(), Some(seq as u64));
            Ok(WriteReply::Docs(results))
        }
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
        WriteOp::Checkpoint => Ok(WriteReply::Done),
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

fn apply_docs(
    tx: &Connection,
    db: &str,
    updates: &[DocUpdate],
    now: i64,
) -> Result<Vec<Result<Rev, DocError>>, StoreError> {
    let mut state = tx
        .query_row(
            "SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size FROM dbs WHERE name = ?1",
            [db],
            |r| {
                Ok(DbState {
                    id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    revs_limit: r.get::<_, i64>(2)? as usize,
                    doc_count: r.get(3)?,
                    doc_del_count: r.get(4)?,
                    active_size: r.get(5)?,
                })
            },
        )
        .optional()?
        .ok_or(StoreError::NoDb)?;
    let mut results = Vec::with_capacity(updates.len());
    for update in updates {
        match apply_doc(tx, &mut state, update, now) {
            Ok(rev) => results.push(Ok(rev)),
            Err(ApplyError::Doc(e)) => results.push(Err(e)),
            Err(ApplyError::Store(e)) => return Err(e),
        }
    }
    tx.execute(
        "UPDATE dbs SET update_seq = ?2, doc_count = ?3, doc_del_count = ?4, active_size = ?5 WHERE id = ?1",
        params![state.id, state.seq as i64, state.doc_count, state.doc_del_count, state.active_size],
    )?;
    Ok(results)
}

fn apply_doc(
    tx: &Connection,
    state: &mut DbState,
    update: &DocUpdate,
    now: i64,
) -> Result<Rev, ApplyError> {
    let existing: Option<(bool, String)> = tx
        .query_row(
            "SELECT deleted, tree FROM docs WHERE db = ?1 AND id = ?2",
            params![state.id, update.id],
            |r| Ok((r.get::<_, bool>(0)?, r.get(1)?)),
        )
        .optional()?;
    let was_deleted = existing.as_ref().map(|(d, _)| *d);
    let mut tree: RevTree = match &existing {
        Some((_, json)) => serde_json::from_str(json)
            .map_err(|e| StoreError::Corrupt(format!("revision tree of {}: {e}", update.id)))?,
        None => RevTree::new(),
    };
    let before = tree.clone();
    let mut body = update.body.clone();

    let (rev, parent) = match &update.mode {
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
            let generation = parent.as_ref().map_or(1, |p| p.generation + 1);
            let sources: Vec<Rev> = parent.iter().cloned().collect();
            resolve_attachments(
                tx, state.id, &update.id, &mut body, &sources, generation, false,
            )?;
            let rev = hash::next_rev(
                parent.as_ref(),
                update.deleted,
                &Value::Object(body.clone()),
            );
            tree.add_edit(parent.as_ref(), rev.clone(), update.deleted)
                .map_err(|_| DocError::Conflict)?;
            (rev, parent)
        }
        UpdateMode::Replicate { path } => {
            let leaf = path.first().ok_or(DocError::InvalidPath)?.clone();
            if tree.contains(&leaf) {
                // Already known: receiving a revision twice changes nothing and takes no sequence.
                return Ok(leaf);
            }
            let mut sources: Vec<Rev> = path.iter().skip(1).cloned().collect();
            sources.extend(tree.leaves().into_iter().map(|l| l.rev));
            resolve_attachments(
                tx,
                state.id,
                &update.id,
                &mut body,
                &sources,
                leaf.generation,
                true,
            )?;
            tree.merge_path(path, update.deleted)
                .map_err(|_| DocError::InvalidPath)?;
            let parent = tree.parent(&leaf).cloned();
            (leaf, parent)
        }
    };
    for att in &update.new_attachments {
        store_attachment(tx, att)?;
    }
    tree.stem(state.revs_limit);

    let body_json = serde_json::to_string(&body).map_err(|e| DocError::Invalid(e.to_string()))?;
    state.active_size += body_json.len() as i64;
    tx.execute(
        "INSERT INTO revs (db, doc, rev, deleted, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (db, doc, rev) DO NOTHING",
        params![
            state.id,
            update.id,
            rev.to_string(),
            update.deleted,
            body_json
        ],
    )?;

    state.seq += 1;
    let deleted = tree.is_deleted();
    let tree_json = serde_json::to_string(&tree).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO docs (db, id, seq, deleted, tree) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (db, id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, tree = excluded.tree",
        params![state.id, update.id, state.seq as i64, deleted, tree_json],
    )?;
    match (was_deleted, deleted) {
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

    let kind = event_kind(&before, parent.as_ref(), update.deleted);
    tx.execute(
        "INSERT INTO events (db, seq, kind, doc, rev, parent, origin, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            state.id,
            state.seq as i64,
            kind,
            update.id,
            rev.to_string(),
            parent.as_ref().map(Rev::to_string),
            update.origin.label(),
            now / 1000,
        ],
    )?;
    Ok(rev)
}

/// What an accepted revision did to its document, for the event log.
fn event_kind(before: &RevTree, parent: Option<&Rev>, deleted: bool) -> &'static str {
    if before.is_empty() {
        return if deleted { "deleted" } else { "created" };
    }
    if deleted {
        return "deleted";
    }
    // A new live branch: the revision does not extend an existing leaf, so the document now has
    // a second live leaf (or revives a deleted one on another branch).
    let extends_leaf = parent.is_some_and(|p| before.is_leaf(p));
    if !extends_leaf && !before.is_deleted() {
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
