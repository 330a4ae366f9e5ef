//! The node endpoints of a one-node CouchDB: `/_membership`, `/_node/{node}` and, under it,
//! `_config` (read-only: the settings Outpost runs with, named as CouchDB names them),
//! `_system` and `_stats` (in `stats.rs`). Fauxton and CouchDB's tools ask for these; `_local` always names this node.

use std::sync::OnceLock;
use std::time::Instant;

use axum::response::Response;
use http::Method;
use serde_json::{Map, Value, json};

use super::{not_allowed, ok};
use crate::request::Req;
use crate::{ApiError, AppState};

/// The one node's name, as `_membership` lists it.
pub const NODE_NAME: &str = "nonode@nohost";

/// When the process started serving, for `_system`'s `uptime`.
fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// `GET /_membership`.
pub fn membership(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    Ok(ok(
        json!({ "all_nodes": [NODE_NAME], "cluster_nodes": [NODE_NAME] }).to_string(),
    ))
}

/// `/_node/{node}/...`.
pub async fn route(
    state: &AppState,
    node: &str,
    rest: &[&str],
    req: &mut Req,
) -> Result<Response, ApiError> {
    if node != "_local" && node != NODE_NAME {
        return Err(ApiError::NotFound(format!("unknown node {node:?}")));
    }
    match rest {
        [] if req.method == Method::GET => Ok(ok(json!({ "name": NODE_NAME }).to_string())),
        ["_config", "admins", path @ ..] => admins(state, path, req).await,
        ["_config", path @ ..] => config(state, path, req),
        ["_system"] if req.method == Method::GET => Ok(ok(system().to_string())),
        ["_stats", path @ ..] => super::stats::handle(state, path, req).await,
        // Where CouchDB 3 serves Prometheus; no database name can collide with it.
        ["_prometheus"] => super::ops::metrics(state, req),
        [] | ["_system"] => Err(not_allowed("Only GET, HEAD allowed")),
        _ => Err(ApiError::bad_request("unknown node endpoint")),
    }
}

/// The configuration as CouchDB's sections and keys, every value a string as CouchDB gives them.
/// Only settings Outpost honours appear; secrets never do.
fn config_sections(state: &AppState) -> Map<String, Value> {
    let c = &state.config;
    let mut sections = Map::new();
    sections.insert(
        "chttpd".into(),
        json!({
            "max_http_request_size": c.max_body_bytes.to_string(),
        }),
    );
    sections.insert(
        "couchdb".into(),
        json!({
            "uuid": state.store.server_uuid(),
            "max_dbs_open": "unlimited",
            "max_document_size": c.max_document_size.to_string(),
            "max_attachment_size": c.max_attachment_size.to_string(),
        }),
    );
    sections.insert(
        "attachments".into(),
        json!({
            "compression_level": c.attachments.level().to_string(),
            "compressible_types": c.attachments.types(),
        }),
    );
    let origins = match &c.cors_origins {
        None => "*".to_owned(),
        Some(list) => list.join(", "),
    };
    sections.insert("cors".into(), json!({ "origins": origins }));
    sections
}

fn config(state: &AppState, path: &[&str], req: &Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {}
        Method::PUT | Method::DELETE => {
            return Err(ApiError::MethodNotAllowed(
                "Outpost's configuration comes from its configuration file, environment and flags; it cannot be changed at run time",
            ));
        }
        _ => return Err(not_allowed("Only GET, HEAD allowed")),
    }
    let sections = config_sections(state);
    let unknown = || ApiError::NotFound("unknown_config_value".into());
    let value = match path {
        [] => Value::Object(sections),
        [section] => sections.get(*section).cloned().unwrap_or_else(|| json!({})),
        [section, key] => sections
            .get(*section)
            .and_then(|s| s.get(*key))
            .cloned()
            .ok_or_else(unknown)?,
        _ => return Err(unknown()),
    };
    Ok(ok(value.to_string()))
}

/// What `_config/admins` shows for a server admin's password: never the hash, which is what an
/// offline attack would start from.
const HIDDEN: &str = "<hashed>";

/// `_config/admins[/NAME]`: the server admins. `PUT` with a JSON string sets a password (stored
/// hashed, saved in the data directory, or in a store shared by several nodes for all of them),
/// `DELETE` removes an admin; both answer the previous value as CouchDB does (here never the
/// hash itself).
async fn admins(state: &AppState, path: &[&str], req: &mut Req) -> Result<Response, ApiError> {
    let auth = &state.auth;
    match (path, &req.method) {
        ([], &Method::GET) => {
            let names: Map<String, Value> = auth
                .admin_names()
                .into_iter()
                .map(|n| (n, Value::String(HIDDEN.into())))
                .collect();
            Ok(ok(Value::Object(names).to_string()))
        }
        ([name], &Method::GET) => {
            if auth.admin_names().iter().any(|n| n == name) {
                Ok(ok(json!(HIDDEN).to_string()))
            } else {
                Err(ApiError::NotFound("unknown_config_value".into()))
            }
        }
        ([name], &Method::PUT) => {
            if name.is_empty() || name.contains(':') {
                return Err(ApiError::bad_request(
                    "an admin name must be non-empty and without ':'",
                ));
            }
            let Value::String(password) = req.json().await? else {
                return Err(ApiError::bad_request("the password must be a JSON string"));
            };
            if password.is_empty() {
                return Err(ApiError::bad_request("the password must not be empty"));
            }
            let iterations = auth.settings.password_iterations;
            let creds = tokio::task::spawn_blocking(move || {
                outpost_auth::Credentials::hash(&password, iterations)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))?;
            let existed = auth.set_admin(state.store.as_ref(), name, creds).await?;
            tracing::warn!(admin = %name, "server admin set through _config");
            Ok(ok(json!(if existed { HIDDEN } else { "" }).to_string()))
        }
        ([name], &Method::DELETE) => {
            if auth.remove_admin(state.store.as_ref(), name).await? {
                tracing::warn!(admin = %name, "server admin removed through _config");
                Ok(ok(json!(HIDDEN).to_string()))
            } else {
                Err(ApiError::NotFound("unknown_config_value".into()))
            }
        }
        ([_], _) => Err(not_allowed("Only GET, HEAD, PUT, DELETE allowed")),
        ([], _) => Err(not_allowed("Only GET, HEAD allowed")),
        _ => Err(ApiError::NotFound("unknown_config_value".into())),
    }
}

/// What `_system` can say cheaply about this process: uptime and memory (from `/proc` where
/// there is one).
fn system() -> Value {
    let uptime = started().elapsed().as_secs();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    json!({
        "uptime": uptime,
        "memory": { "total": rss },
    })
}

/// Starts the `_system` uptime clock; called once when the server is built.
pub fn start_clock() {
    started();
}
