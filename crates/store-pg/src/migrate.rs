//! Copying a whole store between a SQLite data directory and PostgreSQL, in either direction
//! (`outpost db migrate`), row for row: databases with their settings and counters, documents,
//! revision bodies, the event log (setting events included) and its baselines, `_local` documents, attachments,
//! `_security` objects, the access index of `access=true` databases, `_db_updates` and the
//! server uuid (so replication checkpoints that clients hold stay valid). Secondary indexes are derived data and are rebuilt on first use.
//!
//! The target must hold no database yet, and is written in one transaction: a copy that fails
//! leaves it as it was. Both sides are read and written row by row, never held whole. It runs
//! blocking, off the async runtime; the source should not be written to meanwhile (stop the
//! servers), or the copy is of some moment during the run.

use std::path::Path;

use outpost_store::StoreError;
use outpost_store::sqlite::{FILE_NAME, SqliteStore, StoreKey, key};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use rusqlite::OpenFlags;

use crate::error::pg;

/// How far a copy got, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The table being copied.
    pub table: &'static str,
    /// Rows copied so far, over all tables.
    pub done: u64,
    /// Rows to copy, over all tables.
    pub total: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rows copied per table, in the order copied.
    pub tables: Vec<(&'static str, u64)>,
}

/// The kind of a column, the same on both engines.
#[derive(Clone, Copy)]
enum Col {
    Int,
    OptInt,
    Text,
    OptText,
    Bool,
    OptBool,
    Bytes,
}

/// The tables copied, each with its columns (in both engines' schemas).
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "dbs",
        &[
            ("id", Col::Int),
            ("name", Col::Text),
            ("created_at", Col::Int),
            ("update_seq", Col::Int),
            ("doc_count", Col::Int),
            ("doc_del_count", Col::Int),
            ("active_size", Col::Int),
            ("revs_limit", Col::Int),
            ("policy", Col::Text),
            ("lww_field", Col::OptText),
            ("retention_count", Col::OptInt),
            ("retention_age", Col::OptInt),
            ("purge_seq", Col::Int),
            ("purged_infos_limit", Col::Int),
        ],
    ),
    ("access_dbs", &[("db", Col::Int)]),
    (
        "access_rows",
        &[
            ("db", Col::Int),
            ("principal", Col::Text),
            ("doc", Col::Text),
            ("seq", Col::Int),
            ("granted", Col::Bool),
            ("deleted", Col::Bool),
            ("rev", Col::Text),
        ],
    ),
    ("db_security", &[("db", Col::Int), ("body", Col::Text)]),
    (
        "docs",
        &[
            ("db", Col::Int),
            ("id", Col::Text),
            ("seq", Col::Int),
            ("deleted", Col::Bool),
            ("conflicted", Col::Bool),
            ("winner", Col::Text),
            ("tree", Col::Text),
        ],
    ),
    (
        "revs",
        &[
            ("db", Col::Int),
            ("doc", Col::Text),
            ("rev", Col::Text),
            ("deleted", Col::Bool),
            ("body", Col::Text),
        ],
    ),
    (
        "local_docs",
        &[
            ("db", Col::Int),
            ("id", Col::Text),
            ("rev", Col::Int),
            ("body", Col::Text),
        ],
    ),
    (
        "attachments",
        &[
            ("digest", Col::Text),
            ("length", Col::Int),
            ("data", Col::Bytes),
        ],
    ),
    (
        "events",
        &[
            ("db", Col::Int),
            ("seq", Col::Int),
            ("pos", Col::Int),
            ("kind", Col::Text),
            ("doc", Col::Text),
            ("rev", Col::Text),
            ("parent", Col::OptText),
            ("origin", Col::Text),
            ("at", Col::Int),
            ("detail", Col::OptText),
            ("deleted", Col::OptBool),
        ],
    ),
    (
        "db_updates",
        &[("name", Col::Text), ("seq", Col::Int), ("type", Col::Text)],
    ),
    (
        "event_baselines",
        &[
            ("db", Col::Int),
            ("doc", Col::Text),
            ("seq", Col::Int),
            ("tree", Col::Text),
        ],
    ),
    (
        "settings_events",
        &[
            ("db", Col::Int),
            ("seq", Col::Int),
            ("pos", Col::Int),
            ("kind", Col::Text),
            ("detail", Col::Text),
            ("at", Col::Int),
        ],
    ),
];

/// One value of a row.
enum Val {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
    OptBool(Option<bool>),
    Bytes(Vec<u8>),
}

impl Val {
    fn pg(&self) -> &(dyn ToSql + Sync) {
        match self {
            Val::Int(v) => v,
            Val::OptInt(v) => v,
            Val::Text(v) => v,
            Val::OptText(v) => v,
            Val::Bool(v) => v,
            Val::OptBool(v) => v,
            Val::Bytes(v) => v,
        }
    }

    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        match self {
            Val::Int(v) => v,
            Val::OptInt(v) => v,
            Val::Text(v) => v,
            Val::OptText(v) => v,
            Val::Bool(v) => v,
            Val::OptBool(v) => v,
            Val::Bytes(v) => v,
        }
    }
}

impl Col {
    fn pg_type(self) -> Type {
        match self {
            Col::Int | Col::OptInt => Type::INT8,
            Col::Text | Col::OptText => Type::TEXT,
            Col::Bool | Col::OptBool => Type::BOOL,
            Col::Bytes => Type::BYTEA,
        }
    }

    fn read_sqlite(self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Val> {
        Ok(match self {
            Col::Int => Val::Int(row.get(i)?),
            Col::OptInt => Val::OptInt(row.get(i)?),
            Col::Text => Val::Text(row.get(i)?),
            Col::OptText => Val::OptText(row.get(i)?),
            Col::Bool => Val::Bool(row.get(i)?),
            Col::OptBool => Val::OptBool(row.get(i)?),
            Col::Bytes => Val::Bytes(row.get(i)?),
        })
    }

    fn read_pg(self, row: &postgres::Row, i: usize) -> Result<Val, StoreError> {
        Ok(match self {
            Col::Int => Val::Int(row.try_get(i).map_err(pg)?),
            Col::OptInt => Val::OptInt(row.try_get(i).map_err(pg)?),
            Col::Text => Val::Text(row.try_get(i).map_err(pg)?),
            Col::OptText => Val::OptText(row.try_get(i).map_err(pg)?),
            Col::Bool => Val::Bool(row.try_get(i).map_err(pg)?),
            Col::OptBool => Val::OptBool(row.try_get(i).map_err(pg)?),
            Col::Bytes => Val::Bytes(row.try_get(i).map_err(pg)?),
        })
    }
}

fn column_list(cols: &[(&str, Col)]) -> String {
    cols.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// Connects a blocking client to `url`, its tables in `schema` when one is given.
pub(crate) fn connect(url: &str, schema: Option<&str>) -> Result<postgres::Client, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("invalid postgres url: {e}")))?;
    if let Some(schema) = schema {
        config.options(&format!("-c search_path={}", crate::quote_ident(schema)));
    }
    config.connect(postgres::NoTls).map_err(pg)
}

/// Copies the SQLite store in `dir` (keyed with `key` when encrypted) into the PostgreSQL
/// database at `url`, which must hold no database.
pub fn sqlite_to_postgres(
    dir: &Path,
    key: Option<&StoreKey>,
    url: &str,
    schema: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, StoreError> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let source = key::open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY, key)?;
    let mut client = connect(url, schema)?;
    crate::schema::migrate(&mut client, schema)?;
    let mut tx = client.transaction().map_err(pg)?;
    // Taken for the whole copy, so no node can write in between (they take it when they open).
    tx.execute("LOCK TABLE dbs IN EXCLUSIVE MODE", &[])
        .map_err(pg)?;
    let existing: i64 = tx
        .query_one("SELECT count(*) FROM dbs", &[])
        .map_err(pg)?
        .get(0);
    if existing > 0 {
        return Err(StoreError::DbExists);
    }
    let mut total = 0;
    for (table, _) in TABLES {
        total += source.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
    }
    let mut state = Progress {
        table: "dbs",
        done: 0,
        total,
    };
    let mut report = Report::default();
    for (table, cols) in TABLES {
        state.table = table;
        progress(&state);
        let list = column_list(cols);
        let types: Vec<Type> = cols.iter().map(|(_, c)| c.pg_type()).collect();
        let sink = tx
            .copy_in(&format!("COPY {table} ({list}) FROM STDIN BINARY"))
            .map_err(pg)?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        let mut stmt = source.prepare(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = stmt.query([])?;
        let mut copied = 0;
        while let Some(row) = rows.next()? {
            let vals = cols
                .iter()
                .enumerate()
                .map(|(i, (_, c))| c.read_sqlite(row, i))
                .collect::<rusqlite::Result<Vec<Val>>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> = vals.iter().map(Val::pg).collect();
            writer.write(&refs).map_err(pg)?;
            copied += 1;
            state.done += 1;
            if state.done.is_multiple_of(1000) {
                progress(&state);
            }
        }
        writer.finish().map_err(pg)?;
        report.tables.push((table, copied));
    }
    let uuid: String = source.query_row(
        "SELECT value FROM meta WHERE key = 'server_uuid'",
        [],
        |r| r.get(0),
    )?;
    let db_updates: i64 =
        source.query_row("SELECT COALESCE(MAX(seq), 0) FROM db_updates", [], |r| {
            r.get(0)
        })?;
    tx.execute(
        "UPDATE meta SET value = $1 WHERE key = 'server_uuid'",
        &[&uuid],
    )
    .map_err(pg)?;
    tx.execute(
        "UPDATE counters SET value = $1 WHERE name = 'db_updates'",
        &[&db_updates],
    )
    .map_err(pg)?;
    // New databases get ids after the copied ones.
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('dbs', 'id'), max(id)) FROM dbs HAVING max(id) IS NOT NULL",
    )
    .map_err(pg)?;
    tx.commit().map_err(pg)?;
    progress(&state);
    Ok(report)
}

/// Copies the PostgreSQL store at `url` into a SQLite store in `dir` (created, encrypted with
/// `key` when one is given), which must hold no database.
pub fn postgres_to_sqlite(
    url: &str,
    schema: Option<&str>,
    dir: &Path,
    key: Option<&StoreKey>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, StoreError> {
    let mut client = connect(url, schema)?;
    crate::schema::migrate(&mut client, schema)?;
    // The file's tables, made by the engine itself, then written through a connection of our
    // own once the store let go of it.
    {
        let store = SqliteStore::open_with_key(dir, key.cloned())?;
        store.close();
    }
    let path = dir.join(FILE_NAME);
    let mut target = key::open(&path, OpenFlags::default(), key)?;
    target.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut source = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg)?;
    let tx = target.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: i64 = tx.query_row("SELECT count(*) FROM dbs", [], |r| r.get(0))?;
    if existing > 0 {
        return Err(StoreError::DbExists);
    }
    let mut total = 0;
    for (table, _) in TABLES {
        let n: i64 = source
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(pg)?
            .get(0);
        total += n as u64;
    }
    let mut state = Progress {
        table: "dbs",
        done: 0,
        total,
    };
    let mut report = Report::default();
    for (table, cols) in TABLES {
        state.table = table;
        progress(&state);
        let list = column_list(cols);
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let mut insert = tx.prepare(&format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            marks.join(", ")
        ))?;
        let no_params: [&(dyn ToSql + Sync); 0] = [];
        let mut rows = source
            .query_raw(&format!("SELECT {list} FROM {table}"), no_params)
            .map_err(pg)?;
        let mut copied = 0;
        while let Some(row) = rows.next().map_err(pg)? {
            let vals = cols
                .iter()
                .enumerate()
                .map(|(i, (_, c))| c.read_pg(&row, i))
                .collect::<Result<Vec<Val>, StoreError>>()?;
            let refs: Vec<&dyn rusqlite::ToSql> = vals.iter().map(Val::sqlite).collect();
            insert.execute(refs.as_slice())?;
            copied += 1;
            state.done += 1;
            if state.done.is_multiple_of(1000) {
                progress(&state);
            }
        }
        report.tables.push((table, copied));
    }
    let uuid: String = source
        .query_one("SELECT value FROM meta WHERE key = 'server_uuid'", &[])
        .map_err(pg)?
        .get(0);
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'server_uuid'",
        [&uuid],
    )?;
    tx.commit()?;
    source.commit().map_err(pg)?;
    progress(&state);
    Ok(report)
}
