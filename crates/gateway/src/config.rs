//! The validated configuration of a gateway.
//!
//! The binary turns its flags into a [`Config`]; [`Config::validate`] checks the combinations
//! that flags alone cannot express, so the rest of the crate can rely on them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};

use crate::crypto::KeySource;
use crate::error::{Error, Result};

/// Smallest header buffer the HTTP/1 parser accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Where the gateway forwards to: an `http://host:port` origin with an optional base path.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    /// Always `http`; TLS toward the backend is not supported.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// A path prepended to every forwarded target, without a trailing slash (may be empty).
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parses `http://host:port[/base]`.
    pub fn parse(text: &str) -> Result<Self> {
        let uri: http::Uri = text
            .parse()
            .map_err(|_| Error::Config(format!("upstream `{text}` is not a valid URL")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| Error::Config(format!("upstream `{text}` has no scheme")))?;
        if scheme != Scheme::HTTP {
            return Err(Error::Config(format!(
                "upstream `{text}`: only http:// backends are supported"
            )));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Error::Config(format!("upstream `{text}` has no host")))?;
        if uri.query().is_some() {
            return Err(Error::Config(format!(
                "upstream `{text}` must not have a query"
            )));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// The absolute URI for a request target as received from a client; `None` unless the
    /// target is in origin form (starts with `/`), so `*` or garbage can never change the host
    /// or port the request goes to.
    pub fn join(&self, target: &str) -> Option<http::Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(self.join_path(target)?);
        http::Uri::from_parts(parts).ok()
    }

    /// The path and query to send upstream for a target as a request's URI holds it (`None`
    /// is `/`), under the same rule as [`join`](Self::join). With no base path the target is
    /// reused as it is, without being copied or parsed again.
    pub fn join_target(
        &self,
        target: Option<&http::uri::PathAndQuery>,
    ) -> Option<http::uri::PathAndQuery> {
        match target {
            Some(pq) if self.base_path.is_empty() => {
                pq.as_str().starts_with('/').then(|| pq.clone())
            }
            Some(pq) => self.join_path(pq.as_str()),
            None => self.join_path("/"),
        }
    }

    fn join_path(&self, target: &str) -> Option<http::uri::PathAndQuery> {
        if !target.starts_with('/') {
            return None;
        }
        if self.base_path.is_empty() {
            return target.parse().ok();
        }
        let mut joined = String::with_capacity(self.base_path.len() + target.len());
        joined.push_str(&self.base_path);
        joined.push_str(target);
        http::uri::PathAndQuery::try_from(joined).ok()
    }
}

/// Parses a trusted proxy: an address (`10.0.0.7`) or a CIDR block (`10.0.0.0/8`).
pub fn parse_trusted_proxy(text: &str) -> Result<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| Error::Config(format!("`{text}` is not an address or a CIDR block")))
}

/// How queued writes are partitioned into independently ordered streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordering {
    /// One global arrival order.
    Global,
    /// One order per value of this request header (requests without it share one stream).
    Header(HeaderName),
    /// One order per first `n` path segments (`/users/42/...` with `n = 2` is `/users/42`).
    PathSegments(usize),
}

impl Ordering {
    /// Parses `global`, `header:NAME` or `path:N`.
    pub fn parse(text: &str) -> Result<Self> {
        if text == "global" {
            return Ok(Self::Global);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::try_from(name)
                .map(Self::Header)
                .map_err(|_| Error::Config(format!("`{name}` is not a header name")));
        }
        if let Some(n) = text.strip_prefix("path:") {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::PathSegments(n)),
                _ => Err(Error::Config(format!(
                    "`path:{n}` needs a positive number of segments"
                ))),
            };
        }
        Err(Error::Config(format!(
            "ordering `{text}` is not one of global, header:NAME, path:N"
        )))
    }

    /// The ordering key of a request.
    pub fn key_of(&self, target: &str, headers: &http::HeaderMap) -> String {
        match self {
            Self::Global => String::new(),
            Self::Header(name) => headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
            Self::PathSegments(n) => {
                let path = target.split('?').next().unwrap_or("");
                let mut end = path.len();
                let mut seen = 0;
                for (i, c) in path.char_indices().skip(1) {
                    if c == '/' {
                        seen += 1;
                        if seen == *n {
                            end = i;
                            break;
                        }
                    }
                }
                path[..end].to_owned()
            }
        }
    }
}

/// The status that acknowledges a queued write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedStatus {
    /// `202 Accepted` (the default).
    Accepted,
    /// `503 Service Unavailable` with `Retry-After`, for clients built for that convention.
    Unavailable,
}

/// Size limits on requests and on the queue.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body that is buffered and can be queued; above it a write is streamed
    /// to the upstream while it is up, and refused with 413 while it is down.
    pub max_body_bytes: u64,
    /// Bytes of buffered request bodies all requests together may hold; a write that would
    /// exceed it is refused with 503 and `Retry-After`.
    pub max_body_bytes_in_flight: u64,
    /// Buffer for the request line and headers; above it the answer is 431.
    pub max_header_bytes: usize,
    /// Most headers in one request; above it the answer is 431.
    pub max_headers: usize,
    /// Most pending and dead-lettered entries kept; above it writes get 507.
    pub max_queue_entries: u64,
    /// Most bytes of queued requests kept; above it writes get 507.
    pub max_queue_bytes: u64,
    /// How much of an upstream answer body is kept for the status URL.
    pub max_response_capture: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_queue_entries: 1_000_000,
            max_queue_bytes: 1024 * 1024 * 1024,
            max_response_capture: 64 * 1024,
        }
    }
}

/// When and how often deliveries are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after which an entry is dead-lettered.
    pub max_attempts: u32,
    /// Age after which a pending entry is dead-lettered.
    pub max_age: Duration,
    /// First back-off delay; it doubles with each attempt.
    pub base_delay: Duration,
    /// Longest back-off delay (a longer `Retry-After` from the upstream still wins).
    pub max_delay: Duration,
    /// Whether the upstream honours `Idempotency-Key` (applies a repeated key once, and answers
    /// 409 while the first request with that key is still running, as the IETF
    /// Idempotency-Key draft describes). Only then are writes whose outcome is unknown (sent,
    /// then a timeout or a broken connection) retried, and a 409 retried later; otherwise the
    /// former are answered 504/502 live and dead-lettered on replay, the latter dead-lettered.
    pub upstream_honours_keys: bool,
    /// Longest wait a `Retry-After` from the upstream can impose; longer values are clamped, so
    /// a confused or hostile backend cannot park the queue for years.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 50,
            // Below the 24 hours of key retention the documentation asks of backends, so a
            // retry never arrives after the backend has forgotten the key.
            max_age: Duration::from_secs(12 * 3600),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(3600),
            upstream_honours_keys: false,
        }
    }
}

/// Where the queue is kept.
#[derive(Debug, Clone)]
pub enum QueueStore {
    /// The SQLite file in the data directory, replayed by one gateway at a time.
    DataDir,
    /// A PostgreSQL database shared by any number of gateways.
    Postgres(crate::queue::PostgresStore),
}

/// Everything a gateway needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The backend.
    pub upstream: UpstreamUrl,
    /// Address to accept clients on.
    pub listen: SocketAddr,
    /// Directory of the queue database and, by default, the key file.
    pub data_dir: PathBuf,
    /// Where the queue is kept: by default in `data_dir`.
    pub store: QueueStore,
    /// Path the health probe requests with `GET`.
    pub probe_path: String,
    /// Time between probes.
    pub probe_interval: Duration,
    /// Consecutive failures (probes, live requests, deliveries) that mark the upstream down.
    pub health_fall: u32,
    /// Consecutive successes (probes, deliveries) that mark it up again.
    pub health_rise: u32,
    /// Limit on establishing a connection to the upstream.
    pub connect_timeout: Duration,
    /// Limit on waiting for the upstream's response headers.
    pub response_timeout: Duration,
    /// Longest pause between two pieces of a request body (408 after it).
    pub body_read_timeout: Duration,
    /// How queued writes are partitioned.
    pub ordering: Ordering,
    /// Most ordering keys replaying at once.
    pub max_replay_lanes: usize,
    /// Most requests (live and replayed) in flight toward the upstream at once, each holding
    /// a connection until its answer has been read.
    pub max_upstream_connections: usize,
    /// The status that acknowledges a queued write.
    pub queued_status: QueuedStatus,
    /// The `Retry-After` (seconds) sent with 503 answers.
    pub retry_after_secs: u64,
    /// Whether `GET`/`HEAD` are answered from the last good response while the upstream is down.
    pub stale_reads: bool,
    /// Memory for the stale-read cache.
    pub stale_cache_bytes: usize,
    /// Size limits.
    pub limits: Limits,
    /// Retry and dead-letter policy.
    pub retry: RetryPolicy,
    /// How long delivered entries (and the upstream's answer) stay visible.
    pub done_retention: Duration,
    /// Clients whose `X-Forwarded-*` and `Forwarded` headers are kept (proxies in front of the
    /// gateway); from anyone else they are dropped and written anew.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bearer token required by the admin API; without one (and without `admin_accounts`) the
    /// admin API is disabled.
    pub admin_token: Option<String>,
    /// Server admins and JWT settings the admin API accepts besides its token.
    pub admin_accounts: Option<std::sync::Arc<crate::accounts::AdminAccounts>>,
    /// The reserved path prefix, with leading and trailing slash (default `/_outpost/`).
    pub prefix: String,
    /// Where the queue encryption key comes from.
    pub key: KeySource,
    /// How long in-flight work may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
}

impl Config {
    /// A configuration with the default for everything but the three required settings.
    pub fn new(upstream: UpstreamUrl, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            upstream,
            listen,
            data_dir,
            store: QueueStore::DataDir,
            probe_path: "/".into(),
            probe_interval: Duration::from_secs(2),
            health_fall: crate::health::DEFAULT_FALL,
            health_rise: crate::health::DEFAULT_RISE,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            ordering: Ordering::Global,
            max_replay_lanes: crate::worker::DEFAULT_MAX_LANES,
            max_upstream_connections: 512,
            queued_status: QueuedStatus::Accepted,
            retry_after_secs: 5,
            stale_reads: false,
            stale_cache_bytes: 64 * 1024 * 1024,
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            done_retention: Duration::from_secs(24 * 3600),
            trusted_proxies: Vec::new(),
            admin_token: None,
            admin_accounts: None,
            prefix: "/_outpost/".into(),
            key: KeySource::DataDir,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Checks the settings and normalises the prefix.
    pub fn validate(mut self) -> Result<Self> {
        if let QueueStore::Postgres(store) = &self.store {
            store.validate()?;
        }
        if !self.probe_path.starts_with('/') {
            return Err(Error::Config("the probe path must start with `/`".into()));
        }
        if self.probe_interval.is_zero() {
            return Err(Error::Config("the probe interval must be positive".into()));
        }
        if self.health_fall == 0 || self.health_rise == 0 {
            return Err(Error::Config(
                "the health thresholds must be at least 1".into(),
            ));
        }
        if self.limits.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::Config(format!(
                "the header limit must be at least {MIN_HEADER_BYTES} bytes"
            )));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::Config("max attempts must be at least 1".into()));
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Config("the admin token must not be empty".into()));
        }
        let trimmed = self.prefix.trim_matches('/');
        if trimmed.is_empty() || trimmed.contains(['?', '#', '{', '}', '*']) {
            return Err(Error::Config(format!(
                "`{}` is not a usable path prefix",
                self.prefix
            )));
        }
        self.prefix = format!("/{trimmed}/");
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(u.base_path, "/api");
        assert_eq!(
            u.join("/a/../b%2e%2e?x=%00").unwrap().to_string(),
            "http://127.0.0.1:8080/api/a/../b%2e%2e?x=%00"
        );
        assert!(u.join("*").is_none());
        assert!(u.join("@evil:80/").is_none());
        assert!(u.join("").is_none());
        let target: http::uri::PathAndQuery = "/x?y=1".parse().unwrap();
        assert_eq!(u.join_target(Some(&target)).unwrap(), "/api/x?y=1");
        assert_eq!(u.join_target(None).unwrap(), "/api/");
        let bare = UpstreamUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(bare.join_target(Some(&target)).unwrap(), "/x?y=1");
        let star: http::uri::PathAndQuery = "*".parse().unwrap();
        assert!(bare.join_target(Some(&star)).is_none());
        assert!(UpstreamUrl::parse("https://x").is_err());
        assert!(UpstreamUrl::parse("nonsense").is_err());
        assert!(UpstreamUrl::parse("http://x/?q").is_err());
    }

    #[test]
    fn ordering_keys() {
        let headers = {
            let mut h = http::HeaderMap::new();
            h.insert("x-tenant", "t1".parse().unwrap());
            h
        };
        let check = |spec: &str, target: &str, want: &str| {
            let ordering = Ordering::parse(spec).unwrap();
            assert_eq!(ordering.key_of(target, &headers), want, "{spec} {target}");
        };
        check("global", "/a/b", "");
        check("header:x-tenant", "/a", "t1");
        check("header:x-other", "/a", "");
        check("path:1", "/users/42/x?q", "/users");
        check("path:2", "/users/42/x?q", "/users/42");
        check("path:2", "/users", "/users");
        check("path:3", "/a/b?c/d", "/a/b");
        assert!(Ordering::parse("path:0").is_err());
        assert!(Ordering::parse("random").is_err());
    }

    #[test]
    fn trusted_proxies() {
        assert!(
            parse_trusted_proxy("10.0.0.7")
                .unwrap()
                .contains(&"10.0.0.7".parse::<std::net::IpAddr>().unwrap())
        );
        assert!(
            parse_trusted_proxy("10.0.0.0/8")
                .unwrap()
                .contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap())
        );
        assert!(parse_trusted_proxy("::1").is_ok());
        assert!(parse_trusted_proxy("proxy.local").is_err());
    }

    #[test]
    fn prefix_is_normalised() {
        let base = Config::new(
            UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "/tmp".into(),
        );
        let mut c = base.clone();
        c.prefix = "ops".into();
        assert_eq!(c.validate().unwrap().prefix, "/ops/");
        let mut c = base;
        c.prefix = "/".into();
        assert!(c.validate().is_err());
    }
}
