//! The stale-read cache: the last good `GET` answer per URL (and per credentials), served with
//! `Age` and a stale marker while the upstream is down, when the operator enabled it.
//!
//! Entries are keyed by the request target plus a hash of `Authorization` and `Cookie`, so one
//! user's answer is never served to another. Bounded by bytes, evicting the oldest first.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

/// Largest single answer kept.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

static X_OUTPOST_STALE: HeaderName = HeaderName::from_static("x-outpost-stale");

/// Identifies one cached answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    target: String,
    credentials: u64,
}

impl CacheKey {
    /// The key of a request.
    pub fn of(target: &str, headers: &HeaderMap) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for name in [AUTHORIZATION, COOKIE] {
            for v in headers.get_all(name) {
                v.as_bytes().hash(&mut h);
            }
        }
        Self {
            target: target.to_owned(),
            credentials: h.finish(),
        }
    }
}

struct Cached {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    generation: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Cached>,
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    generation: u64,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct StaleCache {
    /// A std mutex: every critical section is a few map operations and never awaits.
    inner: Arc<Mutex<Inner>>,
    max_bytes: usize,
}

impl StaleCache {
    /// A cache holding at most `max_bytes` of bodies.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_bytes,
        }
    }

    fn insert(&self, key: CacheKey, status: StatusCode, headers: HeaderMap, body: Bytes) {
        let mut inner = self.inner.lock().expect("cache lock");
        inner.generation += 1;
        let generation = inner.generation;
        let size = body.len();
        if let Some(old) = inner.map.insert(
            key.clone(),
            Cached {
                status,
                headers,
                body,
                stored: Instant::now(),
                generation,
            },
        ) {
            inner.bytes -= old.body.len();
        }
        inner.bytes += size;
        inner.order.push_back((key, generation));
        while inner.bytes > self.max_bytes {
            let Some((old_key, old_gen)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .map
                .get(&old_key)
                .is_some_and(|c| c.generation == old_gen)
                && let Some(old) = inner.map.remove(&old_key)
            {
                inner.bytes -= old.body.len();
            }
        }
    }

    /// The stale answer for `key`, if any, with `Age` and the stale markers.
    pub fn serve(&self, key: &CacheKey, method: &Method) -> Option<Response> {
        let inner = self.inner.lock().expect("cache lock");
        let cached = inner.map.get(key)?;
        let body = if *method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(cached.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = cached.status;
        *resp.headers_mut() = cached.headers.clone();
        let age = cached.stored.elapsed().as_secs();
        resp.headers_mut()
            .insert(http::header::AGE, HeaderValue::from(age));
        resp.headers_mut().insert(
            http::header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
        resp.headers_mut()
            .insert(X_OUTPOST_STALE.clone(), HeaderValue::from_static("true"));
        Some(resp)
    }

    /// Wraps an upstream `GET` answer so that, once streamed to the client in full, it is kept.
    pub fn capture(
        &self,
        key: CacheKey,
        status: StatusCode,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Body {
        let storable = status == StatusCode::OK
            && !headers
                .get_all(CACHE_CONTROL)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("no-store")));
        let too_big = body
            .size_hint()
            .lower()
            .try_into()
            .map_or(true, |n: usize| n > MAX_ENTRY_BYTES);
        if !storable || too_big {
            return Body::new(body);
        }
        Body::new(CaptureBody {
            inner: body,
            buf: Some(BytesMut::new()),
            pending: Some((self.clone(), key, status, headers.clone())),
        })
    }
}

/// A body that copies what it streams and stores it in the cache when complete.
struct CaptureBody {
    inner: Incoming,
    buf: Option<BytesMut>,
    pending: Option<(StaleCache, CacheKey, StatusCode, HeaderMap)>,
}

impl CaptureBody {
    fn finish(&mut self) {
        if let (Some(buf), Some((cache, key, status, headers))) =
            (self.buf.take(), self.pending.take())
        {
            cache.insert(key, status, headers, buf.freeze());
        }
    }
}

impl HttpBody for CaptureBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(data), Some(buf)) = (frame.data_ref(), this.buf.as_mut()) {
                    if buf.len() + data.len() > MAX_ENTRY_BYTES {
                        this.buf = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
                // The server may stop polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.buf = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
