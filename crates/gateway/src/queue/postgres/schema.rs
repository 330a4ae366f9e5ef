//! The shared queue's tables in PostgreSQL, their format version and the key check.
//!
//! Tables are created in the connection's `search_path` (a schema can be chosen in the URL with
//! `options=-csearch_path%3Dname`), each named `gateway_…` so they can share a database with
//! other tables. Several processes starting at once set the schema up one after the other,
//! under a transaction-scoped advisory lock.

use tokio_postgres::types::ToSql;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::queue::schema::{key_check_record, new_index_key, open_index_key, verify_key_check};

/// Format of the tables, kept in `gateway_meta` under `format`.
const FORMAT_VERSION: i64 = 1;

/// Advisory lock key serialising schema set-up (`outpost-g` in ASCII).
const SCHEMA_LOCK: i64 = 0x6f75_7470_6f73_742d;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_meta (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_entries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    -- A keyed hash of the ordering key (empty for the global order).
    ordering_key TEXT NOT NULL,
    sealed_key BYTEA,
    -- Keyed hash of credentials, method, target and client-chosen idempotency key.
    scope TEXT,
    -- Keyed hash of the body, telling a repeat from a different request with the same key.
    fingerprint TEXT,
    version BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    request BYTEA,
    request_bytes BIGINT NOT NULL,
    response BYTEA,
    response_status INTEGER
);
CREATE INDEX IF NOT EXISTS gateway_entries_state_seq ON gateway_entries (state, seq);
CREATE INDEX IF NOT EXISTS gateway_entries_pending_key
    ON gateway_entries (ordering_key, seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS gateway_entries_pending_next
    ON gateway_entries (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS gateway_entries_done_updated
    ON gateway_entries (updated_ms) WHERE state = 'done';
-- One pending entry per scope, across every process.
CREATE UNIQUE INDEX IF NOT EXISTS gateway_entries_pending_scope
    ON gateway_entries (scope) WHERE state = 'pending';
-- Pending and dead entries and their request bytes (what the limits count), and pending
-- entries, kept in the transactions that change them.
CREATE TABLE IF NOT EXISTS gateway_totals (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    entries BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    pending BIGINT NOT NULL
);
INSERT INTO gateway_totals (one, entries, bytes, pending) VALUES (TRUE, 0, 0, 0)
    ON CONFLICT DO NOTHING;
-- Leases on ordering keys (see the engine's documentation).
CREATE TABLE IF NOT EXISTS gateway_lanes (
    ordering_key TEXT PRIMARY KEY,
    owner TEXT,
    expires_ms BIGINT NOT NULL DEFAULT 0
);
";

async fn meta(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<Option<Vec<u8>>> {
    Ok(tx
        .query_opt("SELECT value FROM gateway_meta WHERE name = $1", &[&name])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

async fn set_meta(tx: &deadpool_postgres::Transaction<'_>, name: &str, value: &[u8]) -> Result<()> {
    let params: [&(dyn ToSql + Sync); 2] = [&name, &value];
    tx.execute(
        "INSERT INTO gateway_meta (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        &params,
    )
    .await?;
    Ok(())
}

/// Creates or checks the tables, checks that `cipher` is the key this queue was made with, and
/// gives it the queue's hashing key (created with the queue).
pub(super) async fn prepare(
    client: &mut deadpool_postgres::Client,
    cipher: &mut Cipher,
) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    match meta(&tx, "format").await? {
        Some(v) => {
            let version = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| Error::Corrupt("unreadable queue format".into()))?;
            if version > FORMAT_VERSION {
                return Err(Error::Corrupt(format!(
                    "queue format {version} is newer than this build understands ({FORMAT_VERSION})"
                )));
            }
        }
        None => set_meta(&tx, "format", FORMAT_VERSION.to_string().as_bytes()).await?,
    }
    match meta(&tx, "key_check").await? {
        Some(sealed) => verify_key_check(cipher, &sealed)?,
        None => set_meta(&tx, "key_check", &key_check_record(cipher)).await?,
    }
    let index_key = match meta(&tx, "index_key").await? {
        Some(sealed) => open_index_key(cipher, &sealed)?,
        None => {
            let (key, sealed) = new_index_key(cipher);
            set_meta(&tx, "index_key", &sealed).await?;
            key
        }
    };
    cipher.set_index_key(&index_key);
    tx.commit().await?;
    Ok(())
}
