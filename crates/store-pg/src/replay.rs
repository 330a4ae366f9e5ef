//! The event log's setting events on PostgreSQL, and replaying a database's log (see
//! `outpost_store::replay`): [`verify`] compares what the log rebuilds with the live tables on
//! one read-only snapshot; [`rebuild`] replaces the database's document rows, sequence,
//! counters and settings by what the log rebuilds, in one transaction.
//!
//! Unlike SQLite's, a rebuild here may run beside live nodes: it holds the database's advisory
//! lock exclusively and its `dbs` row lock (`FOR UPDATE`), as any writer's transaction that
//! locks up front does (see `crate::writer`), from before it reads the log until it commits, so
//! no write lands between the replay and the new rows, and readers on every node see the old
//! rows until the commit and the new ones after it.

use std::collections::BTreeMap;

use outpost_core::{Policy, RevTree};
use outpost_store::StoreError;
use outpost_store::replay::{
    LiveDb, LiveDoc, RebuildReport, ReplayEvent, ReplayReport, Replayed, Setting, Settings,
    compare, replay,
};

use crate::conn::WriterConn;
use crate::error::corrupt;

/// Locks database `name` until the transaction ends, as a transaction that locks up front does
/// (see `crate::writer`): its advisory lock exclusively (a writer's batch already holds it),
/// then its row. Answers its id.
pub fn lock_db(c: &WriterConn, name: &str) -> Result<i64, StoreError> {
    c.advisory_locks(vec![(c.db_key(name)?, false)])?;
    c.query_opt("SELECT id FROM dbs WHERE name = $1 FOR UPDATE", &[&name])?
        .map(|r| r.get(0))
        .ok_or(StoreError::NoDb)
}

/// Records a setting change of database `db` (whose row the transaction has locked) at its
/// current sequence: it applies to the writes after it.
pub fn record_setting(
    c: &WriterConn,
    db: i64,
    setting: &Setting,
    now_ms: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO settings_events (db, seq, pos, kind, detail, at)
         SELECT d.id, d.update_seq,
                (SELECT count(*) FROM settings_events s WHERE s.db = d.id AND s.seq = d.update_seq),
                $2, $3, $4
         FROM dbs d WHERE d.id = $1",
        &[&db, &setting.kind(), &setting.detail(), &now_ms],
    )?;
    Ok(())
}

/// The setting events of database `db`, in order.
pub fn read_settings(c: &WriterConn, db: i64) -> Result<Settings, StoreError> {
    let mut settings = Settings::default();
    for row in c.query(
        "SELECT seq, kind, detail FROM settings_events WHERE db = $1 ORDER BY seq, pos",
        &[&db],
    )? {
        let setting = Setting::parse(row.get(1), row.get(2))?;
        settings.push(row.get::<_, i64>(0) as u64, setting);
    }
    Ok(settings)
}

/// Database `db` rebuilt from its log.
fn replay_db(c: &WriterConn, db: i64) -> Result<Replayed, StoreError> {
    let mut events = Vec::new();
    for row in c.query(
        "SELECT seq, doc, rev, parent, detail, deleted, kind FROM events WHERE db = $1
         ORDER BY seq, pos",
        &[&db],
    )? {
        let doc: String = row.get(1);
        let event = ReplayEvent::from_row(
            &doc,
            row.get(6),
            row.get::<_, i64>(0) as u64,
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        )?;
        events.push((doc, event));
    }
    let mut baselines = BTreeMap::new();
    for row in c.query(
        "SELECT doc, seq, tree FROM event_baselines WHERE db = $1",
        &[&db],
    )? {
        let tree: RevTree = serde_json::from_str(row.get(2)).map_err(corrupt)?;
        baselines.insert(row.get::<_, String>(0), (row.get::<_, i64>(1) as u64, tree));
    }
    replay(events, baselines, read_settings(c, db)?)
}

/// Compares database `db`'s live tables with `replayed`.
fn compare_db(c: &WriterConn, db: i64, replayed: &Replayed) -> Result<ReplayReport, StoreError> {
    let row = c
        .query_opt(
            "SELECT update_seq, doc_count, doc_del_count, revs_limit, policy, lww_field
             FROM dbs WHERE id = $1",
            &[&db],
        )?
        .ok_or(StoreError::NoDb)?;
    let name: String = row.get(4);
    let live = LiveDb {
        update_seq: row.get::<_, i64>(0) as u64,
        doc_count: row.get(1),
        doc_del_count: row.get(2),
        revs_limit: row.get::<_, i64>(3) as u64,
        policy: Policy::from_parts(&name, row.get(5))
            .ok_or_else(|| corrupt(format!("unknown conflict policy {name}")))?,
    };
    let docs = c
        .query(
            "SELECT id, seq, deleted, tree FROM docs WHERE db = $1",
            &[&db],
        )?
        .into_iter()
        .map(|row| {
            Ok(LiveDoc {
                id: row.get(0),
                seq: row.get::<_, i64>(1) as u64,
                deleted: row.get(2),
                tree: serde_json::from_str(row.get(3)).map_err(corrupt)?,
            })
        });
    compare(replayed, &live, docs)
}

/// Connects to the store at `url` (its tables in `schema` when given), refusing one whose
/// tables an older build wrote: `outpost serve` brings them forward first.
fn connect(url: &str, schema: Option<&str>) -> Result<WriterConn, StoreError> {
    let c = WriterConn::new(crate::migrate::connect(url, schema)?, Default::default());
    let version: Option<String> = c
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .ok()
        .flatten()
        .map(|r| r.get(0));
    if version.as_deref() != Some(&crate::schema::VERSION.to_string()) {
        return Err(StoreError::Corrupt(format!(
            "the store's schema version is {version:?}, this build's is {}: open it with \
             `outpost serve` once to bring it forward",
            crate::schema::VERSION
        )));
    }
    Ok(c)
}

/// Rebuilds database `db` from its event log in memory and compares the result with the live
/// tables, on one read-only snapshot (live nodes go on writing).
pub fn verify(url: &str, schema: Option<&str>, db: &str) -> Result<ReplayReport, StoreError> {
    let c = connect(url, schema)?;
    c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    let id = c
        .query_opt("SELECT id FROM dbs WHERE name = $1", &[&db])?
        .map(|r| r.get::<_, i64>(0))
        .ok_or(StoreError::NoDb)?;
    let replayed = replay_db(&c, id)?;
    let report = compare_db(&c, id, &replayed);
    c.batch("COMMIT")?;
    report
}

/// Rebuilds database `db` from its event log alone, in one transaction: its document rows,
/// sequence, counters, `_revs_limit` and policy; its secondary indexes are dropped, to be built
/// again on first use. What the log does not hold is kept: bodies, attachments, `_local`
/// documents, `_security`, retention, the access index. The rebuilt rows are checked against
/// the log before the commit; on any failure nothing changes.
pub fn rebuild(url: &str, schema: Option<&str>, db: &str) -> Result<RebuildReport, StoreError> {
    let c = connect(url, schema)?;
    c.batch("BEGIN")?;
    let result = rebuild_in(&c, db);
    match &result {
        Ok(_) => c.batch("COMMIT")?,
        Err(_) => {
            let _ = c.batch("ROLLBACK");
        }
    }
    result
}

fn rebuild_in(c: &WriterConn, db: &str) -> Result<RebuildReport, StoreError> {
    let id = lock_db(c, db)?;
    let replayed = replay_db(c, id)?;
    c.execute("DELETE FROM docs WHERE db = $1", &[&id])?;
    for row in replayed.rows() {
        let row = row?;
        c.execute(
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &row.id,
                &(row.seq as i64),
                &row.deleted,
                &row.conflicted,
                &row.winner,
                &row.tree,
            ],
        )?;
    }
    let (live, deleted) = replayed.counts();
    let policy = replayed.settings.policy();
    c.execute(
        "UPDATE dbs SET update_seq = $2, doc_count = $3, doc_del_count = $4, revs_limit = $5,
                        policy = $6, lww_field = $7
         WHERE id = $1",
        &[
            &id,
            &(replayed.update_seq() as i64),
            &live,
            &deleted,
            &(replayed.settings.revs_limit() as i64),
            &policy.name(),
            &policy.lww_field(),
        ],
    )?;
    // Derived from the documents, which may have been wrong: built again on first use.
    crate::index::drop_all(c, id)?;
    let check = compare_db(c, id, &replayed)?;
    if !check.matches() {
        return Err(corrupt(format!(
            "the rebuilt tables do not match the log: {}",
            check.differences.join("; ")
        )));
    }
    Ok(RebuildReport {
        events: replayed.events,
        docs: replayed.docs.len() as u64,
        update_seq: replayed.update_seq(),
    })
}
