//! The on-disk schema, versioned so a later release can migrate a data directory it finds.
//!
//! All databases live in one SQLite file. Tables:
//! - `dbs`: one row per database with its counters and settings;
//! - `db_updates`: each database once, at its latest creation, change or deletion
//!   (`_db_updates`);
//! - `db_security`: a database's `_security` object, when one was set;
//! - `docs`: one row per document: its revision tree, winner and latest sequence (the changes
//!   feed is an index on `(db, seq)`, so every document appears once, at its latest change);
//! - `revs`: the body of every revision received with one; compaction keeps only the leaves';
//! - `local_docs`: `_local` documents, never replicated;
//! - `attachments`: attachment bytes, once per digest;
//! - `indexes`, `index_rows`: secondary indexes (Mango json indexes and views), derived from the
//!   documents and rebuilt from them when lost (see [`super::index`]);
//! - `events`: the append-only event log, written in the same transaction as the projection.
//!   A document takes one sequence per request however many revisions it received, so the
//!   events of one sequence are told apart, and ordered, by `pos`;
//! - `settings_events`: the log's changes of the settings the tables depend on (`_revs_limit`,
//!   the conflict policy), each at the database's sequence when it was made (see
//!   [`crate::replay`]).
//!
//! Versions: 1 was the first; 2 adds `events.deleted` (so replay no longer needs the bodies that
//! compaction drops), the `docs_live` index and incremental auto-vacuum (so compaction can give
//! freed pages back to the file system); 3 keys events by `(db, seq, pos)`; 4 adds the index tables;
//! 5 adds the access index of per-document access (`access_dbs`, `access_rows`, see
//! [`super::access`]), so that an older build, which would serve every document of such a
//! database to every member, refuses the file; 6 adds `settings_events` and fills in the
//! deletion flag of every event, so that replay reads the log alone; 7 adds `dbs.purge_seq` and
//! `dbs.purged_infos_limit` (`_purge`); 8 lets attachment stubs say their bytes are stored
//! gzip-encoded (`encoding`, `encoded_length`, see [`outpost_core::attachment`]): no table
//! changes and no row is rewritten (a stub without `encoding` is identity, as every stub written
//! before is), but an older build, which would serve encoded bytes as the attachment itself,
//! refuses the file. [`migrate`] brings an older file forward on open, one version at a time.

use rusqlite::{Connection, OptionalExtension};

/// The schema version this build writes.
pub const VERSION: i64 = 8;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dbs (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    update_seq    INTEGER NOT NULL DEFAULT 0,
    doc_count     INTEGER NOT NULL DEFAULT 0,
    doc_del_count INTEGER NOT NULL DEFAULT 0,
    active_size   INTEGER NOT NULL DEFAULT 0,
    revs_limit    INTEGER NOT NULL DEFAULT 1000,
    policy        TEXT NOT NULL DEFAULT 'manual',
    lww_field     TEXT,
    -- History retention applied by `_compact`; NULL keeps everything.
    retention_count INTEGER,
    retention_age   INTEGER,
    -- Document purges so far, and CouchDB's `purged_infos_limit`.
    purge_seq          INTEGER NOT NULL DEFAULT 0,
    purged_infos_limit INTEGER NOT NULL DEFAULT 1000
);

-- A database's `_security` object as JSON text; no row means the server's default.
CREATE TABLE IF NOT EXISTS db_security (
    db   INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS docs (
    db      INTEGER NOT NULL,
    id      TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    -- 1 when the document has more than one live leaf, for `_conflicts`.
    conflicted INTEGER NOT NULL DEFAULT 0,
    -- The winning revision, so reads can join its body without parsing the tree.
    winner  TEXT NOT NULL DEFAULT '',
    tree    TEXT NOT NULL,
    PRIMARY KEY (db, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS docs_by_seq ON docs (db, seq);
CREATE INDEX IF NOT EXISTS docs_conflicted ON docs (db, id) WHERE conflicted = 1;
-- Live documents by id: `_all_docs` pages and its bounded `offset` count walk this instead of
-- stepping over tombstones in `docs`.
CREATE INDEX IF NOT EXISTS docs_live ON docs (db, id) WHERE deleted = 0;

CREATE TABLE IF NOT EXISTS revs (
    db      INTEGER NOT NULL,
    doc     TEXT NOT NULL,
    rev     TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (db, doc, rev)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS local_docs (
    db   INTEGER NOT NULL,
    id   TEXT NOT NULL,
    rev  INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (db, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS attachments (
    digest TEXT PRIMARY KEY,
    length INTEGER NOT NULL,
    data   BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    db     INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    doc    TEXT NOT NULL,
    rev    TEXT NOT NULL,
    parent TEXT,
    origin TEXT NOT NULL,
    at     INTEGER NOT NULL,
    -- JSON: the revision path a replicated write added, and for resolutions the policy and the
    -- leaves superseded. Enough to replay the log into the document tables.
    detail TEXT,
    -- Whether the revision is a deletion (NULL only in a store older than version 6, whose
    -- upgrade fills it in).
    deleted INTEGER,
    -- The event's place among the events of its sequence (0, 1, ...).
    pos    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (db, seq, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_doc ON events (db, doc, seq);

-- `_db_updates`: each database once, at its latest creation, change or deletion, under a
-- server-wide sequence (the largest `seq` is the current one).
CREATE TABLE IF NOT EXISTS db_updates (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL,
    type TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS db_updates_by_seq ON db_updates (seq);

-- A change of a setting the document tables depend on (`revs_limit`, `policy`), made when the
-- database's sequence was `seq`: it applies to the writes after it. `pos` orders the changes
-- made at one sequence; `detail` is JSON.
CREATE TABLE IF NOT EXISTS settings_events (
    db     INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    pos    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (db, seq, pos)
) WITHOUT ROWID;

-- A document's revision tree after the last event retention dropped: where replay starts.
CREATE TABLE IF NOT EXISTS event_baselines (
    db   INTEGER NOT NULL,
    doc  TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    tree TEXT NOT NULL,
    PRIMARY KEY (db, doc)
) WITHOUT ROWID;
"#;

/// Connection settings every connection needs. `synchronous=FULL` makes each commit fsync the
/// WAL, which is what lets a 2xx mean "on disk". Incremental auto-vacuum takes effect only on a
/// new file, and only when chosen before the switch to WAL writes the file's first page; an
/// older file changes mode when [`migrate`] upgrades it.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA busy_timeout = 10000;
         PRAGMA cache_size = -32768;",
    )
}

/// A new store file at the current schema, in a temporary directory kept alive by the guard:
/// for tests that look at statements' plans and costs.
#[cfg(test)]
pub(crate) fn fresh_for_test() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let c = Connection::open(dir.path().join("t.sqlite")).unwrap();
    configure(&c).unwrap();
    migrate(&c).unwrap();
    (dir, c)
}

/// One step of [`migrate`]: brings a file from one version to the next.
type Upgrade = fn(&Connection) -> Result<(), crate::StoreError>;

/// Creates the schema if needed and brings an older file up to [`VERSION`].
pub fn migrate(conn: &Connection) -> Result<(), crate::StoreError> {
    let fresh: bool = conn.query_row(
        "SELECT count(*) = 0 FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    let found: Option<String> = if fresh {
        None
    } else {
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?
    };
    let version = match found.as_deref().map(str::parse::<i64>) {
        // A new file gets the current schema as a whole.
        None => {
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(super::index::SCHEMA)?;
            conn.execute_batch(super::access::SCHEMA)?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [VERSION.to_string()],
            )?;
            return Ok(());
        }
        Some(Ok(v)) if (1..=VERSION).contains(&v) => v,
        Some(other) => {
            return Err(crate::StoreError::Corrupt(format!(
                "data directory has schema version {other:?}, this build reads versions 1 to {VERSION}"
            )));
        }
    };
    // One step per version, in order, from the file's own.
    let steps: [Upgrade; 7] = [
        upgrade_from_1,
        upgrade_from_2,
        upgrade_from_3,
        upgrade_from_4,
        upgrade_from_5,
        upgrade_from_6,
        upgrade_from_7,
    ];
    for step in steps.iter().skip(usize::try_from(version - 1).unwrap_or(0)) {
        step(conn)?;
    }
    // Tables and indexes added without a version change.
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(super::index::SCHEMA)?;
    conn.execute_batch(super::access::SCHEMA)?;
    Ok(())
}

/// Version 5 to 6: the log alone replays. Every event gets its deletion flag (copied from its
/// revision, where compaction had not copied it yet), and each database whose `_revs_limit` or
/// policy is not the default gets a setting event at sequence 0: the best the log can say of
/// changes made before they were recorded (replay applied the current settings to all history
/// before, so nothing replays differently).
fn upgrade_from_5(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch(
        r#"BEGIN IMMEDIATE;
        CREATE TABLE IF NOT EXISTS settings_events (
            db     INTEGER NOT NULL,
            seq    INTEGER NOT NULL,
            pos    INTEGER NOT NULL,
            kind   TEXT NOT NULL,
            detail TEXT NOT NULL,
            at     INTEGER NOT NULL,
            PRIMARY KEY (db, seq, pos)
        ) WITHOUT ROWID;
        UPDATE events SET deleted = (SELECT r.deleted FROM revs r
                                     WHERE r.db = events.db AND r.doc = events.doc
                                       AND r.rev = events.rev)
            WHERE deleted IS NULL;
        INSERT INTO settings_events (db, seq, pos, kind, detail, at)
            SELECT id, 0, 0, 'revs_limit', json_object('revs_limit', revs_limit), created_at / 1000
            FROM dbs WHERE revs_limit <> 1000;
        INSERT INTO settings_events (db, seq, pos, kind, detail, at)
            SELECT id, 0, (SELECT count(*) FROM settings_events s WHERE s.db = dbs.id),
                   'policy', json_object('conflict_policy', policy, 'lww_field', lww_field),
                   created_at / 1000
            FROM dbs WHERE policy <> 'manual';
        UPDATE meta SET value = '6' WHERE key = 'schema_version';
        COMMIT;"#,
    )?;
    tracing::info!("migrated the store's schema from version 5 to 6");
    Ok(())
}

/// Version 6 to 7: the purge counters of each database.
fn upgrade_from_6(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE dbs ADD COLUMN purge_seq INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE dbs ADD COLUMN purged_infos_limit INTEGER NOT NULL DEFAULT 1000;
         UPDATE meta SET value = '7' WHERE key = 'schema_version';
         COMMIT;",
    )?;
    tracing::info!("migrated the store's schema from version 6 to 7");
    Ok(())
}

/// Version 7 to 8: attachments may be stored gzip-encoded. Every stored stub is identity and
/// stays as it is; only the version moves, so that older builds refuse the file from now on.
fn upgrade_from_7(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         UPDATE meta SET value = '8' WHERE key = 'schema_version';
         COMMIT;",
    )?;
    tracing::info!("migrated the store's schema from version 7 to 8");
    Ok(())
}

/// Version 4 to 5: the access index. No existing database has per-document access (it could
/// not be created before), so the tables start empty.
fn upgrade_from_4(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE;")?;
    conn.execute_batch(super::access::SCHEMA)?;
    conn.execute_batch(
        "UPDATE meta SET value = '5' WHERE key = 'schema_version';
         COMMIT;",
    )?;
    tracing::info!("migrated the store's schema from version 4 to 5");
    Ok(())
}

/// Version 3 to 4: the index tables. Indexes are derived data, so nothing is copied: they are
/// built on first use.
fn upgrade_from_3(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE;")?;
    conn.execute_batch(super::index::SCHEMA)?;
    conn.execute_batch(
        "UPDATE meta SET value = '4' WHERE key = 'schema_version';
         COMMIT;",
    )?;
    tracing::info!("migrated the store's schema from version 3 to 4");
    Ok(())
}

/// Version 2 to 3: events are keyed by `(db, seq, pos)`, since one sequence may hold several
/// events.
fn upgrade_from_2(conn: &Connection) -> Result<(), crate::StoreError> {
    conn.execute_batch(
        r#"BEGIN IMMEDIATE;
        CREATE TABLE events_v3 (
            db      INTEGER NOT NULL,
            seq     INTEGER NOT NULL,
            kind    TEXT NOT NULL,
            doc     TEXT NOT NULL,
            rev     TEXT NOT NULL,
            parent  TEXT,
            origin  TEXT NOT NULL,
            at      INTEGER NOT NULL,
            detail  TEXT,
            deleted INTEGER,
            pos     INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (db, seq, pos)
        ) WITHOUT ROWID;
        INSERT INTO events_v3 (db, seq, kind, doc, rev, parent, origin, at, detail, deleted, pos)
            SELECT db, seq, kind, doc, rev, parent, origin, at, detail, deleted, 0 FROM events;
        DROP TABLE events;
        ALTER TABLE events_v3 RENAME TO events;
        CREATE INDEX events_by_doc ON events (db, doc, seq);
        UPDATE meta SET value = '3' WHERE key = 'schema_version';
        COMMIT;"#,
    )?;
    tracing::info!("migrated the store's schema from version 2 to 3");
    Ok(())
}

/// Version 1 to 2: the event's deletion flag, the live-documents index, and incremental
/// auto-vacuum. Changing an existing file's auto-vacuum mode takes a VACUUM, which rewrites the
/// file once (and needs as much free disk space as the file takes).
fn upgrade_from_1(conn: &Connection) -> Result<(), crate::StoreError> {
    tracing::info!("upgrading the store from schema version 1 to 2 (rewrites the file once)");
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE events ADD COLUMN deleted INTEGER;",
    )?;
    conn.execute(
        "CREATE INDEX IF NOT EXISTS docs_live ON docs (db, id) WHERE deleted = 0",
        [],
    )?;
    conn.execute(
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
        [],
    )?;
    conn.execute_batch(
        "COMMIT;
         PRAGMA auto_vacuum = INCREMENTAL;
         VACUUM;",
    )?;
    Ok(())
}
