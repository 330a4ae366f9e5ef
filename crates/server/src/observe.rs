//! What the server tells operators about each request: a `tracing` span with a request id, an
//! access-log line, and the HTTP metrics, all from one middleware around the whole application.
//!
//! Metric labels are bounded: a request is labelled by its route *template*
//! ([`crate::dispatch::template`]), never by its path, which holds database names and document ids.
//! Logs carry the template, method, status and duration; never a path, query, header or body,
//! since those can hold credentials and personal data.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use metrics::{counter, gauge, histogram};
use tracing::Instrument;

use crate::feed::FeedKind;

/// The header a request id is read from and echoed in.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// CouchDB's header for the request id, sent alongside `X-Request-Id`.
pub const COUCH_REQUEST_ID: HeaderName = HeaderName::from_static("x-couch-request-id");

/// Longest client-given request id that is kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// Wraps every request: picks its id, runs it inside a span, logs and counts the answer, and
/// echoes the id in `X-Request-Id`.
pub async fn layer(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let method = method_label(request.method());
    let route = crate::dispatch::template(request.uri().path());
    let version = request.version();
    let span = tracing::info_span!("request", request_id = %id, method, route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    counter!(
        "outpost_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status.to_string(),
    )
    .increment(1);
    histogram!(
        "outpost_http_request_duration_seconds",
        "route" => route,
        "method" => method,
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            http = ?version,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "answered"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        // CouchDB's name for the same id, which its clients log.
        response
            .headers_mut()
            .insert(COUCH_REQUEST_ID, value.clone());
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client's `X-Request-Id` when it is short and made of safe characters (it ends up in log
/// lines, so it must not be able to forge one), otherwise a fresh random id.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// The method as a label value: the methods Outpost serves by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Counts documents handed to clients.
pub fn documents_read(n: usize) {
    counter!("outpost_documents_read_total").increment(n as u64);
}

/// One change feed being served, counted in `outpost_changes_feeds_open` for as long as it
/// lives: a drop guard, so a feed that ends by error, by its client leaving or by shutdown is
/// uncounted all the same.
pub struct OpenFeed {
    feed: &'static str,
}

impl OpenFeed {
    /// Counts a feed of the given type, labelled `normal`, `longpoll`, `continuous` or
    /// `eventsource`.
    pub fn start(kind: &FeedKind) -> OpenFeed {
        let feed = match kind {
            FeedKind::Normal => "normal",
            FeedKind::Longpoll => "longpoll",
            FeedKind::Continuous => "continuous",
            FeedKind::EventSource => "eventsource",
        };
        gauge!("outpost_changes_feeds_open", "feed" => feed).increment(1.0);
        OpenFeed { feed }
    }
}

impl Drop for OpenFeed {
    fn drop(&mut self) {
        gauge!("outpost_changes_feeds_open", "feed" => self.feed).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(given: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_str(given).unwrap());
        request_id(&headers)
    }

    #[test]
    fn a_safe_client_id_is_kept() {
        assert_eq!(id_for("abc-123_x.y:z"), "abc-123_x.y:z");
    }

    #[test]
    fn an_unsafe_or_long_client_id_is_replaced() {
        for given in ["a b", "x\"}", "", &"a".repeat(MAX_REQUEST_ID + 1)] {
            let id = id_for(given);
            assert_ne!(id, given);
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn a_missing_id_is_generated_fresh_each_time() {
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
