//! The PostgreSQL engine: one queue shared by any number of gateway processes.
//!
//! Changes go through one writer task per process that applies whatever commands are waiting
//! in one transaction (each in its own savepoint) on a pooled connection and answers each caller
//! after the commit, as the SQLite writer does; the limit totals are a row of
//! `gateway_totals` updated in the same transaction, so the limits hold across processes.
//! Reads use the pool directly.
//!
//! # Who delivers what
//!
//! Entries of one ordering key must be delivered in order, one at a time, across all processes.
//! A process therefore delivers a key's entries only while it holds the key's **lease**: a row
//! of `gateway_lanes` (`ordering_key`, `owner`, `expires_ms`). Leases are taken with
//! `SELECT … FOR UPDATE SKIP LOCKED`, so two processes looking for work at once never wait on
//! each other and never take the same key; they expire on the database's clock (never a
//! process's), are renewed by their holder every third of their lifetime, and are handed back
//! when a lane ends (after its outcomes are committed). A process that dies keeps its leases
//! until they expire; then the next process looking for work takes the keys over and delivers
//! from the first entry not recorded as delivered, which may be the one that was in flight: it
//! is sent again with the same `Idempotency-Key`, the at-least-once half of exactly-once.
//!
//! A holder stops starting deliveries once less than a third of its lease is left without a
//! renewal ([`Postgres::holds`]), so a process cut off from the database stops before its
//! lease can run out and another take over. Every outcome is still compare-and-set on the
//! entry's version, so even a process paused past its lease (a stopped VM) cannot overwrite
//! what the new holder recorded.
//!
//! Advisory locks per key were the other candidate. They belong to a session, so each running
//! lane would pin a pooled connection for as long as it runs, and none would survive a
//! transaction-pooling proxy (PgBouncer); and when the connection holding one breaks, the lock
//! is gone without its holder knowing, while it may still be delivering. Row leases work over
//! any connection, say in a table who holds which key until when, and their holder knows the
//! deadline it must stop by.

mod schema;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use super::command::Command;
use super::{
    EntrySummary, QueueLimits, QueueStats, RawDeliverable, RawEntry, Shared, State, SummaryRow,
    WRITER_CHANNEL,
};
use crate::crypto::Cipher;
use crate::error::{Error, Result};

/// The database's clock in milliseconds since the Unix epoch: lease times are compared on one
/// clock, whatever the processes' clocks say.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}
pub(crate) use db_now_ms;

/// Longest wait for a pooled connection, and for a new one to be made.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the shared queue is and how it is used.
#[derive(Clone)]
pub struct PostgresStore {
    /// `postgres://user[:password]@host[:port]/database[?options=-csearch_path%3Dschema]`.
    /// Never printed: it may hold a password.
    pub url: String,
    /// Most connections this process opens.
    pub pool_size: usize,
    /// How long a lease on an ordering key lasts without renewal: how long the keys of a
    /// process that died wait before another takes them over.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl PostgresStore {
    /// Connections opened unless configured otherwise.
    pub const DEFAULT_POOL_SIZE: usize = 16;
    /// Lease lifetime unless configured otherwise.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

    /// A store at `url` with the default pool size and lease lifetime.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            lease_ttl: Self::DEFAULT_LEASE_TTL,
        }
    }

    /// Checks the URL and the settings.
    pub fn validate(&self) -> Result<()> {
        self.url
            .parse::<tokio_postgres::Config>()
            // The parser's message never repeats the URL, which may hold a password.
            .map_err(|e| Error::Config(format!("the store is not a PostgreSQL URL: {e}")))?;
        if self.pool_size < 2 {
            return Err(Error::Config(
                "the PostgreSQL pool needs at least 2 connections (the writer holds one)".into(),
            ));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(Error::Config(
                "the lease lifetime must be at least 300ms".into(),
            ));
        }
        Ok(())
    }
}

/// The connection pool's state.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    /// Most connections.
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// The PostgreSQL engine of a [`super::Queue`].
pub(crate) struct Postgres {
    pool: Pool,
    /// This process's name in `gateway_lanes.owner`: its pid (for operators) and a random part
    /// (so a restarted process never mistakes its predecessor's leases for its own).
    owner: String,
    lease_ttl: Duration,
    /// The keys this process holds a lease on, each with the local instant by which it must
    /// stop delivering: the lease's lifetime counted from before the statement that took or
    /// renewed it was sent, so it never ends later than the database's view of it.
    held: Mutex<HashMap<String, Instant>>,
    /// The writer task; it ends by itself once every sender is dropped and its last batch is
    /// committed.
    _writer: tokio::task::JoinHandle<()>,
}

impl Postgres {
    /// Connects, creates or checks the tables, checks that `cipher` is the queue's key and
    /// gives it the queue's hashing key, and starts the writer task.
    pub(crate) async fn open(
        store: &PostgresStore,
        cipher: &mut Cipher,
        limits: QueueLimits,
        shared: Arc<Shared>,
    ) -> Result<(Self, mpsc::Sender<Command>)> {
        store.validate()?;
        let mut config: tokio_postgres::Config = store
            .url
            .parse()
            .map_err(|e| Error::Config(format!("the store is not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("outpost-gateway");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(store.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the PostgreSQL pool: {e}")))?;
        {
            let mut client = pool.get().await?;
            schema::prepare(&mut client, cipher).await?;
        }
        let (tx, rx) = mpsc::channel(WRITER_CHANNEL);
        let writer = tokio::spawn(writer::run(pool.clone(), rx, shared, limits));
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok((
            Self {
                pool,
                owner,
                lease_ttl: store.lease_ttl,
                held: Mutex::new(HashMap::new()),
                _writer: writer,
            },
            tx,
        ))
    }

    pub(crate) fn pool_status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            max_size: s.max_size,
            size: s.size,
            idle: s.available,
            waiting: s.waiting,
        }
    }

    pub(crate) async fn has_pending(&self, ordering_id: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM gateway_entries
                 WHERE state = 'pending' AND ordering_key = $1)",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&ordering_id]).await?.try_get(0)?)
    }

    pub(crate) async fn totals(&self) -> Result<writer::Totals> {
        let client = self.pool.get().await?;
        writer::read_totals(&client, false).await
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<RawEntry>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS}, request, response FROM gateway_entries WHERE id = $1"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        Ok(Some(RawEntry {
            summary: summary_from_row(&row)?,
            request: row.try_get(12)?,
            response: row.try_get(13)?,
        }))
    }

    pub(crate) async fn list(
        &self,
        state: Option<State>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<SummaryRow>> {
        let client = self.pool.get().await?;
        let limit = i64::from(limit);
        let rows = match state {
            Some(state) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {SUMMARY_COLUMNS} FROM gateway_entries
                         WHERE state = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ))
                    .await?;
                client
                    .query(&stmt, &[&state.as_str(), &after_seq, &limit])
                    .await?
            }
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {SUMMARY_COLUMNS} FROM gateway_entries
                         WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .await?;
                client.query(&stmt, &[&after_seq, &limit]).await?
            }
        };
        rows.iter().map(summary_from_row).collect()
    }

    pub(crate) async fn stats(&self) -> Result<QueueStats> {
        let client = self.pool.get().await?;
        let mut stats = QueueStats {
            stored_bytes: writer::read_totals(&client, false).await?.bytes.max(0) as u64,
            ..QueueStats::default()
        };
        let stmt = client
            .prepare_cached("SELECT state, COUNT(*) FROM gateway_entries GROUP BY state")
            .await?;
        for row in client.query(&stmt, &[]).await? {
            let n = row.try_get::<_, i64>(1)?.max(0) as u64;
            match State::parse(row.try_get(0)?)? {
                State::Pending => stats.pending = n,
                State::Done => stats.done = n,
                State::Dead => stats.dead = n,
            }
        }
        let stmt = client
            .prepare_cached(
                "SELECT created_ms FROM gateway_entries WHERE state = 'pending'
                 ORDER BY seq LIMIT 1",
            )
            .await?;
        stats.oldest_pending_ms = client
            .query_opt(&stmt, &[])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        Ok(stats)
    }

    /// Takes the leases of up to `free` ordering keys that have deliverable entries and no
    /// other live holder (oldest head first, skipping `running` keys and keys whose head is
    /// backing off), and loads their next entries in arrival order.
    pub(crate) async fn load(
        &self,
        now_ms: i64,
        limit: u32,
        max_bytes: i64,
        running: &[String],
        free: usize,
    ) -> Result<(Vec<RawDeliverable>, Option<i64>)> {
        let client = self.pool.get().await?;
        let limit = i64::from(limit);
        let mut out = Vec::new();
        if free > 0 {
            let candidates = client
                .prepare_cached(concat!(
                    "SELECT e.ordering_key FROM gateway_entries e
                     WHERE e.state = 'pending' AND e.ordering_key <> ALL($2)
                       AND NOT EXISTS (SELECT 1 FROM gateway_entries b
                           WHERE b.state = 'pending' AND b.ordering_key = e.ordering_key
                             AND b.next_attempt_ms > $1)
                       AND NOT EXISTS (SELECT 1 FROM gateway_lanes l
                           WHERE l.ordering_key = e.ordering_key AND l.owner <> $3
                             AND l.expires_ms > ",
                    db_now_ms!(),
                    ")
                     ORDER BY e.seq LIMIT $4"
                ))
                .await?;
            let rows = client
                .query(&candidates, &[&now_ms, &running, &self.owner, &limit])
                .await?;
            let mut keys: Vec<String> = Vec::new();
            for row in rows {
                let key: String = row.try_get(0)?;
                if !keys.contains(&key) {
                    keys.push(key);
                    if keys.len() >= free {
                        break;
                    }
                }
            }
            let claimed = self.claim(&client, &keys).await?;
            if !claimed.is_empty() {
                let stmt = client
                    .prepare_cached(
                        "SELECT id, version, attempts, created_ms, ordering_key, request,
                            request_bytes
                         FROM gateway_entries
                         WHERE state = 'pending' AND ordering_key = ANY($1)
                         ORDER BY seq LIMIT $2",
                    )
                    .await?;
                let mut bytes = 0i64;
                for row in client.query(&stmt, &[&claimed, &limit]).await? {
                    let size: i64 = row.try_get(6)?;
                    if !out.is_empty() && bytes + size > max_bytes {
                        break;
                    }
                    bytes += size;
                    out.push(RawDeliverable {
                        id: row.try_get(0)?,
                        version: row.try_get(1)?,
                        attempts: row.try_get(2)?,
                        created_ms: row.try_get(3)?,
                        ordering_key: row.try_get(4)?,
                        sealed: row.try_get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                        bytes: size,
                    });
                }
                // Keys whose entries were all delivered meanwhile, or did not fit in this
                // batch, get no lane: hand them back now rather than at expiry.
                for key in claimed {
                    if !out.iter().any(|d| d.ordering_key == key) {
                        self.release_with(&client, &key).await?;
                    }
                }
            }
        }
        let stmt = client
            .prepare_cached(
                "SELECT MIN(next_attempt_ms) FROM gateway_entries
                 WHERE state = 'pending' AND next_attempt_ms > $1",
            )
            .await?;
        let wake: Option<i64> = client.query_one(&stmt, &[&now_ms]).await?.try_get(0)?;
        Ok((out, wake))
    }

    /// Takes the leases of `keys` that are free (never taken, handed back, expired) or already
    /// this process's; returns the keys taken.
    async fn claim(
        &self,
        client: &deadpool_postgres::Client,
        keys: &[String],
    ) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let insert = client
            .prepare_cached(
                "INSERT INTO gateway_lanes (ordering_key) SELECT unnest($1::text[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        client.execute(&insert, &[&keys]).await?;
        // SKIP LOCKED: a lease another process is taking right now is left to it, without
        // waiting for its transaction.
        let take = client
            .prepare_cached(concat!(
                "WITH free AS (
                     SELECT ordering_key, owner FROM gateway_lanes
                     WHERE ordering_key = ANY($1) AND (owner = $2 OR expires_ms <= ",
                db_now_ms!(),
                ")
                     FOR UPDATE SKIP LOCKED)
                 UPDATE gateway_lanes l SET owner = $2, expires_ms = ",
                db_now_ms!(),
                " + $3
                 FROM free WHERE l.ordering_key = free.ordering_key
                 RETURNING l.ordering_key, free.owner"
            ))
            .await?;
        let started = Instant::now();
        let rows = client
            .query(&take, &[&keys, &self.owner, &self.ttl_ms()])
            .await?;
        let mut taken = Vec::with_capacity(rows.len());
        let mut held = self.held.lock().expect("lease map lock");
        for row in rows {
            let key: String = row.try_get(0)?;
            let previous: Option<String> = row.try_get(1)?;
            if previous.as_ref().is_some_and(|p| *p != self.owner) {
                // Still owned, so never handed back: its holder died or lost the database.
                metrics::counter!("outpost_gateway_lease_takeovers_total").increment(1);
                tracing::info!("took over an ordering key whose lease had expired");
            }
            metrics::counter!("outpost_gateway_lease_acquired_total").increment(1);
            held.insert(key.clone(), started + self.lease_ttl);
            taken.push(key);
        }
        metrics::gauge!("outpost_gateway_leases_held").set(held.len() as f64);
        Ok(taken)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether this process may start another delivery of `ordering_key`: it holds the lease
    /// with more than a third of its lifetime left.
    pub(crate) fn holds(&self, ordering_key: &str) -> bool {
        let held = self.held.lock().expect("lease map lock");
        held.get(ordering_key).is_some_and(|deadline| {
            deadline.saturating_duration_since(Instant::now()) > self.lease_ttl / 3
        })
    }

    pub(crate) fn leases_held(&self) -> usize {
        self.held.lock().expect("lease map lock").len()
    }

    pub(crate) fn renew_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    pub(crate) async fn release(&self, ordering_key: &str) -> Result<()> {
        let client = self.pool.get().await?;
        self.release_with(&client, ordering_key).await
    }

    async fn release_with(&self, client: &deadpool_postgres::Client, key: &str) -> Result<()> {
        let held = {
            let mut held = self.held.lock().expect("lease map lock");
            let was = held.remove(key).is_some();
            metrics::gauge!("outpost_gateway_leases_held").set(held.len() as f64);
            was
        };
        if held {
            let stmt = client
                .prepare_cached(
                    "UPDATE gateway_lanes SET owner = NULL, expires_ms = 0
                     WHERE ordering_key = $1 AND owner = $2",
                )
                .await?;
            client.execute(&stmt, &[&key, &self.owner]).await?;
        }
        Ok(())
    }

    /// Extends every lease this process still owns; a lease it no longer owns (it expired and
    /// another process took it) is forgotten, so its lane stops before its next delivery.
    pub(crate) async fn renew(&self) -> Result<()> {
        let keys: Vec<String> = self
            .held
            .lock()
            .expect("lease map lock")
            .keys()
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(concat!(
                "UPDATE gateway_lanes SET expires_ms = ",
                db_now_ms!(),
                " + $3 WHERE owner = $1 AND ordering_key = ANY($2)
                 RETURNING ordering_key"
            ))
            .await?;
        let started = Instant::now();
        let rows = client
            .query(&stmt, &[&self.owner, &keys, &self.ttl_ms()])
            .await?;
        let renewed: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let mut held = self.held.lock().expect("lease map lock");
        for key in keys {
            // A key handed back while the renewal ran is no longer in the map: not lost.
            let Some(deadline) = held.get_mut(&key) else {
                continue;
            };
            if renewed.contains(&key) {
                *deadline = started + self.lease_ttl;
            } else {
                held.remove(&key);
                metrics::counter!("outpost_gateway_lease_lost_total").increment(1);
                tracing::warn!("lost the lease of an ordering key; its lane stops");
            }
        }
        metrics::gauge!("outpost_gateway_leases_held").set(held.len() as f64);
        Ok(())
    }
}

const SUMMARY_COLUMNS: &str = "id, seq, state, attempts, created_ms, updated_ms, next_attempt_ms,
    last_error, response_status, request_bytes, ordering_key, sealed_key";

fn summary_from_row(row: &tokio_postgres::Row) -> Result<SummaryRow> {
    let next: i64 = row.try_get(6)?;
    let status: Option<i32> = row.try_get(8)?;
    Ok((
        EntrySummary {
            id: row.try_get(0)?,
            seq: row.try_get(1)?,
            state: State::Pending,
            attempts: row.try_get(3)?,
            created_ms: row.try_get(4)?,
            updated_ms: row.try_get(5)?,
            next_attempt_ms: (next > 0).then_some(next),
            last_error: row.try_get(7)?,
            response_status: status.and_then(|s| u16::try_from(s).ok()),
            request_bytes: row.try_get(9)?,
            ordering_key: row.try_get(10)?,
            idempotency_key: String::new(),
        },
        row.try_get(2)?,
        row.try_get(11)?,
    ))
}
