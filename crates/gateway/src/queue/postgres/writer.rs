//! The writer task of the PostgreSQL engine and its group commit.
//!
//! It takes whatever commands are waiting, applies them in one transaction on one pooled
//! connection, each in its own savepoint (in PostgreSQL a failed statement spoils the whole
//! transaction, so every command needs one), commits once, and only then answers each caller,
//! as the SQLite writer does. The transaction starts by locking the `gateway_totals` row, which
//! makes the limit checks exact across processes: writers of different processes take turns
//! there, and never hold entry rows while waiting for it, so they cannot deadlock.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::db_now_ms;
use crate::error::{Error, Result};
use crate::queue::command::{Command, Reply, reply_error};
use crate::queue::{Enqueued, Finish, QueueLimits, Shared, State};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 512;

/// The limit totals and the pending count, as in `gateway_totals`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    /// Pending and dead entries.
    pub entries: i64,
    /// Their request bytes.
    pub bytes: i64,
    /// Pending entries.
    pub pending: i64,
}

/// Reads the totals row, locking it for the transaction when `lock` is set.
pub(crate) async fn read_totals(client: &impl GenericClient, lock: bool) -> Result<Totals> {
    let sql = if lock {
        "SELECT entries, bytes, pending FROM gateway_totals FOR UPDATE"
    } else {
        "SELECT entries, bytes, pending FROM gateway_totals"
    };
    let stmt = client.prepare_cached(sql).await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok(Totals {
        entries: row.try_get(0)?,
        bytes: row.try_get(1)?,
        pending: row.try_get(2)?,
    })
}

pub(super) async fn run(
    pool: Pool,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    limits: QueueLimits,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut wake = false;
        let mut commands = batch.drain(..);
        let committed = apply_batch(&pool, &mut commands, &limits, &mut replies, &mut wake).await;
        // Commands the batch did not reach are answered with its failure too.
        replies.extend(commands.map(|cmd| reply_error(cmd, Error::Closed)));
        match committed {
            Ok(()) => {
                for reply in replies {
                    reply.send();
                }
                if wake {
                    shared.changed.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "queue commit failed");
                let reason = e.to_string();
                for reply in replies {
                    reply.fail(|| Error::Unreachable(reason.clone()));
                }
            }
        }
    }
}

async fn apply_batch(
    pool: &Pool,
    commands: &mut impl Iterator<Item = Command>,
    limits: &QueueLimits,
    replies: &mut Vec<Reply>,
    wake: &mut bool,
) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut totals = read_totals(&tx, true).await?;
    for cmd in commands.by_ref() {
        if let Err(e) = tx.batch_execute("SAVEPOINT command").await {
            replies.push(reply_error(cmd, Error::Closed));
            return Err(e.into());
        }
        let mut local = totals;
        let mut local_wake = false;
        let reply = run_command(&tx, cmd, &mut local, limits, &mut local_wake).await;
        if reply.is_ok() {
            totals = local;
            *wake |= local_wake;
            replies.push(reply);
            tx.batch_execute("RELEASE SAVEPOINT command").await?;
        } else {
            replies.push(reply);
            tx.batch_execute("ROLLBACK TO SAVEPOINT command").await?;
        }
    }
    let stmt = tx
        .prepare_cached("UPDATE gateway_totals SET entries = $1, bytes = $2, pending = $3")
        .await?;
    tx.execute(&stmt, &[&totals.entries, &totals.bytes, &totals.pending])
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn run_command(
    tx: &Transaction<'_>,
    cmd: Command,
    totals: &mut Totals,
    limits: &QueueLimits,
    wake: &mut bool,
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
            let row = NewRow {
                id: &id,
                ordering_key: &ordering_key,
                sealed_key: &sealed_key,
                scope: scope.as_deref(),
                fingerprint: &fingerprint,
                created_ms,
                sealed: &sealed,
                bytes,
            };
            Reply::Enqueued(reply, enqueue(tx, row, totals, limits, wake).await)
        }
        Command::Finish {
            id,
            version,
            now_ms,
            finish,
            reply,
        } => Reply::Finished(
            reply,
            finish_entry(tx, &id, version, now_ms, finish, totals).await,
        ),
        Command::Retry { id, now_ms, reply } => {
            Reply::Unit(reply, retry(tx, &id, now_ms, totals, wake).await)
        }
        Command::Drop { id, reply } => Reply::Unit(reply, drop_entry(tx, &id, totals).await),
        Command::Sweep {
            now_ms,
            expire_before_ms,
            purge_before_ms,
            reply,
        } => Reply::Swept(
            reply,
            sweep(tx, now_ms, expire_before_ms, purge_before_ms, totals, wake).await,
        ),
    }
}

/// An entry to insert, sealed and hashed by the queue.
struct NewRow<'a> {
    id: &'a str,
    ordering_key: &'a str,
    sealed_key: &'a [u8],
    scope: Option<&'a str>,
    fingerprint: &'a str,
    created_ms: i64,
    sealed: &'a [u8],
    bytes: i64,
}

/// The pending entry of `scope`, as the answer to a write that repeats its key.
async fn same_scope(
    tx: &Transaction<'_>,
    scope: &str,
    fingerprint: &str,
) -> Result<Option<Enqueued>> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, fingerprint FROM gateway_entries WHERE scope = $1 AND state = 'pending'",
        )
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&scope]).await? else {
        return Ok(None);
    };
    let stored: Option<String> = row.try_get(1)?;
    if stored.as_deref() != Some(fingerprint) {
        return Err(Error::KeyReused);
    }
    Ok(Some(Enqueued {
        id: row.try_get(0)?,
        duplicate: true,
    }))
}

async fn enqueue(
    tx: &Transaction<'_>,
    row: NewRow<'_>,
    totals: &mut Totals,
    limits: &QueueLimits,
    wake: &mut bool,
) -> Result<Enqueued> {
    if let Some(scope) = row.scope
        && let Some(existing) = same_scope(tx, scope, row.fingerprint).await?
    {
        return Ok(existing);
    }
    if totals.entries as u64 >= limits.max_entries {
        return Err(Error::QueueFull("entry limit reached"));
    }
    if (totals.bytes + row.bytes) as u64 > limits.max_bytes {
        return Err(Error::QueueFull("byte limit reached"));
    }
    // Another process may be queueing the same request right now: the unique index on the
    // scopes of pending entries makes this insert wait for it, then do nothing.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO gateway_entries (id, state, ordering_key, sealed_key, scope,
                fingerprint, created_ms, updated_ms, request, request_bytes)
             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $6, $7, $8)
             ON CONFLICT (scope) WHERE state = 'pending' DO NOTHING",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 8] = [
        &row.id,
        &row.ordering_key,
        &row.sealed_key,
        &row.scope,
        &row.fingerprint,
        &row.created_ms,
        &row.sealed,
        &row.bytes,
    ];
    if tx.execute(&stmt, &params).await? == 0 {
        let scope = row.scope.unwrap_or_default();
        return match same_scope(tx, scope, row.fingerprint).await? {
            Some(existing) => Ok(existing),
            None => Err(Error::Conflict(
                "the same request was being queued concurrently; send it again".into(),
            )),
        };
    }
    totals.entries += 1;
    totals.bytes += row.bytes;
    totals.pending += 1;
    *wake = true;
    Ok(Enqueued {
        id: row.id.to_owned(),
        duplicate: false,
    })
}

async fn finish_entry(
    tx: &Transaction<'_>,
    id: &str,
    version: i64,
    now_ms: i64,
    finish: Finish,
    totals: &mut Totals,
) -> Result<bool> {
    match finish {
        Finish::Done {
            attempts,
            response,
            status,
        } => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE gateway_entries SET state = 'done', version = version + 1,
                        attempts = $3, updated_ms = $4, next_attempt_ms = 0, last_error = NULL,
                        request = NULL, response = $5, response_status = $6
                     WHERE id = $1 AND version = $2 AND state = 'pending'
                     RETURNING request_bytes",
                )
                .await?;
            let status = i32::from(status);
            let row = tx
                .query_opt(
                    &stmt,
                    &[&id, &version, &attempts, &now_ms, &response, &status],
                )
                .await?;
            let Some(row) = row else { return Ok(false) };
            let bytes: i64 = row.try_get(0)?;
            totals.entries -= 1;
            totals.bytes -= bytes;
            totals.pending -= 1;
            Ok(true)
        }
        Finish::Dead {
            attempts,
            error,
            response,
            status,
        } => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE gateway_entries SET state = 'dead', version = version + 1,
                        attempts = $3, updated_ms = $4, next_attempt_ms = 0, last_error = $5,
                        response = $6, response_status = $7
                     WHERE id = $1 AND version = $2 AND state = 'pending'",
                )
                .await?;
            let status = status.map(i32::from);
            let changed = tx
                .execute(
                    &stmt,
                    &[
                        &id, &version, &attempts, &now_ms, &error, &response, &status,
                    ],
                )
                .await?;
            if changed == 1 {
                totals.pending -= 1;
            }
            Ok(changed == 1)
        }
        Finish::Later {
            attempts,
            next_attempt_ms,
            error,
        } => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE gateway_entries SET version = version + 1, attempts = $3,
                        updated_ms = $4, next_attempt_ms = $5, last_error = $6
                     WHERE id = $1 AND version = $2 AND state = 'pending'",
                )
                .await?;
            let changed = tx
                .execute(
                    &stmt,
                    &[&id, &version, &attempts, &now_ms, &next_attempt_ms, &error],
                )
                .await?;
            Ok(changed == 1)
        }
    }
}

async fn retry(
    tx: &Transaction<'_>,
    id: &str,
    now_ms: i64,
    totals: &mut Totals,
    wake: &mut bool,
) -> Result<()> {
    let stmt = tx
        .prepare_cached("SELECT state FROM gateway_entries WHERE id = $1 FOR UPDATE")
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
        return Err(Error::NotFound(id.to_owned()));
    };
    match State::parse(row.try_get(0)?)? {
        State::Done => Err(Error::Conflict(format!("entry {id} was already delivered"))),
        was => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE gateway_entries SET state = 'pending', version = version + 1,
                        attempts = 0, next_attempt_ms = 0, updated_ms = $2, last_error = NULL,
                        response = NULL, response_status = NULL
                     WHERE id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&id, &now_ms]).await.map_err(|e| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Error::Conflict(format!(
                        "entry {id} cannot be retried: a pending entry has the same idempotency key"
                    ))
                } else {
                    e.into()
                }
            })?;
            if was == State::Dead {
                totals.pending += 1;
            }
            *wake = true;
            Ok(())
        }
    }
}

async fn drop_entry(tx: &Transaction<'_>, id: &str, totals: &mut Totals) -> Result<()> {
    let stmt = tx
        .prepare_cached("DELETE FROM gateway_entries WHERE id = $1 RETURNING state, request_bytes")
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
        return Err(Error::NotFound(id.to_owned()));
    };
    let bytes: i64 = row.try_get(1)?;
    match State::parse(row.try_get(0)?)? {
        State::Pending => {
            totals.pending -= 1;
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

async fn sweep(
    tx: &Transaction<'_>,
    now_ms: i64,
    expire_before_ms: i64,
    purge_before_ms: i64,
    totals: &mut Totals,
    wake: &mut bool,
) -> Result<(u64, u64)> {
    let expired = tx
        .execute(
            "UPDATE gateway_entries SET state = 'dead', version = version + 1, updated_ms = $1,
                last_error = 'expired: older than the maximum age'
             WHERE state = 'pending' AND created_ms < $2",
            &[&now_ms, &expire_before_ms],
        )
        .await?;
    let purged = tx
        .execute(
            "DELETE FROM gateway_entries WHERE state = 'done' AND updated_ms < $1",
            &[&purge_before_ms],
        )
        .await?;
    // An expired lease is the same as none; its row only takes room.
    tx.execute(
        concat!(
            "DELETE FROM gateway_lanes WHERE expires_ms < ",
            db_now_ms!()
        ),
        &[],
    )
    .await?;
    totals.pending -= expired as i64;
    *wake = true;
    Ok((expired, purged))
}
