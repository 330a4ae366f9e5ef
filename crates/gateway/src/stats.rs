//! Counters of what the gateway did, for the status endpoint and the Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters, updated with relaxed atomics because they are only reported.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered by the upstream while passing through.
    pub passed: AtomicU64,
    /// Writes made durable in the queue.
    pub queued: AtomicU64,
    /// Writes answered with an existing entry because their idempotency key was already queued.
    pub deduplicated: AtomicU64,
    /// Queued writes delivered (2xx).
    pub delivered: AtomicU64,
    /// Delivery attempts that will be retried.
    pub retried: AtomicU64,
    /// Entries moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Writes refused because the queue was full.
    pub rejected_full: AtomicU64,
    /// Reads answered from the stale cache.
    pub stale_served: AtomicU64,
    /// Reads refused with 503 while the upstream was down.
    pub unavailable: AtomicU64,
    /// Panics caught in the replay worker (a delivery, or the loop itself, which is restarted).
    pub worker_panics: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::passed`].
    pub passed: u64,
    /// See [`Stats::queued`].
    pub queued: u64,
    /// See [`Stats::deduplicated`].
    pub deduplicated: u64,
    /// See [`Stats::delivered`].
    pub delivered: u64,
    /// See [`Stats::retried`].
    pub retried: u64,
    /// See [`Stats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`Stats::rejected_full`].
    pub rejected_full: u64,
    /// See [`Stats::stale_served`].
    pub stale_served: u64,
    /// See [`Stats::unavailable`].
    pub unavailable: u64,
    /// See [`Stats::worker_panics`].
    pub worker_panics: u64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            passed: get(&self.passed),
            queued: get(&self.queued),
            deduplicated: get(&self.deduplicated),
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            rejected_full: get(&self.rejected_full),
            stale_served: get(&self.stale_served),
            unavailable: get(&self.unavailable),
            worker_panics: get(&self.worker_panics),
        }
    }
}
