//! `GET /_db_updates`: the server's databases as they are created, changed and deleted, each
//! listed once at its latest event, in every feed format `_changes` has (`normal`, `longpoll`,
//! `continuous`, `eventsource`), with `since` (a sequence or `now`), `limit`, `timeout` and
//! `heartbeat`.

use axum::response::Response;
use http::Method;

use super::changes::{DEFAULT_TIMEOUT, ms, parse_heartbeat, parse_kind, since_param};
use super::not_allowed;
use crate::docjson::RenderOpts;
use crate::feed::{FeedOpts, Filter, Source, respond};
use crate::request::Req;
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

pub async fn handle(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(not_allowed("Only GET,HEAD allowed"));
    }
    let kind = parse_kind(req)?;
    let current = *state.store.watch_db_updates().borrow();
    // The server-wide sequence belongs to the store, named by its uuid.
    let incarnation = Incarnation::of_server(state.store.server_uuid());
    let since = match since_param(req, kind) {
        Some(raw) => incarnation.since(&raw, current)?,
        None => 0,
    };
    let opts = FeedOpts {
        source: Source::DbUpdates,
        kind,
        since,
        incarnation,
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
