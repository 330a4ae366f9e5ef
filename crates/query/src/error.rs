//! What can go wrong in a query.

use outpost_store::StoreError;

/// Why a Mango request failed. Each variant maps to one CouchDB error code.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A malformed request: a bad selector, option or index definition (`bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// A required member of the request is absent (`missing_required_key`).
    #[error("Missing required key: {0}")]
    MissingKey(&'static str),
    /// No index can serve the query, typically its sort (`no_usable_index`).
    #[error("{0}")]
    NoUsableIndex(String),
    /// Sort fields in different directions (`unsupported_mixed_sort`).
    #[error("Sorts currently only support a single direction for all fields.")]
    MixedSort,
    /// A bookmark that this server did not hand out (`invalid_bookmark`).
    #[error("Invalid bookmark value: {0}")]
    InvalidBookmark(String),
    /// The index to delete does not exist (`not_found`).
    #[error("Index not found")]
    IndexNotFound,
    /// The design document an index was to be added to changed meanwhile (`conflict`).
    #[error("Document update conflict.")]
    Conflict,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
