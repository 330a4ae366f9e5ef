//! Replications run by the server: `POST /_replicate` and persistent jobs from the
//! `_replicator` database, over HTTP or straight on the store for databases of this server.
//!
//! - [`local`]: the [`outpost_replicator::Endpoint`] of a database of this process.
//! - [`spec`]: CouchDB's request fields, validated, and the endpoints they name.
//! - [`jobs`]: the registry of running replications and document states, read by
//!   `_active_tasks` and `_scheduler/*`.
//! - [`manager`]: the task that turns `_replicator` documents into jobs and writes their state
//!   back.
//! - [`lease`]: with several nodes on one store, each `_replicator` job runs on the one node
//!   holding its lease.

pub mod jobs;
pub mod lease;
pub mod local;
pub mod manager;
pub mod spec;

use std::sync::Arc;
use std::time::SystemTime;

use outpost_replicator::{Replication, ReplicationError, ReplicationResult};
use tracing::Instrument;

pub use jobs::{Job, Replications, Settings};
pub use manager::start as start_jobs;
pub use spec::{LocalDbs, Spec};

use crate::AppState;

/// Builds the replication a spec describes, and says which sides are databases of this server.
async fn build(
    state: &AppState,
    spec: &Spec,
    max_attempts: Option<u32>,
) -> Result<(Replication, LocalDbs), ReplicationError> {
    let client = state.replications.client()?;
    let endpoints = spec.endpoints(state, &client).await?;
    let mut config = spec.config(max_attempts);
    config.backoff = state.replications.settings().backoff;
    let replication = Replication::new(endpoints.source, endpoints.target, config);
    Ok((replication, endpoints.local))
}

/// Runs a one-shot replication to the end as a tracked task (so it finishes its checkpoint
/// even if the client that asked hangs up) and returns its result.
pub async fn run_one_shot(
    state: &AppState,
    spec: &Spec,
) -> Result<ReplicationResult, ReplicationError> {
    let (replication, job) = prepare(state, spec, false, Some(5)).await?;
    let (id, cancel) = (job.id.clone(), job.cancel.clone());
    // Two identical one-shot requests at once share nothing; only the first is listed.
    let listed = state.replications.insert(job);
    let registry = state.replications.clone();
    let task_id = id.clone();
    let handle = state.tasks.spawn(
        async move {
            let result = replication.run(cancel).await;
            if listed {
                registry.remove(&task_id);
            }
            result
        }
        .instrument(tracing::info_span!("replicate", job = %id)),
    );
    handle.await.map_err(|e| {
        ReplicationError::InvalidConfig(format!("the replication task ended abnormally: {e}"))
    })?
}

/// Starts a continuous replication as a tracked task and returns its job id at once. Starting
/// one that already runs returns the same id.
pub async fn start_continuous(state: &AppState, spec: &Spec) -> Result<String, ReplicationError> {
    let (replication, job) = prepare(state, spec, true, None).await?;
    let (id, cancel) = (job.id.clone(), job.cancel.clone());
    if !state.replications.insert(job) {
        return Ok(id);
    }
    let registry = state.replications.clone();
    let task_id = id.clone();
    state.tasks.spawn(
        async move {
            if let Err(e) = replication.run(cancel).await {
                tracing::warn!(error = %e, "continuous replication failed");
            }
            registry.remove(&task_id);
        }
        .instrument(tracing::info_span!("replicate", job = %id)),
    );
    Ok(id)
}

/// Builds a `_replicate` replication and the registry entry it runs under, with a cancel token
/// that the server's shutdown also fires.
async fn prepare(
    state: &AppState,
    spec: &Spec,
    continuous: bool,
    max_attempts: Option<u32>,
) -> Result<(Arc<Replication>, Job), ReplicationError> {
    let (replication, local) = build(state, spec, max_attempts).await?;
    let replication = Arc::new(replication);
    let rep_id = replication.replication_id().await?;
    let job = Job {
        id: jobs::job_id(&rep_id, continuous, spec.create_target),
        doc_id: None,
        source: spec.source.redacted(),
        target: spec.target.redacted(),
        local,
        continuous,
        status: replication.subscribe(),
        cancel: state.shutdown.child_token(),
        started: SystemTime::now(),
    };
    Ok((replication, job))
}

/// The job id a spec would run under, for `cancel`.
pub async fn job_id_of(state: &AppState, spec: &Spec) -> Result<String, ReplicationError> {
    let (replication, _) = build(state, spec, None).await?;
    let rep_id = replication.replication_id().await?;
    Ok(jobs::job_id(&rep_id, spec.continuous, spec.create_target))
}
