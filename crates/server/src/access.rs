//! Per-document access in the server (databases created with `PUT /{db}?access=true`): who
//! reads through the access index, what a document is for them, and which writes a member may
//! make. The decisions are `outpost_auth::access`'s; the index is the store's
//! ([`outpost_store::Store::doc_access`] and friends). Every read path that can reveal a
//! document asks [`reader`] first: with `None` it reads as before; with a reader, documents
//! are what [`see`] says, and the changes feed comes from the reader's part of the index
//! (`feed.rs`).

use outpost_auth::access::{can_write_doc, principals};
use outpost_auth::{Level, UserCtx};
use outpost_core::Rev;
use outpost_store::{DocAccess, DocRecord, DocUpdate, StoredBody};

use crate::docjson::{RenderOpts, Rendered, render_parts};
use crate::request::Req;
use crate::routes::doc::OpenRev;
use crate::{ApiError, AppState};

/// A member of a database with per-document access, reading it: their principals (name and
/// roles), which the winner's `_access` list must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub principals: Vec<String>,
}

/// Whether `db` was created with per-document access (cached; the flag never changes).
pub async fn is_access_db(state: &AppState, db: &str) -> Result<bool, ApiError> {
    let (generation, cached) = state.auth.cached_access(db);
    if let Some(access) = cached {
        return Ok(access);
    }
    let access = state.store.db_info(db).await?.access;
    state.auth.cache_access(generation, db, access);
    Ok(access)
}

/// The reader `user` at `level` is on `db`: `None` when they read everything (the database has
/// no per-document access, or they are one of its admins or a server admin).
pub async fn reader_for(
    state: &AppState,
    user: &UserCtx,
    level: Option<Level>,
    db: &str,
) -> Result<Option<Reader>, ApiError> {
    if user.is_server_admin() || level.is_some_and(|l| l >= Level::DbAdmin) {
        return Ok(None);
    }
    if !is_access_db(state, db).await? {
        return Ok(None);
    }
    Ok(Some(Reader {
        principals: principals(user),
    }))
}

/// The reader the request's user is on `db` (see [`reader_for`]).
pub async fn reader(state: &AppState, req: &Req, db: &str) -> Result<Option<Reader>, ApiError> {
    reader_for(state, &req.user, req.level, db).await
}

/// A document as one reader sees it.
#[derive(Debug)]
pub enum Seen {
    /// It does not exist for them (or at all).
    Hidden,
    /// They read it whole.
    Full(DocRecord),
    /// It was taken from them: only the path to the revision that did, deleted (see
    /// [`DocAccess::Revoked`]); that revision's body is a bare tombstone.
    Revoked(DocRecord),
}

impl Seen {
    /// The record to show: the whole one, or the revoked path.
    pub fn record(self) -> Option<DocRecord> {
        match self {
            Seen::Hidden => None,
            Seen::Full(r) | Seen::Revoked(r) => Some(r),
        }
    }
}

/// What `reader` sees of each record (read with `store.docs`), with one store call.
pub async fn see(
    state: &AppState,
    reader: Option<&Reader>,
    db: &str,
    records: Vec<Option<DocRecord>>,
) -> Result<Vec<Seen>, ApiError> {
    let Some(reader) = reader else {
        return Ok(records
            .into_iter()
            .map(|r| r.map_or(Seen::Hidden, Seen::Full))
            .collect());
    };
    let ids: Vec<String> = records.iter().flatten().map(|r| r.id.clone()).collect();
    let mut access = if ids.is_empty() {
        Vec::new()
    } else {
        state.store.doc_access(db, &reader.principals, &ids).await?
    }
    .into_iter();
    Ok(records
        .into_iter()
        .map(|record| match record {
            None => Seen::Hidden,
            Some(record) => match access.next() {
                Some(DocAccess::Readable) => Seen::Full(record),
                Some(DocAccess::Revoked(path)) => Seen::Revoked(path),
                Some(DocAccess::Hidden) | None => Seen::Hidden,
            },
        })
        .collect())
}

/// One document as `reader` sees it.
pub async fn see_one(
    state: &AppState,
    reader: Option<&Reader>,
    db: &str,
    record: Option<DocRecord>,
) -> Result<Seen, ApiError> {
    Ok(see(state, reader, db, vec![record])
        .await?
        .pop()
        .unwrap_or(Seen::Hidden))
}

/// A document the request's user reads whole, or CouchDB's 404 (`missing`) when it does not
/// exist for them (also when it was taken away from them): for the routes that read a document
/// before doing anything else with it (attachments, `COPY`).
pub async fn readable_doc(
    state: &AppState,
    req: &Req,
    db: &str,
    id: &str,
) -> Result<DocRecord, ApiError> {
    let record = crate::routes::load_doc(state, db, id).await?;
    let reader = reader(state, req, db).await?;
    match see_one(state, reader.as_ref(), db, Some(record)).await? {
        Seen::Full(record) => Ok(record),
        Seen::Hidden | Seen::Revoked(_) => Err(ApiError::missing()),
    }
}

/// The body of the revision that took a document away from a reader: a bare tombstone.
pub fn revoked_body() -> StoredBody {
    StoredBody {
        deleted: true,
        json: "{}".to_owned(),
    }
}

/// `open_revs` (or a `_bulk_get` item) of a revoked document: the revision that took it away
/// (also what `latest` leads to from its ancestors) is a tombstone; every other revision is
/// missing.
pub async fn revoked_entries(
    state: &AppState,
    db: &str,
    record: &DocRecord,
    wanted: &[Rev],
    latest: bool,
    opts: &RenderOpts,
) -> Result<Vec<OpenRev>, ApiError> {
    let Some(leaf) = record.tree.winner().map(|w| w.rev) else {
        return Ok(wanted.iter().cloned().map(OpenRev::Missing).collect());
    };
    let mut out = Vec::with_capacity(wanted.len());
    for rev in wanted {
        let shown = *rev == leaf || (latest && record.tree.latest(rev).contains(&leaf));
        out.push(if shown {
            OpenRev::Found(revoked_doc(state, db, record, opts).await?)
        } else {
            OpenRev::Missing(rev.clone())
        });
    }
    Ok(out)
}

/// The tombstone a revoked document is for its former reader.
pub async fn revoked_doc(
    state: &AppState,
    db: &str,
    record: &DocRecord,
    opts: &RenderOpts,
) -> Result<Rendered, ApiError> {
    let leaf = record.tree.winner().ok_or_else(ApiError::missing)?.rev;
    let opts = RenderOpts {
        attachments: false,
        ..opts.clone()
    };
    render_parts(
        state,
        db,
        &record.id,
        &record.tree,
        record.seq,
        &leaf,
        &revoked_body(),
        &opts,
    )
    .await
}

/// The `update_seq` a reader is shown: the sequence of the latest row of their own feed, so
/// that writes they cannot see move nothing they see.
pub async fn update_seq(state: &AppState, reader: &Reader, db: &str) -> Result<u64, ApiError> {
    let last = state
        .store
        .access_changes(
            db,
            &reader.principals,
            &outpost_store::ChangesQuery {
                since: u64::MAX,
                limit: 1,
                descending: true,
                include_docs: false,
            },
        )
        .await?;
    Ok(last.first().map_or(0, |row| row.seq))
}

/// Checks writes: `_access` is refused in a database without per-document access, as CouchDB
/// refuses any unknown special member; in one with it, a member's write gets `None` where it may
/// go ahead, 403 where not. A document counts as new when it does not exist or its winner is
/// deleted; otherwise its current `_access` (the winner's) must name the member. A new revision
/// that is not a deletion must name them too (nobody writes what they could not read back).
pub async fn check_writes(
    state: &AppState,
    db: &str,
    user: &UserCtx,
    updates: &[DocUpdate],
) -> Result<Vec<Option<ApiError>>, ApiError> {
    if !is_access_db(state, db).await? {
        return Ok(updates
            .iter()
            .map(|u| {
                u.body
                    .contains_key("_access")
                    .then(|| ApiError::DocValidation("Bad special document member: _access".into()))
            })
            .collect());
    }
    let level = crate::authz::level(state, user, db).await?;
    if reader_for(state, user, Some(level), db).await?.is_none() {
        return Ok(updates.iter().map(|_| None).collect());
    }
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let records = state.store.docs(db, &ids).await?;
    let winners: Vec<(String, Rev)> = records
        .iter()
        .flatten()
        .filter_map(|r| {
            r.tree
                .winner()
                .filter(|w| !w.deleted)
                .map(|w| (r.id.clone(), w.rev))
        })
        .collect();
    let bodies = if winners.is_empty() {
        Vec::new()
    } else {
        state.store.bodies(db, &winners).await?
    };
    let current: std::collections::HashMap<&str, Vec<String>> = winners
        .iter()
        .zip(bodies)
        .map(|((id, _), body)| {
            let list = body
                .map(|b| outpost_store::access_list(&b.json))
                .unwrap_or_default();
            (id.as_str(), list)
        })
        .collect();
    Ok(updates
        .iter()
        .map(|update| {
            let existing = current.get(update.id.as_str()).map(Vec::as_slice);
            let new = if update.deleted {
                // A deletion keeps nothing to read back; being in the current list is enough.
                existing.map(<[String]>::to_vec).unwrap_or_default()
            } else {
                outpost_store::access_names(&update.body)
            };
            if update.deleted && existing.is_none() {
                // Deleting what does not exist (for them) changes nothing they could not see
                // before; the store answers it as it would anyone.
                return None;
            }
            (!can_write_doc(user, level, existing, &new)).then(|| {
                ApiError::Forbidden(
                    "You may only write documents whose _access includes you, and only with an _access that includes you."
                        .into(),
                )
            })
        })
        .collect())
}
