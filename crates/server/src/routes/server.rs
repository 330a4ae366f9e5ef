//! Server-level resources: `/`, `/_up`, `/_all_dbs`, `/_uuids`.

use axum::response::Response;
use http::Method;
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::request::Req;
use crate::{ApiError, AppState, COUCHDB_VERSION};

/// Most ids one `_uuids` call hands out.
const MAX_UUIDS: u64 = 1000;

/// `GET /`: clients read `uuid` for replication ids and detect CouchDB by `"couchdb":"Welcome"`.
pub async fn root(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    Ok(ok(json!({
        "couchdb": "Welcome",
        "version": COUCHDB_VERSION,
        "uuid": state.store.server_uuid(),
        "features": [],
        "vendor": { "name": "Outpost", "version": env!("CARGO_PKG_VERSION") },
    })
    .to_string()))
}

/// `GET /_up`: liveness, as CouchDB answers it.
pub fn up(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    Ok(ok(json!({ "status": "ok" }).to_string()))
}

/// `GET /_all_dbs`, with `startkey`, `endkey`, `limit`, `skip` and `descending`.
pub async fn all_dbs(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let q = &req.query;
    let descending = q.flag("descending")?;
    let start = q.json_any(&["startkey", "start_key"])?;
    let end = q.json_any(&["endkey", "end_key"])?;
    let skip = usize::try_from(q.u64("skip")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = q
        .u64("limit")?
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut names = state.store.all_dbs().await?;
    if descending {
        names.reverse();
    }
    let in_range = |name: &String| {
        let after_start = match start.as_ref().and_then(Value::as_str) {
            Some(s) if descending => name.as_str() <= s,
            Some(s) => name.as_str() >= s,
            None => true,
        };
        let before_end = match end.as_ref().and_then(Value::as_str) {
            Some(e) if descending => name.as_str() >= e,
            Some(e) => name.as_str() <= e,
            None => true,
        };
        after_start && before_end
    };
    let names: Vec<String> = names
        .into_iter()
        .filter(in_range)
        .skip(skip)
        .take(limit)
        .collect();
    Ok(ok(
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    ))
}

/// Most databases one `_dbs_info` request may name.
const MAX_DBS_INFO_KEYS: usize = 100;

/// `POST /_dbs_info` with `{"keys": [...]}` (at most 100, as CouchDB's default
/// `max_db_number_for_dbs_info_req`), or `GET` for every database: one
/// `{"key", "info"}` (or `"error"`) per database.
pub async fn dbs_info(state: &AppState, req: &mut Req) -> Result<Response, ApiError> {
    let names: Vec<String> = match req.method {
        Method::GET => state.store.all_dbs().await?,
        Method::POST => {
            let body = req.json().await?;
            let keys = body
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| ApiError::bad_request("`keys` member must exist."))?;
            if keys.len() > MAX_DBS_INFO_KEYS {
                return Err(ApiError::bad_request(format!(
                    "`keys` member must have at most {MAX_DBS_INFO_KEYS} databases"
                )));
            }
            keys.iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ApiError::bad_request("`keys` must be database names"))
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(not_allowed("Only GET, HEAD, POST allowed")),
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let entry = match super::db::info_json(state, &name, None).await {
            Ok(info) => json!({ "key": name, "info": info }),
            Err(ApiError::NotFound(_) | ApiError::IllegalDbName(_)) => {
                json!({ "key": name, "error": "not_found" })
            }
            Err(e) => return Err(e),
        };
        out.push(entry);
    }
    Ok(ok(Value::Array(out).to_string()))
}

/// `GET /_uuids?count=N`.
pub fn uuids(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let count = req.query.u64("count")?.unwrap_or(1);
    if count > MAX_UUIDS {
        return Err(ApiError::bad_request(format!(
            "count must not exceed {MAX_UUIDS}"
        )));
    }
    let ids: Vec<String> = (0..count).map(|_| crate::docjson::new_id()).collect();
    Ok(ok(json!({ "uuids": ids }).to_string()))
}
