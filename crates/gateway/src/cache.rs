//! The stale-read cache: the last good `GET` answer per URL (and per credentials), served with
//! `Age` and a stale marker while the upstream is down, when the operator enabled it.
//!
//! It follows the storage rules of HTTP caching (RFC 9111) that matter for a cache shared by
//! many users: answers marked `no-store` or `private`, answers setting a cookie, and `Vary: *`
//! are never kept; `Vary` is honoured (an answer is served only to requests with the same values
//! of the headers it names). Entries are also keyed by a hash of the request's credentials
//! ([`crate::forward::CREDENTIAL_HEADERS`]), so one user's answer is never served to another.
//! Every byte is counted toward the limit (target, headers, body and a fixed overhead per entry),
//! and the eviction index holds exactly one slot per entry, so a hot URL cannot grow it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// Largest single answer kept.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// What an entry costs besides its target, headers and body: the map and index slots, the
/// structs and the allocator's rounding, counted so that many tiny answers are bounded too.
const ENTRY_OVERHEAD: usize = 256;

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
        crate::forward::credentials(headers).hash(&mut h);
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
    /// The request's values of the headers the answer's `Vary` names.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    stored: Instant,
    generation: u64,
    size: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Cached>,
    /// Oldest first; exactly one slot per entry of `map`.
    order: BTreeMap<u64, CacheKey>,
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

/// Whether an answer may be kept and served to later requests (RFC 9111 section 3, for a
/// shared cache): never `no-store`, `private`, a cookie being set, or `Vary: *`.
fn storable(status: StatusCode, headers: &HeaderMap) -> bool {
    let directive = |name: &str| {
        headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|d| {
                    d.split('=')
                        .next()
                        .is_some_and(|d| d.trim().eq_ignore_ascii_case(name))
                })
            })
        })
    };
    status == StatusCode::OK
        && !directive("no-store")
        && !directive("private")
        && !headers.contains_key(SET_COOKIE)
        && !vary_names(headers).iter().any(|n| n == "*")
}

fn vary_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

impl StaleCache {
    /// A cache holding at most `max_bytes`, everything counted.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_bytes,
        }
    }

    fn insert(
        &self,
        key: CacheKey,
        status: StatusCode,
        headers: HeaderMap,
        vary: Vec<(HeaderName, Option<HeaderValue>)>,
        body: Bytes,
    ) {
        let size = ENTRY_OVERHEAD
            + key.target.len()
            + body.len()
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + vary
                .iter()
                .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, HeaderValue::len) + 32)
                .sum::<usize>();
        let mut inner = self.inner.lock().expect("cache lock");
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= old.size;
            inner.order.remove(&old.generation);
        }
        if size > self.max_bytes {
            return;
        }
        inner.generation += 1;
        let generation = inner.generation;
        inner.order.insert(generation, key.clone());
        inner.map.insert(
            key,
            Cached {
                status,
                headers,
                body,
                vary,
                stored: Instant::now(),
                generation,
                size,
            },
        );
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.bytes -= old.size;
            }
        }
    }

    /// The stale answer for `key`, if any and if its `Vary` matches `request`, with `Age` and
    /// the stale markers.
    pub fn serve(&self, key: &CacheKey, method: &Method, request: &HeaderMap) -> Option<Response> {
        let inner = self.inner.lock().expect("cache lock");
        let cached = inner.map.get(key)?;
        if cached
            .vary
            .iter()
            .any(|(name, value)| request.get(name) != value.as_ref())
        {
            return None;
        }
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

    /// Wraps an upstream `GET` answer to `request` so that, once streamed to the client in full,
    /// it is kept (if it may be; see the module documentation).
    pub fn capture(
        &self,
        key: CacheKey,
        request: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        body: Body,
    ) -> Body {
        let too_big = body
            .size_hint()
            .lower()
            .try_into()
            .map_or(true, |n: usize| n > MAX_ENTRY_BYTES);
        if !storable(status, headers) || too_big {
            return Body::new(body);
        }
        let vary = vary_names(headers)
            .into_iter()
            .filter_map(|n| HeaderName::try_from(n).ok())
            .map(|n| {
                let value = request.get(&n).cloned();
                (n, value)
            })
            .collect();
        Body::new(CaptureBody {
            inner: body,
            buf: Some(BytesMut::new()),
            pending: Some((self.clone(), key, status, headers.clone(), vary)),
        })
    }
}

/// A body that copies what it streams and stores it in the cache when complete.
struct CaptureBody {
    inner: Body,
    buf: Option<BytesMut>,
    pending: Option<Pending>,
}

/// What is needed to store a captured answer once its body is complete.
type Pending = (
    StaleCache,
    CacheKey,
    StatusCode,
    HeaderMap,
    Vec<(HeaderName, Option<HeaderValue>)>,
);

impl CaptureBody {
    fn finish(&mut self) {
        if let (Some(buf), Some((cache, key, status, headers, vary))) =
            (self.buf.take(), self.pending.take())
        {
            cache.insert(key, status, headers, vary, buf.freeze());
        }
    }
}

impl HttpBody for CaptureBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    /// Issue 15, defect 8: only body bytes were counted, and the index grew with every store
    /// of a hot URL.
    #[test]
    fn every_byte_is_counted_and_the_index_is_bounded() {
        let cache = StaleCache::new(64 * 1024);
        let key = CacheKey::of("/hot", &HeaderMap::new());
        for _ in 0..10_000 {
            cache.insert(
                key.clone(),
                StatusCode::OK,
                HeaderMap::new(),
                vec![],
                Bytes::new(),
            );
        }
        {
            let inner = cache.inner.lock().unwrap();
            assert_eq!((inner.map.len(), inner.order.len()), (1, 1));
        }
        // Empty bodies with large headers still fill the cache, and it stays within its bound.
        let big = "x".repeat(4000);
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::try_from(big.as_str()).unwrap());
        for i in 0..1000 {
            let key = CacheKey::of(&format!("/{i}"), &HeaderMap::new());
            cache.insert(key, StatusCode::OK, h.clone(), vec![], Bytes::new());
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= 64 * 1024, "{}", inner.bytes);
        assert!(inner.map.len() < 20, "{}", inner.map.len());
        assert_eq!(inner.map.len(), inner.order.len());
    }

    #[test]
    fn storage_rules() {
        assert!(storable(
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60")])
        ));
        for bad in [
            headers(&[("cache-control", "no-store")]),
            headers(&[("cache-control", "max-age=5, private")]),
            headers(&[("cache-control", "private=\"x\"")]),
            headers(&[("set-cookie", "session=1")]),
            headers(&[("vary", "accept, *")]),
        ] {
            assert!(!storable(StatusCode::OK, &bad), "{bad:?}");
        }
        assert!(!storable(StatusCode::CREATED, &HeaderMap::new()));
    }

    #[test]
    fn credentials_and_vary_separate_answers() {
        let alice = headers(&[("x-api-key", "alice"), ("accept-language", "fr")]);
        let bob = headers(&[("x-api-key", "bob"), ("accept-language", "fr")]);
        assert_ne!(CacheKey::of("/a", &alice), CacheKey::of("/a", &bob));
        let cache = StaleCache::new(1 << 20);
        let key = CacheKey::of("/a", &alice);
        let vary = vec![(
            HeaderName::from_static("accept-language"),
            Some(HeaderValue::from_static("fr")),
        )];
        cache.insert(
            key.clone(),
            StatusCode::OK,
            HeaderMap::new(),
            vary,
            Bytes::new(),
        );
        assert!(cache.serve(&key, &Method::GET, &alice).is_some());
        let english = headers(&[("x-api-key", "alice"), ("accept-language", "en")]);
        assert!(cache.serve(&key, &Method::GET, &english).is_none());
    }
}
