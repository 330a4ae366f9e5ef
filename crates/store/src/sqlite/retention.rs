//! History retention: trimming a database's event log (and the bodies of superseded revisions)
//! during `_compact`, without losing the ability to replay.
//!
//! By default everything is kept. With a retention set, compaction drops, per document, the
//! events beyond the newest `max_events_per_doc` and those older than `max_age_seconds`. Before
//! dropping them it replays them into a *baseline*: the document's revision tree as it stood after
//! the last dropped event. Replay starts from the baseline, so the log still rebuilds the tables.
//! Bodies of revisions that are no longer leaves and whose events were dropped are deleted too;
//! a `merge` resolution that needed one falls back to treating the fields as changed on both
//! sides.

use outpost_core::{Rev, RevTree};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::StoreError;

/// How much history a database keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many events per document (the newest).
    pub max_events_per_doc: Option<u64>,
    /// Drop events older than this.
    pub max_age_seconds: Option<u64>,
}

impl Retention {
    /// Whether history is kept forever.
    pub fn keeps_everything(&self) -> bool {
        self.max_events_per_doc.is_none() && self.max_age_seconds.is_none()
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// One event as replay needs it.
pub struct ReplayEvent {
    pub seq: u64,
    pub rev: Rev,
    pub parent: Option<Rev>,
    pub path: Option<Vec<Rev>>,
    pub deleted: bool,
}

/// Reads the events of one document (or all, when `doc` is `None`) in sequence order, with their
/// document id.
pub(super) fn read_events(
    c: &Connection,
    db: i64,
    doc: Option<&str>,
) -> Result<Vec<(String, ReplayEvent)>, StoreError> {
    // Compaction copies the deletion flag into the event before it drops a body's row.
    let sql = "SELECT e.seq, e.doc, e.rev, e.parent, e.detail, coalesce(e.deleted, r.deleted)
               FROM events e LEFT JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev
               WHERE e.db = ?1 AND (?2 IS NULL OR e.doc = ?2) ORDER BY e.seq, e.pos";
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params![db, doc])?;
    let mut out = Vec::new();
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
        let path = match detail
            .as_ref()
            .and_then(|d| d.get("path"))
            .and_then(Value::as_array)
        {
            Some(path) => Some(
                path.iter()
                    .map(|r| r.as_str().unwrap_or_default().parse())
                    .collect::<Result<Vec<Rev>, _>>()
                    .map_err(corrupt)?,
            ),
            None => None,
        };
        // The deletion flag lives with the revision until compaction drops its body and copies
        // the flag into the event; neither holding it means the store lost data.
        let deleted = row
            .get::<_, Option<bool>>(5)?
            .ok_or_else(|| corrupt(format!("event {seq}: no stored revision {rev} of {id}")))?;
        out.push((
            id,
            ReplayEvent {
                seq,
                rev,
                parent,
                path,
                deleted,
            },
        ));
    }
    Ok(out)
}

/// Applies one event to a tree exactly as the writer did. The writer stems a document once per
/// sequence, after all of its events of that sequence: `last_of_seq` says whether this event is
/// the last of its sequence.
pub fn apply_event(
    tree: &mut RevTree,
    event: &ReplayEvent,
    revs_limit: usize,
    last_of_seq: bool,
) -> Result<(), StoreError> {
    let path: Vec<Rev> = match &event.path {
        Some(path) => path.clone(),
        None => std::iter::once(event.rev.clone())
            .chain(event.parent.clone())
            .collect(),
    };
    tree.merge_path(&path, event.deleted)
        .map_err(|e| corrupt(format!("event {}: {e}", event.seq)))?;
    if last_of_seq {
        tree.stem(revs_limit.max(1));
    }
    Ok(())
}

/// A document's baseline: its tree after the last trimmed event, and that event's sequence.
pub(super) fn baseline(
    c: &Connection,
    db: i64,
    doc: &str,
) -> Result<Option<(u64, RevTree)>, StoreError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT seq, tree FROM event_baselines WHERE db = ?1 AND doc = ?2")?
        .query_row(params![db, doc], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(seq, tree)| Ok((seq as u64, serde_json::from_str(&tree).map_err(corrupt)?)))
        .transpose()
}

/// Applies the database's retention; returns how many events were dropped.
pub(super) fn apply(
    c: &Connection,
    db: i64,
    retention: Retention,
    revs_limit: usize,
    now_ms: i64,
) -> Result<u64, StoreError> {
    if retention.keeps_everything() {
        return Ok(0);
    }
    let cutoff = retention
        .max_age_seconds
        .map(|s| now_ms - (s as i64).saturating_mul(1000));
    let docs: Vec<String> = c
        .prepare("SELECT DISTINCT doc FROM events WHERE db = ?1")?
        .query_map([db], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut dropped = 0;
    for doc in docs {
        let events: Vec<(i64, i64)> = c
            .prepare_cached("SELECT seq, at FROM events WHERE db = ?1 AND doc = ?2 ORDER BY seq")?
            .query_map(params![db, doc], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let keep_from_count = retention
            .max_events_per_doc
            .map_or(0, |n| events.len().saturating_sub(n as usize));
        let keep_from_age = match cutoff {
            Some(cutoff) => events
                .iter()
                .position(|(_, at)| *at >= cutoff)
                .unwrap_or(events.len()),
            None => 0,
        };
        let cut = keep_from_count.max(keep_from_age);
        if cut == 0 {
            continue;
        }
        let last_dropped = events[cut - 1].0 as u64;
        let mut tree = baseline(c, db, &doc)?.map(|(_, t)| t).unwrap_or_default();
        let events = read_events(c, db, Some(&doc))?;
        for (i, (_, event)) in events.iter().enumerate() {
            if event.seq > last_dropped {
                break;
            }
            let last_of_seq = events.get(i + 1).is_none_or(|(_, e)| e.seq != event.seq);
            apply_event(&mut tree, event, revs_limit, last_of_seq)?;
        }
        let tree_json = serde_json::to_string(&tree).map_err(corrupt)?;
        c.prepare_cached(
            "INSERT INTO event_baselines (db, doc, seq, tree) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (db, doc) DO UPDATE SET seq = excluded.seq, tree = excluded.tree",
        )?
        .execute(params![db, doc, last_dropped as i64, tree_json])?;
        // Bodies of superseded revisions whose events go: never a current leaf's.
        let live_tree: Option<String> = c
            .prepare_cached("SELECT tree FROM docs WHERE db = ?1 AND id = ?2")?
            .query_row(params![db, doc], |r| r.get(0))
            .optional()?;
        let leaves: Vec<String> = match live_tree {
            Some(t) => serde_json::from_str::<RevTree>(&t)
                .map_err(corrupt)?
                .leaves()
                .into_iter()
                .map(|l| l.rev.to_string())
                .collect(),
            None => Vec::new(),
        };
        let trimmed: Vec<String> = c
            .prepare_cached("SELECT rev FROM events WHERE db = ?1 AND doc = ?2 AND seq <= ?3")?
            .query_map(params![db, doc, last_dropped as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for rev in trimmed.iter().filter(|r| !leaves.contains(r)) {
            // As after a CouchDB compaction, a superseded revision's body is gone (reads of it
            // answer `missing`); replay no longer needs it, since its event goes too.
            c.prepare_cached("DELETE FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?
                .execute(params![db, doc, rev])?;
        }
        dropped += c
            .prepare_cached("DELETE FROM events WHERE db = ?1 AND doc = ?2 AND seq <= ?3")?
            .execute(params![db, doc, last_dropped as i64])? as u64;
    }
    Ok(dropped)
}
