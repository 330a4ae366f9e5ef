//! `/_session`: cookie sessions as CouchDB serves them. `POST` with `name` and `password` (a
//! JSON or form body) starts one and answers `{"ok":true,"name":..,"roles":[..]}` with an
//! `AuthSession` cookie; `GET` tells who the request is from; `DELETE` ends the session by
//! expiring the cookie.

use axum::response::Response;
use http::{Method, header};
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::request::{Req, media_type};
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => Ok(ok(info(state, req).to_string())),
        Method::POST => login(state, req).await,
        Method::DELETE => {
            let mut response = ok(json!({ "ok": true }).to_string());
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.auth.expired_cookie());
            Ok(response)
        }
        _ => Err(not_allowed("Only GET, HEAD, POST, DELETE allowed")),
    }
}

fn info(state: &AppState, req: &Req) -> Value {
    let mut info = json!({ "authentication_handlers": state.auth.handlers() });
    if let Some(method) = req.authenticated {
        info["authenticated"] = method.into();
    }
    json!({
        "ok": true,
        "userCtx": { "name": req.user.name, "roles": req.user.roles },
        "info": info,
    })
}

async fn login(state: &AppState, req: &mut Req) -> Result<Response, ApiError> {
    let form = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| media_type(ct) == "application/x-www-form-urlencoded");
    let (name, password) = if form {
        let bytes = req.bytes().await?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| ApiError::bad_request("invalid form body"))?;
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        (get("name"), get("password"))
    } else {
        let body = req.json().await?;
        let get = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        (get("name"), get("password"))
    };
    let (Some(name), Some(password)) = (name, password) else {
        return Err(ApiError::Unauthorized(
            "Name or password is incorrect.".into(),
        ));
    };
    let (user, salt) = crate::auth::login(state, &name, &password, &req.source, "session").await?;
    let mut response =
        ok(json!({ "ok": true, "name": user.name, "roles": user.roles }).to_string());
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.auth.session_cookie(&name, &salt));
    Ok(response)
}
