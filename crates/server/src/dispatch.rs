//! Routing on the raw request path.
//!
//! Each `/`-separated segment of the raw path is percent-decoded on its own, so `a%2Fb` is one
//! segment `a/b` (PouchDB encodes every id with `encodeURIComponent`) while `_design/x` and
//! `_local/x` arrive as two segments (PouchDB keeps their slash). Database names may contain `/`
//! too, always encoded.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, header};
use outpost_core::names::{DocKind, classify_doc_id, validate_db_name};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::query::Query;
use crate::routes::{
    all_docs, attachment, bulk, changes, conflicts, db, doc, local, node, ops, server,
};
use crate::{ApiError, AppState};

/// The longest document id accepted, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 4096;

/// A request, taken apart once for every handler.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// Taken once by whoever reads it. In a mutex only so that `&Req` can cross an `.await`
    /// (a body is `Send` but not `Sync`); it is never contended.
    body: std::sync::Mutex<Option<Body>>,
    max_body: usize,
    body_timeout: std::time::Duration,
    /// The server's budget of request body bytes in flight.
    budget: BodyBudget,
    /// This request's share of the budget, given back when the request is dropped.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The bytes of request bodies all requests together may hold: each body's bytes are counted
/// as they are read and given back when its request is answered, so many large bodies at once
/// get 503 instead of exhausting memory.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
    total: u64,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: std::sync::Arc::new(tokio::sync::Semaphore::new(total)),
            total: total as u64,
        }
    }
}

impl Req {
    /// The whole body, refused above the configured limit, and with 503 when the server's
    /// budget of body bytes in flight is spent. The bytes stay counted against that budget until
    /// the request is answered.
    pub async fn bytes(&mut self) -> Result<Bytes, ApiError> {
        let body = self
            .body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let declared = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared {
            self.reserve(len)?;
        }
        // A client that stops sending mid-body must not hold a connection (and its memory)
        // forever.
        let read = tokio::time::timeout(self.body_timeout, self.read_body(body, declared));
        let Ok(read) = read.await else {
            return Err(ApiError::RequestTimeout);
        };
        let bytes = read?;
        let compressed = bytes.as_ptr();
        let decoded = self.decode_content(bytes)?;
        // Decompressed bytes are held as well as the compressed ones.
        if decoded.as_ptr() != compressed {
            self.reserve(decoded.len() as u64)?;
        }
        Ok(decoded)
    }

    async fn read_body(&mut self, body: Body, declared: Option<u64>) -> Result<Bytes, ApiError> {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| ApiError::bad_request("could not read the request body"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = out.len() as u64 + data.len() as u64;
            if total > self.max_body as u64 {
                return Err(self.too_large());
            }
            // A body without a length is counted as it arrives; one with a length was counted
            // whole before reading (hyper refuses a body longer than it said).
            if declared.is_none() {
                self.reserve(data.len() as u64)?;
            }
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    }

    fn too_large(&self) -> ApiError {
        ApiError::TooLarge(format!(
            "request body is larger than {} bytes",
            self.max_body
        ))
    }

    /// Counts `len` more body bytes against the server's budget, for as long as this request
    /// lives.
    fn reserve(&mut self, len: u64) -> Result<(), ApiError> {
        if len > self.max_body as u64 {
            return Err(self.too_large());
        }
        if len > self.budget.total {
            return Err(ApiError::TooLarge(format!(
                "request body is larger than the {} bytes all requests may have in flight",
                self.budget.total
            )));
        }
        let Ok(n) = u32::try_from(len) else {
            return Err(self.too_large());
        };
        if n == 0 {
            return Ok(());
        }
        let permit = self
            .budget
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| {
                ApiError::Busy("too many request bytes in flight; retry shortly".into())
            })?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// Undoes a `Content-Encoding` of the body (the Cloudant SDK under couchbackup gzips its
    /// request bodies). The decoded size is held to the same limit as a plain body, so a small
    /// compressed bomb cannot expand without bound.
    fn decode_content(&self, bytes: Bytes) -> Result<Bytes, ApiError> {
        use std::io::Read;
        let encoding = self
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let mut decoded = Vec::new();
        let limit = self.max_body as u64 + 1;
        let read = match encoding.as_deref() {
            None | Some("identity") | Some("") => return Ok(bytes),
            Some("gzip") | Some("x-gzip") => flate2::read::GzDecoder::new(&bytes[..])
                .take(limit)
                .read_to_end(&mut decoded),
            Some("deflate") => flate2::read::ZlibDecoder::new(&bytes[..])
                .take(limit)
                .read_to_end(&mut decoded),
            Some(other) => {
                return Err(ApiError::BadContentType(format!(
                    "unsupported Content-Encoding {other:?}; use gzip or deflate"
                )));
            }
        };
        read.map_err(|_| ApiError::bad_request("the request body is not validly compressed"))?;
        if decoded.len() > self.max_body {
            return Err(ApiError::TooLarge(format!(
                "request body is larger than {} bytes once decompressed",
                self.max_body
            )));
        }
        Ok(Bytes::from(decoded))
    }

    /// The body parsed as JSON; the content type, when given, must be JSON.
    pub async fn json(&mut self) -> Result<Value, ApiError> {
        self.require_json_type()?;
        let bytes = self.bytes().await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "request body must be a JSON document",
            ));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
    }

    /// Refuses a body sent with a content type other than JSON, as CouchDB does (a missing
    /// content type is let through for the convenience of hand-written requests).
    pub fn require_json_type(&self) -> Result<(), ApiError> {
        match self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            None => Ok(()),
            Some(ct) if media_type(ct) == "application/json" => Ok(()),
            Some(ct) => Err(ApiError::BadContentType(format!(
                "Content-Type must be application/json, not {}",
                media_type(ct)
            ))),
        }
    }
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

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
    let (parts, body) = request.into_parts();
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
    let mut req = Req {
        method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query())?,
        body: std::sync::Mutex::new(Some(body)),
        max_body: state.config.max_body_bytes,
        body_timeout: state.config.body_read_timeout,
        budget: state.body_budget.clone(),
        held: None,
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => server::root(state, &req).await,
        ["_up"] => server::up(&req),
        ["_all_dbs"] => server::all_dbs(state, &req).await,
        ["_dbs_info"] => server::dbs_info(state, &mut req).await,
        ["_membership"] => node::membership(&req),
        ["_node", name, rest @ ..] => node::route(state, name, rest, &req),
        ["_uuids"] => server::uuids(&req),
        ["_replicate"] => crate::routes::replicate::handle(state, &mut req).await,
        ["_scheduler", "jobs"] => crate::routes::scheduler::jobs(state, &req),
        ["_scheduler", "docs"] => crate::routes::scheduler::docs(state, &req),
        ["_active_tasks"] => crate::routes::scheduler::active_tasks(state, &req),
        ["_outpost", "v1", rest @ ..] => ops::route(state, rest, &req).await,
        [first, ..] if first.starts_with('_') && validate_db_name(first).is_err() => Err(
            ApiError::bad_request(format!("unknown server endpoint /{first}")),
        ),
        [name] => db::handle(state, name, &mut req).await,
        [name, rest @ ..] => {
            validate_db_name(name)?;
            db_resource(state, name, rest, &mut req).await
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
        ["_bulk_docs"] => bulk::bulk_docs(state, db, req).await,
        ["_bulk_get"] => bulk::bulk_get(state, db, req).await,
        ["_revs_diff"] => bulk::revs_diff(state, db, req).await,
        ["_changes"] => changes::handle(state, db, req).await,
        ["_revs_limit"] => db::revs_limit(state, db, req).await,
        ["_compact"] | ["_compact", _] => db::compact(state, db, req).await,
        ["_ensure_full_commit"] => db::ensure_full_commit(state, db, req).await,
        ["_events"] => changes::events(state, db, req).await,
        ["_temp_view"] => Err(ApiError::Gone(
            "Temporary views are not supported in CouchDB".into(),
        )),
        ["_outpost"] => conflicts::settings(state, db, req).await,
        ["_conflicts"] => conflicts::list(state, db, req).await,
        ["_resolve"] => conflicts::resolve(state, db, req).await,
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
        ["_dbs_info"] => "/_dbs_info",
        ["_membership"] => "/_membership",
        ["_node", _] => "/_node/{node}",
        ["_node", _, "_config", ..] => "/_node/{node}/_config",
        ["_node", _, "_system"] => "/_node/{node}/_system",
        ["_node", _, "_prometheus"] => "/_node/{node}/_prometheus",
        ["_uuids"] => "/_uuids",
        ["_replicate"] => "/_replicate",
        ["_scheduler", "jobs"] => "/_scheduler/jobs",
        ["_scheduler", "docs"] => "/_scheduler/docs",
        ["_active_tasks"] => "/_active_tasks",
        ["_outpost", "v1", "metrics"] => "/_outpost/v1/metrics",
        ["_outpost", "v1", "ready"] => "/_outpost/v1/ready",
        ["_outpost", "v1", "openapi.json"] => "/_outpost/v1/openapi.json",
        [first, ..] if first.starts_with('_') && validate_db_name(first).is_err() => "unknown",
        [_] => "/{db}",
        [_, rest @ ..] => match rest {
            ["_all_docs"] => "/{db}/_all_docs",
            ["_bulk_docs"] => "/{db}/_bulk_docs",
            ["_bulk_get"] => "/{db}/_bulk_get",
            ["_revs_diff"] => "/{db}/_revs_diff",
            ["_changes"] => "/{db}/_changes",
            ["_revs_limit"] => "/{db}/_revs_limit",
            ["_compact"] | ["_compact", _] => "/{db}/_compact",
            ["_ensure_full_commit"] => "/{db}/_ensure_full_commit",
            ["_events"] => "/{db}/_events",
            ["_temp_view"] => "/{db}/_temp_view",
            ["_outpost"] => "/{db}/_outpost",
            ["_conflicts"] => "/{db}/_conflicts",
            ["_resolve"] => "/{db}/_resolve",
            ["_design", _] => "/{db}/_design/{ddoc}",
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
            ("/_outpost/v1/secret-name", "unknown"),
            ("/_nonsense", "unknown"),
            ("/notes", "/{db}"),
            ("/notes/", "/{db}"),
            ("/_replicator", "/{db}"),
            ("/a%2Fb/_changes", "/{db}/_changes"),
            ("/notes/_compact/ddoc", "/{db}/_compact"),
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
