//! One node at a time per `_replicator` job: every node follows the `_replicator` database,
//! but runs a document's job only while it holds the store's lease named after the document
//! (`_replicator/{doc id}`), as [`outpost_store::Store::try_lease`] gives it.
//!
//! - A node waiting for a lease tries again soon, then every third of the TTL.
//! - The holder renews its lease every third of the TTL. When a renewal finds the lease taken
//!   (the node was cut off for longer than the TTL), or renewals have failed for a whole TTL,
//!   the job is stopped (after its batch in flight is checkpointed) and the node waits again.
//! - A job that ends (completed, failed, its document changed or deleted, the server shutting
//!   down) gives its lease back, so another node takes it without waiting for the expiry.
//! - A node that dies keeps its leases until they expire; then another node takes the job and
//!   resumes it from its checkpoints, which are `_local` documents in the store every node
//!   shares.
//! - A job finished by another node while this one waited is not run again.
//!
//! On the SQLite engine one process owns the store, so its leases are always free.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::jobs::DocState;
use super::manager::{DB, run_job};
use super::spec::Spec;
use crate::AppState;

/// This node's `_replicator` leases, for metrics.
#[derive(Debug, Default)]
pub struct LeaseCounts {
    held: AtomicU64,
    acquired: AtomicU64,
    lost: AtomicU64,
}

impl LeaseCounts {
    /// Leases held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Leases taken since start.
    pub fn acquired(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }

    /// Leases found taken by another node at renewal (or not renewed for a TTL) since start.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// The lease of a `_replicator` document.
fn lease_name(doc_id: &str) -> String {
    format!("{DB}/{doc_id}")
}

/// Runs the document's job whenever this node holds its lease, until the job ends or `cancel`
/// fires. `seen` is the `_replication_state_time` the document had when the manager read it:
/// a `completed` or `failed` state recorded later was recorded by another node.
pub async fn run_leased(
    state: AppState,
    doc_id: String,
    params: Map<String, Value>,
    spec: Spec,
    seen: Option<String>,
    cancel: CancellationToken,
) {
    let registry = state.replications.clone();
    let name = lease_name(&doc_id);
    // Each run holds the lease under a name of its own: when a document changes, the run of
    // its old version gives the lease back while the new run asks for it, and the give-back
    // must not delete the new run's lease.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let holder = format!(
        "{} {}",
        registry.holder(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    loop {
        let ttl = registry.settings().lease_ttl;
        // Soon at first (the run of a document's previous version gives the lease back as soon
        // as it has checkpointed), then every third of the TTL.
        let mut wait = Duration::from_millis(100);
        loop {
            match state.store.try_lease(&name, &holder, ttl).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, doc_id, "cannot take the replication job's lease"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.min(ttl / 3)) => {}
            }
            wait = (wait * 2).min(ttl / 3);
        }
        registry.leases.held.fetch_add(1, Ordering::Relaxed);
        registry.leases.acquired.fetch_add(1, Ordering::Relaxed);
        if finished_elsewhere(&state, &doc_id, &params, seen.as_deref()).await {
            info!(doc_id, "the replication job was finished by another node");
            release(&state, &name, &holder, &doc_id).await;
            return;
        }
        let now = SystemTime::now();
        registry.set_doc(
            &doc_id,
            DocState {
                replication_id: None,
                source: spec.source.redacted(),
                target: spec.target.redacted(),
                state: "initializing",
                error: None,
                error_count: 0,
                last_updated: now,
                start_time: now,
                final_status: None,
            },
        );
        info!(
            doc_id,
            holder, "took the replication job's lease; starting the job"
        );
        let job_cancel = cancel.child_token();
        let lost = AtomicBool::new(false);
        let job = async {
            run_job(
                state.clone(),
                doc_id.clone(),
                params.clone(),
                spec.clone(),
                job_cancel.clone(),
            )
            .await;
            job_cancel.cancel();
        };
        tokio::join!(job, renew(&state, &name, &holder, ttl, &job_cancel, &lost));
        if lost.load(Ordering::Relaxed) && !cancel.is_cancelled() {
            registry.leases.held.fetch_sub(1, Ordering::Relaxed);
            registry.leases.lost.fetch_add(1, Ordering::Relaxed);
            registry.remove_doc(&doc_id);
            warn!(
                doc_id,
                "lost the replication job's lease; the job stopped here"
            );
            continue;
        }
        release(&state, &name, &holder, &doc_id).await;
        return;
    }
}

/// Renews the lease every third of `ttl` until `job` is cancelled; cancels it (and sets
/// `lost`) when the lease is taken by another node or could not be renewed for `ttl`.
async fn renew(
    state: &AppState,
    name: &str,
    holder: &str,
    ttl: Duration,
    job: &CancellationToken,
    lost: &AtomicBool,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = job.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match state.store.try_lease(name, holder, ttl).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => break,
            Err(e) => {
                warn!(error = %e, lease = name, "cannot renew the replication job's lease");
                if renewed.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    lost.store(true, Ordering::Relaxed);
    job.cancel();
}

/// Gives the lease back (best effort: an error leaves it to expire).
async fn release(state: &AppState, name: &str, holder: &str, doc_id: &str) {
    state
        .replications
        .leases
        .held
        .fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = state.store.release_lease(name, holder).await {
        warn!(error = %e, doc_id, "cannot release the replication job's lease; it will expire");
    }
}

/// Whether the document, with the same parameters, now records a final state (`completed`,
/// `failed`) that another node wrote after `seen`.
async fn finished_elsewhere(
    state: &AppState,
    doc_id: &str,
    params: &Map<String, Value>,
    seen: Option<&str>,
) -> bool {
    let Some(fields) = super::manager::current_body(state, doc_id).await else {
        return false;
    };
    let recorded = fields.get("_replication_state").and_then(Value::as_str);
    let time = fields
        .get("_replication_state_time")
        .and_then(Value::as_str);
    matches!(recorded, Some("completed" | "failed"))
        && time != seen
        && &super::manager::params(&fields) == params
}
