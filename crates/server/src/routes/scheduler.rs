//! `/_scheduler/jobs`, `/_scheduler/docs` and `/_active_tasks`: what the replications of this
//! server are doing, in CouchDB's shapes (docs.couchdb.org, "api/server/common"). Sources and
//! targets are shown without credentials. Fauxton reads `_scheduler/jobs` as CouchDB answers it:
//! each job's `history` has its `added` and `started` events (it reads the newest
//! one's `type`), and a URL ends with `/` (it drops the last character).

use std::time::SystemTime;

use axum::response::Response;
use http::Method;
use outpost_replicator::{State, Status};
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::replication::jobs::iso_time;
use crate::replication::{Job, manager};
use crate::request::Req;
use crate::{ApiError, AppState};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `info` object of a job: counters, sequences, the last error and the time of the last
/// successful sync.
fn info(s: &Status) -> Value {
    json!({
        "revisions_checked": s.stats.missing_checked,
        "missing_revisions_found": s.stats.missing_found,
        "docs_read": s.stats.docs_read,
        "docs_written": s.stats.docs_written,
        "doc_write_failures": s.stats.doc_write_failures,
        "changes_pending": s.pending,
        "checkpointed_source_seq": s.checkpointed_seq,
        "source_seq": s.source_seq,
        "through_seq": s.checkpointed_seq,
        "error": s.last_error,
        "last_sync": s.last_sync.map(iso_time),
    })
}

fn scheduler_state(s: &Status) -> &'static str {
    match s.state {
        // A continuous job waiting on a longpoll after a restart says `Starting` until the
        // source changes; once it has read the source it is running.
        State::Starting if s.source_seq.is_some() => "running",
        State::Starting => "initializing",
        State::Running | State::Idle => "running",
        State::Retrying => "crashing",
        State::Completed => "completed",
        State::Failed => "failed",
        State::Stopped => "stopped",
    }
}

fn job_json(job: &Job, node: &str) -> Value {
    let s = job.status.borrow().clone();
    json!({
        "id": job.id,
        "database": job.doc_id.as_ref().map(|_| manager::DB),
        "doc_id": job.doc_id,
        "source": endpoint(&job.source),
        "target": endpoint(&job.target),
        "user": null,
        "node": node,
        "pid": null,
        "state": scheduler_state(&s),
        "start_time": iso_time(job.started),
        "info": info(&s),
        "history": history(job),
    })
}

/// Reads `limit` and `skip` and pages a list.
/// A side as CouchDB's scheduler shows it: a URL with its trailing `/`, a database name as is.
fn endpoint(side: &str) -> String {
    if side.contains("://") && !side.ends_with('/') {
        format!("{side}/")
    } else {
        side.to_owned()
    }
}

/// A job's events, newest first, as CouchDB keeps them: `added` and `started` when it began.
/// Failures are in `state` and `info.error`; Outpost keeps no log of when each happened.
fn history(job: &Job) -> Value {
    let started = iso_time(job.started);
    json!([
        { "timestamp": started, "type": "started" },
        { "timestamp": started, "type": "added" },
    ])
}

fn page(req: &Req, items: Vec<Value>) -> Result<(usize, usize, Vec<Value>), ApiError> {
    let total = items.len();
    let skip = usize::try_from(req.query.u64("skip")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = req
        .query
        .u64("limit")?
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    Ok((
        total,
        skip,
        items.into_iter().skip(skip).take(limit).collect(),
    ))
}

pub fn jobs(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let node = state.replications.node();
    let all: Vec<Value> = state
        .replications
        .jobs()
        .iter()
        .map(|job| job_json(job, &node))
        .collect();
    let (total, offset, jobs) = page(req, all)?;
    Ok(ok(
        json!({ "total_rows": total, "offset": offset, "jobs": jobs }).to_string(),
    ))
}

pub fn docs(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let jobs = state.replications.jobs();
    let node = state.replications.node();
    let all: Vec<Value> = state
        .replications
        .docs()
        .into_iter()
        .map(|(doc_id, d)| {
            let job = jobs.iter().find(|j| j.doc_id.as_deref() == Some(&doc_id));
            // A job that ended keeps its last counters, as CouchDB's scheduler shows them.
            let mut info = job
                .map(|j| info(&j.status.borrow()))
                .or_else(|| d.final_status.as_ref().map(info))
                .unwrap_or_else(|| json!({}));
            if let (Some(obj), Some(error)) = (info.as_object_mut(), &d.error) {
                obj.insert("error".into(), Value::String(error.clone()));
            }
            json!({
                "database": manager::DB,
                "doc_id": doc_id,
                "id": d.replication_id,
                "node": node,
                "source": d.source,
                "target": d.target,
                "state": d.state,
                "info": info,
                "error_count": d.error_count,
                "last_updated": iso_time(d.last_updated),
                "start_time": iso_time(d.start_time),
            })
        })
        .collect();
    let (total, offset, docs) = page(req, all)?;
    Ok(ok(
        json!({ "total_rows": total, "offset": offset, "docs": docs }).to_string(),
    ))
}

pub fn active_tasks(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let node = state.replications.node();
    let tasks: Vec<Value> = state
        .replications
        .jobs()
        .iter()
        .map(|job| {
            let s = job.status.borrow().clone();
            json!({
                "type": "replication",
                "replication_id": job.id,
                "doc_id": job.doc_id,
                "database": job.doc_id.as_ref().map(|_| manager::DB),
                "source": job.source,
                "target": job.target,
                "continuous": job.continuous,
                "node": node,
                "pid": null,
                "user": null,
                "process_status": if s.state == State::Retrying { "waiting" } else { "running" },
                "docs_read": s.stats.docs_read,
                "docs_written": s.stats.docs_written,
                "doc_write_failures": s.stats.doc_write_failures,
                "missing_revisions_found": s.stats.missing_found,
                "revisions_checked": s.stats.missing_checked,
                "changes_pending": s.pending,
                "checkpointed_source_seq": s.checkpointed_seq,
                "source_seq": s.source_seq,
                "through_seq": s.checkpointed_seq,
                "started_on": unix(job.started),
                "updated_on": unix(SystemTime::now()),
                "last_sync": s.last_sync.map(iso_time),
                "error": s.last_error,
            })
        })
        .collect();
    Ok(ok(Value::Array(tasks).to_string()))
}
