//! The durable request queue: an SQLite database in WAL mode with `synchronous = FULL`.
//!
//! Changes go through one writer thread that group-commits concurrent callers (see [`writer`]);
//! reads use their own connections on the blocking pool. Requests and answers are stored
//! encrypted; only what the queue itself must query (state, ordering key, idempotency key,
//! attempts, times, the last error) is stored in clear.
//!
//! An entry is `pending` until the upstream has answered it, then `done` (kept for a while so the
//! caller can read the answer) or `dead` (dead-lettered, kept until an operator retries or drops
//! it). Every change the worker makes is compare-and-set on the entry's `version`, so an entry
//! dropped or retried by an operator while it was being delivered is never overwritten.

mod lock;
mod schema;
mod writer;

pub use lock::{DirLock, LOCK_FILE};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::record::{StoredRequest, StoredResponse};

use writer::{Command, Totals};

/// File name of the queue database inside the data directory.
pub const DB_FILE: &str = "queue.sqlite3";

/// Capacity of the channel toward the writer thread; callers wait when it is full.
const WRITER_CHANNEL: usize = 8192;

/// Requests bigger than this are encrypted on the blocking pool instead of the async runtime.
const INLINE_SEAL_BYTES: usize = 256 * 1024;

/// The state of a queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for delivery (or being delivered).
    Pending,
    /// Delivered; the upstream's answer is kept for the retention period.
    Done,
    /// Dead-lettered: permanently refused by the upstream, or out of attempts or time.
    Dead,
}

impl State {
    /// The name stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Done => "done",
            State::Dead => "dead",
        }
    }

    /// Parses a stored or requested state name.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "pending" => Ok(State::Pending),
            "done" => Ok(State::Done),
            "dead" => Ok(State::Dead),
            other => Err(Error::Corrupt(format!("unknown entry state `{other}`"))),
        }
    }
}

/// Limits enforced when enqueueing.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most pending plus dead entries.
    pub max_entries: u64,
    /// Most bytes of stored requests in pending plus dead entries.
    pub max_bytes: u64,
}

/// A request to make durable.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Entries with the same key are delivered in order, one at a time.
    pub ordering_key: String,
    /// The key sent to the upstream.
    pub idempotency_key: String,
    /// The sender's credentials ([`crate::forward::credentials`]) when the client chose the
    /// key: a pending entry with the same credentials, method, target and key is the same
    /// request (`duplicate`), or, with another body, a misuse of the key (`KeyReused`). `None`
    /// for keys the gateway generated, which nothing can repeat.
    pub principal: Option<Vec<u8>>,
    /// The request to replay.
    pub request: StoredRequest,
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The entry's id.
    pub id: String,
    /// True when the same request with the same idempotency key, from the same credentials, was
    /// already pending: `id` is that entry.
    pub duplicate: bool,
}

/// What is known about an entry without decrypting it.
#[derive(Debug, Clone, Serialize)]
pub struct EntrySummary {
    /// The entry's id.
    pub id: String,
    /// Arrival order.
    pub seq: i64,
    /// Current state.
    pub state: State,
    /// Delivery attempts made.
    pub attempts: i64,
    /// When it was queued (milliseconds since the Unix epoch).
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
    /// Earliest time of the next attempt, while pending after a failure.
    pub next_attempt_ms: Option<i64>,
    /// Why the last attempt did not succeed.
    pub last_error: Option<String>,
    /// The upstream's status, once it answered.
    pub response_status: Option<u16>,
    /// Size of the stored request.
    pub request_bytes: i64,
    /// The ordering stream it belongs to, as stored: a keyed hash of the ordering key (empty
    /// for the global order), since the key is made of request data.
    pub ordering_key: String,
    /// The key sent to the upstream as `Idempotency-Key`.
    pub idempotency_key: String,
}

/// An entry with its decrypted request (while still kept) and the upstream's answer.
#[derive(Debug, Clone)]
pub struct EntryDetail {
    /// The clear metadata.
    pub summary: EntrySummary,
    /// The request, until it is delivered.
    pub request: Option<StoredRequest>,
    /// The upstream's answer, once it answered.
    pub response: Option<StoredResponse>,
}

/// Counts for the status endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Entries waiting for delivery.
    pub pending: u64,
    /// Dead-lettered entries.
    pub dead: u64,
    /// Delivered entries still kept.
    pub done: u64,
    /// Bytes of stored requests counted against the limit.
    pub stored_bytes: u64,
    /// Arrival time of the oldest pending entry.
    pub oldest_pending_ms: Option<i64>,
}

/// A pending entry handed to the worker.
#[derive(Debug, Clone)]
pub(crate) struct Deliverable {
    pub id: String,
    pub version: i64,
    pub attempts: i64,
    pub created_ms: i64,
    pub ordering_key: String,
    /// The request, or why its stored record cannot be read (a corrupt row, a record sealed
    /// with another key): such a poison entry is dead-lettered with that error instead of
    /// stopping the worker.
    pub request: std::result::Result<StoredRequest, String>,
}

/// How a delivery attempt ended, as recorded by the worker.
#[derive(Debug)]
pub(crate) enum Finish {
    Done {
        attempts: i64,
        response: Vec<u8>,
        status: u16,
    },
    Dead {
        attempts: i64,
        error: String,
        response: Option<Vec<u8>>,
        status: Option<u16>,
    },
    Later {
        attempts: i64,
        next_attempt_ms: i64,
        error: String,
    },
}

/// State shared between the writer thread and the handles.
pub(crate) struct Shared {
    /// Pending entries per ordering key, so a new write can tell at once whether it must queue
    /// behind earlier ones instead of overtaking them.
    pending: Mutex<HashMap<String, u64>>,
    /// Limit totals, for the status endpoint without a query.
    stored_entries: AtomicI64,
    stored_bytes: AtomicI64,
    /// Wakes the worker when something became deliverable.
    pub(crate) changed: Notify,
}

impl Shared {
    fn apply_pending(&self, deltas: &HashMap<String, i64>) {
        let mut map = self.pending.lock().expect("pending map lock");
        for (key, delta) in deltas {
            let n = map.entry(key.clone()).or_default();
            *n = (*n as i64 + delta).max(0) as u64;
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    fn replace_pending(&self, map: HashMap<String, u64>) {
        *self.pending.lock().expect("pending map lock") = map;
    }

    fn set_totals(&self, totals: Totals) {
        self.stored_entries
            .store(totals.entries, AtomicOrdering::Relaxed);
        self.stored_bytes
            .store(totals.bytes, AtomicOrdering::Relaxed);
    }
}

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    /// Sender toward the writer thread; taken on drop so the thread sees the end of input.
    tx: Option<mpsc::Sender<Command>>,
    /// The writer thread, joined on drop so the last batch is committed before we return.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Read connections; a std mutex is fine because they are only used on the blocking pool.
    readers: Vec<Mutex<Connection>>,
    cipher: Cipher,
    shared: Arc<Shared>,
    /// The data directory's exclusive lock, when this queue replays; released after the
    /// writer thread has finished (fields drop after `Drop::drop`).
    _lock: Option<DirLock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn request_aad(id: &str) -> Vec<u8> {
    format!("{id}/request").into_bytes()
}

fn response_aad(id: &str) -> Vec<u8> {
    format!("{id}/response").into_bytes()
}

fn key_aad(id: &str) -> Vec<u8> {
    format!("{id}/idempotency-key").into_bytes()
}

impl Queue {
    /// Opens (creating if needed) the queue in `data_dir`, checking that `cipher` is its key.
    ///
    /// This blocks briefly on file I/O; call it before serving or from a blocking context.
    pub fn open(data_dir: &Path, cipher: Cipher, limits: QueueLimits) -> Result<Self> {
        Self::open_with(data_dir, cipher, limits, None)
    }

    /// Opens the queue holding the data directory's exclusive `lock` for as long as it is open;
    /// for a queue whose worker replays it (see [`DirLock`]).
    pub fn open_locked(
        data_dir: &Path,
        cipher: Cipher,
        limits: QueueLimits,
        lock: DirLock,
    ) -> Result<Self> {
        Self::open_with(data_dir, cipher, limits, Some(lock))
    }

    fn open_with(
        data_dir: &Path,
        mut cipher: Cipher,
        limits: QueueLimits,
        lock: Option<DirLock>,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::File {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        restrict_files(&path)?;
        let mut conn = schema::connect(&path)?;
        schema::prepare(&mut conn, &mut cipher)?;
        let readers = (0..2)
            .map(|_| schema::connect(&path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            stored_entries: AtomicI64::new(0),
            stored_bytes: AtomicI64::new(0),
            changed: Notify::new(),
        });
        let totals = writer::load_totals(&conn, &shared)?;
        shared.set_totals(totals);
        let (tx, rx) = mpsc::channel(WRITER_CHANNEL);
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("outpost-queue-writer".into())
            .spawn(move || writer::run(conn, rx, thread_shared, limits))
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                tx: Some(tx),
                writer: Some(writer),
                readers,
                cipher,
                shared,
                _lock: lock,
            }),
        })
    }

    /// Re-seals the queue in `data_dir` from key `old` to key `new` (key rotation), holding the
    /// directory's lock, so no gateway may run meanwhile. All or nothing; returns how many
    /// entries were re-sealed. Blocking.
    pub fn rekey(data_dir: &Path, old: Cipher, new: &Cipher) -> Result<u64> {
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    async fn send(&self, cmd: Command) -> Result<()> {
        let tx = self.inner.tx.as_ref().ok_or(Error::Closed)?;
        tx.send(cmd).await.map_err(|_| Error::Closed)
    }

    /// Makes `entry` durable. Returns once it is committed to disk.
    pub async fn enqueue(&self, entry: NewEntry) -> Result<Enqueued> {
        let started = std::time::Instant::now();
        let id = uuid::Uuid::new_v4().to_string();
        let cipher = &self.inner.cipher;
        let scope = entry.principal.as_ref().map(|principal| {
            cipher.mac(&[
                b"scope",
                principal,
                entry.request.method.as_bytes(),
                entry.request.target.as_bytes(),
                entry.idempotency_key.as_bytes(),
            ])
        });
        let fingerprint = cipher.mac(&[b"body", &entry.request.body]);
        let ordering_key = self.ordering_id(&entry.ordering_key);
        let sealed_key = cipher.seal(&key_aad(&id), entry.idempotency_key.as_bytes());
        let plain = entry.request.encode();
        let bytes = plain.len() as i64;
        let sealed = if plain.len() > INLINE_SEAL_BYTES {
            let cipher = self.inner.cipher.clone();
            let aad = request_aad(&id);
            tokio::task::spawn_blocking(move || cipher.seal(&aad, &plain))
                .await
                .map_err(|_| Error::Closed)?
        } else {
            self.inner.cipher.seal(&request_aad(&id), &plain)
        };
        let (reply, rx) = oneshot::channel();
        self.send(Command::Enqueue {
            id,
            ordering_key,
            sealed_key,
            scope,
            fingerprint,
            created_ms: now_ms(),
            sealed,
            bytes,
            reply,
        })
        .await?;
        let enqueued = rx.await.map_err(|_| Error::Closed)?;
        metrics::histogram!("outpost_gateway_enqueue_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        enqueued
    }

    /// Whether entries with this ordering key are waiting, so a new write must queue behind them.
    pub fn has_pending(&self, ordering_key: &str) -> bool {
        let id = self.ordering_id(ordering_key);
        self.inner
            .shared
            .pending
            .lock()
            .expect("pending map lock")
            .get(&id)
            .is_some_and(|n| *n > 0)
    }

    /// How an ordering key is stored: a keyed hash, since it is made of request data (a path, a
    /// header such as `Authorization`) and only ever compared. The global order (empty key)
    /// holds no request data and stays empty.
    fn ordering_id(&self, ordering_key: &str) -> String {
        if ordering_key.is_empty() {
            String::new()
        } else {
            self.inner.cipher.mac(&[b"order", ordering_key.as_bytes()])
        }
    }

    /// Number of pending entries, as last committed.
    pub fn pending_count(&self) -> u64 {
        self.inner
            .shared
            .pending
            .lock()
            .expect("pending map lock")
            .values()
            .sum()
    }

    /// Bytes of stored requests counted against the limit, as last committed.
    pub fn stored_bytes(&self) -> u64 {
        self.inner
            .shared
            .stored_bytes
            .load(AtomicOrdering::Relaxed)
            .max(0) as u64
    }

    /// Records the outcome of a delivery; the receiver says whether the entry was still unchanged.
    pub(crate) async fn finish(
        &self,
        id: String,
        version: i64,
        finish: Finish,
    ) -> Result<oneshot::Receiver<Result<bool>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Finish {
            id,
            version,
            now_ms: now_ms(),
            finish,
            reply,
        })
        .await?;
        Ok(rx)
    }

    /// Makes an entry pending again at once (a dead one with its attempts reset).
    pub async fn retry(&self, id: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Retry {
            id: id.to_owned(),
            now_ms: now_ms(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Deletes an entry in any state.
    pub async fn drop_entry(&self, id: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Drop {
            id: id.to_owned(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Dead-letters pending entries queued before `expire_before_ms` and deletes delivered ones
    /// finished before `purge_before_ms`; returns how many of each.
    pub async fn sweep(&self, expire_before_ms: i64, purge_before_ms: i64) -> Result<(u64, u64)> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Sweep {
            now_ms: now_ms(),
            expire_before_ms,
            purge_before_ms,
            reply,
        })
        .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Cipher) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// One entry with its request and answer decrypted.
    pub async fn get(&self, id: &str) -> Result<EntryDetail> {
        let id = id.to_owned();
        self.read(move |conn, cipher| get_entry(conn, cipher, &id))
            .await
    }

    /// Entries in arrival order, optionally of one state, after the given sequence number.
    pub async fn list(
        &self,
        state: Option<State>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EntrySummary>> {
        self.read(move |conn, cipher| list_entries(conn, cipher, state, after_seq, limit))
            .await
    }

    /// Counts for the status endpoint.
    pub async fn stats(&self) -> Result<QueueStats> {
        let stored_bytes = self
            .inner
            .shared
            .stored_bytes
            .load(AtomicOrdering::Relaxed)
            .max(0) as u64;
        self.read(move |conn, _| {
            let mut stats = QueueStats {
                stored_bytes,
                ..QueueStats::default()
            };
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

    /// The next deliverable entries in arrival order, skipping every ordering key that has an
    /// entry waiting for its back-off to end; also the earliest end of such a back-off.
    pub(crate) async fn load_deliverable(
        &self,
        now_ms: i64,
        limit: u32,
        max_bytes: i64,
    ) -> Result<(Vec<Deliverable>, Option<i64>)> {
        self.read(move |conn, cipher| {
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
                let id: String = row.get(0)?;
                let sealed: Vec<u8> = row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
                let size: i64 = row.get(6)?;
                if !out.is_empty() && bytes + size > max_bytes {
                    break;
                }
                bytes += size;
                let request = cipher
                    .open(&request_aad(&id), &sealed)
                    .and_then(|plain| StoredRequest::decode(&plain))
                    .map_err(|e| format!("the stored request cannot be read: {e}"));
                out.push(Deliverable {
                    version: row.get(1)?,
                    attempts: row.get(2)?,
                    created_ms: row.get(3)?,
                    ordering_key: row.get(4)?,
                    request,
                    id,
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

    /// Seals an upstream answer for storage with entry `id`.
    pub(crate) fn seal_response(&self, id: &str, response: &StoredResponse) -> Vec<u8> {
        self.inner
            .cipher
            .seal(&response_aad(id), &response.encode())
    }
}

impl Inner {
    fn with_reader<T>(&self, f: impl FnOnce(&Connection, &Cipher) -> Result<T>) -> Result<T> {
        // Prefer an idle connection; fall back to waiting for the first one.
        for reader in &self.readers {
            if let Ok(conn) = reader.try_lock() {
                return f(&conn, &self.cipher);
            }
        }
        let conn = self.readers[0].lock().expect("reader lock");
        f(&conn, &self.cipher)
    }
}

const SUMMARY_COLUMNS: &str = "id, seq, state, attempts, created_ms, updated_ms, next_attempt_ms,
    last_error, response_status, request_bytes, ordering_key, sealed_key";

/// A summary row: the summary, its state name and its sealed idempotency key, to be finished by
/// [`finish_summary`].
type SummaryRow = (EntrySummary, String, Option<Vec<u8>>);

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

fn finish_summary(cipher: &Cipher, (mut summary, state, key): SummaryRow) -> Result<EntrySummary> {
    summary.state = State::parse(&state)?;
    if let Some(sealed) = key {
        let plain = cipher.open(&key_aad(&summary.id), &sealed)?;
        summary.idempotency_key = String::from_utf8_lossy(&plain).into_owned();
    }
    if summary.state != State::Pending {
        summary.next_attempt_ms = None;
    }
    Ok(summary)
}

fn get_entry(conn: &Connection, cipher: &Cipher, id: &str) -> Result<EntryDetail> {
    let row = conn
        .query_row(
            &format!("SELECT {SUMMARY_COLUMNS}, request, response FROM entries WHERE id = ?1"),
            params![id],
            |r| {
                Ok((
                    summary_from_row(r)?,
                    r.get::<_, Option<Vec<u8>>>(12)?,
                    r.get::<_, Option<Vec<u8>>>(13)?,
                ))
            },
        )
        .optional()?;
    let Some((summary, request, response)) = row else {
        return Err(Error::NotFound(id.to_owned()));
    };
    let summary = finish_summary(cipher, summary)?;
    // A request that cannot be read is left out rather than failing the whole answer: the
    // worker dead-letters such an entry and its `last_error` says why.
    let request = request.and_then(|sealed| {
        cipher
            .open(&request_aad(id), &sealed)
            .and_then(|p| StoredRequest::decode(&p))
            .inspect_err(|e| tracing::warn!(error = %e, %id, "a stored request cannot be read"))
            .ok()
    });
    let response = response
        .map(|sealed| {
            cipher
                .open(&response_aad(id), &sealed)
                .and_then(|p| StoredResponse::decode(&p))
        })
        .transpose()?;
    Ok(EntryDetail {
        summary,
        request,
        response,
    })
}

fn list_entries(
    conn: &Connection,
    cipher: &Cipher,
    state: Option<State>,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<EntrySummary>> {
    let rows = match state {
        Some(state) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM entries WHERE state = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            stmt.query_map(params![state.as_str(), after_seq, limit], summary_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
        None => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            stmt.query_map(params![after_seq, limit], summary_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
    };
    rows.into_iter()
        .map(|row| finish_summary(cipher, row))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_entries: u64) -> Queue {
        Queue::open(
            dir,
            Cipher::new(&[3; 32]),
            QueueLimits {
                max_entries,
                max_bytes: 1 << 30,
            },
        )
        .unwrap()
    }

    fn entry(key: &str, body: &'static str) -> NewEntry {
        NewEntry {
            ordering_key: String::new(),
            idempotency_key: key.into(),
            principal: Some(Vec::new()),
            request: StoredRequest {
                method: "POST".into(),
                target: "/t".into(),
                headers: vec![],
                body: bytes::Bytes::from_static(body.as_bytes()),
            },
        }
    }

    fn done(q: &Queue, id: &str) -> Finish {
        let response = StoredResponse {
            status: 200,
            headers: vec![],
            body: bytes::Bytes::from_static(b"ok"),
            truncated: false,
        };
        Finish::Done {
            attempts: 1,
            response: q.seal_response(id, &response),
            status: 200,
        }
    }

    #[tokio::test]
    async fn finish_is_compare_and_set_on_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 100);
        let a = q.enqueue(entry("a", "1")).await.unwrap();
        let (loaded, _) = q.load_deliverable(now_ms(), 10, 1 << 20).await.unwrap();
        assert_eq!(loaded.len(), 1);
        let version = loaded[0].version;

        // An operator retries it while it is being delivered: the delivery's outcome is dropped.
        q.retry(&a.id).await.unwrap();
        let stale = q
            .finish(a.id.clone(), version, done(&q, &a.id))
            .await
            .unwrap();
        assert!(!stale.await.unwrap().unwrap());
        assert_eq!(q.get(&a.id).await.unwrap().summary.state, State::Pending);

        let (loaded, _) = q.load_deliverable(now_ms(), 10, 1 << 20).await.unwrap();
        let fresh = q
            .finish(a.id.clone(), loaded[0].version, done(&q, &a.id))
            .await
            .unwrap();
        assert!(fresh.await.unwrap().unwrap());
        let detail = q.get(&a.id).await.unwrap();
        assert_eq!(detail.summary.state, State::Done);
        assert_eq!(detail.response.unwrap().body, "ok");
        assert!(
            detail.request.is_none(),
            "a delivered entry keeps no request"
        );
        assert_eq!(q.pending_count(), 0);
    }

    #[tokio::test]
    async fn backing_off_keys_are_skipped_and_order_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 100);
        let mut ids = Vec::new();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let mut e = entry(key, "x");
            e.ordering_key = if i == 1 {
                "other".into()
            } else {
                String::new()
            };
            ids.push(q.enqueue(e).await.unwrap().id);
        }
        let (loaded, _) = q.load_deliverable(now_ms(), 10, 1 << 20).await.unwrap();
        let order: Vec<_> = loaded.iter().map(|d| d.id.clone()).collect();
        assert_eq!(order, ids);

        let head = &loaded[0];
        let later = Finish::Later {
            attempts: 1,
            next_attempt_ms: now_ms() + 60_000,
            error: "503".into(),
        };
        q.finish(head.id.clone(), head.version, later)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let (loaded, wake) = q.load_deliverable(now_ms(), 10, 1 << 20).await.unwrap();
        // Only the other ordering key may proceed; the third entry waits behind its head.
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, ids[1]);
        assert!(wake.unwrap() > now_ms());
    }

    #[tokio::test]
    async fn dedup_limits_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 2);
        let first = q.enqueue(entry("k", "1")).await.unwrap();
        let again = q.enqueue(entry("k", "1")).await.unwrap();
        assert_eq!(
            again,
            Enqueued {
                id: first.id.clone(),
                duplicate: true
            }
        );
        assert!(matches!(
            q.enqueue(entry("k", "2")).await,
            Err(Error::KeyReused)
        ));
        q.enqueue(entry("k2", "3")).await.unwrap();
        assert!(matches!(
            q.enqueue(entry("k3", "4")).await,
            Err(Error::QueueFull(_))
        ));
        q.drop_entry(&first.id).await.unwrap();
        assert!(matches!(q.get(&first.id).await, Err(Error::NotFound(_))));
        assert!(matches!(
            q.drop_entry(&first.id).await,
            Err(Error::NotFound(_))
        ));
        q.enqueue(entry("k3", "4")).await.unwrap();
        assert_eq!(q.pending_count(), 2);
    }

    #[tokio::test]
    async fn concurrent_enqueues_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 10_000);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let q = q.clone();
            set.spawn(async move { q.enqueue(entry(&format!("k{i}"), "x")).await.unwrap() });
        }
        while let Some(r) = set.join_next().await {
            assert!(!r.unwrap().duplicate);
        }
        drop(q);
        // Reopened from disk: everything acknowledged is there.
        let q = open(dir.path(), 10_000);
        assert_eq!(q.pending_count(), 200);
        assert_eq!(
            q.list(Some(State::Pending), 0, 1000).await.unwrap().len(),
            200
        );
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;

    /// The schema of format 1, as the gateway created it before keys were scoped and sealed.
    const FORMAT_1: &str = "
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE entries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
            ordering_key TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            request BLOB,
            request_bytes INTEGER NOT NULL,
            response BLOB,
            response_status INTEGER
        );
        CREATE INDEX entries_pending_idempotency
            ON entries (idempotency_key) WHERE state = 'pending';
        PRAGMA user_version = 1;";

    /// A record as format 1 sealed it: nonce and ciphertext, no key id.
    fn legacy_seal(cipher: &Cipher, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        cipher.seal(aad, plain)[2 + 4..].to_vec()
    }

    /// A queue written by format 1 opens: its records still decrypt, its ordering keys become
    /// keyed hashes (and still order), its idempotency keys are sealed, nothing stays in clear.
    #[tokio::test]
    async fn a_format_1_queue_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = [5u8; 32];
        let cipher = Cipher::new(&key);
        let request = StoredRequest {
            method: "POST".into(),
            target: "/users/SECRET-PATH/x".into(),
            headers: vec![],
            body: bytes::Bytes::from_static(b"body"),
        };
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(FORMAT_1).unwrap();
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('key_check', ?1)",
                params![legacy_seal(
                    &cipher,
                    b"outpost-gateway/key-check",
                    b"outpost"
                )],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO entries (id, state, ordering_key, idempotency_key, created_ms,
                    updated_ms, request, request_bytes)
                 VALUES ('e1', 'pending', '/users/SECRET-PATH', 'CLIENT-KEY-1', 1, 1, ?1, 10)",
                params![legacy_seal(&cipher, &request_aad("e1"), &request.encode())],
            )
            .unwrap();
        }
        let q = Queue::open(
            dir.path(),
            Cipher::new(&key),
            QueueLimits {
                max_entries: 100,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert!(q.has_pending("/users/SECRET-PATH"));
        let entry = q.get("e1").await.unwrap();
        assert_eq!(entry.summary.idempotency_key, "CLIENT-KEY-1");
        assert_eq!(entry.request.unwrap(), request);
        let (loaded, _) = q.load_deliverable(now_ms(), 10, 1 << 20).await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(loaded[0].request.is_ok());
        drop(q);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let (ordering, key): (String, String) = conn
            .query_row(
                "SELECT ordering_key, idempotency_key FROM entries WHERE id = 'e1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            !ordering.contains("SECRET") && ordering.len() == 64,
            "{ordering}"
        );
        assert_eq!(key, "");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }
}
