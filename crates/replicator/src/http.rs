//! [`Endpoint`] over HTTP: a database on Outpost, CouchDB or pouchdb-server.
//!
//! Requests follow what PouchDB's HTTP adapter sends (pouchdb-adapter-http): JSON content type
//! and accept headers on every JSON call, document ids `encodeURIComponent`-ed except for the
//! slash of `_design/` and `_local/`, attachment names encoded segment by segment, `_bulk_get`
//! with a fallback to `open_revs` GETs for servers without it.
//!
//! Credentials come from the URL's userinfo (turned into a Basic `Authorization` header and
//! removed from the URL) or from explicit headers. Neither ever appears in `Display`, `Debug` or
//! an error message: errors are built from the redacted name and reqwest's error without its URL.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tracing::debug;

use crate::ReplicationError;
use crate::endpoint::{
    Change, ChangesFilter, ChangesPage, ChangesRequest, DbInfo, DocRevs, Endpoint, Feed,
    RevsDiffEntry, Seq, WriteFailure,
};

/// The characters JavaScript's `encodeURIComponent` leaves alone.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// How many `open_revs` GETs run at once when a peer has no `_bulk_get`.
const OPEN_REVS_PARALLELISM: usize = 8;

/// Per-request limit for everything but longpoll feeds. Generous, because a `_bulk_docs` of a
/// large batch on a slow disk is legitimately slow; a dead peer is caught sooner by the read
/// timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long past its own timeout a longpoll request may run before we end it.
const LONGPOLL_GRACE: Duration = Duration::from_secs(15);

/// A silent connection is dead after this long. Longpoll feeds send a heartbeat far more often.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the peer has `_bulk_get`, learnt from the first call.
const BULK_GET_UNKNOWN: u8 = 0;
const BULK_GET_YES: u8 = 1;
const BULK_GET_NO: u8 = 2;

/// A reqwest client set up for replication: rustls with the `ring` provider, the platform's
/// roots, bounded connect and read times.
pub fn http_client() -> Result<reqwest::Client, ReplicationError> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only when another part of the process installed a provider first, which is
        // just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .user_agent(concat!("outpost-replicator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| ReplicationError::InvalidConfig(format!("cannot build the http client: {e}")))
}

/// A database reached over HTTP.
pub struct HttpEndpoint {
    client: reqwest::Client,
    /// The database URL without credentials, ending with `/`.
    db_url: Url,
    /// The server root (`GET /` gives the uuid used in replication ids).
    root_url: Url,
    db_name: String,
    /// Headers sent with every request, `Authorization` included; values marked sensitive so
    /// that reqwest and hyper never print them.
    headers: HeaderMap,
    /// One of `BULK_GET_*`.
    bulk_get: AtomicU8,
}

impl HttpEndpoint {
    /// An endpoint for `url` (`http[s]://[user:password@]host[:port]/[prefix/]db`) with extra
    /// request headers (such as `Authorization: Bearer ...`).
    pub fn new(
        client: reqwest::Client,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpEndpoint, ReplicationError> {
        // Never echo the URL in the error: it may hold a password.
        let invalid =
            |why: &str| ReplicationError::InvalidConfig(format!("invalid database url: {why}"));
        let mut parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let mut header_map = HeaderMap::new();
        if !parsed.username().is_empty() || parsed.password().is_some() {
            let user = percent_decode_str(parsed.username())
                .decode_utf8_lossy()
                .into_owned();
            let pass = percent_decode_str(parsed.password().unwrap_or(""))
                .decode_utf8_lossy()
                .into_owned();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| invalid("bad characters in the credentials"))?;
            value.set_sensitive(true);
            header_map.insert(AUTHORIZATION, value);
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ReplicationError::InvalidConfig(format!("invalid header name: {name}"))
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                ReplicationError::InvalidConfig(format!("invalid value for header {name}"))
            })?;
            value.set_sensitive(true);
            header_map.insert(name, value);
        }
        parsed.set_query(None);
        parsed.set_fragment(None);
        let segments: Vec<String> = parsed
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let Some((db, prefix)) = segments.split_last() else {
            return Err(invalid("the url names no database"));
        };
        let db_name = percent_decode_str(db).decode_utf8_lossy().into_owned();
        let mut root = parsed.clone();
        let root_path: String = prefix.iter().map(|s| format!("/{s}")).collect();
        root.set_path(&format!("{root_path}/"));
        let db_url = Url::parse(&format!(
            "{root}{}/",
            utf8_percent_encode(&db_name, URI_COMPONENT)
        ))
        .map_err(|e| invalid(&e.to_string()))?;
        Ok(HttpEndpoint {
            client,
            db_url,
            root_url: root,
            db_name,
            headers: header_map,
            bulk_get: AtomicU8::new(BULK_GET_UNKNOWN),
        })
    }

    /// The database's name as the server knows it.
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.db_url.clone();
        url.set_path(&format!("{}{path}", self.db_url.path()));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn name(&self) -> String {
        self.to_string()
    }

    /// Sends one request (a body with its content type); any non-2xx answer becomes the
    /// matching error.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<(Vec<u8>, HeaderValue)>,
        accept: &'static str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ReplicationError> {
        let mut req = self
            .client
            .request(method, url)
            .headers(self.headers.clone())
            .header(ACCEPT, accept)
            .timeout(timeout);
        if let Some((body, content_type)) = body {
            req = req.header(CONTENT_TYPE, content_type).body(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(op, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(self.status_error(op, status, &body))
    }

    async fn json(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ReplicationError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("json values serialise"));
        self.json_bytes(op, method, url, body, timeout).await
    }

    /// [`Self::json`] with a body already serialised.
    async fn json_bytes(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Value, ReplicationError> {
        let body = body.map(|b| (b, HeaderValue::from_static("application/json")));
        let resp = self
            .send(op, method, url, body, "application/json", timeout)
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        // Longpoll answers may start with heartbeat newlines; JSON allows leading whitespace.
        serde_json::from_slice(&bytes).map_err(|e| self.invalid(op, format!("bad json: {e}")))
    }

    fn invalid(&self, op: &'static str, reason: impl Into<String>) -> ReplicationError {
        ReplicationError::InvalidResponse {
            endpoint: self.name(),
            op,
            reason: reason.into(),
        }
    }

    fn transport_error(&self, op: &'static str, e: reqwest::Error) -> ReplicationError {
        if e.is_timeout() {
            return ReplicationError::Timeout {
                endpoint: self.name(),
                op,
            };
        }
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        let mut reason = e.without_url().to_string();
        for cause in causes {
            reason.push_str(": ");
            reason.push_str(&cause);
        }
        ReplicationError::Unreachable {
            endpoint: self.name(),
            op,
            reason,
        }
    }

    fn status_error(&self, op: &'static str, status: StatusCode, body: &[u8]) -> ReplicationError {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |k: &str| {
            parsed
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (error, reason) = (field("error"), field("reason"));
        let endpoint = self.name();
        match status.as_u16() {
            401 => ReplicationError::Unauthorized {
                endpoint,
                op,
                reason,
            },
            403 => ReplicationError::Forbidden {
                endpoint,
                op,
                reason,
            },
            404 => ReplicationError::NotFound {
                endpoint,
                op,
                reason,
            },
            409 => ReplicationError::Conflict { endpoint, op },
            code => ReplicationError::Http {
                endpoint,
                op,
                status: code,
                error,
                reason,
            },
        }
    }

    async fn bulk_get(&self, docs: &[DocRevs]) -> Result<Vec<Value>, ReplicationError> {
        let wanted: Vec<Value> = docs
            .iter()
            .flat_map(|d| d.revs.iter().map(move |r| json!({"id": d.id, "rev": r})))
            .collect();
        let url = self.url("_bulk_get", &[("revs", "true"), ("latest", "true")]);
        let body = json!({ "docs": wanted });
        let mut answer = self
            .json("bulk_get", Method::POST, url, Some(&body), REQUEST_TIMEOUT)
            .await?;
        // The documents are taken out of the answer, not copied.
        let Some(Value::Array(results)) = answer.get_mut("results").map(Value::take) else {
            return Err(self.invalid("bulk_get", "no results array"));
        };
        let mut out = Vec::with_capacity(wanted.len());
        for mut result in results {
            let Some(Value::Array(entries)) = result.get_mut("docs").map(Value::take) else {
                continue;
            };
            for mut entry in entries {
                if let Some(doc) = entry.get_mut("ok") {
                    out.push(doc.take());
                } else if let Some(err) = entry.get("error") {
                    self.fetch_error("bulk_get", err)?;
                }
            }
        }
        Ok(out)
    }

    /// An error element of `_bulk_get` or `open_revs`: a revision compacted away since the
    /// changes feed listed it is skipped (the next change of that document brings its
    /// successor); anything else fails the batch, as in PouchDB.
    fn fetch_error(&self, op: &'static str, err: &Value) -> Result<(), ReplicationError> {
        let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        if field("error") == "not_found" {
            debug!(endpoint = %self, id = %field("id"), rev = %field("rev"), "revision vanished");
            return Ok(());
        }
        Err(ReplicationError::FetchFailed {
            endpoint: self.name(),
            op,
            id: field("id"),
            error: field("error"),
            reason: field("reason"),
        })
    }

    async fn open_revs(&self, doc: &DocRevs) -> Result<Vec<Value>, ReplicationError> {
        let revs = serde_json::to_string(&doc.revs).expect("strings serialise");
        let url = self.url(
            &encode_doc_id(&doc.id),
            &[("revs", "true"), ("latest", "true"), ("open_revs", &revs)],
        );
        let answer = self
            .json("open_revs", Method::GET, url, None, REQUEST_TIMEOUT)
            .await?;
        let entries = answer
            .as_array()
            .ok_or_else(|| self.invalid("open_revs", "not an array"))?;
        let mut out = Vec::new();
        for entry in entries {
            if let Some(doc) = entry.get("ok") {
                out.push(doc.clone());
            } else if entry.get("missing").is_none() {
                self.fetch_error("open_revs", entry)?;
            }
        }
        Ok(out)
    }
}

/// Whether a failed `_bulk_get` means the peer lacks it (CouchDB before 2.0 and some proxies
/// answer 400, 404, 405 or 501), as opposed to a failure that would hit any request.
fn lacks_endpoint(e: &ReplicationError) -> bool {
    match e {
        ReplicationError::NotFound { .. } => true,
        ReplicationError::Http { status, .. } => matches!(status, 400 | 405 | 501),
        _ => false,
    }
}

/// `encodeURIComponent` for a document id, keeping the slash after `_design` and `_local`.
pub fn encode_doc_id(id: &str) -> String {
    for prefix in ["_design/", "_local/"] {
        if let Some(rest) = id.strip_prefix(prefix) {
            return format!("{prefix}{}", utf8_percent_encode(rest, URI_COMPONENT));
        }
    }
    utf8_percent_encode(id, URI_COMPONENT).to_string()
}

/// An attachment name, encoded segment by segment so that its slashes stay path separators.
fn encode_attachment_name(name: &str) -> String {
    name.split('/')
        .map(|s| utf8_percent_encode(s, URI_COMPONENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

impl fmt::Display for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL holds no credentials (they were moved into headers), and headers are not shown.
        f.write_str(self.db_url.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("url", &self.to_string())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn parse_change(row: &Value) -> Option<Change> {
    Some(Change {
        seq: Seq(row.get("seq")?.clone()),
        id: row.get("id")?.as_str()?.to_string(),
        revs: row
            .get("changes")?
            .as_array()?
            .iter()
            .filter_map(|c| c.get("rev").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        deleted: row.get("deleted").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[async_trait]
impl Endpoint for HttpEndpoint {
    async fn id(&self) -> Result<String, ReplicationError> {
        let answer = self
            .json(
                "server info",
                Method::GET,
                self.root_url.clone(),
                None,
                REQUEST_TIMEOUT,
            )
            .await;
        match answer {
            Ok(info) => match info.get("uuid").and_then(Value::as_str) {
                Some(uuid) => Ok(format!("{uuid}{}", self.db_name)),
                None => Ok(self.to_string()),
            },
            // PouchDB falls back to the URL when the root is unreadable (a proxy exposing only
            // the database); an unreachable server is still an error.
            Err(e) if e.is_retryable() || e.is_auth() => Err(e),
            Err(_) => Ok(self.to_string()),
        }
    }

    async fn info(&self) -> Result<DbInfo, ReplicationError> {
        let info = self
            .json(
                "info",
                Method::GET,
                self.db_url.clone(),
                None,
                REQUEST_TIMEOUT,
            )
            .await?;
        Ok(DbInfo {
            db_name: info
                .get("db_name")
                .and_then(Value::as_str)
                .unwrap_or(&self.db_name)
                .to_string(),
            update_seq: info.get("update_seq").cloned().map(Seq).unwrap_or_default(),
            doc_count: info.get("doc_count").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    async fn create(&self) -> Result<(), ReplicationError> {
        match self
            .json(
                "create",
                Method::PUT,
                self.db_url.clone(),
                None,
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(_) | Err(ReplicationError::Http { status: 412, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn changes(&self, req: &ChangesRequest) -> Result<ChangesPage, ReplicationError> {
        let since = req.since.to_query();
        let limit = req.limit.to_string();
        let mut query: Vec<(&str, &str)> =
            vec![("style", "all_docs"), ("since", &since), ("limit", &limit)];
        let (heartbeat, feed_timeout, timeout);
        match req.feed {
            Feed::Normal => timeout = REQUEST_TIMEOUT,
            Feed::Longpoll {
                heartbeat: hb,
                timeout: t,
            } => {
                heartbeat = hb.as_millis().to_string();
                feed_timeout = t.as_millis().to_string();
                query.extend([
                    ("feed", "longpoll"),
                    ("heartbeat", &heartbeat),
                    ("timeout", &feed_timeout),
                ]);
                // The server should end the feed after `t`, but some (pouchdb-server 4) let the
                // heartbeat keep it open for ever; our own limit ends it then.
                timeout = t + LONGPOLL_GRACE;
            }
        }
        let (method, body) = match &req.filter {
            ChangesFilter::All => (Method::GET, None),
            ChangesFilter::DocIds(ids) => {
                query.push(("filter", "_doc_ids"));
                (Method::POST, Some(json!({ "doc_ids": ids })))
            }
            ChangesFilter::Selector(selector) => {
                query.push(("filter", "_selector"));
                (Method::POST, Some(json!({ "selector": selector })))
            }
            ChangesFilter::Function { name, view, .. } => {
                query.push(("filter", name));
                if let Some(view) = view {
                    query.push(("view", view));
                }
                (Method::GET, None)
            }
        };
        // A filter function's parameters go in the query string, strings as they are and other
        // values as JSON, as CouchDB's replicator sends them.
        let params: Vec<(String, String)> = match &req.filter {
            ChangesFilter::Function {
                query_params: Some(params),
                ..
            } => params
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect(),
            _ => Vec::new(),
        };
        query.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let url = self.url("_changes", &query);
        let answer = match self
            .json("changes", method, url, body.as_ref(), timeout)
            .await
        {
            Ok(answer) => answer,
            // A longpoll that outlived its time saw no change: an empty page, not an error. A
            // peer that died mid-poll stops sending heartbeats, trips the read timeout the same
            // way, and is found out by the next request.
            Err(ReplicationError::Timeout { .. }) if matches!(req.feed, Feed::Longpoll { .. }) => {
                return Ok(ChangesPage {
                    results: Vec::new(),
                    last_seq: req.since.clone(),
                    pending: None,
                });
            }
            Err(e) => return Err(e),
        };
        let rows = answer
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| self.invalid("changes", "no results array"))?;
        let results = rows
            .iter()
            .map(|row| parse_change(row).ok_or_else(|| self.invalid("changes", "malformed row")))
            .collect::<Result<Vec<_>, _>>()?;
        let last_seq = match answer.get("last_seq") {
            Some(seq) if !seq.is_null() => Seq(seq.clone()),
            _ => results
                .last()
                .map(|c| c.seq.clone())
                .unwrap_or_else(|| req.since.clone()),
        };
        Ok(ChangesPage {
            results,
            last_seq,
            pending: answer.get("pending").and_then(Value::as_u64),
        })
    }

    async fn revs_diff(
        &self,
        revs: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, RevsDiffEntry>, ReplicationError> {
        let body = serde_json::to_value(revs).expect("strings serialise");
        let url = self.url("_revs_diff", &[]);
        let answer = self
            .json("revs_diff", Method::POST, url, Some(&body), REQUEST_TIMEOUT)
            .await?;
        serde_json::from_value(answer).map_err(|e| self.invalid("revs_diff", e.to_string()))
    }

    async fn get_revs(&self, docs: &[DocRevs]) -> Result<Vec<Value>, ReplicationError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        if self.bulk_get.load(Ordering::Relaxed) != BULK_GET_NO {
            match self.bulk_get(docs).await {
                Ok(found) => {
                    self.bulk_get.store(BULK_GET_YES, Ordering::Relaxed);
                    return Ok(found);
                }
                Err(e)
                    if self.bulk_get.load(Ordering::Relaxed) == BULK_GET_UNKNOWN
                        && lacks_endpoint(&e) =>
                {
                    debug!(endpoint = %self, error = %e, "no _bulk_get; falling back to open_revs");
                    self.bulk_get.store(BULK_GET_NO, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        // Collected first: a lazy `map` closure inside the stream trips the `Send` check of
        // `async_trait` futures (rust-lang/rust#102211).
        let requests: Vec<_> = docs.iter().map(|d| self.open_revs(d)).collect();
        let per_doc: Vec<Vec<Value>> = futures::stream::iter(requests)
            .buffered(OPEN_REVS_PARALLELISM)
            .try_collect()
            .await?;
        Ok(per_doc.into_iter().flatten().collect())
    }

    async fn bulk_docs(&self, docs: &[Value]) -> Result<Vec<WriteFailure>, ReplicationError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        /// Serialised straight from the documents: `json!` would copy every one first.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            docs: &'a [Value],
            new_edits: bool,
        }
        let body = serde_json::to_vec(&Body {
            docs,
            new_edits: false,
        })
        .expect("json values serialise");
        let url = self.url("_bulk_docs", &[]);
        let answer = self
            .json_bytes("bulk_docs", Method::POST, url, Some(body), REQUEST_TIMEOUT)
            .await?;
        // With `new_edits: false` only error entries matter; CouchDB answers `[]` on success.
        let entries = answer
            .as_array()
            .ok_or_else(|| self.invalid("bulk_docs", "not an array"))?;
        Ok(entries
            .iter()
            .filter(|e| e.get("error").is_some())
            .filter_map(|e| serde_json::from_value(e.clone()).ok())
            .collect())
    }

    async fn put_with_attachments(
        &self,
        doc: &Value,
    ) -> Result<Option<WriteFailure>, ReplicationError> {
        let op = "put document with attachments";
        let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
        let Some((body, content_type)) = multipart_related(doc) else {
            // Names or types a part header cannot carry as they are: base64 in JSON instead.
            return Ok(self
                .bulk_docs(std::slice::from_ref(doc))
                .await?
                .into_iter()
                .next());
        };
        let url = self.url(&encode_doc_id(id), &[("new_edits", "false")]);
        let content_type = HeaderValue::from_str(&content_type).expect("the boundary is ASCII");
        let refused = |error: &str, reason: String| {
            Ok(Some(WriteFailure {
                id: id.to_owned(),
                rev: doc.get("_rev").and_then(Value::as_str).map(str::to_owned),
                error: error.to_owned(),
                reason,
            }))
        };
        match self
            .send(
                op,
                Method::PUT,
                url,
                Some((body, content_type)),
                "application/json",
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(resp) => {
                // The answer is small; read it so the connection goes back to the pool.
                let _ = resp.bytes().await;
                Ok(None)
            }
            // What `_bulk_docs` reports per document, a single PUT answers with its status.
            Err(ReplicationError::Forbidden { reason, .. }) => refused("forbidden", reason),
            Err(ReplicationError::Unauthorized { reason, .. }) => refused("unauthorized", reason),
            Err(ReplicationError::Http {
                status: 400,
                error,
                reason,
                ..
            }) => refused(
                if error.is_empty() {
                    "bad_request"
                } else {
                    &error
                },
                reason,
            ),
            Err(e) => Err(e),
        }
    }

    async fn get_local(&self, id: &str) -> Result<Option<Value>, ReplicationError> {
        let url = self.url(&encode_doc_id(id), &[]);
        match self
            .json("get checkpoint", Method::GET, url, None, REQUEST_TIMEOUT)
            .await
        {
            Ok(doc) => Ok(Some(doc)),
            Err(ReplicationError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_local(&self, doc: &Value) -> Result<String, ReplicationError> {
        let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
        let url = self.url(&encode_doc_id(id), &[]);
        let answer = self
            .json(
                "put checkpoint",
                Method::PUT,
                url,
                Some(doc),
                REQUEST_TIMEOUT,
            )
            .await?;
        answer
            .get("rev")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.invalid("put checkpoint", "no rev in the answer"))
    }

    async fn get_attachment(
        &self,
        doc_id: &str,
        name: &str,
        rev: &str,
    ) -> Result<Bytes, ReplicationError> {
        let path = format!("{}/{}", encode_doc_id(doc_id), encode_attachment_name(name));
        let url = self.url(&path, &[("rev", rev)]);
        let op = "get attachment";
        let resp = self
            .send(op, Method::GET, url, None, "*/*", REQUEST_TIMEOUT)
            .await?;
        resp.bytes().await.map_err(|e| self.transport_error(op, e))
    }
}

/// A revision with inline attachments as a `multipart/related` body, as CouchDB's replicator
/// sends it: the JSON first, each attachment's `data` replaced by `"follows": true` and its
/// `length`, then the attachments' bytes in the same order. Returns the body and its content
/// type; `None` when some `data` is not base64, or a name or content type is not printable
/// ASCII (the part headers carry them, and pouchdb-server takes the name from there).
fn multipart_related(doc: &Value) -> Option<(Vec<u8>, String)> {
    let mut json = doc.clone();
    let mut parts: Vec<(String, String, Vec<u8>)> = Vec::new();
    if let Some(atts) = json.get_mut("_attachments").and_then(Value::as_object_mut) {
        for (name, att) in atts.iter_mut() {
            let Some(meta) = att.as_object_mut() else {
                continue;
            };
            let Some(data) = meta.shift_remove("data") else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.as_str()?)
                .ok()?;
            meta.insert("follows".into(), Value::Bool(true));
            meta.insert("length".into(), json!(bytes.len()));
            let content_type = meta
                .get("content_type")
                .and_then(Value::as_str)
                .unwrap_or("application/octet-stream")
                .to_owned();
            let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
            if !printable(name) || !printable(&content_type) {
                return None;
            }
            parts.push((name.clone(), content_type, bytes));
        }
    }
    // A boundary that occurs in no part: random, and checked.
    let json = serde_json::to_vec(&json).expect("json values serialise");
    let boundary = loop {
        let candidate = format!("outpost-{}", uuid::Uuid::new_v4().simple());
        let occurs = |bytes: &[u8]| {
            bytes
                .windows(candidate.len())
                .any(|w| w == candidate.as_bytes())
        };
        if !occurs(&json) && !parts.iter().any(|(_, _, bytes)| occurs(bytes)) {
            break candidate;
        }
    };
    let size = json.len() + parts.iter().map(|(_, _, b)| b.len() + 200).sum::<usize>() + 200;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&json);
    for (name, content_type, bytes) in &parts {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: attachment; filename=\"{quoted}\"\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    Some((body, format!("multipart/related; boundary=\"{boundary}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> HttpEndpoint {
        HttpEndpoint::new(http_client().unwrap(), url, &[]).unwrap()
    }

    #[test]
    fn attachments_travel_as_multipart_related_parts() {
        let doc = json!({
            "_id": "d", "_rev": "2-b", "v": 1,
            "_attachments": {
                "a.bin": {"content_type": "application/octet-stream", "revpos": 2,
                          "data": base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255])},
                "kept.txt": {"stub": true, "revpos": 1, "digest": "md5-x", "length": 3},
                "say \"hi\".txt": {"content_type": "text/plain", "revpos": 2, "data": "aGk="}
            }
        });
        let (body, content_type) = multipart_related(&doc).unwrap();
        let boundary = content_type
            .strip_prefix("multipart/related; boundary=\"")
            .and_then(|b| b.strip_suffix('"'))
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        // Preamble (empty), the JSON, two attachments, and the closing `--`.
        assert_eq!(parts.len(), 5, "{text}");
        assert_eq!(parts[0], "");
        assert_eq!(parts[4], "--");
        let (head, json) = parts[1].split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Type: application/json"));
        let json: Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(
            json["_attachments"]["a.bin"],
            json!({"content_type": "application/octet-stream", "revpos": 2, "follows": true, "length": 4})
        );
        assert_eq!(json["_attachments"]["kept.txt"]["stub"], true);
        assert_eq!(json["_attachments"]["say \"hi\".txt"]["length"], 2);
        assert!(parts[2].contains("filename=\"a.bin\""));
        assert!(body.windows(4).any(|w| w == [0u8, 1, 2, 255]));
        assert!(
            parts[3].contains(r#"filename="say \"hi\".txt""#),
            "{}",
            parts[3]
        );
        assert!(parts[3].ends_with("\r\n\r\nhi\r\n"));
    }

    #[test]
    fn names_a_part_header_cannot_carry_stay_in_json() {
        for (name, content_type) in [
            ("café.txt", "text/plain"),
            ("a\r\nX: y", "text/plain"),
            ("a", "text/plain\r\nX: y"),
        ] {
            let doc = json!({"_id": "d", "_rev": "1-a", "_attachments": {
                name: {"content_type": content_type, "revpos": 1, "data": "aGk="}
            }});
            assert!(
                multipart_related(&doc).is_none(),
                "{name:?} {content_type:?}"
            );
        }
        let not_base64 = json!({"_id": "d", "_rev": "1-a", "_attachments": {
            "a": {"content_type": "text/plain", "revpos": 1, "data": "not base64!"}
        }});
        assert!(multipart_related(&not_base64).is_none());
    }

    #[test]
    fn urls_and_redaction() {
        let e = endpoint("http://admin:s3cr%40t@127.0.0.1:5984/orders");
        assert_eq!(e.to_string(), "http://127.0.0.1:5984/orders");
        assert_eq!(e.root_url.as_str(), "http://127.0.0.1:5984/");
        assert_eq!(e.db_name(), "orders");
        let auth = e.headers.get(AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        // base64("admin:s3cr@t")
        assert_eq!(auth.to_str().unwrap(), "Basic YWRtaW46czNjckB0");
        assert!(!format!("{e:?}").contains("s3cr"));
        assert!(!format!("{e:?}").contains("YWRt"));

        let e = endpoint("https://h.example/couch/a%2Fb/");
        assert_eq!(e.db_name(), "a/b");
        assert_eq!(e.root_url.as_str(), "https://h.example/couch/");
        assert_eq!(e.to_string(), "https://h.example/couch/a%2Fb");
        assert_eq!(
            e.url("_changes", &[("since", "0")]).as_str(),
            "https://h.example/couch/a%2Fb/_changes?since=0"
        );
    }

    #[test]
    fn bad_urls_do_not_leak_credentials() {
        for url in ["ftp://u:pw@h/db", "http://u:pw@h/", "not a url pw"] {
            let err = HttpEndpoint::new(http_client().unwrap(), url, &[]).unwrap_err();
            assert!(!err.to_string().contains("pw"), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn id_encoding() {
        let check = |id: &str, expect: &str| assert_eq!(encode_doc_id(id), expect, "{id}");
        check("plain", "plain");
        check("a/b", "a%2Fb");
        check("_design/x/y", "_design/x%2Fy");
        check("_local/abc+=", "_local/abc%2B%3D");
        check("é ?#&", "%C3%A9%20%3F%23%26");
        check("-_.!~*'()", "-_.!~*'()");
        assert_eq!(encode_attachment_name("dir/a b.txt"), "dir/a%20b.txt");
    }
}
