//! The errors of the gateway library.
//!
//! [`Error`] says what went wrong inside the gateway; [`crate::api::ApiError`] is the one place
//! that turns a failure into an HTTP answer.

use std::path::PathBuf;

/// What went wrong inside the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue database could not be read or written.
    #[error("queue storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The shared queue database (PostgreSQL) refused or failed a statement.
    #[error("shared queue storage failed: {0}")]
    SharedStorage(#[source] tokio_postgres::Error),
    /// The shared queue database (PostgreSQL) cannot be reached: no connection could be made
    /// or taken from the pool in time.
    #[error("the queue database cannot be reached: {0}")]
    Unreachable(String),
    /// A file could not be read, written or created.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The queue is at its configured limit of entries or bytes.
    #[error("the queue is full: {0}")]
    QueueFull(&'static str),
    /// The idempotency key of a pending entry was sent again, by the same principal to the same
    /// method and target, with a different body.
    #[error("this idempotency key is already used for a different request")]
    KeyReused,
    /// No queue entry has this id.
    #[error("no queue entry {0}")]
    NotFound(String),
    /// The operation does not apply to the entry in its current state.
    #[error("{0}")]
    Conflict(String),
    /// Stored data could not be decrypted or decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The encryption key does not open this queue.
    #[error("the encryption key does not match the one this queue was created with")]
    WrongKey,
    /// The record was sealed with another key (its id is given), e.g. before a rotation.
    #[error("stored data was sealed with another key (key id {0})")]
    OtherKey(String),
    /// The key material is not a valid AES-256 key.
    #[error("invalid encryption key: {0}")]
    InvalidKey(String),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another gateway (or in-process queue) holds the data directory.
    #[error("the data directory {} is in use by another process (its gateway.lock is held)", .0.display())]
    Locked(PathBuf),
    /// The queue writer thread has stopped, so nothing more can be made durable.
    #[error("the queue writer has stopped")]
    Closed,
}

impl Error {
    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::SharedStorage(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                            || c.code().starts_with("08")
                            || c.code().starts_with("57P")
                    })
            }
            Error::QueueFull(_) | Error::Unreachable(_) => true,
            Error::File { .. }
            | Error::Listen { .. }
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::Corrupt(_)
            | Error::WrongKey
            | Error::OtherKey(_)
            | Error::InvalidKey(_)
            | Error::Config(_)
            | Error::Locked(_)
            | Error::KeyReused
            | Error::Closed => false,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        // A connection that broke mid-statement is the database being unreachable, not a
        // statement it refused.
        if e.is_closed() {
            Error::Unreachable(e.to_string())
        } else {
            Error::SharedStorage(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Error::Unreachable(other.to_string()),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
