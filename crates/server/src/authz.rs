//! Authorization: what each route needs ([`need`], the table docs/security.md writes out) and
//! whether the request's user has it ([`check`]), with CouchDB 3's answers: 401 `unauthorized`
//! to an anonymous request, 403 `forbidden` to a signed-in user without the right.

use http::Method;
use outpost_auth::access::{Refusal, refusal};
use outpost_auth::{Level, Security, UserCtx};

use crate::auth::{DefaultSecurity, USER_PREFIX, USERS_DB};
use crate::{ApiError, AppState};

/// The database of persistent replication jobs.
pub const REPLICATOR_DB: &str = "_replicator";

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Open to everyone (`/`, `/_up`, `/_uuids`, `/_session`, readiness, the OpenAPI document).
    Anyone,
    /// Any signed-in user (`/_replicate`, whose sides are checked when it starts).
    SignedIn,
    /// A server admin.
    ServerAdmin,
    /// A member of the database (or more).
    Member(String),
    /// An admin of the database (or a server admin).
    DbAdmin(String),
    /// A `_users` document: its owner, an admin, or (with public sign-up, when writing) anyone
    /// creating one.
    UserDoc { id: String, write: bool },
}

/// What `method` on the path `segs` (decoded segments) needs.
pub fn need(method: &Method, segs: &[&str]) -> Need {
    let read = *method == Method::GET;
    match segs {
        [] | ["_up"] | ["_uuids"] | ["_session"] => Need::Anyone,
        ["_outpost", "v1", "ready"] | ["_outpost", "v1", "openapi.json"] => Need::Anyone,
        // Each subscription is checked as `_changes` of its database when it is made.
        ["_outpost", "v1", "feed", ..] => Need::Anyone,
        // The console's static files; what it shows comes from routes checked on their own.
        ["_outpost", "ui", ..] => Need::Anyone,
        ["_replicate"] => Need::SignedIn,
        ["_all_dbs"]
        | ["_db_updates"]
        | ["_dbs_info"]
        | ["_membership"]
        | ["_node", ..]
        | ["_scheduler", ..]
        | ["_active_tasks"]
        | ["_outpost", ..] => Need::ServerAdmin,
        [first, ..] if *first == REPLICATOR_DB => Need::ServerAdmin,
        [_] if *method == Method::PUT || *method == Method::DELETE => Need::ServerAdmin,
        // Unknown `_` endpoints are refused as bad requests by the router.
        [first, ..] if first.starts_with('_') && *first != USERS_DB => Need::Anyone,
        [db, id]
            if *db == USERS_DB
                && id.starts_with(USER_PREFIX)
                && !matches!(*method, Method::POST) =>
        {
            Need::UserDoc {
                id: (*id).to_owned(),
                write: !read,
            }
        }
        [db, "_security"]
        | [db, "_revs_limit"]
        | [db, "_purged_infos_limit"]
        | [db, "_outpost"]
            if !read =>
        {
            Need::DbAdmin((*db).to_owned())
        }
        [db, "_compact", ..] | [db, "_resolve"] | [db, "_view_cleanup"] | [db, "_purge"] => {
            Need::DbAdmin((*db).to_owned())
        }
        // Creating or deleting a Mango index writes a design document.
        [db, "_index", ..] if !read => Need::DbAdmin((*db).to_owned()),
        // Querying a view is a read, also by POST (`keys`, `queries`).
        [db, "_design", _, "_view", ..] | [db, "_design", _, "_info"] => {
            Need::Member((*db).to_owned())
        }
        [db, "_design", ..] if !read => Need::DbAdmin((*db).to_owned()),
        [db, ..] => Need::Member((*db).to_owned()),
    }
}

fn refuse(user: &UserCtx, reason: &str) -> ApiError {
    match refusal(user) {
        Refusal::Unauthorized => {
            ApiError::Unauthorized("You are not authorized to access this db.".into())
        }
        Refusal::Forbidden => ApiError::Forbidden(reason.to_owned()),
    }
}

/// A database's security object: the stored one, or the configured default.
pub async fn security(state: &AppState, db: &str) -> Result<Security, ApiError> {
    let (generation, cached) = state.auth.cached_security(db);
    if let Some(security) = cached {
        return Ok(security);
    }
    let security = match state.store.security(db).await? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| ApiError::Internal(format!("stored _security of {db}: {e}")))?,
        None => default_security(state, db),
    };
    state.auth.cache_security(generation, db, security.clone());
    Ok(security)
}

/// The security a database without a stored one has.
pub fn default_security(state: &AppState, db: &str) -> Security {
    if db.starts_with('_') {
        return Security::admin_only();
    }
    match state.auth.settings.default_security {
        DefaultSecurity::AdminOnly => Security::admin_only(),
        DefaultSecurity::Everyone => Security::default(),
    }
}

/// What `user` is to `db`; a missing database answers 404 for members' routes, as in CouchDB.
pub async fn level(state: &AppState, user: &UserCtx, db: &str) -> Result<Level, ApiError> {
    outpost_core::names::validate_db_name(db)?;
    if user.is_server_admin() {
        return Ok(Level::ServerAdmin);
    }
    Ok(security(state, db).await?.level(user))
}

/// Checks the request's user against what the route needs; gives the user's level on the
/// route's database, if it has one.
pub async fn check(
    state: &AppState,
    user: &UserCtx,
    need: &Need,
) -> Result<Option<Level>, ApiError> {
    match need {
        Need::Anyone => Ok(None),
        Need::SignedIn if user.name.is_some() || user.is_server_admin() => Ok(None),
        Need::SignedIn => Err(refuse(user, "You must be signed in.")),
        Need::ServerAdmin if user.is_server_admin() => Ok(Some(Level::ServerAdmin)),
        Need::ServerAdmin => Err(refuse(user, "You are not a server admin.")),
        Need::Member(db) => {
            let level = level(state, user, db).await?;
            if level >= Level::Member {
                Ok(Some(level))
            } else {
                Err(refuse(user, "You are not allowed to access this db."))
            }
        }
        Need::DbAdmin(db) => {
            let level = level(state, user, db).await?;
            if level >= Level::DbAdmin {
                Ok(Some(level))
            } else {
                Err(refuse(user, "You are not a db or server admin."))
            }
        }
        Need::UserDoc { id, write } => {
            let level = level(state, user, USERS_DB).await?;
            if level >= Level::DbAdmin {
                return Ok(Some(level));
            }
            // Owners reach their own document; with public sign-up, anyone may try to create
            // one (the write checks that it is new and has no roles).
            let own = user
                .name
                .as_ref()
                .is_some_and(|n| id.strip_prefix(USER_PREFIX) == Some(n.as_str()));
            if own || (*write && state.auth.settings.public_signup) {
                return Ok(Some(Level::Member));
            }
            Err(refuse(
                user,
                "You may only read and update your own user document.",
            ))
        }
    }
}

/// Refuses a member's write of a design document (CouchDB: only database admins).
pub fn check_doc_write(level: Option<Level>, id: &str) -> Result<(), ApiError> {
    if id.starts_with("_design/") && level.is_some_and(|l| l < Level::DbAdmin) {
        return Err(ApiError::Forbidden(
            "You are not a db or server admin.".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_needs() {
        let cases: &[(&Method, &[&str], Need)] = &[
            (&Method::GET, &[], Need::Anyone),
            (&Method::GET, &["_all_dbs"], Need::ServerAdmin),
            (&Method::PUT, &["db"], Need::ServerAdmin),
            (&Method::GET, &["db"], Need::Member("db".into())),
            (
                &Method::PUT,
                &["db", "_security"],
                Need::DbAdmin("db".into()),
            ),
            (
                &Method::GET,
                &["db", "_security"],
                Need::Member("db".into()),
            ),
            (
                &Method::PUT,
                &["db", "_design", "x"],
                Need::DbAdmin("db".into()),
            ),
            (
                &Method::GET,
                &["db", "_design", "x"],
                Need::Member("db".into()),
            ),
            (
                &Method::POST,
                &["db", "_compact"],
                Need::DbAdmin("db".into()),
            ),
            (&Method::POST, &["db", "_purge"], Need::DbAdmin("db".into())),
            (
                &Method::PUT,
                &["db", "_purged_infos_limit"],
                Need::DbAdmin("db".into()),
            ),
            (
                &Method::GET,
                &["db", "_purged_infos_limit"],
                Need::Member("db".into()),
            ),
            (
                &Method::GET,
                &["_node", "_local", "_stats", "couchdb"],
                Need::ServerAdmin,
            ),
            (&Method::GET, &["_replicator", "x"], Need::ServerAdmin),
            (
                &Method::GET,
                &["_users", "org.couchdb.user:bob"],
                Need::UserDoc {
                    id: "org.couchdb.user:bob".into(),
                    write: false,
                },
            ),
            (
                &Method::GET,
                &["_users", "_all_docs"],
                Need::Member("_users".into()),
            ),
            (&Method::POST, &["_replicate"], Need::SignedIn),
        ];
        for (method, segs, expected) in cases {
            assert_eq!(&need(method, segs), expected, "{method} {segs:?}");
        }
    }
}
