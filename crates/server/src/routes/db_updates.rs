//! `GET /_db_updates`: the server's databases as they are created, changed and deleted, each
//! listed once at its latest event, in every feed format `_changes` has (`normal`, `longpoll`,
//! `continuous`, `eventsource`), with `since` (a sequence or `now`), `limit`, `timeout` and
//! `heartbeat`.

use axum::response::Response;
use http::Method;

use super::changes::{DEFAULT_TIMEOUT, ms, parse_heartbeat, parse_kind, parse_since, since_param};
use super::not_allowed;
use crate::docjson::RenderOpts;
use crate::feed::{FeedOpts, Filter, Source, respond};
use crate::request::Req;
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(not_allowed("Only GET,HEAD allowed"));
    }
    let kind = parse_kind(req)?;
    let current = *state.store.watch_db_updates().borrow();
    let since = match since_param(req, kind) {
        Some(raw) => parse_since(&raw, current)?,
        None => 0,
    };
    let opts = FeedOpts {
        source: Source::DbUpdates,
        kind,
        since,
        limit: req.query.u64("limit")?,
        descending: false,
        all_leaves: false,
        include_docs: false,
        render: RenderOpts::default(),
        filter: Filter::All,
        heartbeat: parse_heartbeat(req)?,
        timeout: ms(req, "timeout")?.unwrap_or(DEFAULT_TIMEOUT),
        reader: None,
    };
    Ok(respond(state, String::new(), opts))
}
