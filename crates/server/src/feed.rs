//! The changes feed engine: scanning the store page by page through a filter, and writing the
//! four feed formats (`normal`, `longpoll`, `continuous`, `eventsource`) as a streamed body.
//!
//! A feed runs as a tracked task that writes into a bounded channel; the response body reads
//! from it. The task ends when the client goes away (the channel closes), when the feed is done,
//! or when the server shuts down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderValue, header};
use outpost_core::Selector;
use outpost_store::{ChangeRow, ChangesQuery, Event, EventsQuery, StoredBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::design::DesignDoc;
use crate::docjson::{RenderOpts, render};
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

/// Rows read from the store per page.
const PAGE: u64 = 500;

/// Rows read from the store per page: [`PAGE`], or one when each row inlines its document's
/// attachments, so that what a page holds in memory is one document's attachments at most,
/// however many the feed carries.
pub(crate) fn rows_per_page(opts: &FeedOpts) -> u64 {
    if opts.include_docs && opts.render.attachments {
        1
    } else {
        PAGE
    }
}

/// Which documents a feed shows.
#[derive(Debug)]
pub enum Filter {
    All,
    DocIds(HashSet<String>),
    Selector(Selector),
    /// Only `_design/` documents (CouchDB's built-in `_design` filter).
    Design,
    /// A design document's filter function (`filter=ddoc/name`), called with the document and
    /// the request object `req`.
    Function {
        ddoc: Arc<DesignDoc>,
        name: String,
        req: Value,
    },
    /// `filter=_view&view=ddoc/name`: documents the view's map function emits something for.
    View {
        ddoc: Arc<DesignDoc>,
        name: String,
    },
}

impl Filter {
    fn needs_body(&self) -> bool {
        matches!(
            self,
            Filter::Selector(_) | Filter::Function { .. } | Filter::View { .. }
        )
    }
}

/// Whether a design-document filter lets a document (JSON text) through. A function that
/// throws on it, or is stopped, fails the feed, as in CouchDB (its changes request fails, so a
/// client or replication learns of it instead of silently missing documents); it is logged.
pub async fn function_admits(
    state: &AppState,
    db: &str,
    filter: &Filter,
    id: &str,
    doc: &str,
) -> Result<bool, ApiError> {
    let docs = [doc.to_owned()];
    let outcome = match filter {
        Filter::Function { ddoc, name, req } => {
            let Some(source) = ddoc.function(&["filters", name]) else {
                return Ok(false);
            };
            let sig = ddoc.sig(&format!("filters/{name}"));
            match state.js.filter(&sig, source, &ddoc.body, &docs, req).await {
                Ok(mut results) => results.pop().unwrap_or(Ok(false)),
                Err(e) => Err(e.to_string()),
            }
        }
        Filter::View { ddoc, name } => {
            let Some(source) = ddoc.function(&["views", name, "map"]) else {
                return Ok(false);
            };
            let sig = ddoc.sig(&format!("views/{name}/map"));
            let lib = ddoc.body.get("views").and_then(|v| v.get("lib"));
            match state.js.map(&sig, &[source.to_owned()], lib, &docs).await {
                Ok(mut results) => match results.pop().and_then(|mut r| r.pop()) {
                    Some(Ok(rows)) => Ok(!rows.is_empty()),
                    Some(Err(e)) => Err(e),
                    None => Ok(false),
                },
                Err(e) => Err(e.to_string()),
            }
        }
        _ => Ok(true),
    };
    outcome.map_err(|error| {
        tracing::info!(db, doc = %id, error = %error, "filter function failed on a document");
        ApiError::FunctionFailed(error)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    Normal,
    Longpoll,
    Continuous,
    EventSource,
}

/// What a feed lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `_changes`: each document once, at its latest sequence.
    Changes,
    /// `_events`: every accepted revision, optionally of one document.
    Events { doc_id: Option<String> },
    /// `/_db_updates`: the server's databases, each at its latest creation, change or deletion
    /// (the feed's database name is unused).
    DbUpdates,
}

/// A parsed `_changes` or `_events` request.
#[derive(Debug)]
pub struct FeedOpts {
    pub source: Source,
    pub kind: FeedKind,
    /// The store sequence the feed starts after.
    pub since: u64,
    /// The sequence space the feed's sequences are shown in: the database's, or the server's
    /// for `_db_updates`.
    pub incarnation: Incarnation,
    pub limit: Option<u64>,
    pub descending: bool,
    pub all_leaves: bool,
    pub include_docs: bool,
    pub render: RenderOpts,
    pub filter: Filter,
    pub heartbeat: Option<Duration>,
    pub timeout: Duration,
    /// On a database with per-document access, the member reading it
    /// ([`crate::access::reader`]): `_changes` then reads their part of the access index
    /// (revocations show as deletions) and `_events` only documents they can read; `None`
    /// reads everything. Every feed reads through [`read_page`], so no feed can forget it.
    pub reader: Option<crate::access::Reader>,
}

/// One scan: the rows that passed the filter, the last sequence looked at, and whether the
/// store has more beyond it.
pub(crate) struct Scan {
    pub(crate) rows: Vec<(u64, String)>,
    pub(crate) last_seen: Option<u64>,
    pub(crate) more: bool,
}

pub(crate) async fn scan(
    state: &AppState,
    db: &str,
    opts: &FeedOpts,
    since: u64,
    want: u64,
) -> Result<Scan, ApiError> {
    let mut rows = Vec::new();
    let mut cursor = since;
    let mut last_seen = None;
    loop {
        let remaining = want.saturating_sub(rows.len() as u64);
        if remaining == 0 {
            return Ok(Scan {
                rows,
                last_seen,
                more: true,
            });
        }
        let page_size = if matches!(opts.filter, Filter::All) {
            remaining.min(rows_per_page(opts))
        } else {
            rows_per_page(opts)
        };
        let page = read_page(state, db, opts, cursor, page_size).await?;
        // An `_events` page may be longer than asked: the store never ends one inside a sequence.
        let full = page.len() as u64 >= page_size;
        let mut page = page.into_iter().peekable();
        while let Some((seq, row)) = page.next() {
            cursor = seq;
            // An event of a document hidden from a reader is not even looked at for them: the
            // feed's `last_seq` would otherwise tell that something happened there.
            let hidden = row.is_none()
                && opts.reader.is_some()
                && matches!(opts.source, Source::Events { .. });
            if !hidden {
                last_seen = Some(seq);
            }
            if let Some(text) = row {
                rows.push((seq, text));
                // Stop at `want`, but never inside a sequence (several events share one): the
                // next page starts after the last sequence listed.
                let same_seq_follows = page.peek().is_some_and(|(next, _)| *next == seq);
                if rows.len() as u64 >= want && !same_seq_follows {
                    return Ok(Scan {
                        rows,
                        last_seen,
                        more: true,
                    });
                }
            }
        }
        if !full {
            return Ok(Scan {
                rows,
                last_seen,
                more: false,
            });
        }
    }
}

/// One page from the store: every sequence read, with its row when the filter keeps it.
async fn read_page(
    state: &AppState,
    db: &str,
    opts: &FeedOpts,
    since: u64,
    limit: u64,
) -> Result<Vec<(u64, Option<String>)>, ApiError> {
    match &opts.source {
        Source::Changes => {
            let query = ChangesQuery {
                since,
                limit,
                descending: opts.descending,
                include_docs: opts.include_docs || opts.filter.needs_body(),
            };
            let rows = match &opts.reader {
                Some(reader) => {
                    state
                        .store
                        .access_changes(db, &reader.principals, &query)
                        .await?
                }
                None => state.store.changes(db, &query).await?,
            };
            let mut out = Vec::new();
            for row in rows {
                let seq = row.seq;
                out.push((seq, render_row(state, db, opts, row).await?));
            }
            Ok(out)
        }
        Source::Events { doc_id } => {
            let query = EventsQuery {
                since,
                limit,
                doc_id: doc_id.clone(),
                include_docs: opts.include_docs,
            };
            let events = state.store.events(db, &query).await?;
            let readable = readable_events(state, db, opts, &events).await?;
            Ok(events
                .into_iter()
                .map(|e| {
                    let seq = e.seq;
                    let shown = readable.as_ref().is_none_or(|ids| ids.contains(&e.id));
                    (
                        seq,
                        shown.then(|| {
                            event_json(e, &opts.incarnation, opts.include_docs).to_string()
                        }),
                    )
                })
                .collect())
        }
        Source::DbUpdates => {
            let updates = state.store.db_updates(since, limit).await?;
            Ok(updates
                .into_iter()
                .map(|u| {
                    let seq = opts.incarnation.seq(u.seq);
                    let row = json!({"db_name": u.db_name, "type": u.kind, "seq": seq});
                    (u.seq, Some(row.to_string()))
                })
                .collect())
        }
    }
}

/// For a reader of a database with per-document access, the documents of `events` they can
/// read now (whose history they may see); `None` when they read everything.
async fn readable_events(
    state: &AppState,
    db: &str,
    opts: &FeedOpts,
    events: &[Event],
) -> Result<Option<HashSet<String>>, ApiError> {
    let Some(reader) = &opts.reader else {
        return Ok(None);
    };
    let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Some(HashSet::new()));
    }
    let access = state.store.doc_access(db, &reader.principals, &ids).await?;
    Ok(Some(
        ids.into_iter()
            .zip(access)
            .filter(|(_, a)| matches!(a, outpost_store::DocAccess::Readable))
            .map(|(id, _)| id)
            .collect(),
    ))
}

/// An event as `_events` shows it.
pub fn event_json(e: Event, incarnation: &Incarnation, include_docs: bool) -> Value {
    let mut row = json!({
        "seq": incarnation.seq(e.seq),
        "type": e.kind,
        "id": e.id,
        "rev": e.rev.to_string(),
        "parent": e.parent.map(|p| p.to_string()),
        "origin": e.origin,
        "at": e.at,
    });
    if let Some(detail) = e
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    {
        for key in [
            "policy",
            "superseded",
            "reinstates",
            "resolution",
            "removed",
        ] {
            if let Some(v) = detail.get(key) {
                row[key] = v.clone();
            }
        }
    }
    if include_docs {
        row["doc"] = e
            .body
            .and_then(|b| {
                serde_json::from_str(&outpost_core::attachment::without_encoding_info(&b)).ok()
            })
            .unwrap_or(Value::Null);
    }
    row
}

/// A change row as JSON, or `None` when the filter leaves it out.
async fn render_row(
    state: &AppState,
    db: &str,
    opts: &FeedOpts,
    row: ChangeRow,
) -> Result<Option<String>, ApiError> {
    let pass = match &opts.filter {
        Filter::All | Filter::Selector(_) | Filter::Function { .. } | Filter::View { .. } => true,
        Filter::DocIds(ids) => ids.contains(&row.id),
        Filter::Design => row.id.starts_with("_design/"),
    };
    if !pass {
        return Ok(None);
    }
    let Some(winner) = row.tree.winner() else {
        return Ok(None);
    };
    let doc = match &row.body {
        Some(json) if opts.include_docs || opts.filter.needs_body() => {
            let body = StoredBody {
                deleted: winner.deleted,
                json: json.clone(),
            };
            Some(
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
                .await?,
            )
        }
        _ => None,
    };
    if let Filter::Selector(selector) = &opts.filter {
        let value: Value = match &doc {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| ApiError::Internal(e.to_string()))?
            }
            None => Value::Null,
        };
        // A tombstone is matched like any revision (its body is what the deleter kept, with
        // `_deleted: true`), as CouchDB does: a filtered replica must learn of deletions.
        if !selector.matches(&value) {
            return Ok(None);
        }
    }
    if matches!(opts.filter, Filter::Function { .. } | Filter::View { .. }) {
        // As CouchDB gives it to filter functions: without how attachments are stored, even
        // when the feed shows that (`att_encoding_info`).
        let text = doc.as_deref().unwrap_or("null");
        let text = outpost_core::attachment::without_encoding_info(text);
        if !function_admits(state, db, &opts.filter, &row.id, &text).await? {
            return Ok(None);
        }
    }
    let changes: Vec<Value> = if opts.all_leaves {
        row.tree
            .leaves()
            .into_iter()
            .map(|l| json!({ "rev": l.rev.to_string() }))
            .collect()
    } else {
        vec![json!({ "rev": winner.rev.to_string() })]
    };
    let mut text = format!(
        "{{\"seq\":{},\"id\":{},\"changes\":{}",
        opts.incarnation.seq(row.seq).json(),
        Value::String(row.id.clone()),
        Value::Array(changes)
    );
    if winner.deleted {
        text.push_str(",\"deleted\":true");
    }
    if opts.include_docs {
        text.push_str(",\"doc\":");
        text.push_str(doc.as_deref().unwrap_or("null"));
    }
    text.push('}');
    Ok(Some(text))
}

type Chunk = Result<Bytes, std::io::Error>;

/// Starts the feed and returns the streamed response.
pub fn respond(state: &AppState, db: String, opts: FeedOpts) -> Response {
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let content_type = match opts.kind {
        FeedKind::EventSource => "text/event-stream",
        _ => "application/json",
    };
    let task_state = state.clone();
    let open = crate::observe::OpenFeed::start(&opts.kind);
    // The feed outlives the handler; instrumented, its log lines keep the request's id.
    let feed = async move {
        let _open = open;
        let out = Out { tx: tx.clone() };
        // A client that went away ends the feed quietly; a failure is logged, and since the
        // status is already sent, the client sees a truncated body and retries.
        if let Err(FeedEnd::Failed(e)) = run(&task_state, &db, opts, &out).await {
            tracing::warn!(db = %db, error = %e, "changes feed ended early");
            let _ = tx.send(Err(std::io::Error::other("feed failed"))).await;
        }
    };
    state
        .tasks
        .spawn(tracing::Instrument::in_current_span(feed));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("must-revalidate"),
    );
    response
}

#[derive(Debug)]
enum FeedEnd {
    ClientGone,
    Failed(ApiError),
}

impl From<ApiError> for FeedEnd {
    fn from(e: ApiError) -> FeedEnd {
        FeedEnd::Failed(e)
    }
}

struct Out {
    tx: mpsc::Sender<Chunk>,
}

impl Out {
    async fn send(&self, text: impl Into<Bytes>) -> Result<(), FeedEnd> {
        self.tx
            .send(Ok(text.into()))
            .await
            .map_err(|_| FeedEnd::ClientGone)
    }
}

/// What ended a wait for new changes.
enum Woken {
    Changed,
    Heartbeat,
    TimedOut,
    /// The database was deleted or the server is shutting down.
    Closed,
}

async fn run(state: &AppState, db: &str, opts: FeedOpts, out: &Out) -> Result<(), FeedEnd> {
    // Subscribe before the first read, so a write that lands in between still wakes us.
    let mut watch = match opts.source {
        Source::DbUpdates => state.store.watch_db_updates(),
        _ => state.store.watch(db),
    };
    let limit = opts.limit.unwrap_or(u64::MAX);
    match opts.kind {
        FeedKind::Normal => {
            let scan = scan(
                state,
                db,
                &opts,
                opts.since,
                limit.min(rows_per_page(&opts)),
            )
            .await?;
            write_normal(state, db, &opts, scan, limit, out).await
        }
        FeedKind::Longpoll => {
            let deadline = tokio::time::Instant::now() + opts.timeout;
            let mut since = opts.since;
            loop {
                let found = scan(state, db, &opts, since, limit.min(rows_per_page(&opts))).await?;
                if !found.rows.is_empty() {
                    return write_normal(state, db, &opts, found, limit, out).await;
                }
                since = found.last_seen.unwrap_or(since);
                match wait(state, &mut watch, &opts, deadline, out).await? {
                    Woken::Changed | Woken::Heartbeat => continue,
                    Woken::TimedOut | Woken::Closed => {
                        let empty = Scan {
                            rows: Vec::new(),
                            last_seen: Some(since),
                            more: false,
                        };
                        return write_normal(state, db, &opts, empty, limit, out).await;
                    }
                }
            }
        }
        FeedKind::Continuous | FeedKind::EventSource => {
            let sse = opts.kind == FeedKind::EventSource;
            let mut since = opts.since;
            let mut sent = 0u64;
            let mut deadline = tokio::time::Instant::now() + opts.timeout;
            loop {
                let found = scan(
                    state,
                    db,
                    &opts,
                    since,
                    limit.saturating_sub(sent).min(rows_per_page(&opts)),
                )
                .await?;
                since = found.last_seen.unwrap_or(since);
                for (seq, row) in &found.rows {
                    // The id is the sequence as JSON, quotes and all, as CouchDB writes it; a
                    // reconnecting client sends it back as `Last-Event-ID`.
                    let line = if sse {
                        let id = opts.incarnation.seq(*seq).json();
                        format!("data: {row}\nid: {id}\n\n")
                    } else {
                        format!("{row}\n")
                    };
                    out.send(line).await?;
                    sent += 1;
                }
                if !found.rows.is_empty() {
                    deadline = tokio::time::Instant::now() + opts.timeout;
                }
                if sent >= limit {
                    break;
                }
                if found.more {
                    continue;
                }
                match wait(state, &mut watch, &opts, deadline, out).await? {
                    Woken::Changed => {}
                    Woken::Heartbeat => {
                        out.send(if sse {
                            "event: heartbeat\ndata: \n\n"
                        } else {
                            "\n"
                        })
                        .await?;
                    }
                    Woken::TimedOut | Woken::Closed => break,
                }
            }
            if !sse {
                let last_seq = opts.incarnation.seq(since);
                out.send(format!(
                    "{}\n",
                    json!({ "last_seq": last_seq, "pending": 0 })
                ))
                .await?;
            }
            Ok(())
        }
    }
}

/// Waits for a change, a heartbeat tick or the timeout. Heartbeats of longpoll feeds are written
/// here (a newline before the JSON is harmless to every client); continuous feeds write their own.
async fn wait(
    state: &AppState,
    watch: &mut tokio::sync::watch::Receiver<u64>,
    opts: &FeedOpts,
    deadline: tokio::time::Instant,
    out: &Out,
) -> Result<Woken, FeedEnd> {
    loop {
        let tick = opts.heartbeat.unwrap_or(Duration::from_secs(3600));
        let woken = tokio::select! {
            changed = watch.changed() => if changed.is_ok() { Woken::Changed } else { Woken::Closed },
            _ = tokio::time::sleep(tick), if opts.heartbeat.is_some() => Woken::Heartbeat,
            // With a heartbeat the feed runs until the client leaves, as in CouchDB.
            _ = tokio::time::sleep_until(deadline), if opts.heartbeat.is_none() => Woken::TimedOut,
            _ = state.shutdown.cancelled() => Woken::Closed,
            _ = out.tx.closed() => return Err(FeedEnd::ClientGone),
        };
        if matches!(woken, Woken::Heartbeat) && opts.kind == FeedKind::Longpoll {
            out.send("\n").await?;
            continue;
        }
        return Ok(woken);
    }
}

/// Writes a `normal` (or answered `longpoll`) feed: rows, `last_seq` and `pending`.
async fn write_normal(
    state: &AppState,
    db: &str,
    opts: &FeedOpts,
    first: Scan,
    limit: u64,
    out: &Out,
) -> Result<(), FeedEnd> {
    out.send("{\"results\":[\n").await?;
    let mut sent = 0u64;
    let mut last_row_seq = None;
    let mut scan_result = first;
    let mut since = opts.since;
    loop {
        for (seq, row) in &scan_result.rows {
            let sep = if sent == 0 { "" } else { ",\n" };
            out.send(format!("{sep}{row}")).await?;
            sent += 1;
            last_row_seq = Some(*seq);
        }
        since = scan_result.last_seen.unwrap_or(since);
        if sent >= limit || !scan_result.more {
            break;
        }
        scan_result = scan(
            state,
            db,
            opts,
            since,
            (limit - sent).min(rows_per_page(opts)),
        )
        .await?;
    }
    let truncated = sent >= limit && limit != u64::MAX;
    // Clients page with `since=last_seq`, so when `limit` cut the feed short it must be the last
    // returned row's sequence; otherwise it is the last sequence looked at (never the database's
    // current sequence read afterwards, which could skip a change that landed in between).
    let last_seq = if truncated {
        last_row_seq.unwrap_or(since)
    } else {
        since
    };
    let pending = if truncated && !opts.descending && opts.source == Source::Changes {
        match &opts.reader {
            Some(reader) => state
                .store
                .access_pending(db, &reader.principals, last_seq)
                .await
                .map_err(ApiError::from)?,
            None => state
                .store
                .changes_pending(db, last_seq)
                .await
                .map_err(ApiError::from)?,
        }
    } else {
        0
    };
    let last_seq = opts.incarnation.seq(last_seq).json();
    out.send(format!(
        "\n],\n\"last_seq\":{last_seq},\"pending\":{pending}}}\n"
    ))
    .await?;
    Ok(())
}
