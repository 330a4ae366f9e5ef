//! The `_users` database as CouchDB 3 keeps it: `org.couchdb.user:NAME` documents whose clear
//! `password` is replaced by a PBKDF2-SHA256 hash before they are stored; only admins set
//! `roles`, nobody gives `_admin`; a user writes only their own document (with public sign-up,
//! anyone may create a new one without roles). With `couch_peruser`, each new user gets a
//! private database `userdb-<hex of name>`.
//!
//! Every write path calls [`before_write`] for each document, so design documents written by a
//! member are refused everywhere, not only through one route.

use outpost_auth::{Credentials, Level, Security};
use outpost_store::{DocUpdate, StoreError};
use serde_json::Value;

use crate::auth::{USER_PREFIX, USERS_DB};
use crate::request::Req;
use crate::{ApiError, AppState};

fn forbidden(reason: &str) -> ApiError {
    ApiError::Forbidden(reason.to_owned())
}

/// All that [`before_write`] checks of a document written to a database other than `_users`;
/// it needs nothing from the store, so it can run anywhere (`_bulk_docs` runs it on its
/// decoding threads).
pub fn before_write_outside_users(req: &Req, update: &DocUpdate) -> Result<(), ApiError> {
    crate::authz::check_doc_write(req.level, &update.id)
}

/// Checks (and, for `_users`, rewrites) a document about to be written by `req`'s user.
pub async fn before_write(
    state: &AppState,
    db: &str,
    req: &Req,
    update: &mut DocUpdate,
) -> Result<(), ApiError> {
    before_write_outside_users(req, update)?;
    if db != USERS_DB || update.id.starts_with("_design/") {
        return Ok(());
    }
    let admin = req.user.is_server_admin() || req.level.is_some_and(|l| l >= Level::DbAdmin);
    let Some(name) = update.id.strip_prefix(USER_PREFIX) else {
        return Err(forbidden(
            "user document ids must start with org.couchdb.user:",
        ));
    };
    let name = name.to_owned();
    let current = crate::auth::user_doc(state, &name).await?;
    if !admin {
        let own = req.user.name.as_deref() == Some(name.as_str());
        let signup = current.is_none() && state.auth.settings.public_signup;
        if !own && !signup {
            return Err(forbidden("You may only update your own user document."));
        }
    }
    if update.deleted {
        return Ok(());
    }
    let body = &mut update.body;
    if body.get("name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(forbidden("doc.name must be the name in the document id"));
    }
    if name.starts_with('_') || name.contains(':') {
        return Err(forbidden("user names must not start with _ or contain :"));
    }
    if body.get("type").and_then(Value::as_str) != Some("user") {
        return Err(forbidden("doc.type must be user"));
    }
    let Some(Value::Array(roles)) = body.get("roles") else {
        return Err(forbidden("doc.roles must be an array"));
    };
    if !roles.iter().all(Value::is_string) {
        return Err(forbidden("doc.roles may only contain strings"));
    }
    if roles
        .iter()
        .any(|r| r.as_str() == Some(outpost_auth::user::ADMIN_ROLE))
    {
        return Err(forbidden(
            "the _admin role cannot be given to a user; server admins are configured",
        ));
    }
    if !admin {
        let before = current
            .as_ref()
            .and_then(|d| d.get("roles").cloned())
            .unwrap_or_else(|| Value::Array(vec![]));
        if body.get("roles") != Some(&before) {
            return Err(forbidden("Only _admin may edit roles"));
        }
    }
    match body.shift_remove("password") {
        None | Some(Value::Null) => {}
        Some(Value::String(password)) => {
            let iterations = state.auth.settings.password_iterations;
            let creds =
                tokio::task::spawn_blocking(move || Credentials::hash(&password, iterations))
                    .await
                    .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))?;
            creds.write_user_doc(body);
        }
        Some(_) => return Err(ApiError::bad_request("password must be a string")),
    }
    Ok(())
}

/// After a user document was written: with `couch_peruser`, the user's private database.
pub async fn after_write(state: &AppState, db: &str, id: &str) -> Result<(), ApiError> {
    if db != USERS_DB || !state.auth.settings.couch_peruser {
        return Ok(());
    }
    let Some(name) = id.strip_prefix(USER_PREFIX) else {
        return Ok(());
    };
    let private = format!("userdb-{}", hex::encode(name));
    match state.store.create_db(&private).await {
        Ok(()) => {}
        Err(StoreError::DbExists) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let only_them = outpost_auth::Group {
        names: vec![name.to_owned()],
        roles: vec![],
    };
    let security = Security {
        admins: only_them.clone(),
        members: only_them,
    };
    let text = serde_json::to_string(&security)
        .map_err(|e| ApiError::Internal(format!("cannot serialise security: {e}")))?;
    let stored = state.store.set_security(&private, text).await;
    state.auth.forget_security(&private);
    stored?;
    Ok(())
}
