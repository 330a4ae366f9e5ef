//! Replaying the event log: the document tables are a projection of `events`, and this module
//! proves it by rebuilding them from the log alone and comparing.
//!
//! Every event names its revision and parent; a replicated write also keeps the `_revisions` path
//! it merged, and the `revs` table says whether each revision was a deletion. Applying the events
//! in sequence order with the same tree operations the writer used (edit, path merge, stemming)
//! must give every document the same tree, winner and latest sequence as the live tables.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_core::{Rev, RevTree};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;

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

/// Rebuilds database `db` of the store in `dir` from its event log and compares the result
/// with the live document tables. Opens the file read-only; a running server may keep writing.
pub fn rebuild(dir: &Path, db: &str) -> Result<ReplayReport, StoreError> {
    let path = dir.join(super::FILE_NAME);
    if !path.exists() {
        return Err(corrupt(format!("no store at {}", path.display())));
    }
    let mut conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
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
    {
        let mut stmt = tx.prepare(
            "SELECT e.seq, e.doc, e.rev, e.parent, e.detail, r.deleted
             FROM events e LEFT JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev
             WHERE e.db = ?1 ORDER BY e.seq",
        )?;
        let mut rows = stmt.query(params![db_id])?;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let id: String = row.get(1)?;
            let rev: Rev = row.get::<_, String>(2)?.parse().map_err(corrupt)?;
            let parent: Option<Rev> = row
                .get::<_, Option<String>>(3)?
                .map(|p| p.parse())
                .transpose()
                .map_err(corrupt)?;
            let detail: Option<Value> = row
                .get::<_, Option<String>>(4)?
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(corrupt)?;
            let deleted = row
                .get::<_, Option<bool>>(5)?
                .ok_or_else(|| corrupt(format!("event {seq}: no stored revision {rev} of {id}")))?;
            let doc = rebuilt.entry(id).or_insert_with(|| Rebuilt {
                tree: RevTree::new(),
                seq: 0,
            });
            let path: Vec<Rev> = match detail
                .as_ref()
                .and_then(|d| d.get("path"))
                .and_then(Value::as_array)
            {
                Some(path) => path
                    .iter()
                    .map(|r| r.as_str().unwrap_or_default().parse())
                    .collect::<Result<_, _>>()
                    .map_err(corrupt)?,
                None => std::iter::once(rev.clone()).chain(parent).collect(),
            };
            doc.tree
                .merge_path(&path, deleted)
                .map_err(|e| corrupt(format!("event {seq}: {e}")))?;
            doc.tree.stem(revs_limit.max(1) as usize);
            doc.seq = seq;
            report.events += 1;
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
