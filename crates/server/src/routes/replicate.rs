//! `POST /_replicate`: a one-shot replication answered with its result, or a continuous one
//! started (or cancelled) as a tracked task, with CouchDB's request and answer fields
//! (docs.couchdb.org, "api/server/common", `/_replicate`).

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_replicator::ReplicationError;
use serde_json::{Value, json};

use super::{json, not_allowed, ok};
use crate::replication::{self, Spec};
use crate::request::Req;
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let body = req.json().await?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let cancel = matches!(body.get("cancel"), Some(Value::Bool(true)));
    if cancel {
        // Only a server admin may name a job by id; others cancel by the same fields they
        // could start it with.
        let named = ["replication_id", "_local_id", "id"]
            .iter()
            .any(|k| body.contains_key(*k));
        if !req.user.is_server_admin() {
            if named {
                return Err(ApiError::Forbidden(
                    "only server admins may cancel a replication by its id".into(),
                ));
            }
            let spec = Spec::parse(&body).map_err(ApiError::BadRequest)?;
            authorize(state, req, &spec).await?;
        }
        return cancel_job(state, &body).await;
    }
    let spec = Spec::parse(&body).map_err(ApiError::BadRequest)?;
    authorize(state, req, &spec).await?;
    if spec.continuous {
        return match replication::start_continuous(state, &spec).await {
            Ok(id) => Ok(json(
                StatusCode::ACCEPTED,
                json!({ "ok": true, "_local_id": id }).to_string(),
            )),
            Err(e) => Ok(failure(&e)),
        };
    }
    match replication::run_one_shot(state, &spec).await {
        Ok(result) => Ok(ok(serde_json::to_string(&result).map_err(|e| {
            ApiError::Internal(format!("cannot serialise a replication result: {e}"))
        })?)),
        Err(e) => Ok(failure(&e)),
    }
}

/// A replication runs with its user's rights: each side that is a database of this server must
/// be one the user could read (the source) or write (the target) through the API, and only a
/// server admin may have the target created. Remote sides are reached over HTTP with the
/// credentials the request gives them.
async fn authorize(state: &AppState, req: &Req, spec: &Spec) -> Result<(), ApiError> {
    if req.user.is_server_admin() {
        return Ok(());
    }
    if spec.create_target && !spec.target.url.contains("://") {
        return Err(ApiError::Forbidden(
            "only server admins may create databases".into(),
        ));
    }
    // The target must be one the user is an admin of: a replication writes design documents
    // as they come, which a member could not write.
    let sides = [
        (
            &spec.source,
            crate::authz::Need::Member(spec.source.url.clone()),
        ),
        (
            &spec.target,
            crate::authz::Need::DbAdmin(spec.target.url.clone()),
        ),
    ];
    for (side, need) in sides {
        if !side.url.contains("://") {
            let level = crate::authz::check(state, &req.user, &need).await?;
            // A replication reads its local source straight from the store, whole; a member
            // of a database with per-document access replicates it over HTTP, where every
            // read is filtered.
            if crate::access::reader_for(state, &req.user, level, &side.url)
                .await?
                .is_some()
            {
                return Err(ApiError::Forbidden(
                    "a replication from a database with per-document access runs over HTTP for its members".into(),
                ));
            }
        }
    }
    Ok(())
}

/// `{"cancel": true}` with `replication_id` (or its aliases `_local_id` and `id`), or with the
/// same fields the replication was started with.
async fn cancel_job(
    state: &AppState,
    body: &serde_json::Map<String, Value>,
) -> Result<Response, ApiError> {
    let named = ["replication_id", "_local_id", "id"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str).map(str::to_owned));
    let id = match named {
        Some(id) => id,
        None => {
            let spec = Spec::parse(body).map_err(ApiError::BadRequest)?;
            match replication::job_id_of(state, &spec).await {
                Ok(id) => id,
                Err(e) => return Ok(failure(&e)),
            }
        }
    };
    // Jobs of `_replicator` documents are stopped by deleting their document, as in CouchDB.
    match state.replications.get(&id).filter(|j| j.doc_id.is_none()) {
        Some(job) => {
            job.cancel.cancel();
            Ok(ok(json!({ "ok": true, "_local_id": id }).to_string()))
        }
        None => Err(ApiError::NotFound(format!(
            "replication {id} is not running"
        ))),
    }
}

/// A failed replication as CouchDB reports it. The reason names the endpoint and operation but
/// never credentials (endpoints redact themselves), so unlike internal errors it is sent.
fn failure(e: &ReplicationError) -> Response {
    let (status, error) = match e {
        ReplicationError::NotFound { .. } => (StatusCode::NOT_FOUND, "db_not_found"),
        ReplicationError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
        ReplicationError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        ReplicationError::InvalidConfig(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        ReplicationError::Unreachable { .. }
        | ReplicationError::Timeout { .. }
        | ReplicationError::Conflict { .. }
        | ReplicationError::Http { .. }
        | ReplicationError::InvalidResponse { .. }
        | ReplicationError::FetchFailed { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "replication_failed")
        }
    };
    tracing::warn!(error = %e, "replication request failed");
    json(
        status,
        json!({ "error": error, "reason": e.to_string() }).to_string(),
    )
}
