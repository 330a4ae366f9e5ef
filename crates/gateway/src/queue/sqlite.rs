//! The SQLite engine: one database file in the data directory, in WAL mode with
//! `synchronous = FULL`. Changes go through one writer thread that group-commits concurrent
//! callers ([`super::writer`]); reads use their own connections on the blocking pool. The file
//! belongs to one replaying process ([`DirLock`]), so the pending entries per ordering key and
//! the limit totals are kept in memory ([`Shared`]) and read without a query.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::command::Command;
use super::{
    DirLock, EntrySummary, QueueLimits, QueueStats, RawDeliverable, RawEntry, Shared, State,
    SummaryRow, WRITER_CHANNEL, schema, writer,
};
use crate::crypto::Cipher;
use crate::error::{Error, Result};

/// File name of the queue database inside the data directory.
pub const DB_FILE: &str = "queue.sqlite3";

/// The SQLite engine of a [`super::Queue`].
pub(crate) struct Sqlite {
    pub(crate) path: PathBuf,
    /// The writer thread, joined on drop (after the queue dropped its sender) so the last
    /// batch is committed before we return.
    writer: Option<std::thread::JoinHandle<()>>,
    /// The WAL checkpoint thread (`outpost_sqlite_wal`), which ends with the writer's
    /// connection.
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// Read connections, used on the blocking pool.
    readers: Arc<Readers>,
    /// The data directory's exclusive lock, when this queue replays; released after the
    /// writer thread has finished (fields drop after `Drop::drop`).
    _lock: Option<DirLock>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

/// Read connections; a std mutex is fine because they are only used on the blocking pool.
struct Readers(Vec<Mutex<Connection>>);

impl Readers {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // Prefer an idle connection; fall back to waiting for the first one.
        for reader in &self.0 {
            if let Ok(conn) = reader.try_lock() {
                return f(&conn);
            }
        }
        let conn = self.0[0].lock().expect("reader lock");
        f(&conn)
    }
}

/// Creates the database file readable by its owner only (SQLite gives its `-wal` and `-shm`
/// files the same mode), and narrows the mode of files left by older versions.
fn restrict_files(db: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::File { path, source }
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(file_err(db))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(file_err(&path))?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

impl Sqlite {
    /// Opens (creating if needed) the queue in `data_dir`, checks that `cipher` is its key and
    /// gives it the queue's hashing key, and starts the writer thread. Blocking.
    pub(crate) fn open(
        data_dir: &Path,
        cipher: &mut Cipher,
        limits: QueueLimits,
        lock: Option<DirLock>,
        shared: Arc<Shared>,
    ) -> Result<(Self, mpsc::Sender<Command>)> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::File {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        restrict_files(&path)?;
        let mut conn = schema::connect(&path)?;
        schema::prepare(&mut conn, cipher)?;
        let checkpointer =
            outpost_sqlite_wal::start(&mut conn, schema::connect(&path)?, "outpost-queue-wal")
                .map_err(|e| Error::File {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
        let readers = (0..2)
            .map(|_| schema::connect(&path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let totals = writer::load_totals(&conn, &shared)?;
        shared.set_totals(totals);
        let (tx, rx) = mpsc::channel(WRITER_CHANNEL);
        let writer = std::thread::Builder::new()
            .name("outpost-queue-writer".into())
            .spawn(move || writer::run(conn, rx, shared, limits))
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        Ok((
            Self {
                path,
                writer: Some(writer),
                checkpointer: Some(checkpointer),
                readers: Arc::new(Readers(readers)),
                _lock: lock,
            },
            tx,
        ))
    }

    /// Re-seals the queue in `data_dir` from key `old` to key `new`, holding the directory's
    /// lock. Blocking.
    pub(crate) fn rekey(data_dir: &Path, old: Cipher, new: &Cipher) -> Result<u64> {
        let _lock = DirLock::acquire(data_dir)?;
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(Error::NotFound(path.display().to_string()));
        }
        let mut old = old;
        let mut conn = schema::connect(&path)?;
        let index_key = schema::prepare(&mut conn, &mut old)?;
        schema::rekey(&mut conn, &old, new, &index_key)
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|_| Error::Closed)?
    }

    pub(crate) async fn get(&self, id: String) -> Result<Option<RawEntry>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, request, response FROM entries WHERE id = ?1"
                    ),
                    params![id],
                    |r| {
                        Ok(RawEntry {
                            summary: summary_from_row(r)?,
                            request: r.get(12)?,
                            response: r.get(13)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    pub(crate) async fn list(
        &self,
        state: Option<State>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<SummaryRow>> {
        self.read(move |conn| {
            Ok(match state {
                Some(state) => conn
                    .prepare_cached(&format!(
                        "SELECT {SUMMARY_COLUMNS} FROM entries WHERE state = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                    ))?
                    .query_map(params![state.as_str(), after_seq, limit], summary_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {SUMMARY_COLUMNS} FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                    ))?
                    .query_map(params![after_seq, limit], summary_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            })
        })
        .await
    }

    /// Counts by state and the oldest pending entry's arrival; `stored_bytes` is the caller's.
    pub(crate) async fn stats(&self) -> Result<QueueStats> {
        self.read(move |conn| {
            let mut stats = QueueStats::default();
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM entries GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                match State::parse(&state)? {
                    State::Pending => stats.pending = n as u64,
                    State::Done => stats.done = n as u64,
                    State::Dead => stats.dead = n as u64,
                }
            }
            stats.oldest_pending_ms = conn
                .query_row(
                    "SELECT created_ms FROM entries WHERE state = 'pending' ORDER BY seq LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(stats)
        })
        .await
    }

    /// The next deliverable entries in arrival order (see [`super::Queue::load_deliverable`]).
    pub(crate) async fn load(
        &self,
        now_ms: i64,
        limit: u32,
        max_bytes: i64,
    ) -> Result<(Vec<RawDeliverable>, Option<i64>)> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, version, attempts, created_ms, ordering_key, request, request_bytes
                 FROM entries
                 WHERE state = 'pending' AND ordering_key NOT IN (
                     SELECT ordering_key FROM entries
                     WHERE state = 'pending' AND next_attempt_ms > ?1)
                 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![now_ms, limit])?;
            let mut out = Vec::new();
            let mut bytes = 0i64;
            while let Some(row) = rows.next()? {
                let size: i64 = row.get(6)?;
                if !out.is_empty() && bytes + size > max_bytes {
                    break;
                }
                bytes += size;
                out.push(RawDeliverable {
                    id: row.get(0)?,
                    version: row.get(1)?,
                    attempts: row.get(2)?,
                    created_ms: row.get(3)?,
                    ordering_key: row.get(4)?,
                    sealed: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                    bytes: size,
                });
            }
            let wake: Option<i64> = conn.query_row(
                "SELECT MIN(next_attempt_ms) FROM entries WHERE state = 'pending' AND next_attempt_ms > ?1",
                params![now_ms],
                |r| r.get(0),
            )?;
            Ok((out, wake))
        })
        .await
    }
}

const SUMMARY_COLUMNS: &str = "id, seq, state, attempts, created_ms, updated_ms, next_attempt_ms,
    last_error, response_status, request_bytes, ordering_key, sealed_key";

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    let state: String = row.get(2)?;
    let next: i64 = row.get(6)?;
    Ok((
        EntrySummary {
            id: row.get(0)?,
            seq: row.get(1)?,
            state: State::Pending,
            attempts: row.get(3)?,
            created_ms: row.get(4)?,
            updated_ms: row.get(5)?,
            next_attempt_ms: (next > 0).then_some(next),
            last_error: row.get(7)?,
            response_status: row.get(8)?,
            request_bytes: row.get(9)?,
            ordering_key: row.get(10)?,
            idempotency_key: String::new(),
        },
        state,
        row.get(11)?,
    ))
}
