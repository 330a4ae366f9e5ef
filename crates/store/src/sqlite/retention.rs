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

use outpost_core::RevTree;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::replay::{ReplayEvent, Setting, Settings, apply_event};

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

/// The events of a database in sequence order.
const EVENTS_OF_DB: &str = "SELECT seq, doc, rev, parent, detail, deleted, kind FROM events
     WHERE db = ?1 ORDER BY seq, pos";

// The statements about one document's events name the `(db, doc, seq)` index: without it,
// SQLite 3.54 plans them as scans of the primary key's `(db, seq)` range, every event of the
// database read once per document, which made applying retention quadratic.

/// One document's events in sequence order.
const EVENTS_OF_DOC: &str = "SELECT seq, doc, rev, parent, detail, deleted, kind
     FROM events INDEXED BY events_by_doc WHERE db = ?1 AND doc = ?2 ORDER BY seq, pos";

/// When each of one document's events happened, in sequence order.
const EVENT_TIMES_OF_DOC: &str =
    "SELECT seq, at FROM events INDEXED BY events_by_doc WHERE db = ?1 AND doc = ?2 ORDER BY seq";

/// The revisions of one document's events up to a sequence.
const EVENT_REVS_OF_DOC_UPTO: &str =
    "SELECT rev FROM events INDEXED BY events_by_doc WHERE db = ?1 AND doc = ?2 AND seq <= ?3";

/// Reads the events of one document (or all, when `doc` is `None`) in sequence order, with their
/// document id.
pub(super) fn read_events(
    c: &Connection,
    db: i64,
    doc: Option<&str>,
) -> Result<Vec<(String, ReplayEvent)>, StoreError> {
    let mut stmt = c.prepare_cached(if doc.is_some() {
        EVENTS_OF_DOC
    } else {
        EVENTS_OF_DB
    })?;
    let mut rows = match doc {
        Some(doc) => stmt.query(params![db, doc])?,
        None => stmt.query([db])?,
    };
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(1)?;
        let event = ReplayEvent::from_row(
            &id,
            &row.get::<_, String>(6)?,
            row.get::<_, i64>(0)? as u64,
            &row.get::<_, String>(2)?,
            row.get::<_, Option<String>>(3)?.as_deref(),
            row.get::<_, Option<String>>(4)?.as_deref(),
            row.get::<_, Option<bool>>(5)?,
        )?;
        out.push((id, event));
    }
    Ok(out)
}

/// The setting events of database `db`, in order.
pub(super) fn read_settings(c: &Connection, db: i64) -> Result<Settings, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, kind, detail FROM settings_events WHERE db = ?1 ORDER BY seq, pos",
    )?;
    let mut rows = stmt.query([db])?;
    let mut settings = Settings::default();
    while let Some(row) = rows.next()? {
        let setting = Setting::parse(&row.get::<_, String>(1)?, &row.get::<_, String>(2)?)?;
        settings.push(row.get::<_, i64>(0)? as u64, setting);
    }
    Ok(settings)
}

/// Records a setting change of database `db` in its log, at its current sequence: it applies to
/// the writes after it.
pub(super) fn record_setting(
    c: &Connection,
    db: i64,
    setting: &Setting,
    now_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO settings_events (db, seq, pos, kind, detail, at)
         SELECT d.id, d.update_seq,
                (SELECT count(*) FROM settings_events s WHERE s.db = d.id AND s.seq = d.update_seq),
                ?2, ?3, ?4
         FROM dbs d WHERE d.id = ?1",
    )?
    .execute(params![db, setting.kind(), setting.detail(), now_ms])?;
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
    now_ms: i64,
) -> Result<u64, StoreError> {
    if retention.keeps_everything() {
        return Ok(0);
    }
    let settings = read_settings(c, db)?;
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
            .prepare_cached(EVENT_TIMES_OF_DOC)?
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
            apply_event(
                &mut tree,
                event,
                settings.revs_limit_for(event.seq),
                last_of_seq,
            )?;
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
            .prepare_cached(EVENT_REVS_OF_DOC_UPTO)?
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

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Each statement about one document's events visits that document's events, not the
    /// database's: on a database of 20,000 events, each takes a few steps.
    #[test]
    fn a_documents_events_are_read_from_its_own_rows() {
        let (_dir, c) = crate::sqlite::schema::fresh_for_test();
        c.execute_batch(
            "INSERT INTO dbs (id, name, created_at) VALUES (1, 'db', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO events (db, seq, kind, doc, rev, origin, at)
                 SELECT 1, i, 'write', printf('d%06d', i % 5000), printf('%d-a', i / 5000 + 1),
                        'local', i FROM n;",
        )
        .unwrap();
        let doc = "d000123";
        for (sql, args, rows) in [
            (EVENTS_OF_DOC, params![1, doc].to_vec(), 4),
            (EVENT_TIMES_OF_DOC, params![1, doc].to_vec(), 4),
            (EVENT_REVS_OF_DOC_UPTO, params![1, doc, 10_000].to_vec(), 2),
        ] {
            let mut stmt = c.prepare(sql).unwrap();
            let found = stmt.query_map(args.as_slice(), |_| Ok(())).unwrap().count();
            assert_eq!(found, rows, "{sql}");
            let steps = stmt.get_status(StatementStatus::VmStep);
            assert!(steps < 200, "{steps} steps: {sql}");
        }
    }
}
