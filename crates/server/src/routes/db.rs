//! `/{db}`: create, inspect, delete a database, and `POST` a document into it; plus the small
//! per-database endpoints `_revs_limit`, `_compact` and `_ensure_full_commit`.

use axum::response::Response;
use http::{Method, StatusCode, header};
use outpost_core::names::validate_db_name;
use outpost_store::Origin;
use serde_json::{Value, json};

use super::{json, not_allowed, ok, with_etag, write_one};
use crate::docjson::{ok_json, parse_doc};
use crate::replication::jobs::iso_time;
use crate::request::Req;
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, name: &str, req: &mut Req) -> Result<Response, ApiError> {
    validate_db_name(name)?;
    match req.method {
        Method::GET => {
            let reader = crate::access::reader(state, req, name).await?;
            Ok(ok(info_json(state, name, reader.as_ref())
                .await?
                .to_string()))
        }
        Method::PUT => {
            let options = outpost_store::DbOptions {
                access: req.query.bool("access")?.unwrap_or(false),
            };
            let created = state.store.create_db_with(name, &options).await;
            state.auth.forget_security(name);
            created?;
            let mut response = json(StatusCode::CREATED, json!({ "ok": true }).to_string());
            if let Ok(v) = http::HeaderValue::from_str(&format!("/{}", encode(name))) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        Method::DELETE => {
            if req.query.get("rev").is_some() {
                // CouchDB's guard against `DELETE /db?rev=` meant for a document.
                return Err(ApiError::bad_request(
                    "You tried to DELETE a database with a ?rev= parameter. Did you mean to DELETE a document instead?",
                ));
            }
            let deleted = state.store.delete_db(name).await;
            state.auth.forget_security(name);
            deleted?;
            state.replications.forget_db(name);
            // The rows are gone; the attachment bytes only this database used and the freed
            // pages are given back in the background.
            in_background(state, "reclaim", {
                let store = state.store.clone();
                async move { store.reclaim().await }
            });
            Ok(ok(json!({ "ok": true }).to_string()))
        }
        Method::POST => {
            let body = req.json().await?;
            let mut update = parse_doc(body, None, true, Origin::Client)?;
            crate::users::before_write(state, name, req, &mut update).await?;
            crate::limits::check(&update, &state.config)?;
            let id = update.id.clone();
            if matches!(
                outpost_core::names::classify_doc_id(&id),
                Ok(outpost_core::DocKind::Local)
            ) {
                return Err(ApiError::bad_request("use PUT to write _local documents"));
            }
            let rev = write_one(state, name, update, req).await?;
            crate::users::after_write(state, name, &id).await?;
            let response = json(StatusCode::CREATED, ok_json(&id, &rev));
            Ok(with_etag(response, &rev))
        }
        _ => Err(not_allowed("Only DELETE,GET,HEAD,POST,PUT allowed")),
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// What `GET /{db}` answers, also one entry of `_dbs_info`. A reader of a database with
/// per-document access gets the counts and sequence of what they can see, and no sizes.
pub async fn info_json(
    state: &AppState,
    name: &str,
    reader: Option<&crate::access::Reader>,
) -> Result<Value, ApiError> {
    let mut info = state.store.db_info(name).await?;
    if let Some(reader) = reader {
        let counts = state.store.access_counts(name, &reader.principals).await?;
        info.doc_count = counts.doc_count;
        info.doc_del_count = counts.doc_del_count;
        info.update_seq = crate::access::update_seq(state, reader, name).await?;
        info.active_size = 0;
    }
    // CouchDB's design for per-document access reports it among the database's properties.
    let props = if info.access {
        json!({ "access": true })
    } else {
        json!({})
    };
    let incarnation = Incarnation::of_db(&info.name, info.created_at);
    Ok(json!({
        "db_name": info.name,
        "update_seq": incarnation.seq(info.update_seq),
        // In the same form as CouchDB shows it, like the update sequence.
        "purge_seq": incarnation.seq(info.purge_seq),
        "doc_count": info.doc_count,
        "doc_del_count": info.doc_del_count,
        "sizes": { "file": info.file_size, "external": info.active_size, "active": info.active_size },
        "props": props,
        "disk_format_version": 8,
        "compact_running": info.compact_running,
        "cluster": { "q": 1, "n": 1, "w": 1, "r": 1 },
        "instance_start_time": (info.created_at).to_string(),
        "outpost": outpost_json(state, &info),
    }))
}

/// The `outpost` object of database info: the conflict settings and, per peer, the last
/// successful replication.
fn outpost_json(state: &AppState, info: &outpost_store::DbInfo) -> Value {
    let mut outpost = super::conflicts::settings_json(info);
    let replications: Vec<Value> = state
        .replications
        .peer_syncs(&info.name)
        .into_iter()
        .map(|sync| {
            json!({
                "peer": sync.peer,
                "direction": sync.direction.as_str(),
                "last_sync": sync.last_sync.map(iso_time),
                "state": sync.state,
            })
        })
        .collect();
    outpost["replications"] = Value::Array(replications);
    outpost
}

/// `GET/PUT /{db}/_revs_limit`.
pub async fn revs_limit(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => Ok(ok(state.store.db_info(db).await?.revs_limit.to_string())),
        Method::PUT => {
            let limit = match req.json().await? {
                Value::Number(n) => n.as_u64().filter(|n| *n >= 1),
                _ => None,
            }
            .ok_or_else(|| ApiError::bad_request("_revs_limit must be a positive integer"))?;
            state.store.set_revs_limit(db, limit).await?;
            Ok(ok(json!({ "ok": true }).to_string()))
        }
        _ => Err(not_allowed("Only GET,PUT allowed")),
    }
}

/// `POST /{db}/_compact`: answers 202 at once, as CouchDB does, and compacts in the background;
/// `compact_running` in the database info is true from before the answer until it is done.
pub async fn compact(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    req.require_json_type()?;
    state.store.db_info(db).await?;
    // A compaction already running covers this request too.
    if let Some(mark) = state.store.mark_compacting(db) {
        let store = state.store.clone();
        let db = db.to_owned();
        in_background(state, "compaction", async move {
            let _mark = mark;
            store.compact(&db).await
        });
    }
    Ok(json(
        StatusCode::ACCEPTED,
        json!({ "ok": true }).to_string(),
    ))
}

/// Runs store maintenance as a tracked task that ends with the server: it is made of separate
/// durable steps, so stopping between two loses nothing and the next run picks up the rest.
pub(crate) fn in_background<F>(state: &AppState, what: &'static str, work: F)
where
    F: std::future::Future<Output = Result<(), outpost_store::StoreError>> + Send + 'static,
{
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        tokio::select! {
            result = work => {
                if let Err(e) = result {
                    tracing::error!(error = %e, task = what, "store maintenance failed");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    });
}

/// `POST /{db}/_ensure_full_commit`: every acknowledged write is already durable.
pub async fn ensure_full_commit(
    state: &AppState,
    db: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    state.store.db_info(db).await?;
    Ok(json(
        StatusCode::CREATED,
        json!({ "ok": true, "instance_start_time": "0" }).to_string(),
    ))
}
