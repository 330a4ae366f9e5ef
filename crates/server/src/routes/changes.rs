//! `/{db}/_changes` (GET, or POST for filters) and `/{db}/_events`.

use std::collections::HashSet;
use std::time::Duration;

use axum::response::Response;
use http::Method;
use outpost_core::Selector;
use serde_json::Value;

use super::not_allowed;
use crate::docjson::RenderOpts;
use crate::feed::{FeedKind, FeedOpts, Filter, Source, respond};
use crate::request::Req;
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

/// CouchDB's default `timeout` of live feeds.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest heartbeat honoured; shorter ones would only burn CPU.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Most `doc_ids` in one filter.
const MAX_DOC_IDS: usize = 100_000;

/// The longest `timeout` or `heartbeat` honoured: a deadline is an instant, and a larger
/// duration would overflow it.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) fn ms(req: &Req, name: &str) -> Result<Option<Duration>, ApiError> {
    Ok(req
        .query
        .u64(name)?
        .map(|ms| Duration::from_millis(ms).min(MAX_WAIT)))
}

pub(crate) fn parse_kind(req: &Req) -> Result<FeedKind, ApiError> {
    match req.query.get("feed").unwrap_or("normal") {
        "normal" => Ok(FeedKind::Normal),
        "longpoll" => Ok(FeedKind::Longpoll),
        "continuous" => Ok(FeedKind::Continuous),
        "eventsource" => Ok(FeedKind::EventSource),
        other => Err(ApiError::bad_request(format!("unknown feed {other:?}"))),
    }
}

/// `since`, or for an event source that reconnects, its `Last-Event-ID`.
pub(crate) fn since_param(req: &Req, kind: FeedKind) -> Option<String> {
    match (
        kind,
        req.headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok()),
    ) {
        (FeedKind::EventSource, Some(id)) => Some(id.to_owned()),
        _ => req.query.get("since").map(str::to_owned),
    }
}

pub(crate) fn parse_heartbeat(req: &Req) -> Result<Option<Duration>, ApiError> {
    match req.query.get("heartbeat") {
        None | Some("false") => Ok(None),
        Some("true") => Ok(Some(DEFAULT_TIMEOUT)),
        Some(_) => Ok(ms(req, "heartbeat")?.map(|d| d.max(MIN_HEARTBEAT))),
    }
}

/// The database's sequence space, and what `since=now` means in it: the database's update
/// sequence, or for a reader of a database with per-document access the latest sequence of
/// their own feed (also a 404 for a missing database).
async fn current_seq(
    state: &AppState,
    db: &str,
    reader: Option<&crate::access::Reader>,
) -> Result<(Incarnation, u64), ApiError> {
    let info = state.store.db_info(db).await?;
    let incarnation = Incarnation::of_db(&info.name, info.created_at);
    let current = match reader {
        Some(reader) => crate::access::update_seq(state, reader, db).await?,
        None => info.update_seq,
    };
    Ok((incarnation, current))
}

pub async fn handle(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    let body = match req.method {
        Method::GET => Value::Null,
        Method::POST => req.json().await?,
        _ => return Err(not_allowed("Only GET,HEAD,POST allowed")),
    };
    let reader = crate::access::reader(state, req, db).await?;
    let (incarnation, current) = current_seq(state, db, reader.as_ref()).await?;
    let q = &req.query;
    let kind = match q.get("feed").unwrap_or("normal") {
        "normal" => FeedKind::Normal,
        "longpoll" => FeedKind::Longpoll,
        "continuous" => FeedKind::Continuous,
        "eventsource" => FeedKind::EventSource,
        other => return Err(ApiError::bad_request(format!("unknown feed {other:?}"))),
    };
    let descending = q.flag("descending")?;
    let since_raw = match (
        kind,
        req.headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok()),
    ) {
        (FeedKind::EventSource, Some(id)) => Some(id.to_owned()),
        _ => q.get("since").map(str::to_owned),
    };
    // CouchDB's descending feed ignores `since` and starts from the newest change; PouchDB
    // sends `since=0` with it.
    let since = match since_raw {
        _ if descending => u64::MAX,
        Some(raw) => incarnation.since(&raw, current)?,
        None => 0,
    };
    let all_leaves = match q.get("style") {
        None | Some("main_only") => false,
        Some("all_docs") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown style {other:?}"))),
    };
    let heartbeat = parse_heartbeat(req)?;
    let timeout = ms(req, "timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    let spec = FilterSpec {
        name: q.get("filter"),
        view: q.get("view"),
        // Read only for the filter that uses them, so a stray parameter is ignored as before.
        doc_ids: match (q.get("filter"), body.get("doc_ids")) {
            (Some("_doc_ids"), Some(ids)) => Some(ids.clone()),
            (Some("_doc_ids"), None) => q.json("doc_ids")?,
            _ => None,
        },
        selector: match (q.get("filter"), body.get("selector")) {
            (Some("_selector"), Some(s)) => Some(s.clone()),
            (Some("_selector"), None) => q.json("selector")?,
            _ => None,
        },
    };
    let filter = build_filter(state, db, &spec, || filter_req(req, db, &body)).await?;
    if descending && kind != FeedKind::Normal {
        return Err(ApiError::bad_request(
            "descending is only supported by the normal feed",
        ));
    }
    let opts = FeedOpts {
        source: Source::Changes,
        kind,
        since,
        incarnation,
        limit: q.u64("limit")?,
        descending,
        all_leaves,
        include_docs: q.flag("include_docs")?,
        render: RenderOpts {
            conflicts: q.flag("conflicts")?,
            attachments: q.flag("attachments")?,
            att_encoding_info: q.flag("att_encoding_info")?,
            ..RenderOpts::default()
        },
        filter,
        heartbeat,
        timeout,
        reader,
    };
    Ok(respond(state, db.to_owned(), opts))
}

/// What a feed request says about its filter, wherever it came from: the query string and body
/// of `_changes`, or a subscription of the multiplexed feed.
#[derive(Debug, Default)]
pub(crate) struct FilterSpec<'a> {
    /// `filter`: `_doc_ids`, `_selector`, `_design`, `_view` or `ddoc/name`.
    pub name: Option<&'a str>,
    /// `view`, for `filter=_view`.
    pub view: Option<&'a str>,
    pub doc_ids: Option<Value>,
    pub selector: Option<Value>,
}

/// The feed filter a request asks for. `fn_req` builds the request object a design-document
/// filter function sees; it is only called for one.
pub(crate) async fn build_filter(
    state: &AppState,
    db: &str,
    spec: &FilterSpec<'_>,
    fn_req: impl FnOnce() -> Value,
) -> Result<Filter, ApiError> {
    match design_filter(state, db, spec, fn_req).await? {
        Some(filter) => Ok(filter),
        None => parse_filter(spec),
    }
}

/// A filter that names a design-document function: the design document, which must hold the
/// function, as CouchDB checks before running it: 404 for a missing design document or
/// function, 400 for `filter=_view` without a `view`.
async fn design_filter(
    state: &AppState,
    db: &str,
    spec: &FilterSpec<'_>,
    fn_req: impl FnOnce() -> Value,
) -> Result<Option<Filter>, ApiError> {
    let (section, name) = match spec.name {
        Some("_view") => match spec.view {
            Some(view) => ("views", view),
            None => {
                return Err(ApiError::bad_request(
                    "`view` filter parameter is not provided.",
                ));
            }
        },
        Some(name) if name.contains('/') => ("filters", name),
        _ => return Ok(None),
    };
    let (ddoc_name, function) = name
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid filter name {name:?}")))?;
    let id = format!("_design/{ddoc_name}");
    let Some(ddoc) = state.design.get(state, db, ddoc_name).await? else {
        // CouchDB's reason: `missing`, or `deleted` for a deleted design document.
        let record = super::load_doc(state, db, &id).await?;
        super::live_winner(&record)?;
        return Err(ApiError::missing());
    };
    let source = match section {
        "views" => ddoc.function(&["views", function, "map"]),
        _ => ddoc.function(&["filters", function]),
    };
    if source.is_none() {
        return Err(ApiError::NotFound(format!("missing json key: {function}")));
    }
    Ok(Some(match section {
        "views" => Filter::View {
            ddoc,
            name: function.to_owned(),
        },
        _ => Filter::Function {
            ddoc,
            name: function.to_owned(),
            req: fn_req(),
        },
    }))
}

/// The request object a filter function sees (CouchDB's `req`): the query parameters, the
/// method, the body and the user context.
pub fn filter_req(req: &Req, db: &str, body: &Value) -> Value {
    serde_json::json!({
        "info": { "db_name": db },
        "method": req.method.as_str(),
        "query": req.query.to_json(),
        "body": if body.is_null() { Value::String("undefined".into()) } else { Value::String(body.to_string()) },
        "userCtx": crate::design::user_ctx(req, db),
        "headers": {},
        "cookie": {},
        "form": {},
        "peer": "127.0.0.1",
    })
}

fn parse_filter(spec: &FilterSpec<'_>) -> Result<Filter, ApiError> {
    match spec.name {
        None => Ok(Filter::All),
        Some("_doc_ids") => {
            let ids = spec.doc_ids.as_ref().ok_or_else(|| {
                ApiError::bad_request("filter=_doc_ids needs doc_ids in the query or the body")
            })?;
            let ids = ids
                .as_array()
                .ok_or_else(|| ApiError::bad_request("doc_ids must be an array of strings"))?;
            if ids.len() > MAX_DOC_IDS {
                return Err(ApiError::TooLarge(format!("at most {MAX_DOC_IDS} doc_ids")));
            }
            let ids: HashSet<String> = ids
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ApiError::bad_request("doc_ids must be an array of strings"))
                })
                .collect::<Result<_, _>>()?;
            Ok(Filter::DocIds(ids))
        }
        Some("_selector") => {
            let selector = spec.selector.as_ref().ok_or_else(|| {
                ApiError::bad_request("filter=_selector needs a selector in the body")
            })?;
            let selector =
                Selector::parse(selector).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(Filter::Selector(selector))
        }
        Some("_design") => Ok(Filter::Design),
        Some(other) => Err(ApiError::bad_request(format!("unknown filter {other:?}"))),
    }
}

/// `GET /{db}/_events`: the immutable log of accepted revisions, oldest first, in the same feed
/// formats as `_changes`.
pub async fn events(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET,HEAD allowed"));
    }
    let reader = crate::access::reader(state, req, db).await?;
    let (incarnation, current) = current_seq(state, db, reader.as_ref()).await?;
    let q = &req.query;
    let kind = parse_kind(req)?;
    let since = match since_param(req, kind) {
        Some(raw) => incarnation.since(&raw, current)?,
        None => 0,
    };
    let opts = FeedOpts {
        source: Source::Events {
            doc_id: q.get("doc_id").map(str::to_owned),
        },
        kind,
        since,
        incarnation,
        limit: q.u64("limit")?,
        descending: false,
        all_leaves: false,
        include_docs: q.flag("include_docs")?,
        render: RenderOpts::default(),
        filter: Filter::All,
        heartbeat: parse_heartbeat(req)?,
        timeout: ms(req, "timeout")?.unwrap_or(DEFAULT_TIMEOUT),
        reader,
    };
    Ok(respond(state, db.to_owned(), opts))
}
