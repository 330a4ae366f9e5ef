//! The durable request queue, on one of two engines: SQLite in the data directory (the
//! default; one gateway per directory) or PostgreSQL (`--store postgres://…`; any number of
//! gateways sharing one queue).
//!
//! The queue's logic lives here once, above the engines: what is sealed and how (requests,
//! answers and idempotency keys are encrypted with the [`Cipher`]; ordering keys and scopes
//! are keyed hashes; only what the queue itself must query is stored in clear), the commands
//! that change it ([`command`]), and how stored rows become entries. An engine stores and
//! finds rows: [`sqlite`] with one writer thread that group-commits, [`postgres`] with one
//! writer task per process that does the same on a pooled connection, plus leases on ordering
//! keys so that instances sharing the queue never deliver one key's entries concurrently.
//!
//! An entry is `pending` until the upstream has answered it, then `done` (kept for a while so the
//! caller can read the answer) or `dead` (dead-lettered, kept until an operator retries or drops
//! it). Every change the worker makes is compare-and-set on the entry's `version`, so an entry
//! dropped or retried by an operator while it was being delivered is never overwritten.

mod command;
mod lock;
mod postgres;
mod schema;
mod sqlite;
mod writer;

pub use lock::{DirLock, LOCK_FILE};
pub use postgres::{PoolStatus, PostgresStore};
pub use sqlite::DB_FILE;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::record::{StoredRequest, StoredResponse};

use command::Command;
use writer::Totals;

/// Capacity of the channel toward an engine's writer; callers wait when it is full.
const WRITER_CHANNEL: usize = 8192;

/// Requests bigger than this are encrypted (and loaded batches decrypted) on the blocking pool
/// instead of the async runtime.
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

/// State shared between an engine's writer and the handles.
pub(crate) struct Shared {
    /// Pending entries per ordering key, so a new write can tell at once whether it must queue
    /// behind earlier ones instead of overtaking them. SQLite only: on PostgreSQL other
    /// processes change the queue too, so the database is asked instead.
    pending: Mutex<HashMap<String, u64>>,
    /// Limit totals, for the status endpoint without a query (SQLite only, as above).
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
        match &self.inner.engine {
            Engine::Sqlite(s) => f.debug_struct("Queue").field("path", &s.path).finish(),
            Engine::Postgres(_) => f
                .debug_struct("Queue")
                .field("engine", &"postgres")
                .finish(),
        }
    }
}

/// Where the rows are.
enum Engine {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

struct Inner {
    /// Sender toward the engine's writer; declared (and so dropped) before the engine, so the
    /// writer sees the end of its input before the engine waits for it.
    tx: Option<mpsc::Sender<Command>>,
    engine: Engine,
    cipher: Cipher,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
    }
}

/// A new entry id: the time in milliseconds (12 hex digits), a dash and a random UUID's 32 hex
/// digits. The time first makes ids of later entries sort later, so the index on ids grows at
/// its end (a random id dirtied a random index page in every commit, which cost a third of the
/// enqueue rate); the random part keeps the 122 random bits that make a status URL an
/// unguessable capability.
fn new_id() -> String {
    format!("{:012x}-{}", now_ms(), uuid::Uuid::new_v4().simple())
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

fn new_shared() -> Arc<Shared> {
    Arc::new(Shared {
        pending: Mutex::new(HashMap::new()),
        stored_entries: AtomicI64::new(0),
        stored_bytes: AtomicI64::new(0),
        changed: Notify::new(),
    })
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
        let shared = new_shared();
        let (engine, tx) =
            sqlite::Sqlite::open(data_dir, &mut cipher, limits, lock, shared.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx: Some(tx),
                engine: Engine::Sqlite(engine),
                cipher,
                shared,
            }),
        })
    }

    /// Opens (creating its tables if needed) the queue shared through PostgreSQL, checking that
    /// `cipher` is its key. No lock is taken: any number of processes may open and replay it.
    pub async fn open_postgres(
        store: &PostgresStore,
        mut cipher: Cipher,
        limits: QueueLimits,
    ) -> Result<Self> {
        let shared = new_shared();
        let (engine, tx) =
            postgres::Postgres::open(store, &mut cipher, limits, shared.clone()).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx: Some(tx),
                engine: Engine::Postgres(engine),
                cipher,
                shared,
            }),
        })
    }

    /// Re-seals the queue in `data_dir` from key `old` to key `new` (key rotation), holding the
    /// directory's lock, so no gateway may run meanwhile. All or nothing; returns how many
    /// entries were re-sealed. Blocking.
    pub fn rekey(data_dir: &Path, old: Cipher, new: &Cipher) -> Result<u64> {
        sqlite::Sqlite::rekey(data_dir, old, new)
    }

    /// The database file, for the SQLite engine.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.engine {
            Engine::Sqlite(s) => Some(&s.path),
            Engine::Postgres(_) => None,
        }
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
        let id = new_id();
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
    /// On PostgreSQL this asks the database, since another instance may have queued them.
    pub async fn has_pending(&self, ordering_key: &str) -> Result<bool> {
        let id = self.ordering_id(ordering_key);
        match &self.inner.engine {
            Engine::Sqlite(_) => Ok(self
                .inner
                .shared
                .pending
                .lock()
                .expect("pending map lock")
                .get(&id)
                .is_some_and(|n| *n > 0)),
            Engine::Postgres(pg) => pg.has_pending(&id).await,
        }
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

    /// Number of pending entries, as last committed (by any instance, on PostgreSQL).
    pub async fn pending_count(&self) -> Result<u64> {
        match &self.inner.engine {
            Engine::Sqlite(_) => Ok(self
                .inner
                .shared
                .pending
                .lock()
                .expect("pending map lock")
                .values()
                .sum()),
            Engine::Postgres(pg) => Ok(pg.totals().await?.pending.max(0) as u64),
        }
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

    /// One entry with its request and answer decrypted.
    pub async fn get(&self, id: &str) -> Result<EntryDetail> {
        let raw = match &self.inner.engine {
            Engine::Sqlite(s) => s.get(id.to_owned()).await?,
            Engine::Postgres(pg) => pg.get(id).await?,
        };
        let raw = raw.ok_or_else(|| Error::NotFound(id.to_owned()))?;
        open_entry(&self.inner.cipher, raw)
    }

    /// Entries in arrival order, optionally of one state, after the given sequence number.
    pub async fn list(
        &self,
        state: Option<State>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EntrySummary>> {
        let rows = match &self.inner.engine {
            Engine::Sqlite(s) => s.list(state, after_seq, limit).await?,
            Engine::Postgres(pg) => pg.list(state, after_seq, limit).await?,
        };
        rows.into_iter()
            .map(|row| finish_summary(&self.inner.cipher, row))
            .collect()
    }

    /// Counts for the status endpoint.
    pub async fn stats(&self) -> Result<QueueStats> {
        match &self.inner.engine {
            Engine::Sqlite(s) => {
                let mut stats = s.stats().await?;
                stats.stored_bytes = self
                    .inner
                    .shared
                    .stored_bytes
                    .load(AtomicOrdering::Relaxed)
                    .max(0) as u64;
                Ok(stats)
            }
            Engine::Postgres(pg) => pg.stats().await,
        }
    }

    /// The next deliverable entries in arrival order, skipping every ordering key that has an
    /// entry waiting for its back-off to end; also the earliest end of such a back-off.
    ///
    /// `running` are the keys this process is replaying now; on PostgreSQL, entries are only
    /// returned for keys this process holds the lease of, taking at most `free` new ones (see
    /// [`postgres`]), and each key returned must be handed back with [`Queue::release_lane`].
    pub(crate) async fn load_deliverable(
        &self,
        now_ms: i64,
        limit: u32,
        max_bytes: i64,
        running: &[String],
        free: usize,
    ) -> Result<(Vec<Deliverable>, Option<i64>)> {
        let (raw, wake) = match &self.inner.engine {
            Engine::Sqlite(s) => s.load(now_ms, limit, max_bytes).await?,
            Engine::Postgres(pg) => pg.load(now_ms, limit, max_bytes, running, free).await?,
        };
        let bytes: i64 = raw.iter().map(|r| r.bytes).sum();
        let cipher = self.inner.cipher.clone();
        let open = move || {
            raw.into_iter()
                .map(|r| open_deliverable(&cipher, r))
                .collect()
        };
        let out = if bytes as usize > INLINE_SEAL_BYTES {
            tokio::task::spawn_blocking(open)
                .await
                .map_err(|_| Error::Closed)?
        } else {
            open()
        };
        Ok((out, wake))
    }

    /// Whether this process may start delivering the next entry of `ordering_key`: always on
    /// SQLite (the directory lock makes it the only replayer), while its lease has enough time
    /// left on PostgreSQL.
    pub(crate) fn holds_lane(&self, ordering_key: &str) -> bool {
        match &self.inner.engine {
            Engine::Sqlite(_) => true,
            Engine::Postgres(pg) => pg.holds(ordering_key),
        }
    }

    /// Hands back the lease of `ordering_key` once its lane has ended and its outcomes are
    /// committed, so another instance may take the key at once.
    pub(crate) async fn release_lane(&self, ordering_key: &str) {
        if let Engine::Postgres(pg) = &self.inner.engine
            && let Err(e) = pg.release(ordering_key).await
        {
            // The lease then simply expires.
            tracing::warn!(error = %e, "cannot release a lane lease");
        }
    }

    /// How often the leases held must be renewed (`None` for SQLite, which has none).
    pub(crate) fn renew_interval(&self) -> Option<std::time::Duration> {
        match &self.inner.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(pg) => Some(pg.renew_interval()),
        }
    }

    /// Renews every lease this process holds (PostgreSQL); those it lost are forgotten, so
    /// their lanes stop before their next delivery.
    pub(crate) async fn renew_lanes(&self) {
        if let Engine::Postgres(pg) = &self.inner.engine
            && let Err(e) = pg.renew().await
        {
            tracing::warn!(error = %e, "cannot renew the lane leases");
        }
    }

    /// The connection pool's state, for the PostgreSQL engine.
    pub fn pool_status(&self) -> Option<PoolStatus> {
        match &self.inner.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(pg) => Some(pg.pool_status()),
        }
    }

    /// How many ordering keys this process holds the lease of (always 0 on SQLite).
    pub fn leases_held(&self) -> usize {
        match &self.inner.engine {
            Engine::Sqlite(_) => 0,
            Engine::Postgres(pg) => pg.leases_held(),
        }
    }

    /// Seals an upstream answer for storage with entry `id`.
    pub(crate) fn seal_response(&self, id: &str, response: &StoredResponse) -> Vec<u8> {
        self.inner
            .cipher
            .seal(&response_aad(id), &response.encode())
    }
}

/// A summary row as an engine read it: the summary, its state name and its sealed idempotency
/// key, to be finished by [`finish_summary`].
pub(crate) type SummaryRow = (EntrySummary, String, Option<Vec<u8>>);

/// An entry as an engine read it, still sealed.
pub(crate) struct RawEntry {
    pub summary: SummaryRow,
    pub request: Option<Vec<u8>>,
    pub response: Option<Vec<u8>>,
}

/// A pending entry as an engine read it, its request still sealed.
pub(crate) struct RawDeliverable {
    pub id: String,
    pub version: i64,
    pub attempts: i64,
    pub created_ms: i64,
    pub ordering_key: String,
    pub sealed: Vec<u8>,
    pub bytes: i64,
}

fn open_deliverable(cipher: &Cipher, raw: RawDeliverable) -> Deliverable {
    let request = cipher
        .open(&request_aad(&raw.id), &raw.sealed)
        .and_then(|plain| StoredRequest::decode(&plain))
        .map_err(|e| format!("the stored request cannot be read: {e}"));
    Deliverable {
        id: raw.id,
        version: raw.version,
        attempts: raw.attempts,
        created_ms: raw.created_ms,
        ordering_key: raw.ordering_key,
        request,
    }
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

fn open_entry(cipher: &Cipher, raw: RawEntry) -> Result<EntryDetail> {
    let summary = finish_summary(cipher, raw.summary)?;
    let id = summary.id.clone();
    // A request that cannot be read is left out rather than failing the whole answer: the
    // worker dead-letters such an entry and its `last_error` says why.
    let request = raw.request.and_then(|sealed| {
        cipher
            .open(&request_aad(&id), &sealed)
            .and_then(|p| StoredRequest::decode(&p))
            .inspect_err(|e| tracing::warn!(error = %e, %id, "a stored request cannot be read"))
            .ok()
    });
    let response = raw
        .response
        .map(|sealed| {
            cipher
                .open(&response_aad(&id), &sealed)
                .and_then(|p| StoredResponse::decode(&p))
        })
        .transpose()?;
    Ok(EntryDetail {
        summary,
        request,
        response,
    })
}

#[cfg(test)]
mod tests;
