//! Mango queries: json indexes defined by design documents, query planning and execution.
//!
//! A Mango index is a view of a design document with `"language": "query"` (so indexes
//! replicate with the database, as CouchDB's do); [`index_def`] reads and writes those
//! definitions. Its rows live in the store's index tables (`outpost_store::index`), keyed by
//! the array of the indexed fields' values, and [`indexer`] brings them up to date from the
//! changes feed before a query reads them (CouchDB's lazy `update=true`). [`plan`] chooses the
//! index a query uses and the key range it reads, as CouchDB 3.5 chooses; [`find`] runs
//! `_find` and `_explain` on top: it scans the range a page at a time, matches each document
//! against the whole selector, and applies `skip`, `limit`, `fields` and bookmarks.
//!
//! The crate knows no HTTP: errors are [`QueryError`]s that the server maps to CouchDB's codes.

pub mod error;
pub mod find;
pub mod index_def;
pub mod indexer;
pub mod normalize;
pub mod plan;

pub use error::QueryError;
pub use find::{FindCursor, FindRequest, explain, find};
pub use index_def::{MangoIndex, create_index, delete_index, list_indexes};
