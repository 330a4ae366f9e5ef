//! How PostgreSQL's failures become [`StoreError`]s.
//!
//! A lost or refused connection, a pool that cannot hand one out, and the failures a retry
//! fixes (a deadlock between two nodes' transactions, a serialization failure, a server
//! shutting down or in recovery after a failover) are [`StoreError::Unavailable`], which the
//! server answers with 503 and `Retry-After`. Anything else is a statement PostgreSQL refused,
//! which is a defect, reported as [`StoreError::Corrupt`] with PostgreSQL's message.

use outpost_store::StoreError;
use tokio_postgres::error::SqlState;

/// Classes of SQLSTATE that a retry may fix: connection exceptions (08), transaction rollbacks
/// (40: serialization failures, deadlocks), insufficient resources (53), operator intervention
/// (57: shutdown, recovery) and system errors (58).
const RETRYABLE_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];

/// Maps a client error.
pub fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    match e.code() {
        Some(code) if retryable(code) => StoreError::Unavailable(e.to_string()),
        Some(_) => StoreError::Corrupt(format!("postgres: {e}")),
        // No SQLSTATE: the error happened on the client side of the connection (I/O, a
        // connection that could not be made).
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// Maps a pool error: the pool could not hand out a working connection.
pub fn pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn retryable(code: &SqlState) -> bool {
    RETRYABLE_CLASSES
        .iter()
        .any(|class| code.code().starts_with(class))
}

/// A stored value that does not decode.
pub fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
