//! `/{db}/_security`: the database's admins and members. Members read it, database admins
//! change it; a database without one has the server's default (CouchDB 3's `admin_only`).

use axum::response::Response;
use http::Method;
use outpost_auth::Security;
use serde_json::json;

use super::{not_allowed, ok};
use crate::request::Req;
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => match state.store.security(db).await? {
            Some(text) => Ok(ok(text)),
            None => {
                let default = crate::authz::default_security(state, db);
                let body = if default == Security::default() {
                    json!({})
                } else {
                    serde_json::to_value(&default).map_err(|e| {
                        ApiError::Internal(format!("cannot serialise security: {e}"))
                    })?
                };
                Ok(ok(body.to_string()))
            }
        },
        Method::PUT => {
            let body = req.json().await?;
            Security::from_json(&body).map_err(|e| ApiError::BadRequest(e.0))?;
            let stored = state.store.set_security(db, body.to_string()).await;
            state.auth.forget_security(db);
            stored?;
            Ok(ok(json!({ "ok": true }).to_string()))
        }
        _ => Err(not_allowed("Only GET, HEAD, PUT allowed")),
    }
}
