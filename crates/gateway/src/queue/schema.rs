//! Opening the SQLite queue database: pragmas, the versioned schema and the key check (whose
//! records the PostgreSQL engine stores the same way).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::crypto::Cipher;
use crate::error::{Error, Result};

/// On-disk format version, kept in `PRAGMA user_version`.
const FORMAT_VERSION: i64 = 3;

/// Associated data of the key-check record.
const KEY_CHECK_AAD: &[u8] = b"outpost-gateway/key-check";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    -- A keyed hash of the ordering key (format 3; empty for the global order).
    ordering_key TEXT NOT NULL,
    -- In clear up to format 2; empty since, the key being in sealed_key.
    idempotency_key TEXT NOT NULL,
    sealed_key BLOB,
    -- Keyed hash of credentials, method, target and client-chosen idempotency key (format 2).
    scope TEXT,
    -- Keyed hash of the body, telling a repeat from a different request with the same key.
    fingerprint TEXT,
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
CREATE INDEX IF NOT EXISTS entries_state_seq ON entries (state, seq);
CREATE INDEX IF NOT EXISTS entries_state_next ON entries (state, next_attempt_ms);
DROP INDEX IF EXISTS entries_pending_idempotency;
CREATE INDEX IF NOT EXISTS entries_pending_scope ON entries (scope) WHERE state = 'pending';
";

/// Opens a connection with the pragmas every connection needs.
pub(crate) fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // FULL makes every commit durable on its own; group commit keeps that affordable.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

/// Associated data of the stored hashing key.
const INDEX_KEY_AAD: &[u8] = b"outpost-gateway/index-key";

/// Creates or checks the schema, checks that `cipher` is the key this queue was made with, and
/// gives it the queue's hashing key (created with the queue); returns that key.
pub(crate) fn prepare(conn: &mut Connection, cipher: &mut Cipher) -> Result<Vec<u8>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > FORMAT_VERSION {
        return Err(Error::Corrupt(format!(
            "queue format {version} is newer than this build understands ({FORMAT_VERSION})"
        )));
    }
    let tx = conn.transaction()?;
    if version == 1 {
        // Format 1 deduplicated on the bare key; its entries keep no scope and are never merged.
        tx.execute_batch(
            "ALTER TABLE entries ADD COLUMN scope TEXT;
             ALTER TABLE entries ADD COLUMN fingerprint TEXT;",
        )?;
    }
    if (1..3).contains(&version) {
        tx.execute_batch("ALTER TABLE entries ADD COLUMN sealed_key BLOB;")?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    let check: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match check {
        Some(sealed) => verify_key_check(cipher, &sealed)?,
        None => {
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('key_check', ?1)",
                params![key_check_record(cipher)],
            )?;
        }
    }
    let stored: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM meta WHERE name = 'index_key'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let index_key = match stored {
        Some(sealed) => open_index_key(cipher, &sealed)?,
        None => {
            let (key, sealed) = new_index_key(cipher);
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('index_key', ?1)",
                params![sealed],
            )?;
            key
        }
    };
    cipher.set_index_key(&index_key);
    if (1..3).contains(&version) {
        seal_metadata(&tx, cipher)?;
    }
    tx.commit()?;
    Ok(index_key)
}

/// The record that tells whether a key is the one a queue was created with.
pub(crate) fn key_check_record(cipher: &Cipher) -> Vec<u8> {
    cipher.seal(KEY_CHECK_AAD, b"outpost")
}

/// Checks a stored [`key_check_record`] against `cipher`.
pub(crate) fn verify_key_check(cipher: &Cipher, sealed: &[u8]) -> Result<()> {
    cipher
        .open(KEY_CHECK_AAD, sealed)
        .map(drop)
        .map_err(|_| Error::WrongKey)
}

/// A new hashing key for ordering keys and scopes, and its sealed form to store.
pub(crate) fn new_index_key(cipher: &Cipher) -> (Vec<u8>, Vec<u8>) {
    let key: [u8; 32] = rand::random();
    (key.to_vec(), cipher.seal(INDEX_KEY_AAD, &key))
}

/// Opens the stored hashing key.
pub(crate) fn open_index_key(cipher: &Cipher, sealed: &[u8]) -> Result<Vec<u8>> {
    cipher.open(INDEX_KEY_AAD, sealed)
}

/// Re-seals every record of the queue, the key check and the hashing key with `new` (`old`
/// having been checked by [`prepare`]), in one transaction: a crash leaves the queue under
/// one key or the other, never a mix. Returns how many entries were re-sealed.
pub(crate) fn rekey(
    conn: &mut Connection,
    old: &Cipher,
    new: &Cipher,
    index_key: &[u8],
) -> Result<u64> {
    let tx = conn.transaction()?;
    /// An entry's id and its sealed request, answer and idempotency key.
    type Sealed = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Sealed> = tx
        .prepare("SELECT id, request, response, sealed_key FROM entries")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx
        .prepare("UPDATE entries SET request = ?2, response = ?3, sealed_key = ?4 WHERE id = ?1")?;
    let reseal = |aad: Vec<u8>, sealed: Option<Vec<u8>>| -> Result<Option<Vec<u8>>> {
        sealed
            .map(|s| old.open(&aad, &s).map(|plain| new.seal(&aad, &plain)))
            .transpose()
    };
    let mut n = 0;
    for (id, request, response, key) in rows {
        update.execute(params![
            id,
            reseal(super::request_aad(&id), request)?,
            reseal(super::response_aad(&id), response)?,
            reseal(super::key_aad(&id), key)?,
        ])?;
        n += 1;
    }
    drop(update);
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'key_check'",
        params![new.seal(KEY_CHECK_AAD, b"outpost")],
    )?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'index_key'",
        params![new.seal(INDEX_KEY_AAD, index_key)],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Format 2 to 3: idempotency keys move into `sealed_key`, ordering keys become keyed hashes.
fn seal_metadata(tx: &rusqlite::Transaction<'_>, cipher: &Cipher) -> Result<()> {
    let rows: Vec<(String, String, String)> = tx
        .prepare("SELECT id, ordering_key, idempotency_key FROM entries")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare(
        "UPDATE entries SET ordering_key = ?2, idempotency_key = '', sealed_key = ?3 WHERE id = ?1",
    )?;
    for (id, ordering_key, key) in rows {
        let ordering_key = if ordering_key.is_empty() {
            String::new()
        } else {
            cipher.mac(&[b"order", ordering_key.as_bytes()])
        };
        let sealed = cipher.seal(&super::key_aad(&id), key.as_bytes());
        update.execute(params![id, ordering_key, sealed])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, defect 13: every connection commits durably (WAL, `synchronous = FULL`), so a
    /// `202`, sent only after the commit, survives a power loss.
    #[test]
    fn every_connection_commits_durably() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("q.sqlite3")).unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous must be FULL");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
