//! Replaying the event log: the document tables are a projection of `events`, and this module
//! proves it by rebuilding them from the log alone and comparing.
//!
//! Every event names its revision and parent; a replicated write also keeps the `_revisions` path
//! it merged, and the `revs` table says whether each revision was a deletion. Applying the events
//! in sequence order with the same tree operations the writer used (edit, path merge, stemming)
//! must give every document the same tree, winner and latest sequence as the live tables. When
//! retention trimmed old events, a document's replay starts from the baseline tree compaction
//! kept for it.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_core::RevTree;
use rusqlite::{OpenFlags, OptionalExtension, params};

use super::retention;
use crate::StoreError;

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Events replayed.
    pub events: u64,
    /// Documents rebuilt.
    pub docs: u64,
    /// Every difference between the rebuilt and the live tables, one line each.
    pub differences: Vec<String>,
}

impl ReplayReport {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The state of one document rebuilt from its events.
struct Rebuilt {
    tree: RevTree,
    seq: u64,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Rebuilds database `db` of the plain store in `dir` from its event log and compares the
/// result with the live document tables. Opens the file read-only; a running server may keep
/// writing.
pub fn rebuild(dir: &Path, db: &str) -> Result<ReplayReport, StoreError> {
    rebuild_with_key(dir, db, None)
}

/// [`rebuild`] for a store encrypted with `key` (or plain, with `None`).
pub fn rebuild_with_key(
    dir: &Path,
    db: &str,
    key: Option<&super::StoreKey>,
) -> Result<ReplayReport, StoreError> {
    let path = dir.join(super::FILE_NAME);
    if !path.exists() {
        return Err(corrupt(format!("no store at {}", path.display())));
    }
    let mut conn = super::key::open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY, key)?;
    // One read transaction, so the log and the tables are seen at the same instant.
    let tx = conn.transaction()?;
    let (db_id, revs_limit): (i64, i64) = tx
        .query_row(
            "SELECT id, revs_limit FROM dbs WHERE name = ?1",
            [db],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or(StoreError::NoDb)?;
    let mut report = ReplayReport::default();
    let mut rebuilt: BTreeMap<String, Rebuilt> = BTreeMap::new();
    let events = retention::read_events(&tx, db_id, None)?;
    for (i, (id, event)) in events.iter().enumerate() {
        if !rebuilt.contains_key(id) {
            // Retention may have folded older events into a baseline tree: start from it.
            let start = retention::baseline(&tx, db_id, id)?;
            let (seq, tree) = start.unwrap_or((0, RevTree::new()));
            rebuilt.insert(id.clone(), Rebuilt { tree, seq });
        }
        let doc = rebuilt.get_mut(id).expect("inserted above");
        // A sequence holds one document's events, so the next event tells where it ends.
        let last_of_seq = events.get(i + 1).is_none_or(|(_, e)| e.seq != event.seq);
        retention::apply_event(
            &mut doc.tree,
            event,
            revs_limit.max(1) as usize,
            last_of_seq,
        )?;
        doc.seq = event.seq;
        report.events += 1;
    }
    // A document whose every event was trimmed lives on in its baseline alone.
    {
        let mut stmt = tx.prepare("SELECT doc, seq, tree FROM event_baselines WHERE db = ?1")?;
        let mut rows = stmt.query(params![db_id])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = rebuilt.entry(id) {
                let tree: RevTree =
                    serde_json::from_str(&row.get::<_, String>(2)?).map_err(corrupt)?;
                slot.insert(Rebuilt {
                    tree,
                    seq: row.get::<_, i64>(1)? as u64,
                });
            }
        }
    }
    report.docs = rebuilt.len() as u64;

    let mut stmt =
        tx.prepare("SELECT id, seq, deleted, tree FROM docs WHERE db = ?1 ORDER BY id")?;
    let mut rows = stmt.query(params![db_id])?;
    let mut live_ids = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let seq = row.get::<_, i64>(1)? as u64;
        let deleted: bool = row.get(2)?;
        let tree: RevTree = serde_json::from_str(&row.get::<_, String>(3)?).map_err(corrupt)?;
        match rebuilt.get(&id) {
            None => report.differences.push(format!(
                "{id}: in the document table but not in the event log"
            )),
            Some(r) => {
                if r.tree != tree {
                    report.differences.push(format!(
                        "{id}: revision tree differs (log has {} revisions, winner {:?}; table has {}, winner {:?})",
                        r.tree.len(),
                        r.tree.winner().map(|w| w.rev.to_string()),
                        tree.len(),
                        tree.winner().map(|w| w.rev.to_string()),
                    ));
                }
                if r.seq != seq {
                    report.differences.push(format!(
                        "{id}: sequence differs (log {}, table {seq})",
                        r.seq
                    ));
                }
                if r.tree.is_deleted() != deleted {
                    report
                        .differences
                        .push(format!("{id}: deleted flag differs"));
                }
            }
        }
        live_ids.push(id);
    }
    for id in rebuilt.keys() {
        if live_ids.binary_search(id).is_err() {
            report.differences.push(format!(
                "{id}: in the event log but not in the document table"
            ));
        }
    }
    Ok(report)
}
