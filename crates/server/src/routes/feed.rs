//! `/_outpost/v1/feed`: the multiplexed feed's HTTP face (docs/feed.md).
//!
//! `GET /_outpost/v1/feed` with `Upgrade: websocket` opens a WebSocket; commands arrive as JSON
//! text frames and changes leave as JSON text frames. Without the upgrade it answers an event
//! stream (`text/event-stream`) whose first event names the stream, so that
//! `POST /_outpost/v1/feed/{stream}` can send it the same commands. Either way `?subscribe=` may
//! carry the first subscriptions, checked before the connection is accepted. The engine behind
//! both is [`crate::mux`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Method, header};
use serde_json::{Value, json};

use super::{not_allowed, ok};
use crate::mux::{FINAL_FRAME_GRACE, FeedHub, Frame, Inbox, Mux, Next, Prepared};
use crate::request::Req;
use crate::{ApiError, AppState};

/// The WebSocket's read chunk and the write size it gathers before writing to the socket.
const WS_BUFFER_BYTES: usize = 8 * 1024;

/// `/_outpost/v1/feed/{rest}`.
pub async fn route(state: &AppState, rest: &[&str], req: &mut Req) -> Result<Response, ApiError> {
    match rest {
        [] => open(state, req).await,
        [stream] => control(state, stream, req).await,
        _ => Err(ApiError::NotFound(format!(
            "no such resource /_outpost/v1/feed/{}",
            rest.join("/")
        ))),
    }
}

/// `GET /_outpost/v1/feed`: a WebSocket when the client asks to upgrade, an event stream
/// otherwise.
async fn open(state: &AppState, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET allowed"));
    }
    let upgrade = req.take_websocket();
    if upgrade.is_some() && !origin_allowed(state, req) {
        return Err(ApiError::Forbidden(
            "the page's origin may not open this server's feed".into(),
        ));
    }
    let (mux, inbox) = Mux::open(state, req.user.clone())?;
    let mut prepared = Vec::new();
    for cmd in initial_subscriptions(req)? {
        prepared.push(mux.prepare(&cmd).await?);
    }
    match upgrade {
        Some(upgrade) => {
            let state = state.clone();
            let limits = &state.config.feed;
            // Buffers sized for commands and change rows rather than tungstenite's 128 KiB
            // defaults, which would be most of what an idle subscriber costs; both grow when a
            // larger message needs it.
            let upgrade = upgrade
                .read_buffer_size(WS_BUFFER_BYTES)
                .write_buffer_size(WS_BUFFER_BYTES)
                .max_message_size(limits.max_command_bytes)
                .max_frame_size(limits.max_command_bytes);
            Ok(upgrade.on_upgrade(move |socket| async move {
                // Handed to the server's tracker, so shutdown waits for the connection to end.
                let tasks = state.tasks.clone();
                let _ = tasks
                    .spawn(websocket(state, mux, inbox, prepared, socket))
                    .await;
            }))
        }
        None => Ok(event_stream(state, mux, inbox, prepared)),
    }
}

/// Whether a browser page may open the WebSocket. Browsers send cookies with a WebSocket
/// handshake from any site and apply no CORS to it, so without this check any page could read a
/// signed-in user's databases. Allowed: no `Origin` (not a browser), the server's own origin, and
/// the origins CORS allows (with no list configured, any origin only while no account is
/// configured, as for CORS).
fn origin_allowed(state: &AppState, req: &Req) -> bool {
    let Some(origin) = req.headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let same_site = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        });
    same_site
        || match &state.config.cors_origins {
            None => !state.auth.enforced(),
            Some(list) => list.iter().any(|allowed| allowed == origin),
        }
}

/// The `subscribe` query parameter: a JSON array of subscriptions (or one), each a `subscribe`
/// command without its `type`.
fn initial_subscriptions(req: &Req) -> Result<Vec<Value>, ApiError> {
    let list = match req.query.json("subscribe")? {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => {
            return Err(ApiError::bad_request(
                "subscribe must be a JSON array of subscriptions",
            ));
        }
    };
    list.into_iter()
        .map(|mut sub| match sub.as_object_mut() {
            Some(fields) => {
                fields.insert("type".into(), json!("subscribe"));
                Ok(sub)
            }
            None => Err(ApiError::bad_request("each subscription is a JSON object")),
        })
        .collect()
}

/// Starts the subscriptions given with the request; one that fails now (say, its database was
/// deleted in between) is reported on the connection.
async fn start_all(mux: &Mux, prepared: Vec<Prepared>) {
    for p in prepared {
        if let Err(e) = mux.start(p).await
            && mux
                .out
                .send(Frame::error(None, &e), &mux.out.cut)
                .await
                .is_err()
        {
            return;
        }
    }
}

async fn websocket(
    state: AppState,
    mux: Arc<Mux>,
    mut inbox: Inbox,
    prepared: Vec<Prepared>,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let cut = mux.out.cut.clone();
    let reader = async {
        start_all(&mux, prepared).await;
        loop {
            let message = tokio::select! {
                biased;
                _ = cut.cancelled() => break,
                _ = state.shutdown.cancelled() => {
                    mux.out.shut_down();
                    break;
                }
                message = stream.next() => message,
            };
            let reply = match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text) {
                    Ok(cmd) => mux
                        .command(&cmd)
                        .await
                        .err()
                        .map(|e| Frame::error(cmd.get("db").and_then(Value::as_str), &e)),
                    Err(e) => Some(Frame::error(
                        None,
                        &ApiError::bad_request(format!("a command must be a JSON object: {e}")),
                    )),
                },
                Some(Ok(Message::Binary(_))) => Some(Frame::error(
                    None,
                    &ApiError::bad_request("commands are JSON text frames"),
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    cut.cancel();
                    break;
                }
            };
            if let Some(frame) = reply
                && mux.out.send(frame, &cut).await.is_err()
            {
                break;
            }
        }
    };
    let writer = async {
        let heartbeat = state.config.feed.heartbeat;
        let mut beat = heartbeat_timer(heartbeat);
        loop {
            let message = tokio::select! {
                next = inbox.next() => match next {
                    Some(Next::Frame(frame)) => Message::Text(frame.json.into()),
                    Some(Next::Last(frame)) => {
                        let code = if frame.json.contains("\"slow_client\"") {
                            close_code::POLICY
                        } else {
                            close_code::AWAY
                        };
                        let last = async {
                            sink.send(Message::Text(frame.json.into())).await?;
                            sink.send(Message::Close(Some(CloseFrame { code, reason: "".into() }))).await
                        };
                        let _ = tokio::time::timeout(FINAL_FRAME_GRACE, last).await;
                        break;
                    }
                    None => {
                        let close = sink.send(Message::Close(None));
                        let _ = tokio::time::timeout(FINAL_FRAME_GRACE, close).await;
                        break;
                    }
                },
                _ = beat.tick() => Message::Ping(Bytes::new()),
            };
            // A write blocked on a client that does not read gives way to the cut, whose last
            // words the next turn sends.
            tokio::select! {
                biased;
                _ = cut.cancelled() => {}
                sent = sink.send(message) => if sent.is_err() {
                    cut.cancel();
                    break;
                }
            }
        }
        cut.cancel();
    };
    tokio::join!(reader, writer);
}

/// An event stream: the stream's id first, then one event per frame (the frame's type as the
/// event name), and a comment line as heartbeat.
fn event_stream(
    state: &AppState,
    mux: Arc<Mux>,
    inbox: Inbox,
    prepared: Vec<Prepared>,
) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    state.feeds.register_stream(&id, &mux);
    let starter = mux.clone();
    state
        .tasks
        .spawn(async move { start_all(&starter, prepared).await });
    let (out, shutdown) = (mux.out.clone(), state.shutdown.clone());
    state.tasks.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => out.shut_down(),
            _ = out.cut.cancelled() => {}
        }
    });
    let heartbeat = state.config.feed.heartbeat;
    let hello = Frame {
        kind: "stream",
        json: json!({"type": "stream", "stream": id}).to_string(),
    };
    let stream = EventStream {
        hello: Some(hello),
        inbox,
        beat: heartbeat_timer(heartbeat),
        _registered: Registered {
            hub: state.feeds.clone(),
            id,
            _mux: mux,
        },
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies that buffer answers (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct EventStream {
    hello: Option<Frame>,
    inbox: Inbox,
    beat: tokio::time::Interval,
    _registered: Registered,
}

impl EventStream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(hello) = self.hello.take() {
            return Some(sse(&hello));
        }
        tokio::select! {
            next = self.inbox.next() => match next? {
                Next::Frame(frame) | Next::Last(frame) => Some(sse(&frame)),
            },
            _ = self.beat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
        }
    }
}

/// Ticks every `period`, first after one period; ticks missed while a write was blocked are not
/// made up in a burst.
fn heartbeat_timer(period: std::time::Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

fn sse(frame: &Frame) -> Bytes {
    Bytes::from(format!("event: {}\ndata: {}\n\n", frame.kind, frame.json))
}

/// Keeps an event stream reachable by its id for as long as its body lives.
struct Registered {
    hub: Arc<FeedHub>,
    id: String,
    _mux: Arc<Mux>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.forget_stream(&self.id);
    }
}

/// `POST /_outpost/v1/feed/{stream}`: one command for an open event stream of the same user.
/// Its acknowledgement is both the answer and an event on the stream, ahead of the changes.
async fn control(state: &AppState, stream: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("Only POST allowed"));
    }
    let Some(mux) = state.feeds.stream(stream, &req.user) else {
        return Err(ApiError::NotFound("no such feed stream".into()));
    };
    let bytes = req.bytes().await?;
    if bytes.len() > state.config.feed.max_command_bytes {
        return Err(ApiError::TooLarge(format!(
            "a command is at most {} bytes",
            state.config.feed.max_command_bytes
        )));
    }
    let cmd: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("a command must be a JSON object: {e}")))?;
    let ack = mux.command(&cmd).await?;
    Ok(ok(ack.to_string()))
}
