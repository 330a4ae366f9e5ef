//! The schema in PostgreSQL, versioned like the SQLite file's, created or brought forward when
//! a node opens the store.
//!
//! The tables are those of the SQLite engine (see `outpost_store::sqlite`'s schema), with
//! PostgreSQL's types (the access index of `access=true` databases included, see
//! [`crate::access`]), plus `counters` for the server-wide `_db_updates` sequence and the
//! version of `config`, which holds the configuration the API changes (server admins added at
//! run time: on SQLite each process keeps them in its data directory, here every node must see
//! them). Document ids
//! and revision ids use the `C` collation, so that `_all_docs` sorts by code point exactly as
//! SQLite's binary collation does, whatever the database's default collation is; index sort
//! keys are `bytea`, which compares byte by byte. Attachment bytes are stored `EXTERNAL`
//! (out of line, uncompressed), so a range read fetches only the chunks it covers.
//!
//! Several nodes may open the store at once: the migration runs under a transaction-level
//! advisory lock, so one node creates the tables and the others find them.

use crate::error::pg;
use outpost_store::StoreError;

/// The schema version this build writes. Version 2 added `access_dbs` and `access_rows`
/// (per-document access); a version 1 store is brought forward by creating them, empty, as
/// no database of version 1 could have per-document access. Version 3 added `settings_events`
/// and a deletion flag in every event, so that replay reads the log alone; an older store gets
/// them as the SQLite engine's upgrade gives them (see [`upgrade_to_3`]).
/// Version 4 added `dbs.purge_seq` and `dbs.purged_infos_limit` (`_purge`), added to an older
/// store's table as it opens. Version 5 lets attachment stubs say their bytes are stored
/// gzip-encoded (`encoding`, `encoded_length`); no table changes and no row is rewritten (a stub
/// without `encoding` is identity, as every stub written before is), but a node of an older
/// build, which would serve encoded bytes as the attachment itself, refuses the store.
/// Version 6 added `config` (the configuration the API changes, shared by every node) and its
/// version in `counters`; an older store gains them empty, as its nodes kept that configuration
/// in their data directories.
pub const VERSION: i64 = 6;

/// The key of the advisory lock the migration holds (an arbitrary constant, "outpost").
const MIGRATION_LOCK: i64 = 0x006f_7574_706f_7374;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('db_updates', 0) ON CONFLICT (name) DO NOTHING;
INSERT INTO counters (name, value) VALUES ('config', 0) ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS config (
    section TEXT COLLATE "C" NOT NULL,
    key     TEXT COLLATE "C" NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (section, key)
);

CREATE TABLE IF NOT EXISTS dbs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    update_seq      BIGINT NOT NULL DEFAULT 0,
    doc_count       BIGINT NOT NULL DEFAULT 0,
    doc_del_count   BIGINT NOT NULL DEFAULT 0,
    active_size     BIGINT NOT NULL DEFAULT 0,
    revs_limit      BIGINT NOT NULL DEFAULT 1000,
    policy          TEXT NOT NULL DEFAULT 'manual',
    lww_field       TEXT,
    retention_count BIGINT,
    retention_age   BIGINT,
    purge_seq          BIGINT NOT NULL DEFAULT 0,
    purged_infos_limit BIGINT NOT NULL DEFAULT 1000
);
ALTER TABLE dbs ADD COLUMN IF NOT EXISTS purge_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dbs ADD COLUMN IF NOT EXISTS purged_infos_limit BIGINT NOT NULL DEFAULT 1000;

CREATE TABLE IF NOT EXISTS db_security (
    db   BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS docs (
    db         BIGINT NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    deleted    BOOLEAN NOT NULL,
    conflicted BOOLEAN NOT NULL DEFAULT FALSE,
    winner     TEXT COLLATE "C" NOT NULL DEFAULT '',
    tree       TEXT NOT NULL,
    PRIMARY KEY (db, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS docs_by_seq ON docs (db, seq);
CREATE INDEX IF NOT EXISTS docs_conflicted ON docs (db, id) WHERE conflicted;
CREATE INDEX IF NOT EXISTS docs_live ON docs (db, id) WHERE NOT deleted;

CREATE TABLE IF NOT EXISTS revs (
    db      BIGINT NOT NULL,
    doc     TEXT COLLATE "C" NOT NULL,
    rev     TEXT COLLATE "C" NOT NULL,
    deleted BOOLEAN NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (db, doc, rev)
);

CREATE TABLE IF NOT EXISTS local_docs (
    db   BIGINT NOT NULL,
    id   TEXT COLLATE "C" NOT NULL,
    rev  BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (db, id)
);

CREATE TABLE IF NOT EXISTS attachments (
    digest TEXT PRIMARY KEY,
    length BIGINT NOT NULL,
    data   BYTEA NOT NULL
);
ALTER TABLE attachments ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE IF NOT EXISTS events (
    db      BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    pos     BIGINT NOT NULL DEFAULT 0,
    kind    TEXT NOT NULL,
    doc     TEXT COLLATE "C" NOT NULL,
    rev     TEXT COLLATE "C" NOT NULL,
    parent  TEXT,
    origin  TEXT NOT NULL,
    at      BIGINT NOT NULL,
    detail  TEXT,
    deleted BOOLEAN,
    PRIMARY KEY (db, seq, pos)
);
CREATE INDEX IF NOT EXISTS events_by_doc ON events (db, doc, seq);

CREATE TABLE IF NOT EXISTS db_updates (
    name TEXT COLLATE "C" PRIMARY KEY,
    seq  BIGINT NOT NULL,
    type TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS db_updates_by_seq ON db_updates (seq);

CREATE TABLE IF NOT EXISTS settings_events (
    db     BIGINT NOT NULL,
    seq    BIGINT NOT NULL,
    pos    BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL,
    at     BIGINT NOT NULL,
    PRIMARY KEY (db, seq, pos)
);

CREATE TABLE IF NOT EXISTS event_baselines (
    db   BIGINT NOT NULL,
    doc  TEXT COLLATE "C" NOT NULL,
    seq  BIGINT NOT NULL,
    tree TEXT NOT NULL,
    PRIMARY KEY (db, doc)
);

CREATE TABLE IF NOT EXISTS indexes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    db          BIGINT NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    signature   TEXT NOT NULL,
    key_version TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    rows        BIGINT NOT NULL DEFAULT 0,
    UNIQUE (db, name)
);
CREATE TABLE IF NOT EXISTS index_rows (
    ix    BIGINT NOT NULL,
    k     BYTEA NOT NULL,
    n     BIGINT NOT NULL,
    doc   TEXT COLLATE "C" NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (ix, k, n)
);
CREATE INDEX IF NOT EXISTS index_rows_by_doc ON index_rows (ix, doc);

CREATE TABLE IF NOT EXISTS access_dbs (
    db BIGINT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS access_rows (
    db        BIGINT NOT NULL,
    principal TEXT COLLATE "C" NOT NULL,
    doc       TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    granted   BOOLEAN NOT NULL,
    deleted   BOOLEAN NOT NULL,
    rev       TEXT NOT NULL,
    PRIMARY KEY (db, principal, doc)
);
CREATE INDEX IF NOT EXISTS access_rows_by_seq ON access_rows (db, principal, seq);
CREATE INDEX IF NOT EXISTS access_rows_by_doc ON access_rows (db, doc);
"#;

/// Creates the schema if needed (in the connection's first `search_path` schema, `schema`
/// when one is given, created first) and checks its version; returns the server's uuid, made
/// on first open and shared by every node.
pub fn migrate(client: &mut postgres::Client, schema: Option<&str>) -> Result<String, StoreError> {
    let mut tx = client.transaction().map_err(pg)?;
    tx.query("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg)?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .map_err(pg)?;
    }
    let exists: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
        .map_err(pg)?
        .get(0);
    let mut found_version = VERSION;
    if exists {
        let found: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            .map_err(pg)?
            .map(|r| r.get(0));
        match found.as_deref().map(str::parse::<i64>) {
            Some(Ok(v)) if (1..=VERSION).contains(&v) => found_version = v,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "database has schema version {other:?}, this build reads versions 1 to {VERSION}"
                )));
            }
        }
    }
    tx.batch_execute(SCHEMA).map_err(pg)?;
    tx.batch_execute(crate::lease::SCHEMA).map_err(pg)?;
    if found_version < 3 {
        upgrade_to_3(&mut tx)?;
    }
    tx.execute(
        // The tables above are created if missing, so an older store is now at this version.
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&VERSION.to_string()],
    )
    .map_err(pg)?;
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('server_uuid', $1) ON CONFLICT (key) DO NOTHING",
        &[&fresh],
    )
    .map_err(pg)?;
    let uuid: String = tx
        .query_one("SELECT value FROM meta WHERE key = 'server_uuid'", &[])
        .map_err(pg)?
        .get(0);
    tx.commit().map_err(pg)?;
    Ok(uuid)
}

/// Brings a store older than version 3 forward: every event gets its deletion flag (from its
/// revision), and each database whose `_revs_limit` or policy is not the default gets a setting
/// event at sequence 0, the best the log can say of changes made before they were recorded.
fn upgrade_to_3(tx: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(
        "UPDATE events e SET deleted = r.deleted FROM revs r
         WHERE e.deleted IS NULL AND r.db = e.db AND r.doc = e.doc AND r.rev = e.rev;
         INSERT INTO settings_events (db, seq, pos, kind, detail, at)
             SELECT id, 0, 0, 'revs_limit', json_build_object('revs_limit', revs_limit)::text,
                    created_at / 1000
             FROM dbs WHERE revs_limit <> 1000
             ON CONFLICT DO NOTHING;
         INSERT INTO settings_events (db, seq, pos, kind, detail, at)
             SELECT id, 0, 1, 'policy',
                    json_build_object('conflict_policy', policy, 'lww_field', lww_field)::text,
                    created_at / 1000
             FROM dbs WHERE policy <> 'manual'
             ON CONFLICT DO NOTHING;",
    )
    .map_err(pg)?;
    tracing::info!("migrated the store's schema to version 3");
    Ok(())
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
