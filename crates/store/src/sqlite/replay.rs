//! Replaying a SQLite store's event log (see [`crate::replay`]): [`verify`] rebuilds a
//! database from its log in memory and compares the result with the live tables, beside a
//! running server; [`rebuild`] writes the rebuilt tables into a new file and swaps it in.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_core::{Policy, RevTree};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{StoreKey, lock::DataDirLock, retention};
use crate::StoreError;
use crate::replay::{LiveDb, LiveDoc, Replayed, compare, replay};

pub use crate::replay::{RebuildReport, ReplayReport};

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Rebuilds database `db` of the plain store in `dir` from its event log and compares the
/// result with the live tables. Opens the file read-only; a running server may keep writing.
pub fn verify(dir: &Path, db: &str) -> Result<ReplayReport, StoreError> {
    verify_with_key(dir, db, None)
}

/// [`verify`] for a store encrypted with `key` (or plain, with `None`).
pub fn verify_with_key(
    dir: &Path,
    db: &str,
    key: Option<&StoreKey>,
) -> Result<ReplayReport, StoreError> {
    verify_file(&existing_file(dir)?, db, key)
}

/// [`verify_with_key`] of the store file at `path`.
fn verify_file(path: &Path, db: &str, key: Option<&StoreKey>) -> Result<ReplayReport, StoreError> {
    let mut conn = super::key::open(path, OpenFlags::SQLITE_OPEN_READ_ONLY, key)?;
    // One read transaction, so the log and the tables are seen at the same instant.
    let tx = conn.transaction()?;
    let db_id = db_id(&tx, db)?;
    let replayed = replay_db(&tx, db_id)?;
    let live = live_db(&tx, db_id)?;
    let mut stmt = tx.prepare("SELECT id, seq, deleted, tree FROM docs WHERE db = ?1")?;
    let mut rows = stmt.query(params![db_id])?;
    let mut docs = Vec::new();
    while let Some(row) = rows.next()? {
        let tree: RevTree = serde_json::from_str(&row.get::<_, String>(3)?).map_err(corrupt)?;
        docs.push(Ok(LiveDoc {
            id: row.get(0)?,
            seq: row.get::<_, i64>(1)? as u64,
            deleted: row.get(2)?,
            tree,
        }));
    }
    compare(&replayed, &live, docs)
}

/// Rebuilds database `db` of the store in `dir` (encrypted with `key`, or plain) from its event
/// log alone: its document rows, sequence, counters, `_revs_limit` and policy. What the log does
/// not hold is kept as it is: revision bodies, attachments, `_local` documents, `_security`,
/// retention, the access index of a database with per-document access. Its secondary indexes
/// are dropped, to be built again from the rebuilt documents on first use.
///
/// The store must not be in use: this takes the data directory's lock (which `outpost serve`
/// holds while it runs) and checks that no other process has the file open. The whole store is
/// copied into a new file, the database is rebuilt there in one transaction and checked against
/// its log, and only then does the new file replace the old one (a rename, atomic on the same
/// file system): a failure at any point leaves the old file as it was.
pub fn rebuild(dir: &Path, db: &str, key: Option<&StoreKey>) -> Result<RebuildReport, StoreError> {
    let _lock = DataDirLock::acquire(dir)?;
    let path = existing_file(dir)?;
    // Read-write with create: the attached copy inherits these flags and must be created.
    let original = super::key::open(&path, OpenFlags::default(), key)?;
    // Leaving WAL mode needs the only connection to the file, and folds the WAL into it.
    super::key::exclusive(&original, &path)?;
    db_id(&original, db)?;
    let tmp = path.with_extension("sqlite.rebuilding");
    let result = (|| {
        super::key::export(&original, &tmp, key)?;
        let mut copy = super::key::open(&tmp, OpenFlags::SQLITE_OPEN_READ_WRITE, key)?;
        let report = rebuild_in(&mut copy, db)?;
        drop(copy);
        let check = verify_file(&tmp, db, key)?;
        if !check.matches() {
            return Err(corrupt(format!(
                "the rebuilt tables do not match the log: {}",
                check.differences.join("; ")
            )));
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| corrupt(format!("cannot sync {}: {e}", tmp.display())))?;
        Ok(report)
    })();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    drop(original);
    std::fs::rename(&tmp, &path).map_err(|e| {
        corrupt(format!(
            "cannot replace {} by its rebuilt copy {}: {e}",
            path.display(),
            tmp.display()
        ))
    })?;
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(report)
}

/// Replaces database `db`'s rows in the store `conn` has open by what its log rebuilds, in one
/// transaction.
fn rebuild_in(conn: &mut Connection, db: &str) -> Result<RebuildReport, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let db_id = db_id(&tx, db)?;
    let replayed = replay_db(&tx, db_id)?;
    tx.execute("DELETE FROM docs WHERE db = ?1", [db_id])?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for row in replayed.rows() {
            let row = row?;
            insert.execute(params![
                db_id,
                row.id,
                row.seq as i64,
                row.deleted,
                row.conflicted,
                row.winner,
                row.tree
            ])?;
        }
    }
    let (live, deleted) = replayed.counts();
    let policy: Policy = replayed.settings.policy();
    tx.execute(
        "UPDATE dbs SET update_seq = ?2, doc_count = ?3, doc_del_count = ?4, revs_limit = ?5,
                        policy = ?6, lww_field = ?7
         WHERE id = ?1",
        params![
            db_id,
            replayed.update_seq() as i64,
            live,
            deleted,
            replayed.settings.revs_limit() as i64,
            policy.name(),
            policy.lww_field()
        ],
    )?;
    // Derived from the documents, which may have been wrong: built again on first use.
    super::index::drop_all(&tx, db_id)?;
    tx.commit()?;
    Ok(RebuildReport {
        events: replayed.events,
        docs: replayed.docs.len() as u64,
        update_seq: replayed.update_seq(),
    })
}

fn existing_file(dir: &Path) -> Result<std::path::PathBuf, StoreError> {
    let path = dir.join(super::FILE_NAME);
    if !path.exists() {
        return Err(corrupt(format!("no store at {}", path.display())));
    }
    Ok(path)
}

fn db_id(c: &Connection, db: &str) -> Result<i64, StoreError> {
    c.query_row("SELECT id FROM dbs WHERE name = ?1", [db], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)
}

/// Database `db_id` rebuilt from its log: document events, baselines and setting events.
fn replay_db(c: &Connection, db_id: i64) -> Result<Replayed, StoreError> {
    let events = retention::read_events(c, db_id, None)?;
    let mut baselines = BTreeMap::new();
    let mut stmt = c.prepare("SELECT doc, seq, tree FROM event_baselines WHERE db = ?1")?;
    let mut rows = stmt.query(params![db_id])?;
    while let Some(row) = rows.next()? {
        let tree: RevTree = serde_json::from_str(&row.get::<_, String>(2)?).map_err(corrupt)?;
        baselines.insert(
            row.get::<_, String>(0)?,
            (row.get::<_, i64>(1)? as u64, tree),
        );
    }
    let settings = retention::read_settings(c, db_id)?;
    replay(events, baselines, settings)
}

fn live_db(c: &Connection, db_id: i64) -> Result<LiveDb, StoreError> {
    let (update_seq, doc_count, doc_del_count, revs_limit, policy, field) = c.query_row(
        "SELECT update_seq, doc_count, doc_del_count, revs_limit, policy, lww_field
         FROM dbs WHERE id = ?1",
        [db_id],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        },
    )?;
    Ok(LiveDb {
        update_seq: update_seq as u64,
        doc_count,
        doc_del_count,
        revs_limit: revs_limit as u64,
        policy: Policy::from_parts(&policy, field)
            .ok_or_else(|| corrupt(format!("unknown conflict policy {policy}")))?,
    })
}
