//! What can go wrong in the store.

/// A failure of a whole store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database does not exist.
    #[error("database does not exist")]
    NoDb,
    /// A database of that name already exists.
    #[error("database already exists")]
    DbExists,
    /// A `_local` document was written or deleted from a revision that is not its current one.
    #[error("document update conflict")]
    Conflict,
    /// The `_local` document does not exist.
    #[error("missing")]
    NotFound,
    /// Stored data could not be decoded: a bug or a damaged file.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The storage engine failed (disk full, I/O error).
    #[error("storage failure: {0}")]
    Engine(#[from] rusqlite::Error),
    /// The store's encryption key does not fit its file: the file is encrypted and no key was
    /// given, the key is wrong, or a key was given for a plain file. The message says which.
    #[error("{0}")]
    Key(String),
    /// The database server could not be reached, or gave up on the operation in a way worth
    /// retrying (a lost connection, a deadlock between nodes, a failover).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down or its writer thread has stopped.
    #[error("store is closed")]
    Closed,
    /// An offline operation found the data directory in use by another process (a running
    /// server). The message says which directory.
    #[error("{0}")]
    InUse(String),
}

/// Why one document of a write was refused; the other documents of the write are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// The base revision is not a leaf of the document's tree (or the document exists and no base
    /// was given).
    #[error("Document update conflict.")]
    Conflict,
    /// An attachment stub names an attachment the parent revision does not have.
    #[error("Invalid attachment stub in {doc} for {name}")]
    MissingStub { doc: String, name: String },
    /// A `_revisions` path that cannot be merged.
    #[error("invalid _revisions path")]
    InvalidPath,
    /// The document body is not storable as given.
    #[error("{0}")]
    Invalid(String),
}
