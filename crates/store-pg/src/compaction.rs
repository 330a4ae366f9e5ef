//! Compaction and history retention on PostgreSQL, step for step what the SQLite engine does
//! (see `outpost_store::sqlite`'s compaction and retention): retention trims each document's
//! events into a baseline that replay starts from, the bodies of revisions that are no longer
//! leaves are dropped, and attachment bytes no body refers to are collected by mark (on a read
//! snapshot) and sweep (in the writer, after re-checking what was written since). PostgreSQL's
//! own `VACUUM` gives the space back; the store does not run it.

use std::collections::HashSet;

use outpost_core::RevTree;
use outpost_store::replay::{ReplayEvent, apply_event};
use outpost_store::{Retention, StoreError};

use crate::conn::WriterConn;
use crate::error::{corrupt, pg};

/// Documents one writer step goes through when dropping superseded bodies.
const DOCS_PER_STEP: i64 = 500;
/// Unreferenced attachments one writer step deletes.
pub const ATTACHMENTS_PER_STEP: usize = 1000;

/// The digests in the `_attachments` of the stored bodies of `revs r`, as SQL.
const DIGESTS_OF_R: &str = "SELECT a.value ->> 'digest' AS digest
     FROM jsonb_each(CASE WHEN jsonb_typeof(r.body::jsonb -> '_attachments') = 'object'
                          THEN r.body::jsonb -> '_attachments' ELSE '{}'::jsonb END) a
     WHERE jsonb_typeof(a.value) = 'object'";

/// Applies the retention of database `db`; returns how many events were dropped.
pub fn apply_retention(c: &WriterConn, db: &str, now_ms: i64) -> Result<u64, StoreError> {
    let row = c
        .query_opt(
            "SELECT id, retention_count, retention_age FROM dbs WHERE name = $1",
            &[&db],
        )?
        .ok_or(StoreError::NoDb)?;
    let db: i64 = row.get(0);
    let retention = Retention {
        max_events_per_doc: row.get::<_, Option<i64>>(1).map(|c| c.max(0) as u64),
        max_age_seconds: row.get::<_, Option<i64>>(2).map(|a| a.max(0) as u64),
    };
    if retention.keeps_everything() {
        return Ok(0);
    }
    let settings = crate::replay::read_settings(c, db)?;
    let cutoff = retention
        .max_age_seconds
        .map(|s| now_ms - (s.min(i64::MAX as u64) as i64).saturating_mul(1000));
    let docs: Vec<String> = c
        .query("SELECT DISTINCT doc FROM events WHERE db = $1", &[&db])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = 0;
    for doc in docs {
        let events: Vec<(i64, i64)> = c
            .query(
                "SELECT seq, at FROM events WHERE db = $1 AND doc = $2 ORDER BY seq, pos",
                &[&db, &doc],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
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
        let last_dropped = events[cut - 1].0;
        let mut tree: RevTree = match c.query_opt(
            "SELECT tree FROM event_baselines WHERE db = $1 AND doc = $2",
            &[&db, &doc],
        )? {
            Some(r) => serde_json::from_str(&r.get::<_, String>(0)).map_err(corrupt)?,
            None => RevTree::new(),
        };
        let events = read_events(c, db, &doc)?;
        for (i, event) in events.iter().enumerate() {
            if event.seq > last_dropped as u64 {
                break;
            }
            let last_of_seq = events.get(i + 1).is_none_or(|e| e.seq != event.seq);
            apply_event(
                &mut tree,
                event,
                settings.revs_limit_for(event.seq),
                last_of_seq,
            )?;
        }
        let tree_json = serde_json::to_string(&tree).map_err(corrupt)?;
        c.execute(
            "INSERT INTO event_baselines (db, doc, seq, tree) VALUES ($1, $2, $3, $4)
             ON CONFLICT (db, doc) DO UPDATE SET seq = excluded.seq, tree = excluded.tree",
            &[&db, &doc, &last_dropped, &tree_json],
        )?;
        let leaves: Vec<String> = match c.query_opt(
            "SELECT tree FROM docs WHERE db = $1 AND id = $2",
            &[&db, &doc],
        )? {
            Some(r) => serde_json::from_str::<RevTree>(&r.get::<_, String>(0))
                .map_err(corrupt)?
                .leaves()
                .into_iter()
                .map(|l| l.rev.to_string())
                .collect(),
            None => Vec::new(),
        };
        c.execute(
            "DELETE FROM revs WHERE db = $1 AND doc = $2 AND NOT (rev = ANY($4))
               AND rev IN (SELECT rev FROM events WHERE db = $1 AND doc = $2 AND seq <= $3)",
            &[&db, &doc, &last_dropped, &leaves],
        )?;
        dropped += c.execute(
            "DELETE FROM events WHERE db = $1 AND doc = $2 AND seq <= $3",
            &[&db, &doc, &last_dropped],
        )?;
    }
    Ok(dropped)
}

/// One document's events as replay needs them, in order.
fn read_events(c: &WriterConn, db: i64, doc: &str) -> Result<Vec<ReplayEvent>, StoreError> {
    let rows = c.query(
        "SELECT seq, rev, parent, detail, deleted, kind FROM events
         WHERE db = $1 AND doc = $2 ORDER BY seq, pos",
        &[&db, &doc],
    )?;
    rows.iter()
        .map(|row| {
            ReplayEvent::from_row(
                doc,
                row.get(5),
                row.get::<_, i64>(0) as u64,
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
            )
        })
        .collect()
}

/// Drops the bodies of the revisions that are not leaves, for the documents of `db` after
/// `after`, at most [`DOCS_PER_STEP`]; returns the last id gone through, `None` when done.
pub fn drop_superseded(
    c: &WriterConn,
    db: &str,
    after: &str,
) -> Result<Option<String>, StoreError> {
    let db = crate::writer::db_id(c, db)?;
    let docs: Vec<(String, String)> = c
        .query(
            "SELECT id, tree FROM docs WHERE db = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&db, &after, &DOCS_PER_STEP],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut freed: i64 = 0;
    for (id, tree) in &docs {
        let tree: RevTree = serde_json::from_str(tree)
            .map_err(|e| corrupt(format!("revision tree of {id}: {e}")))?;
        let leaves: Vec<String> = tree
            .leaves()
            .into_iter()
            .map(|l| l.rev.to_string())
            .collect();
        let gone = c.query_opt(
            "SELECT count(*), coalesce(sum(octet_length(body)), 0)::bigint FROM revs
             WHERE db = $1 AND doc = $2 AND NOT (rev = ANY($3))",
            &[&db, id, &leaves],
        )?;
        let Some(gone) = gone else { continue };
        if gone.get::<_, i64>(0) == 0 {
            continue;
        }
        c.execute(
            "DELETE FROM revs WHERE db = $1 AND doc = $2 AND NOT (rev = ANY($3))",
            &[&db, id, &leaves],
        )?;
        freed += gone.get::<_, i64>(1);
    }
    if freed > 0 {
        c.execute(
            "UPDATE dbs SET active_size = greatest(0, active_size - $2) WHERE id = $1",
            &[&db, &freed],
        )?;
    }
    if (docs.len() as i64) < DOCS_PER_STEP {
        return Ok(None);
    }
    Ok(docs.last().map(|(id, _)| id.clone()))
}

/// What the mark phase found: digests no stored body referred to, and where each database's
/// sequence stood (`(id, created_at, update_seq)`) when it looked.
pub struct SweepPlan {
    pub candidates: Vec<String>,
    pub seen: Vec<(i64, i64, i64)>,
}

/// The mark phase, on one read snapshot of a pooled connection.
pub async fn plan_sweep(client: &mut deadpool_postgres::Client) -> Result<SweepPlan, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)?;
    let seen = tx
        .query("SELECT id, created_at, update_seq FROM dbs", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let candidates = tx
        .query(
            &format!(
                "SELECT digest FROM attachments WHERE digest NOT IN
                     (SELECT d.digest FROM revs r, LATERAL ({DIGESTS_OF_R}) d
                      WHERE strpos(r.body, '\"_attachments\"') > 0 AND d.digest IS NOT NULL)"
            ),
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await.map_err(pg)?;
    Ok(SweepPlan { candidates, seen })
}

/// The sweep, in the writer: deletes the candidates no body stored since the snapshot refers
/// to either. Returns how many were deleted.
pub fn sweep(
    c: &WriterConn,
    candidates: &[String],
    seen: &[(i64, i64, i64)],
) -> Result<u64, StoreError> {
    let dbs: Vec<(i64, i64, i64)> = c
        .query("SELECT id, created_at, update_seq FROM dbs", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut since_snapshot: HashSet<String> = HashSet::new();
    for (id, created_at, seq) in dbs {
        let since = seen
            .iter()
            .find(|(i, c, _)| *i == id && *c == created_at)
            .map_or(0, |(_, _, s)| *s);
        if since >= seq {
            continue;
        }
        let rows = c.query(
            &format!(
                "SELECT d.digest FROM events e
                 JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev,
                 LATERAL ({DIGESTS_OF_R}) d
                 WHERE e.db = $1 AND e.seq > $2 AND strpos(r.body, '\"_attachments\"') > 0"
            ),
            &[&id, &since],
        )?;
        since_snapshot.extend(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)));
    }
    let gone: Vec<&str> = candidates
        .iter()
        .filter(|d| !since_snapshot.contains(*d))
        .map(String::as_str)
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    c.execute("DELETE FROM attachments WHERE digest = ANY($1)", &[&gone])
}
