//! The multiplexed feed: one connection carrying the `_changes` feeds of many databases
//! (docs/feed.md). A browser may hold six HTTP/1.1 connections per host, so a page that follows
//! more than a few databases with one `_changes` request each starves; here it subscribes to
//! them over one WebSocket or event stream instead.
//!
//! A [`Mux`] is one client connection: its subscriptions and its [`Outbox`]. Each subscription
//! is a tracked task that reads the database with the same scan and filters as `_changes`
//! ([`crate::feed::scan`]), so authorization, filters and rendering are those of `_changes`,
//! and writes each change into the outbox. The outbox is a bounded channel: a client that
//! leaves it full for longer than `slow_client_timeout` is told why in one last frame and cut,
//! so a slow reader never makes the server hold more than `buffer` frames for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::Method;
use outpost_auth::UserCtx;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::docjson::RenderOpts;
use crate::feed::{FeedKind, FeedOpts, Source, rows_per_page, scan};
use crate::routes::changes::{DEFAULT_TIMEOUT, FilterSpec, build_filter};
use crate::seq::Incarnation;
use crate::{ApiError, AppState};

/// Limits of the multiplexed feed.
#[derive(Debug, Clone)]
pub struct FeedLimits {
    /// Most connections open at once, WebSocket and event stream together; more are answered
    /// 503. (A WebSocket leaves the HTTP connection limit once upgraded, so this is its bound.)
    pub max_connections: usize,
    /// Most databases one connection may follow at once.
    pub max_subscriptions: usize,
    /// Frames waiting to be written to one client; the only memory a client makes the server
    /// hold for it (each frame is one change row, at most a document with its attachments when
    /// it asked for them).
    pub buffer: usize,
    /// How long a full buffer may stay full before its client is cut as too slow.
    pub slow_client_timeout: Duration,
    /// Largest command a client may send.
    pub max_command_bytes: usize,
    /// How often an idle connection is pinged (WebSocket) or sent a comment (event stream), so
    /// proxies keep it and a vanished peer is noticed.
    pub heartbeat: Duration,
}

impl Default for FeedLimits {
    fn default() -> FeedLimits {
        FeedLimits {
            max_connections: 10_000,
            max_subscriptions: 200,
            buffer: 256,
            slow_client_timeout: Duration::from_secs(10),
            max_command_bytes: 1024 * 1024,
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// How long the last frame of a cut connection may wait for the client to take it.
pub(crate) const FINAL_FRAME_GRACE: Duration = Duration::from_secs(10);

/// The server's view of every multiplexed-feed connection: counts, and the event streams that
/// `POST /_outpost/v1/feed/{stream}` can reach.
#[derive(Debug, Default)]
pub struct FeedHub {
    /// Connections open now.
    open: AtomicU64,
    /// Connections cut because their client read too slowly, since the server started.
    cut: AtomicU64,
    /// Event streams by id. Weak, so a stream's lifetime is its response body's alone.
    streams: Mutex<HashMap<String, Weak<Mux>>>,
}

impl FeedHub {
    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections cut as too slow since the server started.
    pub fn slow_clients_cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    /// The event stream `id`, if it is open and was opened by `user`.
    pub(crate) fn stream(&self, id: &str, user: &UserCtx) -> Option<Arc<Mux>> {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mux = streams.get(id)?.upgrade()?;
        (mux.user.name == user.name).then_some(mux)
    }

    pub(crate) fn register_stream(&self, id: &str, mux: &Arc<Mux>) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.insert(id.to_owned(), Arc::downgrade(mux));
    }

    pub(crate) fn forget_stream(&self, id: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.remove(id);
    }
}

/// One frame for the client: its type (also the event name on an event stream) and its JSON.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub kind: &'static str,
    pub json: String,
}

impl Frame {
    fn new(kind: &'static str, value: &Value) -> Frame {
        Frame {
            kind,
            json: value.to_string(),
        }
    }

    /// An `error` frame about `db` (or the connection) from an API error.
    pub(crate) fn error(db: Option<&str>, e: &ApiError) -> Frame {
        let mut body = e.body();
        body["type"] = json!("error");
        if let Some(db) = db {
            body["db"] = json!(db);
        }
        Frame::new("error", &body)
    }
}

/// The client went away or was cut; whoever was sending stops.
#[derive(Debug)]
pub(crate) struct Gone;

/// The bounded outgoing side of a connection.
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Frame>,
    /// Fires when the connection ends, for whatever reason; every subscription's token is a
    /// child of it.
    pub(crate) cut: CancellationToken,
    /// The frame that tells the client why it was cut, when it was.
    last_words: OnceLock<Frame>,
    slow_client_timeout: Duration,
    hub: Arc<FeedHub>,
}

impl Outbox {
    /// Queues `frame`, waiting while the buffer is full, at most `slow_client_timeout`; then
    /// the client is cut. Gives up at once when `stop` fires.
    pub(crate) async fn send(&self, frame: Frame, stop: &CancellationToken) -> Result<(), Gone> {
        let queued = tokio::time::timeout(self.slow_client_timeout, self.tx.send(frame));
        tokio::select! {
            biased;
            _ = stop.cancelled() => Err(Gone),
            sent = queued => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => {
                    self.cut.cancel();
                    Err(Gone)
                }
                Err(_) => {
                    self.cut_slow();
                    Err(Gone)
                }
            },
        }
    }

    fn cut_slow(&self) {
        let first = self
            .last_words
            .set(Frame::new(
                "error",
                &json!({
                    "type": "error",
                    "error": "slow_client",
                    "reason": format!(
                        "the client did not read its feed for {} ms with {} frames waiting; \
                         reconnect and resume from the last sequence of each database",
                        self.slow_client_timeout.as_millis(),
                        self.tx.max_capacity()
                    ),
                }),
            ))
            .is_ok();
        if first {
            self.hub.cut.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("outpost_feed_slow_clients_total").increment(1);
            tracing::info!("multiplexed feed client cut as too slow");
        }
        self.cut.cancel();
    }

    /// Ends the connection because the server shuts down, telling the client so.
    pub(crate) fn shut_down(&self) {
        let _ = self.last_words.set(Frame::new(
            "error",
            &json!({"type": "error", "error": "shutting_down", "reason": "the server is shutting down; reconnect"}),
        ));
        self.cut.cancel();
    }
}

/// What the connection's writer takes next.
pub(crate) enum Next {
    Frame(Frame),
    /// The last frame: the connection was cut, and this says why.
    Last(Frame),
}

/// The receiving side of an [`Outbox`], read by the connection's writer. Dropping it (the
/// client went away) ends the connection.
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Frame>,
    out: Arc<Outbox>,
    done: bool,
    _open: OpenConnection,
}

impl Inbox {
    /// The next frame, or the last words once the connection was cut (frames still buffered
    /// then are dropped), or `None` at the end.
    pub(crate) async fn next(&mut self) -> Option<Next> {
        if self.done {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.out.cut.cancelled() => {
                self.done = true;
                self.out.last_words.get().cloned().map(Next::Last)
            }
            frame = self.rx.recv() => frame.map(Next::Frame),
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.out.cut.cancel();
    }
}

/// Counts a connection in `outpost_feed_connections` while it lives.
struct OpenConnection(Arc<FeedHub>);

impl OpenConnection {
    fn start(hub: Arc<FeedHub>) -> OpenConnection {
        hub.open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("outpost_feed_connections").increment(1.0);
        OpenConnection(hub)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("outpost_feed_connections").decrement(1.0);
    }
}

/// A running subscription.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One client connection of the multiplexed feed.
pub(crate) struct Mux {
    state: AppState,
    /// Who opened the connection; every subscription is authorized for this user.
    user: UserCtx,
    pub(crate) out: Arc<Outbox>,
    /// Held across a whole command, so the commands of one connection apply in order.
    subs: tokio::sync::Mutex<HashMap<String, Running>>,
}

/// A subscription checked and ready to start.
pub(crate) struct Prepared {
    db: String,
    opts: FeedOpts,
}

impl Mux {
    /// A new connection for `user`, and the inbox its writer reads; 503 when the server
    /// holds `max_connections` already.
    pub(crate) fn open(state: &AppState, user: UserCtx) -> Result<(Arc<Mux>, Inbox), ApiError> {
        let limits = &state.config.feed;
        // Counted before the check, so two connections arriving together cannot both pass.
        let open = OpenConnection::start(state.feeds.clone());
        if state.feeds.open_connections() > limits.max_connections as u64 {
            return Err(ApiError::Busy(format!(
                "the server holds {} feed connections already",
                limits.max_connections
            )));
        }
        let (tx, rx) = mpsc::channel(limits.buffer.max(1));
        let out = Arc::new(Outbox {
            tx,
            cut: CancellationToken::new(),
            last_words: OnceLock::new(),
            slow_client_timeout: limits.slow_client_timeout,
            hub: state.feeds.clone(),
        });
        let mux = Arc::new(Mux {
            state: state.clone(),
            user,
            out: out.clone(),
            subs: tokio::sync::Mutex::new(HashMap::new()),
        });
        let inbox = Inbox {
            rx,
            out,
            done: false,
            _open: open,
        };
        Ok((mux, inbox))
    }

    /// Runs one client command (`subscribe` or `unsubscribe`); on success its acknowledgement
    /// has been queued on the connection (before any change of a new subscription) and is
    /// returned too.
    pub(crate) async fn command(&self, cmd: &Value) -> Result<Value, ApiError> {
        match cmd.get("type").and_then(Value::as_str) {
            Some("subscribe") => {
                let prepared = self.prepare(cmd).await?;
                self.start(prepared).await
            }
            Some("unsubscribe") => self.unsubscribe(db_name(cmd)?).await,
            Some(other) => Err(ApiError::bad_request(format!(
                "unknown command type {other:?}; expected subscribe or unsubscribe"
            ))),
            None => Err(ApiError::bad_request(
                "a command is a JSON object with a \"type\"",
            )),
        }
    }

    /// Checks a `subscribe` command as `GET /{db}/_changes` with the same parameters would be
    /// checked: the same authorization decision, the same filter parsing.
    pub(crate) async fn prepare(&self, cmd: &Value) -> Result<Prepared, ApiError> {
        let db = db_name(cmd)?.to_owned();
        let state = &self.state;
        let need = crate::authz::need(&Method::GET, &[db.as_str(), "_changes"]);
        let level = crate::authz::check(state, &self.user, &need).await?;
        // In a database with per-document access, a member's subscription reads only their part
        // of the access index, as their `_changes` does.
        let reader = crate::access::reader_for(state, &self.user, level, &db).await?;
        let info = state.store.db_info(&db).await?;
        let incarnation = Incarnation::of_db(&info.name, info.created_at);
        let since = match cmd.get("since") {
            None => 0,
            Some(since) => incarnation.since_json(since, info.update_seq)?,
        };
        let flag = |name: &str| -> Result<bool, ApiError> {
            match cmd.get(name) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(ApiError::bad_request(format!("{name} must be a boolean"))),
            }
        };
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            match cmd.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
            }
        };
        let all_leaves = match text("style")? {
            None | Some("main_only") => false,
            Some("all_docs") => true,
            Some(other) => return Err(ApiError::bad_request(format!("unknown style {other:?}"))),
        };
        let spec = FilterSpec {
            name: text("filter")?,
            view: text("view")?,
            doc_ids: cmd.get("doc_ids").cloned(),
            selector: cmd.get("selector").cloned(),
        };
        let fn_req = || {
            json!({
                "info": { "db_name": db },
                "method": "GET",
                "query": cmd.get("query").cloned().unwrap_or_else(|| json!({})),
                "body": "undefined",
                "userCtx": { "db": db, "name": self.user.name, "roles": self.user.roles },
                "headers": {},
                "cookie": {},
                "form": {},
                "peer": "127.0.0.1",
            })
        };
        let filter = build_filter(state, &db, &spec, fn_req).await?;
        let opts = FeedOpts {
            source: Source::Changes,
            kind: FeedKind::Continuous,
            since,
            incarnation,
            limit: None,
            descending: false,
            all_leaves,
            include_docs: flag("include_docs")?,
            render: RenderOpts {
                conflicts: flag("conflicts")?,
                ..RenderOpts::default()
            },
            filter,
            heartbeat: None,
            timeout: DEFAULT_TIMEOUT,
            reader,
        };
        Ok(Prepared { db, opts })
    }

    /// Starts a prepared subscription: queues its acknowledgement, then follows the database.
    pub(crate) async fn start(&self, prepared: Prepared) -> Result<Value, ApiError> {
        let Prepared { db, opts } = prepared;
        let mut subs = self.subs.lock().await;
        subs.retain(|_, running| !running.task.is_finished());
        if subs.contains_key(&db) {
            return Err(ApiError::bad_request(format!(
                "already subscribed to {db:?}; unsubscribe first"
            )));
        }
        let max = self.state.config.feed.max_subscriptions;
        if subs.len() >= max {
            return Err(ApiError::TooLarge(format!(
                "at most {max} subscriptions per connection"
            )));
        }
        let since = opts.incarnation.seq(opts.since);
        let ack = json!({"type": "subscribed", "db": db, "since": since});
        self.out
            .send(Frame::new("subscribed", &ack), &self.out.cut)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let token = self.out.cut.child_token();
        let task = self
            .state
            .tasks
            .spawn(tracing::Instrument::in_current_span(follow(
                self.state.clone(),
                db.clone(),
                opts,
                self.out.clone(),
                token.clone(),
            )));
        subs.insert(db, Running { token, task });
        Ok(ack)
    }

    async fn unsubscribe(&self, db: &str) -> Result<Value, ApiError> {
        let mut subs = self.subs.lock().await;
        let Some(running) = subs.remove(db) else {
            return Err(ApiError::NotFound(format!("not subscribed to {db:?}")));
        };
        running.token.cancel();
        // Waited for, so that no change of this database follows the acknowledgement.
        let _ = running.task.await;
        let ack = json!({"type": "unsubscribed", "db": db});
        self.out
            .send(Frame::new("unsubscribed", &ack), &self.out.cut)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        Ok(ack)
    }
}

fn db_name(cmd: &Value) -> Result<&str, ApiError> {
    let db = cmd
        .get("db")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the command names no \"db\""))?;
    outpost_core::names::validate_db_name(db)?;
    Ok(db)
}

/// A subscription: the database's changes after `opts.since`, then each new one as it is
/// committed, until the client unsubscribes, the connection ends or the database is deleted.
async fn follow(
    state: AppState,
    db: String,
    opts: FeedOpts,
    out: Arc<Outbox>,
    token: CancellationToken,
) {
    // Subscribe before the first read, so a write that lands in between still wakes us.
    let mut watch = state.store.watch(&db);
    let db_json = Value::String(db.clone()).to_string();
    let mut since = opts.since;
    let mut caught_up = false;
    loop {
        let found = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            found = scan(&state, &db, &opts, since, rows_per_page(&opts)) => found,
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                if let ApiError::Internal(cause) = &e {
                    tracing::warn!(db = %db, error = %cause, "multiplexed feed subscription failed");
                }
                let _ = out.send(Frame::error(Some(&db), &e), &token).await;
                return;
            }
        };
        for (seq, row) in found.rows {
            let seq = opts.incarnation.seq(seq).json();
            let frame = Frame {
                kind: "change",
                json: format!(
                    "{{\"type\":\"change\",\"db\":{db_json},\"seq\":{seq},\"change\":{row}}}"
                ),
            };
            if out.send(frame, &token).await.is_err() {
                return;
            }
        }
        since = found.last_seen.unwrap_or(since);
        if found.more {
            continue;
        }
        if !caught_up {
            caught_up = true;
            let frame = Frame::new(
                "caught_up",
                &json!({"type": "caught_up", "db": db, "last_seq": opts.incarnation.seq(since)}),
            );
            if out.send(frame, &token).await.is_err() {
                return;
            }
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    let frame = Frame::new(
                        "closed",
                        &json!({"type": "closed", "db": db, "reason": "the database was deleted"}),
                    );
                    let _ = out.send(frame, &token).await;
                    return;
                }
            }
        }
    }
}
