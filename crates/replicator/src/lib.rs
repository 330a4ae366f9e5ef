//! A client of the CouchDB replication protocol: copies every revision a source has and a
//! target lacks, conflicts and deletions included, one-shot or continuously, between any two
//! endpoints that speak the protocol (Outpost, CouchDB, pouchdb-server) or implement
//! [`Endpoint`] directly.
//!
//! - [`Endpoint`]: the operations the protocol needs; [`HttpEndpoint`] implements them over HTTP.
//! - [`Replication`]: the batch loop (changes → `_revs_diff` → `_bulk_get` → `_bulk_docs`, and a
//!   `multipart/related` PUT for each revision carrying attachment bytes; read and write stages
//!   overlapping, checkpoints on an interval), retries with [`Backoff`],
//!   progress through [`Status`].
//! - [`checkpoint`]: the replication logs both sides keep, and where to resume.
//! - [`replication_id`]: the name of those logs, computed as PouchDB does.

mod backoff;
pub mod checkpoint;
mod endpoint;
mod error;
mod http;
mod id;
mod replication;

pub use backoff::Backoff;
pub use endpoint::{
    Change, ChangesFilter, ChangesPage, ChangesRequest, DbInfo, DocRevs, Endpoint, Feed,
    RevsDiffEntry, Seq, WriteFailure,
};
pub use error::ReplicationError;
pub use http::{HttpEndpoint, encode_doc_id, http_client};
pub use id::replication_id;
pub use replication::{
    DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_INTERVAL, Replication, ReplicationConfig,
    ReplicationResult, State, Stats, Status,
};
