//! `/{db}/_all_docs`: live documents in id order, streamed page by page, or the rows of given
//! `keys`.

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_core::Rev;
use outpost_store::{AllDocsQuery, DocRecord, DocRow, StoredBody};
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::docjson::{RenderOpts, Rendered, render_parts};
use crate::request::Req;
use crate::seq::Incarnation;
use crate::stream;
use crate::{ApiError, AppState};

/// Rows read from the store per page.
const PAGE: u64 = 1000;
/// Rows read per page when their bodies come too: a bound on the bodies held at once.
const DOC_PAGE: u64 = 64;
/// Most `keys` in one request.
const MAX_KEYS: usize = 100_000;
/// Up to how many rows before a `startkey` the `offset` is counted; beyond, it is `null`
/// (counting further would cost time in proportion to the database on every page).
const OFFSET_COUNTED_UP_TO: u64 = 10_000;
/// Rows of a `keys` request whose bodies are read with one store call: a bound on the bodies
/// held at once, whatever the number of keys.
const BODY_GROUP: usize = 16;

/// Where a JSON key falls among document ids. CouchDB collates null, booleans and numbers before
/// every string, and arrays and objects after.
enum Bound {
    BeforeAll,
    At(String),
    AfterAll,
}

fn bound(key: &Value) -> Bound {
    match key {
        Value::String(s) => Bound::At(s.clone()),
        Value::Array(_) | Value::Object(_) => Bound::AfterAll,
        _ => Bound::BeforeAll,
    }
}

struct Opts {
    include_docs: bool,
    render: RenderOpts,
}

/// Which documents a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `_all_docs`: every live document.
    All,
    /// `_design_docs`: design documents only.
    Design,
}

/// The ids of design documents are in `[DESIGN_START, DESIGN_END)`.
const DESIGN_START: &str = "_design/";
const DESIGN_END: &str = "_design0";

/// Narrows a range (`start`, `end` in the direction of the listing) to design document ids.
fn clamp_to_design(query: &mut AllDocsQuery) {
    let (lower, lower_incl, upper, upper_incl) = if query.descending {
        (
            &mut query.end,
            &mut query.end_inclusive,
            &mut query.start,
            &mut query.start_inclusive,
        )
    } else {
        (
            &mut query.start,
            &mut query.start_inclusive,
            &mut query.end,
            &mut query.end_inclusive,
        )
    };
    if lower.as_deref().is_none_or(|l| l < DESIGN_START) {
        *lower = Some(DESIGN_START.to_owned());
        *lower_incl = true;
    }
    if upper.as_deref().is_none_or(|u| u >= DESIGN_END) {
        *upper = Some(DESIGN_END.to_owned());
        *upper_incl = false;
    }
}

pub async fn handle(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    list(state, db, req, Scope::All).await
}

/// `/{db}/_design_docs`: `_all_docs` over design documents; `total_rows` counts them.
pub async fn design_docs(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    list(state, db, req, Scope::Design).await
}

async fn list(
    state: &AppState,
    db: &str,
    req: &mut Req,
    scope: Scope,
) -> Result<Response, ApiError> {
    let body = match req.method {
        Method::GET => Value::Null,
        Method::POST => req.json().await?,
        _ => return Err(not_allowed("Only GET,HEAD,POST allowed")),
    };
    let reader = crate::access::reader(state, req, db).await?;
    let q = &req.query;
    let mut info = state.store.db_info(db).await?;
    if let Some(reader) = &reader {
        // `total_rows` and `update_seq` of what the reader can see.
        info.doc_count = state
            .store
            .access_counts(db, &reader.principals)
            .await?
            .doc_count;
        info.update_seq = crate::access::update_seq(state, reader, db).await?;
    }
    if scope == Scope::Design {
        let mut all = AllDocsQuery {
            limit: u64::MAX,
            ..AllDocsQuery::default()
        };
        clamp_to_design(&mut all);
        info.doc_count = page(state, db, reader.as_ref(), &all).await?.len() as u64;
    }
    let opts = Opts {
        include_docs: q.flag("include_docs")?,
        render: RenderOpts {
            conflicts: q.flag("conflicts")?,
            attachments: q.flag("attachments")?,
            att_encoding_info: q.flag("att_encoding_info")?,
            ..RenderOpts::default()
        },
    };
    let descending = q.flag("descending")?;
    let limit = q.u64("limit")?.unwrap_or(u64::MAX);
    let skip = q.u64("skip")?.unwrap_or(0);
    // The sequence as JSON text, spliced in after the rows.
    let update_seq = q.flag("update_seq")?.then(|| {
        Incarnation::of_db(&info.name, info.created_at)
            .seq(info.update_seq)
            .json()
    });
    let keys = match body.get("keys") {
        Some(k) => Some(k.clone()),
        None => q.json("keys")?,
    };
    if let Some(keys) = keys {
        if q.get("key").is_some() {
            return Err(ApiError::QueryParse(
                "`keys` is incompatible with `key`".into(),
            ));
        }
        let keys = keys
            .as_array()
            .ok_or_else(|| ApiError::bad_request("`keys` must be an array"))?;
        if keys.len() > MAX_KEYS {
            return Err(ApiError::TooLarge(format!(
                "at most {MAX_KEYS} keys per request"
            )));
        }
        return by_keys(
            state,
            db,
            reader.as_ref(),
            keys,
            opts,
            info.doc_count,
            skip,
            limit,
            descending,
            update_seq,
        )
        .await;
    }

    let key = q.json("key")?;
    let start = key.clone().or(q.json_any(&["startkey", "start_key"])?);
    let end = key.or(q.json_any(&["endkey", "end_key"])?);
    let inclusive_end = q.bool("inclusive_end")?.unwrap_or(true);
    // In id order, `start` is the lower bound when ascending and the upper one when descending.
    let mut query = AllDocsQuery {
        start_inclusive: true,
        end_inclusive: inclusive_end,
        descending,
        limit: limit.min(PAGE),
        skip,
        include_docs: opts.include_docs,
        ..AllDocsQuery::default()
    };
    let mut empty = false;
    match start.as_ref().map(bound) {
        None => {}
        Some(Bound::At(s)) => query.start = Some(s),
        Some(Bound::BeforeAll) => empty |= descending,
        Some(Bound::AfterAll) => empty |= !descending,
    }
    match end.as_ref().map(bound) {
        None => {}
        Some(Bound::At(s)) => query.end = Some(s),
        Some(Bound::BeforeAll) => empty |= !descending,
        Some(Bound::AfterAll) => empty |= descending,
    }
    let user_start = query.start.clone();
    if scope == Scope::Design {
        clamp_to_design(&mut query);
    }
    // Without a start key the rows before the first one are the skipped ones; with one, they
    // are counted, but only so far (design documents: those of the design range only).
    let offset = match &user_start {
        // Counting the rows before a key would count documents a reader cannot see.
        Some(_) if reader.is_some() => None,
        Some(s) if !empty && scope == Scope::Design => {
            let edge = if descending { DESIGN_END } else { DESIGN_START };
            let before = state
                .store
                .count_before(db, s, descending, OFFSET_COUNTED_UP_TO)
                .await?;
            let outside = state
                .store
                .count_before(db, edge, descending, OFFSET_COUNTED_UP_TO)
                .await?;
            before
                .zip(outside)
                .map(|(b, o)| b.saturating_sub(o).saturating_add(skip))
        }
        Some(s) if !empty => state
            .store
            .count_before(db, s, descending, OFFSET_COUNTED_UP_TO)
            .await?
            .map(|before| before.saturating_add(skip)),
        _ => Some(skip),
    };
    let offset = match offset {
        Some(n) => n.min(info.doc_count).to_string(),
        None => "null".to_owned(),
    };
    let head = format!(
        "{{\"total_rows\":{},\"offset\":{offset},\"rows\":[\n",
        info.doc_count
    );
    let tail = match update_seq {
        Some(seq) => format!("\n],\n\"update_seq\":{seq}}}\n"),
        None => "\n]}\n".to_owned(),
    };
    if empty {
        return Ok(ok(format!("{head}{tail}")));
    }
    let state2 = state.clone();
    let db = db.to_owned();
    Ok(stream::respond(
        state,
        StatusCode::OK,
        move |mut out| async move {
            out.write(&head).await?;
            let mut remaining = limit;
            let mut first = true;
            while remaining > 0 {
                query.limit = remaining.min(if opts.include_docs { DOC_PAGE } else { PAGE });
                let rows = page(&state2, &db, reader.as_ref(), &query).await?;
                let done = (rows.len() as u64) < query.limit;
                remaining -= rows.len() as u64;
                // Later pages continue after the last id, exclusive, without skipping again.
                query.skip = 0;
                if let Some(last) = rows.last() {
                    query.start = Some(last.id.clone());
                    query.start_inclusive = false;
                }
                for row in rows {
                    if !first {
                        out.write(",\n").await?;
                    }
                    first = false;
                    render_row(&state2, &db, &opts, row)
                        .await?
                        .write(&state2, &mut out)
                        .await?;
                }
                if done {
                    break;
                }
            }
            out.write(&tail).await?;
            Ok(out)
        },
    ))
}

/// One page of the listing: for a reader of a database with per-document access, from their
/// part of the access index (only what they may read, `skip` counting only that).
async fn page(
    state: &AppState,
    db: &str,
    reader: Option<&crate::access::Reader>,
    query: &AllDocsQuery,
) -> Result<Vec<DocRow>, ApiError> {
    Ok(match reader {
        Some(reader) => {
            state
                .store
                .access_all_docs(db, &reader.principals, query)
                .await?
        }
        None => state.store.all_docs(db, query).await?,
    })
}

async fn render_row(
    state: &AppState,
    db: &str,
    opts: &Opts,
    row: DocRow,
) -> Result<Rendered, ApiError> {
    let winner = row
        .tree
        .winner()
        .ok_or_else(|| ApiError::Internal(format!("{} has no revision", row.id)))?;
    let id = Value::String(row.id.clone());
    let mut out = Rendered::text(format!(
        "{{\"id\":{id},\"key\":{id},\"value\":{{\"rev\":\"{}\"}}",
        winner.rev
    ));
    if opts.include_docs {
        crate::observe::documents_read(1);
        out.push(",\"doc\":");
        match row.body {
            Some(json) => {
                let body = StoredBody {
                    deleted: false,
                    json,
                };
                out.append(
                    render_parts(
                        state,
                        db,
                        &row.id,
                        &row.tree,
                        row.seq,
                        &winner.rev,
                        &body,
                        &opts.render,
                    )
                    .await?,
                );
            }
            None => out.push("null"),
        }
    }
    out.push("}");
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn by_keys(
    state: &AppState,
    db: &str,
    reader: Option<&crate::access::Reader>,
    keys: &[Value],
    opts: Opts,
    total_rows: u64,
    skip: u64,
    limit: u64,
    descending: bool,
    update_seq: Option<String>,
) -> Result<Response, ApiError> {
    let ordered: Box<dyn Iterator<Item = &Value> + Send> = if descending {
        Box::new(keys.iter().rev())
    } else {
        Box::new(keys.iter())
    };
    let keys: Vec<Value> = ordered
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .cloned()
        .collect();
    // The trees of every key that can be an id, read before the answer starts so that a
    // missing database is still a 404; the bodies are read while the answer is written.
    let ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let records = state.store.docs(db, &ids).await?;
    // For a reader, a hidden document is `not_found` and one taken away from them deleted.
    let mut records = crate::access::see(state, reader, db, records)
        .await?
        .into_iter()
        .map(crate::access::Seen::record);
    let found: Vec<Option<DocRecord>> = keys
        .iter()
        .map(|k| k.as_str().and_then(|_| records.next().flatten()))
        .collect();
    let state2 = state.clone();
    let db = db.to_owned();
    Ok(stream::respond(
        state,
        StatusCode::OK,
        move |mut out| async move {
            let state = state2;
            out.write(&format!(
                "{{\"total_rows\":{total_rows},\"offset\":{skip},\"rows\":[\n"
            ))
            .await?;
            let mut first = true;
            let mut rows = keys.into_iter().zip(found);
            loop {
                let group: Vec<(Value, Option<DocRecord>)> =
                    rows.by_ref().take(BODY_GROUP).collect();
                if group.is_empty() {
                    break;
                }
                let live: Vec<(String, Rev)> = group
                    .iter()
                    .filter_map(|(_, r)| r.as_ref())
                    .filter_map(|r| {
                        r.tree
                            .winner()
                            .filter(|w| !w.deleted)
                            .map(|w| (r.id.clone(), w.rev))
                    })
                    .collect();
                let mut bodies = if opts.include_docs && !live.is_empty() {
                    crate::observe::documents_read(live.len());
                    state
                        .store
                        .bodies(&db, &live)
                        .await
                        .map_err(ApiError::from)?
                        .into_iter()
                } else {
                    Vec::new().into_iter()
                };
                for (key, record) in group {
                    if !first {
                        out.write(",\n").await?;
                    }
                    first = false;
                    let Some((record, winner)) =
                        record.and_then(|r| r.tree.winner().map(|w| (r, w)))
                    else {
                        out.write(&json!({ "key": key, "error": "not_found" }).to_string())
                            .await?;
                        continue;
                    };
                    if winner.deleted {
                        let mut row = json!({ "id": record.id, "key": key, "value": { "rev": winner.rev.to_string(), "deleted": true } });
                        if opts.include_docs {
                            row["doc"] = Value::Null;
                        }
                        out.write(&row.to_string()).await?;
                        continue;
                    }
                    let body = if opts.include_docs {
                        bodies.next().flatten().map(|b| b.json)
                    } else {
                        None
                    };
                    let row = DocRow {
                        id: record.id,
                        seq: record.seq,
                        tree: record.tree,
                        body,
                    };
                    render_row(&state, &db, &opts, row)
                        .await?
                        .write(&state, &mut out)
                        .await?;
                }
            }
            out.write("\n]").await?;
            if let Some(seq) = &update_seq {
                out.write(&format!(",\"update_seq\":{seq}")).await?;
            }
            out.write("}").await?;
            Ok(out)
        },
    ))
}
