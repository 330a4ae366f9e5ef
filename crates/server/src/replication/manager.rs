//! Persistent replications: a task that follows the `_replicator` database's changes and runs
//! one job per document, as CouchDB's replicator does (docs.couchdb.org,
//! "replication/replicator").
//!
//! - A new or changed document starts a job (a running job of an older version is stopped); a
//!   deleted one stops it. Design documents are ignored.
//! - The job writes its state back into the document: `_replication_state` (`triggered`,
//!   `running`, `error`, `completed`, `failed`), `_replication_state_time`, `_replication_id`
//!   and, on `error` and `failed`, `_replication_state_reason`. Only the replication's
//!   *parameters* (the document without `_rev` and the `_replication_*` fields) decide whether
//!   a change is new work, so these state writes, which make changes of their own, are ignored.
//! - On start every document is read again: those not `completed` or `failed` resume, each from
//!   its checkpoints.
//! - Every node sharing a store follows the database, but a job runs only on the node that holds
//!   its lease (see [`super::lease`]).

use std::collections::HashMap;
use std::time::SystemTime;

use outpost_core::Rev;
use outpost_replicator::{Replication, State, Status};
use outpost_store::{ChangesQuery, DocUpdate, Origin, StoreError, UpdateMode};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::jobs::{DocState, Job, iso_time, job_id};
use super::spec::Spec;
use crate::AppState;

/// The database holding replication documents.
pub const DB: &str = "_replicator";

/// Changes read per page.
const PAGE: u64 = 500;

/// Creates `_replicator` when it does not exist yet, then starts the manager as a tracked task;
/// it ends on shutdown. Awaited before the server takes requests, so a client's first
/// `PUT /_replicator/{id}` finds the database (CouchDB creates it at startup too).
pub async fn start(state: &AppState) {
    if let Err(e) = ensure_db(state).await {
        // The manager tries again as it starts; requests meanwhile see what the store says.
        warn!(error = %e, "could not create the replicator database");
    }
    let st = state.clone();
    state.tasks.spawn(
        async move {
            if let Err(e) = run(st).await {
                warn!(error = %e, "the replication manager stopped");
            }
        }
        .instrument(tracing::info_span!("replicator_db")),
    );
}

/// What the manager knows of one document.
struct Known {
    /// The replication parameters it last acted on.
    params: Map<String, Value>,
    /// Stops its job, when one runs.
    cancel: Option<CancellationToken>,
}

/// The document without its revision and the replicator's own state fields.
pub(super) fn params(body: &Map<String, Value>) -> Map<String, Value> {
    body.iter()
        .filter(|(k, _)| !k.starts_with("_replication_") && k.as_str() != "_rev")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn ensure_db(state: &AppState) -> Result<(), StoreError> {
    match state.store.create_db(DB).await {
        Ok(()) | Err(StoreError::DbExists) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn run(state: AppState) -> Result<(), StoreError> {
    ensure_db(&state).await?;
    let mut watch = state.store.watch(DB);
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut since = 0;
    loop {
        watch.borrow_and_update();
        let query = ChangesQuery {
            since,
            limit: PAGE,
            descending: false,
            include_docs: true,
        };
        let rows = state.store.changes(DB, &query).await?;
        let full = rows.len() as u64 == PAGE;
        for row in rows {
            since = row.seq;
            if row.id.starts_with("_design/") {
                continue;
            }
            let winner = row.tree.winner();
            let body: Option<Map<String, Value>> = match (&winner, &row.body) {
                (Some(w), Some(text)) if !w.deleted => serde_json::from_str(text).ok(),
                _ => None,
            };
            handle(&state, &mut known, &row.id, body);
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            changed = watch.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Acts on the latest version of one document (`None` when deleted).
fn handle(
    state: &AppState,
    known: &mut HashMap<String, Known>,
    doc_id: &str,
    body: Option<Map<String, Value>>,
) {
    let Some(body) = body else {
        if let Some(k) = known.remove(doc_id) {
            info!(doc_id, "replication document deleted; stopping its job");
            if let Some(c) = k.cancel {
                c.cancel();
            }
        }
        state.replications.remove_doc(doc_id);
        return;
    };
    let p = params(&body);
    let first_sight = match known.get(doc_id) {
        Some(k) if k.params == p => return,
        Some(_) => false,
        None => true,
    };
    if let Some(c) = known.remove(doc_id).and_then(|k| k.cancel) {
        c.cancel();
    }
    let recorded = body.get("_replication_state").and_then(Value::as_str);
    let spec = Spec::parse(&p);
    let side = |f: &str| {
        spec.as_ref()
            .map(|s| {
                if f == "source" {
                    s.source.redacted()
                } else {
                    s.target.redacted()
                }
            })
            .unwrap_or_default()
    };
    // A finished job is not run again when the server restarts; an edit of its parameters
    // (seen while running) is new work.
    if first_sight && matches!(recorded, Some("completed" | "failed")) {
        let now = SystemTime::now();
        state.replications.set_doc(
            doc_id,
            DocState {
                replication_id: body
                    .get("_replication_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                source: side("source"),
                target: side("target"),
                state: if recorded == Some("completed") {
                    "completed"
                } else {
                    "failed"
                },
                error: body
                    .get("_replication_state_reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                error_count: 0,
                last_updated: now,
                start_time: now,
                final_status: None,
            },
        );
        known.insert(
            doc_id.to_owned(),
            Known {
                params: p,
                cancel: None,
            },
        );
        return;
    }
    let now = SystemTime::now();
    let spec = match spec {
        Ok(spec) => spec,
        Err(reason) => {
            warn!(doc_id, reason = %reason, "invalid replication document");
            state.replications.set_doc(
                doc_id,
                DocState {
                    replication_id: None,
                    source: String::new(),
                    target: String::new(),
                    state: "failed",
                    error: Some(reason.clone()),
                    error_count: 1,
                    last_updated: now,
                    start_time: now,
                    final_status: None,
                },
            );
            let st = state.clone();
            let id = doc_id.to_owned();
            let expected = p.clone();
            state.tasks.spawn(async move {
                write_state(&st, &id, &expected, "failed", None, Some(&reason)).await;
            });
            known.insert(
                doc_id.to_owned(),
                Known {
                    params: p,
                    cancel: None,
                },
            );
            return;
        }
    };
    // The scheduler lists the document once this node holds its lease and starts the job.
    state.replications.remove_doc(doc_id);
    let seen = body
        .get("_replication_state_time")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let cancel = state.shutdown.child_token();
    known.insert(
        doc_id.to_owned(),
        Known {
            params: p.clone(),
            cancel: Some(cancel.clone()),
        },
    );
    let st = state.clone();
    let id = doc_id.to_owned();
    info!(doc_id, source = %spec.source.redacted(), target = %spec.target.redacted(), "a replication job to run");
    state.tasks.spawn(
        async move { super::lease::run_leased(st, id, p, spec, seen, cancel).await }
            .instrument(tracing::info_span!("replication_doc", doc_id = %doc_id)),
    );
}

/// Runs one document's job until it completes, fails for good, or is cancelled.
pub(super) async fn run_job(
    state: AppState,
    doc_id: String,
    params: Map<String, Value>,
    spec: Spec,
    cancel: CancellationToken,
) {
    let registry = state.replications.clone();
    // Building the endpoints asks remote servers for their identity; while they are down, wait
    // and retry like any other transient failure.
    let mut failures = 0;
    let replication = loop {
        let built = async {
            let client = registry.client()?;
            let endpoints = spec.endpoints(&state, &client).await?;
            let mut config = spec.config(None);
            config.backoff = registry.settings().backoff;
            let replication = Replication::new(endpoints.source, endpoints.target, config);
            let rep_id = replication.replication_id().await?;
            Ok::<_, outpost_replicator::ReplicationError>((replication, rep_id, endpoints.local))
        }
        .await;
        match built {
            Ok(r) => break r,
            Err(e) if e.is_retryable() => {
                failures += 1;
                let reason = e.to_string();
                registry.update_doc(&doc_id, |d| {
                    d.state = "crashing";
                    d.error = Some(reason.clone());
                    d.error_count = failures;
                    d.last_updated = SystemTime::now();
                });
                if failures == 1 {
                    write_state(&state, &doc_id, &params, "error", None, Some(&reason)).await;
                }
                let delay = registry.settings().backoff.delay(failures);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                let reason = e.to_string();
                registry.update_doc(&doc_id, |d| {
                    d.state = "failed";
                    d.error = Some(reason.clone());
                    d.last_updated = SystemTime::now();
                });
                write_state(&state, &doc_id, &params, "failed", None, Some(&reason)).await;
                return;
            }
        }
    };
    let (replication, rep_id, local) = replication;
    let job_key = job_id(&rep_id, spec.continuous, spec.create_target);
    let job = Job {
        id: job_key.clone(),
        doc_id: Some(doc_id.clone()),
        source: spec.source.redacted(),
        target: spec.target.redacted(),
        local,
        continuous: spec.continuous,
        status: replication.subscribe(),
        cancel: cancel.clone(),
        started: SystemTime::now(),
    };
    if !registry.insert(job) {
        let reason = format!("replication {job_key} already runs for another document");
        registry.update_doc(&doc_id, |d| {
            d.state = "failed";
            d.error = Some(reason.clone());
        });
        write_state(
            &state,
            &doc_id,
            &params,
            "failed",
            Some(&rep_id),
            Some(&reason),
        )
        .await;
        return;
    }
    registry.update_doc(&doc_id, |d| {
        d.replication_id = Some(job_key.clone());
        d.state = "running";
        d.error = None;
        d.last_updated = SystemTime::now();
    });
    write_state(&state, &doc_id, &params, "triggered", Some(&rep_id), None).await;
    let status = replication.subscribe();
    let last = replication.subscribe();
    let follow = follow(&state, &doc_id, &params, &rep_id, status);
    let result = {
        let run = replication.run(cancel.clone());
        tokio::pin!(run);
        tokio::pin!(follow);
        tokio::select! {
            r = &mut run => r,
            _ = &mut follow => run.await,
        }
    };
    registry.remove(&job_key);
    match result {
        Ok(r) if !r.stopped => {
            registry.update_doc(&doc_id, |d| {
                d.state = "completed";
                d.last_updated = SystemTime::now();
                d.final_status = Some(last.borrow().clone());
            });
            write_state(&state, &doc_id, &params, "completed", Some(&rep_id), None).await;
        }
        Ok(_) => {}
        Err(e) => {
            let reason = e.to_string();
            registry.update_doc(&doc_id, |d| {
                d.state = "failed";
                d.error = Some(reason.clone());
                d.last_updated = SystemTime::now();
                d.final_status = Some(last.borrow().clone());
            });
            write_state(
                &state,
                &doc_id,
                &params,
                "failed",
                Some(&rep_id),
                Some(&reason),
            )
            .await;
        }
    }
}

/// Mirrors the replication's progress into the scheduler's view and the document, writing the
/// document only when its state changes (`running` ⇄ `error`), and back to `running` only
/// after progress.
async fn follow(
    state: &AppState,
    doc_id: &str,
    params: &Map<String, Value>,
    rep_id: &str,
    mut status: watch::Receiver<Status>,
) {
    let mut written = "triggered";
    while status.changed().await.is_ok() {
        let s = status.borrow_and_update().clone();
        // A retry runs again before it fails again: the document says `error` until the
        // replication makes progress (the replicator forgives failures only then), so a job
        // failing on the same batch does not rewrite its document twice per attempt.
        let (doc_state, sched) = match s.state {
            State::Running | State::Idle if s.consecutive_failures > 0 => ("error", "running"),
            State::Running | State::Idle => ("running", "running"),
            State::Retrying => ("error", "crashing"),
            _ => continue,
        };
        state.replications.update_doc(doc_id, |d| {
            d.state = sched;
            d.error = s.last_error.clone();
            d.error_count = s.consecutive_failures;
            d.last_updated = SystemTime::now();
        });
        if doc_state != written {
            written = doc_state;
            let reason = (doc_state == "error").then(|| s.last_error.clone().unwrap_or_default());
            write_state(
                state,
                doc_id,
                params,
                doc_state,
                Some(rep_id),
                reason.as_deref(),
            )
            .await;
        }
    }
}

/// Writes the state fields into the document, unless its parameters changed meanwhile (then
/// the manager restarts the job and this state is stale). Retries on a concurrent edit.
async fn write_state(
    state: &AppState,
    doc_id: &str,
    expected: &Map<String, Value>,
    doc_state: &str,
    rep_id: Option<&str>,
    reason: Option<&str>,
) {
    for _ in 0..5 {
        let Some((winner, mut fields)) = current(state, doc_id).await else {
            return;
        };
        if &params(&fields) != expected {
            return;
        }
        fields.retain(|k, _| !k.starts_with("_replication_"));
        if let Some(id) = rep_id {
            fields.insert("_replication_id".into(), Value::String(id.to_owned()));
        }
        fields.insert(
            "_replication_state".into(),
            Value::String(doc_state.to_owned()),
        );
        fields.insert(
            "_replication_state_time".into(),
            Value::String(iso_time(SystemTime::now())),
        );
        if let Some(reason) = reason {
            fields.insert(
                "_replication_state_reason".into(),
                Value::String(reason.to_owned()),
            );
        }
        match write(state, doc_id, winner, fields).await {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, doc_id, "cannot record the replication state");
                return;
            }
        }
    }
}

/// The winning revision of a live `_replicator` document and its body, if it can be read.
async fn current(state: &AppState, doc_id: &str) -> Option<(Rev, Map<String, Value>)> {
    let record = state.store.doc(DB, doc_id).await.ok()??;
    let winner = record.tree.winner().filter(|w| !w.deleted)?;
    let mut bodies = state
        .store
        .rev_bodies(DB, doc_id, std::slice::from_ref(&winner.rev))
        .await
        .ok()?;
    let (_, body) = bodies.pop()?;
    let fields = serde_json::from_str::<Map<String, Value>>(&body.json).ok()?;
    Some((winner.rev, fields))
}

/// The body of a live `_replicator` document, if it can be read.
pub(super) async fn current_body(state: &AppState, doc_id: &str) -> Option<Map<String, Value>> {
    current(state, doc_id).await.map(|(_, fields)| fields)
}

/// One edit of a `_replicator` document; `Ok(false)` on a conflict.
async fn write(
    state: &AppState,
    doc_id: &str,
    base: Rev,
    fields: Map<String, Value>,
) -> Result<bool, StoreError> {
    // The stored body keeps attachment stubs and special fields as they are; only
    // `_replication_*` fields change, which `parse_doc` would refuse as unknown specials, so
    // the update is built directly.
    let update = DocUpdate {
        id: doc_id.to_owned(),
        mode: UpdateMode::Edit { base: Some(base) },
        deleted: false,
        body: fields,
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    let mut results = state.store.write_docs(DB, vec![update]).await?;
    Ok(matches!(results.pop(), Some(Ok(_))))
}
