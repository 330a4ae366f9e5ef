//! The offline request gateway: a store-and-forward reverse proxy in front of an HTTP backend.
//!
//! While the backend answers, requests pass through. While it does not, writes are made durable
//! in an encrypted SQLite queue before they are acknowledged (`202` with a status URL), reads get
//! `503` or the last good answer, and a worker replays the queue in order once the backend is
//! back. [`Gateway`] is the standalone proxy; [`layer::OfflineQueueLayer`] is the same mechanism
//! inside an axum application.
//!
//! Map of the crate: [`config`] (validated settings), [`queue`] (durable storage and group
//! commit), [`worker`] (replay and retry policy), [`proxy`] (the request path), [`api`] (status
//! and admin routes, error answers), [`crypto`] (encryption at rest), [`layer`] (tower layer).

pub mod accounts;
pub mod api;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod error;
pub mod forward;
pub mod health;
pub mod layer;
pub mod proxy;
pub mod queue;
pub mod record;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod worker;

pub use config::{Config, Limits, Ordering, QueueStore, QueuedStatus, RetryPolicy, UpstreamUrl};
pub use crypto::{Cipher, KeySource};
pub use error::{Error, Result};
pub use queue::{EntryDetail, EntrySummary, PostgresStore, Queue, QueueStats, State};
pub use server::{Gateway, open_queue};
