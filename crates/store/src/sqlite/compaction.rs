//! Compaction: giving back the space that history no longer needs.
//!
//! Like CouchDB's, a compaction keeps every document's revision tree and the bodies of its leaves,
//! and drops the bodies of every other revision: superseded ones and those stemmed out of the tree
//! by `_revs_limit`. Reading such a revision then answers `missing`. The event log keeps what
//! replay needs (revision, parent, merged path and deletion flag) without any body, so it
//! outlives the bodies; how much of the log is kept is retention's business (`retention.rs`),
//! applied first.
//!
//! Attachment bytes are stored once per digest and shared by every revision, document and
//! database that has the same bytes. They are collected by mark and sweep rather than reference
//! counts: the digests referenced by stored bodies are read from one snapshot on a read
//! connection (so the writer is not held while every body is scanned), and the writer then
//! deletes the unreferenced ones, after checking the bodies stored since that snapshot (the
//! revisions whose events come after each database's sequence at the time). Nothing on the
//! write path counts references, so no write can get a count wrong, and a file written by any
//! earlier version is collected correctly.
//!
//! Finally the free pages are given back to the file system with SQLite's incremental vacuum and
//! the WAL is folded back into the file. Every step is a bounded writer job, so writes to any
//! database go on between the steps of a long compaction.

use std::collections::HashSet;

use outpost_core::RevTree;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

/// Documents one writer step goes through when dropping superseded bodies.
pub(super) const DOCS_PER_STEP: u64 = 500;
/// Unreferenced attachments one writer step deletes.
pub(super) const ATTACHMENTS_PER_STEP: usize = 1000;
/// Free pages one writer step gives back (16 MiB with the default 4 KiB page).
pub(super) const PAGES_PER_STEP: u64 = 4096;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Drops the bodies of the revisions that are not leaves, for the documents of database `db`
/// whose ids come after `after`, at most [`DOCS_PER_STEP`] of them. Returns the last id gone
/// through, or `None` when there are no documents left.
pub(super) fn drop_superseded(
    tx: &Connection,
    db: &str,
    after: &str,
) -> Result<Option<String>, StoreError> {
    let db: i64 = tx
        .prepare_cached("SELECT id FROM dbs WHERE name = ?1")?
        .query_row([db], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)?;
    let docs: Vec<(String, String)> = tx
        .prepare_cached("SELECT id, tree FROM docs WHERE db = ?1 AND id > ?2 ORDER BY id LIMIT ?3")?
        .query_map(params![db, after, DOCS_PER_STEP as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut freed: i64 = 0;
    for (id, tree) in &docs {
        let tree: RevTree = serde_json::from_str(tree)
            .map_err(|e| corrupt(format!("revision tree of {id}: {e}")))?;
        let leaves: HashSet<String> = tree
            .leaves()
            .into_iter()
            .map(|l| l.rev.to_string())
            .collect();
        let stored: Vec<(String, i64)> = tx
            .prepare_cached("SELECT rev, octet_length(body) FROM revs WHERE db = ?1 AND doc = ?2")?
            .query_map(params![db, id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let gone: Vec<&(String, i64)> = stored
            .iter()
            .filter(|(rev, _)| !leaves.contains(rev))
            .collect();
        if gone.is_empty() {
            continue;
        }
        let mut delete =
            tx.prepare_cached("DELETE FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
        for (rev, length) in gone {
            delete.execute(params![db, id, rev])?;
            freed += length;
        }
    }
    if freed > 0 {
        tx.prepare_cached("UPDATE dbs SET active_size = max(0, active_size - ?2) WHERE id = ?1")?
            .execute(params![db, freed])?;
    }
    if (docs.len() as u64) < DOCS_PER_STEP {
        return Ok(None);
    }
    Ok(docs.last().map(|(id, _)| id.clone()))
}

/// What the mark phase found: digests no stored body referred to, and where each database's
/// sequence stood when it looked.
pub(super) struct SweepPlan {
    pub candidates: Vec<String>,
    /// `(database id, created_at, update_seq)` of every database at the snapshot.
    pub seen: Vec<(i64, i64, i64)>,
}

/// The digests in the `_attachments` of stored bodies, as one SQL expression over `r.body`.
/// `instr` skips the JSON parse for the many bodies without attachments.
const REFERENCED: &str = "SELECT json_extract(a.value, '$.digest') AS digest
     FROM revs r, json_each(r.body, '$._attachments') a
     WHERE instr(r.body, '\"_attachments\"') > 0 AND a.type = 'object'";

/// The mark phase, on a read connection: every attachment no stored body refers to.
pub(super) fn plan_sweep(c: &Connection) -> Result<SweepPlan, StoreError> {
    let tx = c.unchecked_transaction()?;
    let seen = tx
        .prepare("SELECT id, created_at, update_seq FROM dbs")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let candidates = tx
        .prepare(&format!(
            "SELECT digest FROM attachments WHERE digest NOT IN
                 (SELECT digest FROM ({REFERENCED}) WHERE digest IS NOT NULL)"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    drop(tx);
    Ok(SweepPlan { candidates, seen })
}

/// The sweep, in the writer: deletes the candidates that no body stored since the snapshot
/// refers to either. Returns how many were deleted.
pub(super) fn sweep(
    tx: &Connection,
    candidates: &[String],
    seen: &[(i64, i64, i64)],
) -> Result<u64, StoreError> {
    let dbs: Vec<(i64, i64, i64)> = tx
        .prepare_cached("SELECT id, created_at, update_seq FROM dbs")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut since_snapshot: HashSet<String> = HashSet::new();
    for (id, created_at, seq) in dbs {
        // A database created since the snapshot (even one that reuses a deleted one's id) is
        // read from its start.
        let since = seen
            .iter()
            .find(|(i, c, _)| *i == id && *c == created_at)
            .map_or(0, |(_, _, s)| *s);
        if since >= seq {
            continue;
        }
        let mut stmt = tx.prepare_cached(
            "SELECT json_extract(a.value, '$.digest')
             FROM events e JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev,
                  json_each(r.body, '$._attachments') a
             WHERE e.db = ?1 AND e.seq > ?2 AND instr(r.body, '\"_attachments\"') > 0
               AND a.type = 'object'",
        )?;
        let digests = stmt.query_map(params![id, since], |r| r.get::<_, Option<String>>(0))?;
        for digest in digests {
            since_snapshot.extend(digest?);
        }
    }
    let mut delete = tx.prepare_cached("DELETE FROM attachments WHERE digest = ?1")?;
    let mut deleted = 0;
    for digest in candidates.iter().filter(|d| !since_snapshot.contains(*d)) {
        deleted += delete.execute([digest])? as u64;
    }
    Ok(deleted)
}

/// Gives up to [`PAGES_PER_STEP`] free pages back to the file system; returns how many free
/// pages are left.
pub(super) fn vacuum_step(tx: &Connection) -> Result<u64, StoreError> {
    tx.execute_batch(&format!("PRAGMA incremental_vacuum({PAGES_PER_STEP})"))?;
    let left: i64 = tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(left.max(0) as u64)
}
