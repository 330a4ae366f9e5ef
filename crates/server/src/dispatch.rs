//! Routing on the raw request path.
//!
//! Each `/`-separated segment of the raw path is percent-decoded on its own, so `a%2Fb` is one
//! segment `a/b` (PouchDB encodes every id with `encodeURIComponent`) while `_design/x` and
//! `_local/x` arrive as two segments (PouchDB keeps their slash). Database names may contain `/`
//! too, always encoded.

use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;
use outpost_core::names::{DocKind, classify_doc_id, validate_db_name};
use percent_encoding::percent_decode_str;

use crate::query::Query;
use crate::request::{MAX_DOC_ID_BYTES, Req};
use crate::routes::{
    all_docs, attachment, bulk, changes, conflicts, db, db_updates, doc, find, local, node, ops,
    server,
};
use crate::{ApiError, AppState};

/// The entry point of every request.
pub async fn handle(State(state): State<AppState>, request: Request) -> Response {
    match route(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("request path is not valid percent-encoded UTF-8"))
}

async fn route(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let mut segments: Vec<String> = raw_path
        .split('/')
        .skip(1)
        .map(decode)
        .collect::<Result<_, _>>()?;
    // `/db/` is `/db`, and `/` is the root.
    if segments.last().is_some_and(String::is_empty) {
        segments.pop();
    }
    // CouchDB lets a client that can only send POST name the method it means.
    let method = match parts
        .headers
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
    {
        Some(name) if parts.method == Method::POST => Method::from_bytes(name.trim().as_bytes())
            .map_err(|_| ApiError::bad_request("invalid X-HTTP-Method-Override"))?,
        _ => parts.method.clone(),
    };
    let method = if method == Method::HEAD {
        Method::GET
    } else {
        method
    };
    let source = parts
        .extensions
        .get::<crate::ClientAddr>()
        .map(|a| a.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let identity = crate::auth::identify(state, &parts.headers, &source).await?;
    // Taken out of the request now: the handshake needs the connection's upgrade handle, which
    // only the request's extensions hold.
    let websocket = if wants_websocket(&parts.headers) {
        axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, state)
            .await
            .ok()
    } else {
        None
    };
    let mut req = Req::new(
        method,
        parts.headers,
        Query::parse(parts.uri.query())?,
        body,
        &state.config,
        state.body_budget.clone(),
    );
    if let Some(upgrade) = websocket {
        req.set_websocket(upgrade);
    }
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    req.user = identity.user;
    req.authenticated = identity.method.map(crate::auth::Method::name);
    req.source = source;
    let need = crate::authz::need(&req.method, &segs);
    req.level = crate::authz::check(state, &req.user, &need).await?;
    let mut response = dispatch(state, &segs, &mut req).await?;
    if let Some(cookie) = identity.set_cookie {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    Ok(response)
}

fn wants_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn dispatch(state: &AppState, segs: &[&str], req: &mut Req) -> Result<Response, ApiError> {
    match segs {
        [] => server::root(state, req).await,
        ["_up"] => server::up(req),
        ["_all_dbs"] => server::all_dbs(state, req).await,
        ["_db_updates"] => db_updates::handle(state, req).await,
        ["_dbs_info"] => server::dbs_info(state, req).await,
        ["_membership"] => node::membership(req),
        ["_node", name, rest @ ..] => node::route(state, name, rest, req).await,
        ["_uuids"] => server::uuids(req),
        ["_session"] => crate::routes::session::handle(state, req).await,
        ["_replicate"] => crate::routes::replicate::handle(state, req).await,
        ["_scheduler", "jobs"] => crate::routes::scheduler::jobs(state, req),
        ["_scheduler", "docs"] => crate::routes::scheduler::docs(state, req),
        ["_active_tasks"] => crate::routes::scheduler::active_tasks(state, req),
        ["_outpost", "v1", "feed", rest @ ..] => crate::routes::feed::route(state, rest, req).await,
        ["_outpost", "v1", rest @ ..] => ops::route(state, rest, req).await,
        ["_outpost", "ui", rest @ ..] => crate::routes::console::serve(rest, req),
        ["_outpost", "gateway", rest @ ..] => {
            crate::routes::gateway::forward(state, rest, req).await
        }
        [first, ..] if first.starts_with('_') && validate_db_name(first).is_err() => Err(
            ApiError::bad_request(format!("unknown server endpoint /{first}")),
        ),
        [name] => db::handle(state, name, req).await,
        [name, rest @ ..] => {
            validate_db_name(name)?;
            db_resource(state, name, rest, req).await
        }
    }
}

async fn db_resource(
    state: &AppState,
    db: &str,
    rest: &[&str],
    req: &mut Req,
) -> Result<Response, ApiError> {
    match rest {
        ["_all_docs"] => all_docs::handle(state, db, req).await,
        ["_design_docs"] => all_docs::design_docs(state, db, req).await,
        ["_local_docs"] => local::list(state, db, req).await,
        ["_bulk_docs"] => bulk::bulk_docs(state, db, req).await,
        ["_bulk_get"] => bulk::bulk_get(state, db, req).await,
        ["_revs_diff"] => bulk::revs_diff(state, db, req).await,
        ["_changes"] => changes::handle(state, db, req).await,
        ["_revs_limit"] => db::revs_limit(state, db, req).await,
        ["_purge"] => crate::routes::purge::purge(state, db, req).await,
        ["_purged_infos_limit"] => crate::routes::purge::limit(state, db, req).await,
        ["_security"] => crate::routes::security::handle(state, db, req).await,
        ["_compact"] | ["_compact", _] => db::compact(state, db, req).await,
        ["_ensure_full_commit"] => db::ensure_full_commit(state, db, req).await,
        ["_events"] => changes::events(state, db, req).await,
        ["_find"] => find::find(state, db, req).await,
        ["_explain"] => find::explain(state, db, req).await,
        ["_index"] => find::index(state, db, req).await,
        ["_index", rest @ ..] => find::delete_index(state, db, rest, req).await,
        ["_temp_view"] => Err(ApiError::Gone(
            "Temporary views are not supported in CouchDB".into(),
        )),
        ["_outpost"] => conflicts::settings(state, db, req).await,
        ["_conflicts"] => conflicts::list(state, db, req).await,
        ["_resolve"] => conflicts::resolve(state, db, req).await,
        ["_design", ddoc, "_view", view] => {
            crate::routes::view::handle(state, db, ddoc, view, false, req).await
        }
        ["_design", ddoc, "_view", view, "queries"] => {
            crate::routes::view::handle(state, db, ddoc, view, true, req).await
        }
        ["_design", ddoc, "_info"] => crate::routes::view::info(state, db, ddoc, req).await,
        ["_view_cleanup"] => crate::routes::view::cleanup(state, db, req).await,
        [
            "_design",
            _,
            kind @ ("_show" | "_list" | "_update" | "_rewrite"),
            ..,
        ] => Err(ApiError::NotImplemented(format!(
            "{kind} functions are deprecated by CouchDB and not supported; use views, \
                 _find or a document read instead"
        ))),
        ["_design", name, att @ ..] | ["_local", name, att @ ..] => {
            let id = format!("{}/{}", rest[0], name);
            doc_or_attachment(state, db, &id, att, req).await
        }
        [id, att @ ..] => doc_or_attachment(state, db, id, att, req).await,
        [] => db::handle(state, db, req).await,
    }
}

async fn doc_or_attachment(
    state: &AppState,
    db: &str,
    id: &str,
    att: &[&str],
    req: &mut Req,
) -> Result<Response, ApiError> {
    if id.len() > MAX_DOC_ID_BYTES {
        return Err(ApiError::TooLarge(format!(
            "document id is longer than {MAX_DOC_ID_BYTES} bytes"
        )));
    }
    let kind = classify_doc_id(id)?;
    match (kind, att) {
        (DocKind::Local, []) => local::handle(state, db, id, req).await,
        // CouchDB's wording; PouchDB's suite checks it.
        (DocKind::Local, _) => Err(ApiError::bad_request(
            "_local documents do not accept attachments.",
        )),
        (_, []) => doc::handle(state, db, id, req).await,
        (_, names) => attachment::handle(state, db, id, &names.join("/"), req).await,
    }
}

/// The route template of a raw request path, the `route` label of the HTTP metrics and logs:
/// bounded, because database names and document ids are replaced by `{db}`, `{docid}`,
/// `{ddoc}` and `{attachment}`. It mirrors the `match` in [`route`] and [`db_resource`].
pub fn template(raw_path: &str) -> &'static str {
    let mut segs: Vec<&str> = raw_path.split('/').skip(1).collect();
    if segs.last().is_some_and(|s| s.is_empty()) {
        segs.pop();
    }
    match segs.as_slice() {
        [] => "/",
        ["_up"] => "/_up",
        ["_all_dbs"] => "/_all_dbs",
        ["_db_updates"] => "/_db_updates",
        ["_dbs_info"] => "/_dbs_info",
        ["_membership"] => "/_membership",
        ["_node", _] => "/_node/{node}",
        ["_node", _, "_config", ..] => "/_node/{node}/_config",
        ["_node", _, "_system"] => "/_node/{node}/_system",
        ["_node", _, "_prometheus"] => "/_node/{node}/_prometheus",
        ["_node", _, "_stats", ..] => "/_node/{node}/_stats",
        ["_uuids"] => "/_uuids",
        ["_session"] => "/_session",
        ["_replicate"] => "/_replicate",
        ["_scheduler", "jobs"] => "/_scheduler/jobs",
        ["_scheduler", "docs"] => "/_scheduler/docs",
        ["_active_tasks"] => "/_active_tasks",
        ["_outpost", "v1", "metrics"] => "/_outpost/v1/metrics",
        ["_outpost", "v1", "ready"] => "/_outpost/v1/ready",
        ["_outpost", "v1", "openapi.json"] => "/_outpost/v1/openapi.json",
        ["_outpost", "v1", "feed"] => "/_outpost/v1/feed",
        ["_outpost", "v1", "feed", _] => "/_outpost/v1/feed/{stream}",
        ["_outpost", "ui", ..] => "/_outpost/ui",
        ["_outpost", "gateway", ..] => "/_outpost/gateway",
        [first, ..] if first.starts_with('_') && validate_db_name(first).is_err() => "unknown",
        [_] => "/{db}",
        [_, rest @ ..] => match rest {
            ["_all_docs"] => "/{db}/_all_docs",
            ["_design_docs"] => "/{db}/_design_docs",
            ["_local_docs"] => "/{db}/_local_docs",
            ["_bulk_docs"] => "/{db}/_bulk_docs",
            ["_bulk_get"] => "/{db}/_bulk_get",
            ["_revs_diff"] => "/{db}/_revs_diff",
            ["_changes"] => "/{db}/_changes",
            ["_revs_limit"] => "/{db}/_revs_limit",
            ["_purge"] => "/{db}/_purge",
            ["_purged_infos_limit"] => "/{db}/_purged_infos_limit",
            ["_security"] => "/{db}/_security",
            ["_compact"] | ["_compact", _] => "/{db}/_compact",
            ["_ensure_full_commit"] => "/{db}/_ensure_full_commit",
            ["_events"] => "/{db}/_events",
            ["_find"] => "/{db}/_find",
            ["_explain"] => "/{db}/_explain",
            ["_index"] => "/{db}/_index",
            ["_index", ..] => "/{db}/_index/{ddoc}/json/{name}",
            ["_temp_view"] => "/{db}/_temp_view",
            ["_outpost"] => "/{db}/_outpost",
            ["_conflicts"] => "/{db}/_conflicts",
            ["_resolve"] => "/{db}/_resolve",
            ["_design", _] => "/{db}/_design/{ddoc}",
            ["_design", _, "_view", _] => "/{db}/_design/{ddoc}/_view/{view}",
            ["_design", _, "_view", _, "queries"] => "/{db}/_design/{ddoc}/_view/{view}/queries",
            ["_design", _, "_info"] => "/{db}/_design/{ddoc}/_info",
            ["_view_cleanup"] => "/{db}/_view_cleanup",
            ["_design", _, "_show", ..] => "/{db}/_design/{ddoc}/_show",
            ["_design", _, "_list", ..] => "/{db}/_design/{ddoc}/_list",
            ["_design", _, "_update", ..] => "/{db}/_design/{ddoc}/_update",
            ["_design", _, "_rewrite", ..] => "/{db}/_design/{ddoc}/_rewrite",
            ["_design", _, ..] => "/{db}/_design/{ddoc}/{attachment}",
            ["_local", _] => "/{db}/_local/{docid}",
            ["_local", ..] => "/{db}/_local/{docid}/{attachment}",
            [_] => "/{db}/{docid}",
            _ => "/{db}/{docid}/{attachment}",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::template;

    #[test]
    fn templates_hide_names_and_ids() {
        let cases = [
            ("/", "/"),
            ("/_up", "/_up"),
            ("/_outpost/v1/metrics", "/_outpost/v1/metrics"),
            ("/_node/_local/_prometheus", "/_node/{node}/_prometheus"),
            ("/metrics", "/{db}"),
            ("/_outpost/v1/ready", "/_outpost/v1/ready"),
            ("/_outpost/v1/openapi.json", "/_outpost/v1/openapi.json"),
            ("/_outpost/v1/feed", "/_outpost/v1/feed"),
            ("/_outpost/v1/feed/0123abcd", "/_outpost/v1/feed/{stream}"),
            ("/_outpost/v1/secret-name", "unknown"),
            ("/_outpost/ui/", "/_outpost/ui"),
            ("/_outpost/ui/pages/login.js", "/_outpost/ui"),
            ("/_nonsense", "unknown"),
            ("/notes", "/{db}"),
            ("/notes/", "/{db}"),
            ("/_replicator", "/{db}"),
            ("/a%2Fb/_changes", "/{db}/_changes"),
            ("/notes/_compact/ddoc", "/{db}/_compact"),
            ("/notes/_purge", "/{db}/_purge"),
            ("/notes/_purged_infos_limit", "/{db}/_purged_infos_limit"),
            (
                "/_node/_local/_stats/couchdb/httpd/requests",
                "/_node/{node}/_stats",
            ),
            ("/notes/secret-id", "/{db}/{docid}"),
            ("/notes/a%2Fb", "/{db}/{docid}"),
            ("/notes/doc/photo.jpg", "/{db}/{docid}/{attachment}"),
            ("/notes/doc/dir/photo.jpg", "/{db}/{docid}/{attachment}"),
            ("/notes/_design/app", "/{db}/_design/{ddoc}"),
            (
                "/notes/_design/app/x.js",
                "/{db}/_design/{ddoc}/{attachment}",
            ),
            ("/notes/_local/cp", "/{db}/_local/{docid}"),
        ];
        for (path, expected) in cases {
            assert_eq!(template(path), expected, "{path}");
        }
    }
}
