//! The single writer thread of the queue database and its group commit.
//!
//! Every change goes through one thread that owns the write connection. It takes whatever
//! commands are waiting, applies them in one transaction (each inside its own savepoint, so one
//! failing command does not undo the others), commits once, and only then answers each caller.
//! Many concurrent enqueues thus share one fsync without anyone being answered early.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::mpsc;

use super::command::{Command, Reply, reply_error, reply_with_error};
use super::{Enqueued, Finish, QueueLimits, Shared, State};
use crate::error::{Error, Result};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;
/// Longest wait for a batch to fill up to the previous batch's size.
const GATHER_WAIT: Duration = Duration::from_millis(1);
/// Polling step of that wait.
const GATHER_POLL: Duration = Duration::from_micros(50);

/// What the limits are checked against: pending and dead-lettered entries still hold a request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub entries: i64,
    pub bytes: i64,
}

/// Changes to the in-memory view that take effect only once the batch is committed.
#[derive(Default)]
struct Effects {
    pending: HashMap<String, i64>,
    wake_worker: bool,
    reload: bool,
}

impl Effects {
    fn pending(&mut self, key: &str, delta: i64) {
        *self.pending.entry(key.to_owned()).or_default() += delta;
    }
}

pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    limits: QueueLimits,
) {
    let mut totals = match load_totals(&conn, &shared) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the queue totals");
            Totals::default()
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_batch = 1;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(&mut rx, &mut batch, last_batch);
        last_batch = batch.len();
        let before = totals;
        let mut effects = Effects::default();
        let mut replies = Vec::with_capacity(batch.len());
        let committed = apply_batch(
            &mut conn,
            batch.drain(..),
            &mut totals,
            &limits,
            &mut effects,
            &mut replies,
        );
        match committed {
            Ok(()) => {
                if effects.reload {
                    match load_totals(&conn, &shared) {
                        Ok(t) => totals = t,
                        Err(e) => tracing::error!(error = %e, "cannot read the queue totals"),
                    }
                } else {
                    shared.apply_pending(&effects.pending);
                }
                shared.set_totals(totals);
                for reply in replies {
                    reply.send();
                }
                if effects.wake_worker {
                    shared.changed.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "queue commit failed");
                totals = before;
                for reply in replies {
                    reply.fail(|| Error::Closed);
                }
            }
        }
    }
}

/// Takes what is waiting; then, if fewer commands came than in the previous batch, waits a
/// little for the rest. Callers answered by the previous commit send their next command a few
/// hundred microseconds later; without this pause the first of them would get a commit (and an
/// fsync) of its own and the others would wait for the next one, halving the commit rate under
/// steady concurrency. A lone caller (previous batch of one) never waits.
fn gather(rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>, expected: usize) {
    let drain = |rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
    };
    drain(rx, batch);
    let deadline = Instant::now() + GATHER_WAIT;
    while batch.len() < expected.min(MAX_BATCH) && Instant::now() < deadline {
        std::thread::sleep(GATHER_POLL);
        drain(rx, batch);
    }
}

fn apply_batch(
    conn: &mut Connection,
    batch: std::vec::Drain<'_, Command>,
    totals: &mut Totals,
    limits: &QueueLimits,
    effects: &mut Effects,
    replies: &mut Vec<Reply>,
) -> Result<()> {
    let mut tx = conn.transaction()?;
    for cmd in batch {
        let reply = apply_one(&mut tx, cmd, totals, limits, effects);
        replies.push(reply);
    }
    tx.commit()?;
    Ok(())
}

fn apply_one(
    tx: &mut Transaction<'_>,
    cmd: Command,
    totals: &mut Totals,
    limits: &QueueLimits,
    effects: &mut Effects,
) -> Reply {
    let mut local = Effects::default();
    let mut local_totals = *totals;
    // Every command but the sweep writes with a single statement, which SQLite applies
    // atomically: when it fails nothing of it remains, so it needs no savepoint of its own. The
    // sweep runs two statements and gets a savepoint so a failure undoes both.
    let reply = if matches!(cmd, Command::Sweep { .. }) {
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => return reply_error(cmd, e.into()),
        };
        let reply = run_command(&sp, cmd, &mut local_totals, limits, &mut local);
        if !reply.is_ok() {
            // Dropping the savepoint rolls it back.
            return reply;
        }
        match sp.commit() {
            Ok(()) => reply,
            Err(e) => return reply_with_error(reply, e.into()),
        }
    } else {
        run_command(tx, cmd, &mut local_totals, limits, &mut local)
    };
    if reply.is_ok() {
        *totals = local_totals;
        for (k, d) in local.pending {
            effects.pending(&k, d);
        }
        effects.wake_worker |= local.wake_worker;
        effects.reload |= local.reload;
    }
    reply
}

fn run_command(
    conn: &Connection,
    cmd: Command,
    totals: &mut Totals,
    limits: &QueueLimits,
    effects: &mut Effects,
) -> Reply {
    match cmd {
        Command::Enqueue {
            id,
            ordering_key,
            sealed_key,
            scope,
            fingerprint,
            created_ms,
            sealed,
            bytes,
            reply,
        } => {
            let r = enqueue(
                conn,
                &id,
                &ordering_key,
                &sealed_key,
                scope.as_deref(),
                &fingerprint,
                created_ms,
                &sealed,
                bytes,
                totals,
                limits,
                effects,
            );
            Reply::Enqueued(reply, r)
        }
        Command::Finish {
            id,
            version,
            now_ms,
            finish,
            reply,
        } => Reply::Finished(
            reply,
            finish_entry(conn, &id, version, now_ms, finish, totals, effects),
        ),
        Command::Retry { id, now_ms, reply } => {
            Reply::Unit(reply, retry(conn, &id, now_ms, effects))
        }
        Command::Drop { id, reply } => Reply::Unit(reply, drop_entry(conn, &id, totals, effects)),
        Command::Sweep {
            now_ms,
            expire_before_ms,
            purge_before_ms,
            reply,
        } => Reply::Swept(
            reply,
            sweep(conn, now_ms, expire_before_ms, purge_before_ms, effects),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn enqueue(
    tx: &Connection,
    id: &str,
    ordering_key: &str,
    sealed_key: &[u8],
    scope: Option<&str>,
    fingerprint: &str,
    created_ms: i64,
    sealed: &[u8],
    bytes: i64,
    totals: &mut Totals,
    limits: &QueueLimits,
    effects: &mut Effects,
) -> Result<Enqueued> {
    if let Some(scope) = scope {
        let existing: Option<(String, Option<String>)> = tx
            .prepare_cached(
                "SELECT id, fingerprint FROM entries WHERE scope = ?1 AND state = 'pending' LIMIT 1",
            )?
            .query_row(params![scope], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, stored)) = existing {
            if stored.as_deref() != Some(fingerprint) {
                return Err(Error::KeyReused);
            }
            return Ok(Enqueued {
                id,
                duplicate: true,
            });
        }
    }
    if totals.entries as u64 >= limits.max_entries {
        return Err(Error::QueueFull("entry limit reached"));
    }
    if (totals.bytes + bytes) as u64 > limits.max_bytes {
        return Err(Error::QueueFull("byte limit reached"));
    }
    tx.prepare_cached(
        "INSERT INTO entries (id, state, ordering_key, idempotency_key, sealed_key, scope,
            fingerprint, created_ms, updated_ms, request, request_bytes)
         VALUES (?1, 'pending', ?2, '', ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        ordering_key,
        sealed_key,
        scope,
        fingerprint,
        created_ms,
        sealed,
        bytes
    ])?;
    totals.entries += 1;
    totals.bytes += bytes;
    effects.pending(ordering_key, 1);
    effects.wake_worker = true;
    Ok(Enqueued {
        id: id.to_owned(),
        duplicate: false,
    })
}

fn finish_entry(
    tx: &Connection,
    id: &str,
    version: i64,
    now_ms: i64,
    finish: Finish,
    totals: &mut Totals,
    effects: &mut Effects,
) -> Result<bool> {
    let row: Option<(String, i64)> = match finish {
        Finish::Done {
            attempts,
            response,
            status,
        } => tx
            .prepare_cached(
                "UPDATE entries SET state = 'done', version = version + 1, attempts = ?3,
                    updated_ms = ?4, next_attempt_ms = 0, last_error = NULL, request = NULL,
                    response = ?5, response_status = ?6
                 WHERE id = ?1 AND version = ?2 AND state = 'pending'
                 RETURNING ordering_key, request_bytes",
            )?
            .query_row(
                params![id, version, attempts, now_ms, response, status],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .inspect(|(_, bytes)| {
                totals.entries -= 1;
                totals.bytes -= bytes;
            }),
        Finish::Dead {
            attempts,
            error,
            response,
            status,
        } => tx
            .prepare_cached(
                "UPDATE entries SET state = 'dead', version = version + 1, attempts = ?3,
                    updated_ms = ?4, next_attempt_ms = 0, last_error = ?5, response = ?6,
                    response_status = ?7
                 WHERE id = ?1 AND version = ?2 AND state = 'pending'
                 RETURNING ordering_key, request_bytes",
            )?
            .query_row(
                params![id, version, attempts, now_ms, error, response, status],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        Finish::Later {
            attempts,
            next_attempt_ms,
            error,
        } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE entries SET version = version + 1, attempts = ?3, updated_ms = ?4,
                        next_attempt_ms = ?5, last_error = ?6
                     WHERE id = ?1 AND version = ?2 AND state = 'pending'",
                )?
                .execute(params![
                    id,
                    version,
                    attempts,
                    now_ms,
                    next_attempt_ms,
                    error
                ])?;
            return Ok(changed == 1);
        }
    };
    match row {
        Some((key, _)) => {
            effects.pending(&key, -1);
            Ok(true)
        }
        // Changed by someone else since it was read (dropped or retried): leave it alone.
        None => Ok(false),
    }
}

fn retry(tx: &Connection, id: &str, now_ms: i64, effects: &mut Effects) -> Result<()> {
    let row: Option<(String, String)> = tx
        .query_row(
            "SELECT state, ordering_key FROM entries WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((state, key)) = row else {
        return Err(Error::NotFound(id.to_owned()));
    };
    match State::parse(&state)? {
        State::Done => Err(Error::Conflict(format!("entry {id} was already delivered"))),
        was => {
            tx.execute(
                "UPDATE entries SET state = 'pending', version = version + 1, attempts = 0,
                    next_attempt_ms = 0, updated_ms = ?2, last_error = NULL, response = NULL,
                    response_status = NULL
                 WHERE id = ?1",
                params![id, now_ms],
            )?;
            if was == State::Dead {
                effects.pending(&key, 1);
            }
            effects.wake_worker = true;
            Ok(())
        }
    }
}

fn drop_entry(tx: &Connection, id: &str, totals: &mut Totals, effects: &mut Effects) -> Result<()> {
    let row: Option<(String, String, i64)> = tx
        .query_row(
            "DELETE FROM entries WHERE id = ?1 RETURNING state, ordering_key, request_bytes",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((state, key, bytes)) = row else {
        return Err(Error::NotFound(id.to_owned()));
    };
    match State::parse(&state)? {
        State::Pending => {
            effects.pending(&key, -1);
            totals.entries -= 1;
            totals.bytes -= bytes;
        }
        State::Dead => {
            totals.entries -= 1;
            totals.bytes -= bytes;
        }
        State::Done => {}
    }
    Ok(())
}

fn sweep(
    tx: &Connection,
    now_ms: i64,
    expire_before_ms: i64,
    purge_before_ms: i64,
    effects: &mut Effects,
) -> Result<(u64, u64)> {
    let expired = tx.execute(
        "UPDATE entries SET state = 'dead', version = version + 1, updated_ms = ?1,
            last_error = 'expired: older than the maximum age'
         WHERE state = 'pending' AND created_ms < ?2",
        params![now_ms, expire_before_ms],
    )?;
    let purged = tx.execute(
        "DELETE FROM entries WHERE state = 'done' AND updated_ms < ?1",
        params![purge_before_ms],
    )?;
    // Recount from the database: this also corrects for changes made by other processes
    // (`outpost queue` on the same data directory).
    effects.reload = true;
    effects.wake_worker = true;
    Ok((expired as u64, purged as u64))
}

/// Recounts the pending entries per ordering key and the limit totals.
pub(crate) fn load_totals(conn: &Connection, shared: &Shared) -> Result<Totals> {
    let mut pending = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT ordering_key, COUNT(*) FROM entries WHERE state = 'pending' GROUP BY ordering_key",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (k, n) = row?;
        pending.insert(k, n as u64);
    }
    let totals = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(request_bytes), 0) FROM entries WHERE state IN ('pending', 'dead')",
        [],
        |r| {
            Ok(Totals {
                entries: r.get(0)?,
                bytes: r.get(1)?,
            })
        },
    )?;
    shared.replace_pending(pending);
    Ok(totals)
}
