//! `/{db}/_all_docs`: live documents in id order, streamed page by page, or the rows of given
//! `keys`.

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::Method;
use outpost_core::Rev;
use outpost_store::{AllDocsQuery, DocRecord, DocRow, StoredBody};
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::dispatch::Req;
use crate::docjson::{RenderOpts, render};
use crate::{ApiError, AppState};

/// Rows read from the store per page.
const PAGE: u64 = 1000;
/// Most `keys` in one request.
const MAX_KEYS: usize = 100_000;
/// Up to how many rows before a `startkey` the `offset` is counted; beyond, it is `null`
/// (counting further would cost time in proportion to the database on every page).
const OFFSET_COUNTED_UP_TO: u64 = 10_000;

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

pub async fn handle(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    let body = match req.method {
        Method::GET => Value::Null,
        Method::POST => req.json().await?,
        _ => return Err(not_allowed("Only GET,HEAD,POST allowed")),
    };
    let q = &req.query;
    let info = state.store.db_info(db).await?;
    let opts = Opts {
        include_docs: q.flag("include_docs")?,
        render: RenderOpts {
            conflicts: q.flag("conflicts")?,
            attachments: q.flag("attachments")?,
            ..RenderOpts::default()
        },
    };
    let descending = q.flag("descending")?;
    let limit = q.u64("limit")?.unwrap_or(u64::MAX);
    let skip = q.u64("skip")?.unwrap_or(0);
    let update_seq = q.flag("update_seq")?.then_some(info.update_seq);
    let keys = match body.get("keys") {
        Some(k) => Some(k.clone()),
        None => q.json("keys")?,
    };
    if let Some(keys) = keys {
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
            keys,
            &opts,
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
    // Without a start key the rows before the first one are the skipped ones; with one, they
    // are counted, but only so far.
    let offset = match &query.start {
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
    let pages = Pages {
        state: state.clone(),
        db: db.to_owned(),
        query,
        remaining: limit,
        opts,
        first: true,
        done: false,
    };
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
        .chain(futures::stream::unfold(pages, next_page))
        .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
    let mut response = ok(String::new());
    *response.body_mut() = Body::from_stream(stream);
    Ok(response)
}

use futures::StreamExt;

/// The state of a streamed `_all_docs`.
struct Pages {
    state: AppState,
    db: String,
    query: AllDocsQuery,
    remaining: u64,
    opts: Opts,
    first: bool,
    done: bool,
}

async fn next_page(mut p: Pages) -> Option<(Result<Bytes, std::io::Error>, Pages)> {
    if p.done || p.remaining == 0 {
        return None;
    }
    p.query.limit = p.remaining.min(PAGE);
    let rows = match p.state.store.all_docs(&p.db, &p.query).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(db = %p.db, error = %e, "_all_docs failed mid-stream");
            p.done = true;
            return Some((Err(std::io::Error::other("all_docs failed")), p));
        }
    };
    p.done = (rows.len() as u64) < p.query.limit;
    p.remaining -= rows.len() as u64;
    // Later pages continue after the last id, exclusive, without skipping again.
    p.query.skip = 0;
    if let Some(last) = rows.last() {
        p.query.start = Some(last.id.clone());
        p.query.start_inclusive = false;
    }
    let mut text = String::new();
    for row in rows {
        match render_row(&p.state, &p.db, &p.opts, row).await {
            Ok(row) => {
                if !p.first {
                    text.push_str(",\n");
                }
                p.first = false;
                text.push_str(&row);
            }
            Err(e) => {
                tracing::warn!(db = %p.db, error = %e, "_all_docs row failed");
                p.done = true;
                return Some((Err(std::io::Error::other("all_docs failed")), p));
            }
        }
    }
    Some((Ok(Bytes::from(text)), p))
}

async fn render_row(
    state: &AppState,
    db: &str,
    opts: &Opts,
    row: DocRow,
) -> Result<String, ApiError> {
    let winner = row
        .tree
        .winner()
        .ok_or_else(|| ApiError::Internal(format!("{} has no revision", row.id)))?;
    let id = Value::String(row.id.clone());
    let mut text = format!(
        "{{\"id\":{id},\"key\":{id},\"value\":{{\"rev\":\"{}\"}}",
        winner.rev
    );
    if opts.include_docs {
        crate::observe::documents_read(1);
        let doc = match row.body {
            Some(json) => {
                let body = StoredBody {
                    deleted: false,
                    json,
                };
                render(
                    state,
                    db,
                    &row.id,
                    &row.tree,
                    row.seq,
                    &winner.rev,
                    &body,
                    &opts.render,
                )
                .await?
            }
            None => "null".to_owned(),
        };
        text.push_str(",\"doc\":");
        text.push_str(&doc);
    }
    text.push('}');
    Ok(text)
}

#[allow(clippy::too_many_arguments)]
async fn by_keys(
    state: &AppState,
    db: &str,
    keys: &[Value],
    opts: &Opts,
    total_rows: u64,
    skip: u64,
    limit: u64,
    descending: bool,
    update_seq: Option<u64>,
) -> Result<Response, ApiError> {
    let ordered: Box<dyn Iterator<Item = &Value> + Send> = if descending {
        Box::new(keys.iter().rev())
    } else {
        Box::new(keys.iter())
    };
    let keys: Vec<&Value> = ordered
        .skip(skip as usize)
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    // Two reads for the whole request, each from one snapshot: the trees of every key that can
    // be an id, then the winners' bodies of the live ones.
    let ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let mut records = state.store.docs(db, &ids).await?.into_iter();
    let found: Vec<Option<DocRecord>> = keys
        .iter()
        .map(|k| k.as_str().and_then(|_| records.next().flatten()))
        .collect();
    let live: Vec<(String, Rev)> = found
        .iter()
        .flatten()
        .filter_map(|r| {
            r.tree
                .winner()
                .filter(|w| !w.deleted)
                .map(|w| (r.id.clone(), w.rev))
        })
        .collect();
    let mut bodies = if opts.include_docs {
        crate::observe::documents_read(live.len());
        state.store.bodies(db, &live).await?.into_iter()
    } else {
        Vec::new().into_iter()
    };
    let mut rows = Vec::with_capacity(keys.len());
    for (key, record) in keys.into_iter().zip(found) {
        let Some((record, winner)) = record.and_then(|r| r.tree.winner().map(|w| (r, w))) else {
            rows.push(json!({ "key": key, "error": "not_found" }).to_string());
            continue;
        };
        if winner.deleted {
            let mut row = json!({ "id": record.id, "key": key, "value": { "rev": winner.rev.to_string(), "deleted": true } });
            if opts.include_docs {
                row["doc"] = Value::Null;
            }
            rows.push(row.to_string());
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
        rows.push(render_row(state, db, opts, row).await?);
    }
    let mut text = format!(
        "{{\"total_rows\":{total_rows},\"offset\":{skip},\"rows\":[\n{}\n]",
        rows.join(",\n")
    );
    if let Some(seq) = update_seq {
        text.push_str(&format!(",\"update_seq\":{seq}"));
    }
    text.push('}');
    Ok(ok(text))
}
