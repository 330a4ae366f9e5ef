//! `outpost gateway`: the offline request gateway in front of an HTTP backend.
//!
//! Flags are parsed here into an [`outpost_gateway::Config`]; everything else happens in the
//! gateway crate. Once listening, the bound address is printed on stdout as
//! `listening on ADDR` (useful with port 0). Exit code 0 after a clean shutdown on SIGINT or
//! SIGTERM, 1 when the configuration, the key, the queue or the listener cannot be set up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use outpost_gateway::{
    Config, Gateway, KeySource, Ordering, QueueStore, QueuedStatus, UpstreamUrl,
};

/// Arguments of `outpost gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Boxed because the options are many and the subcommand enum holds this by value.
    #[command(flatten)]
    pub options: Box<GatewayOptions>,
}

/// The options of `outpost gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayOptions {
    /// The backend, as `http://host:port[/base-path]`.
    #[arg(long, env = "OUTPOST_GATEWAY_UPSTREAM")]
    pub upstream: String,
    /// Address to accept clients on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Directory of the queue database (and of the key file, unless one is given).
    #[arg(long, default_value = "./gateway-data")]
    pub data: PathBuf,
    /// Where the queue is kept: `postgres://user[:password]@host[:port]/database` to share one
    /// queue among several gateways (a schema is chosen with
    /// `?options=-csearch_path%3Dname`); without it, the SQLite file in --data, which one
    /// gateway at a time may replay. Every gateway on one queue needs the same key.
    #[arg(long, env = "OUTPOST_GATEWAY_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Most connections to PostgreSQL (with a postgres:// --store).
    #[arg(long, default_value_t = outpost_gateway::PostgresStore::DEFAULT_POOL_SIZE)]
    pub store_pool_size: usize,
    /// How long a gateway's lease on an ordering key lasts without renewal, and so how long
    /// the keys of a gateway that died wait before another takes them over (with a
    /// postgres:// --store).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Path the health probe requests with GET; any answer below 500 counts as up.
    #[arg(long, default_value = "/")]
    pub probe_path: String,
    /// Time between health probes (e.g. `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// Consecutive failures (probes, or live requests and deliveries ending in a connection
    /// failure, a timeout or 502/503/504) that mark the backend down.
    #[arg(long, default_value_t = 3)]
    pub unhealthy_threshold: u32,
    /// Consecutive successful probes or deliveries that mark it up again.
    #[arg(long, default_value_t = 2)]
    pub healthy_threshold: u32,
    /// Limit on connecting to the backend.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Limit on waiting for the backend's response headers.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub response_timeout: Duration,
    /// How queued writes are ordered: `global`, `header:NAME` (one stream per header value) or
    /// `path:N` (one stream per first N path segments).
    #[arg(long, default_value = "global")]
    pub order_by: String,
    /// Most requests (live and replayed) in flight toward the backend at once; more wait.
    #[arg(long, default_value_t = 512)]
    pub max_upstream_connections: usize,
    /// Most ordering keys replaying at once (each keeps one request in flight).
    #[arg(long, default_value_t = 64)]
    pub max_replay_lanes: usize,
    /// Status acknowledging a queued write: 202, or 503 with Retry-After for clients built for it.
    #[arg(long, default_value = "202", value_parser = ["202", "503"])]
    pub queued_status: String,
    /// Retry-After sent with 503 answers.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub retry_after: Duration,
    /// Answer GET/HEAD with the last good response (with Age and X-Outpost-Stale) while down.
    #[arg(long)]
    pub stale_reads: bool,
    /// Memory for the stale-read cache, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub stale_cache_bytes: usize,
    /// Largest request body buffered (and queued), in bytes; above it a write is streamed to
    /// the backend while it is up, and refused with 413 while it is down.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_body: u64,
    /// Bytes of buffered request bodies all requests together may hold (503 above).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub max_body_in_flight: u64,
    /// Longest pause between two pieces of a request body (408 after it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes (431 above; at least 8192).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most headers in one request (431 above).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Most pending plus dead-lettered entries (507 above).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_queue_entries: u64,
    /// Most bytes of queued requests (507 above).
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub max_queue_bytes: u64,
    /// How much of the backend's answer to keep for the status URL, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_response_capture: usize,
    /// How long delivered entries and their answers stay visible.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub done_retention: Duration,
    /// Delivery attempts before an entry is dead-lettered.
    #[arg(long, default_value_t = 50)]
    pub max_attempts: u32,
    /// Age after which a pending entry is dead-lettered (keep it below the backend's retention
    /// of idempotency keys).
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub max_age: Duration,
    /// The backend honours Idempotency-Key: writes whose outcome is unknown (sent, then a
    /// timeout or a broken connection) are queued and retried with the same key, and its 409
    /// "still in progress" is retried; without it they are refused (504/502) or dead-lettered.
    #[arg(long)]
    pub upstream_honours_idempotency_key: bool,
    /// First retry delay; doubles per attempt, with jitter.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay (a longer Retry-After from the backend still wins).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Longest delay a backend's Retry-After can impose on a queued entry (larger ones are clamped).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_retry_after: Duration,
    /// Proxies in front of the gateway whose X-Forwarded-* and Forwarded headers are kept
    /// (addresses or CIDR blocks, comma-separated); from other clients they are replaced.
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxy: Vec<String>,
    /// Bearer token of the admin API; without it (and without an admin user or JWT secret) the
    /// admin API is disabled.
    #[arg(long, env = "OUTPOST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A server admin whose Basic credentials the admin API also accepts (the sync server's
    /// admin, when both run in one process).
    #[arg(long, env = "OUTPOST_ADMIN_USER", requires = "admin_password")]
    pub admin_user: Option<String>,
    /// Password of --admin-user, in clear or hashed (-pbkdf2:sha256-KEY,SALT,ITERATIONS).
    #[arg(
        long,
        env = "OUTPOST_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_user"
    )]
    pub admin_password: Option<String>,
    /// Secret of HS256 JWTs the admin API also accepts when their roles include `_admin`.
    #[arg(long, env = "OUTPOST_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// The sync server's admins and token settings, when it runs this gateway.
    #[arg(skip)]
    pub server_accounts: Option<std::sync::Arc<outpost_gateway::accounts::AdminAccounts>>,
    /// Reserved path prefix of the gateway's own API.
    #[arg(long, default_value = "/_outpost/")]
    pub prefix: String,
    /// How long requests and the delivery in flight may take to finish on shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where the queue encryption key comes from; shared with `outpost queue`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// File holding the AES-256 key as base64 (created with mode 0600 if missing).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The key itself as base64, from OUTPOST_GATEWAY_KEY or the configuration file (refused on
    /// the command line, where every local user can read it); takes precedence over --key-file.
    #[arg(long = "key", env = "OUTPOST_GATEWAY_KEY", hide_env_values = true)]
    pub key_base64: Option<String>,
}

impl KeyArgs {
    /// The key source: the given key, the given file, else `gateway.key` in the data directory.
    pub fn source(&self) -> KeySource {
        match (&self.key_base64, &self.key_file) {
            (Some(key), _) => KeySource::Base64(key.clone()),
            (None, Some(path)) => KeySource::File(path.clone()),
            (None, None) => KeySource::DataDir,
        }
    }
}

/// Parses `250ms`, `2s`, `5m`, `24h`, `7d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 2s, 5m, 24h"))?;
    let seconds = |s: u64| Duration::from_secs(n.saturating_mul(s));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86400)),
        _ => Err(format!(
            "`{text}` has an unknown unit (use ms, s, m, h or d)"
        )),
    }
}

impl GatewayOptions {
    /// The validated gateway configuration.
    pub fn config(&self) -> anyhow::Result<Config> {
        let upstream = UpstreamUrl::parse(&self.upstream)?;
        let mut c = Config::new(upstream, self.listen, self.data.clone());
        c.store = match self.store.as_deref() {
            None => QueueStore::DataDir,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let mut store = outpost_gateway::PostgresStore::new(url);
                store.pool_size = self.store_pool_size;
                store.lease_ttl = self.lease_ttl;
                QueueStore::Postgres(store)
            }
            Some(_) => anyhow::bail!(
                "--store takes a postgres:// URL; without it the queue is kept in --data"
            ),
        };
        c.probe_path = self.probe_path.clone();
        c.probe_interval = self.probe_interval;
        c.health_fall = self.unhealthy_threshold;
        c.health_rise = self.healthy_threshold;
        c.connect_timeout = self.connect_timeout;
        c.response_timeout = self.response_timeout;
        c.ordering = Ordering::parse(&self.order_by)?;
        c.max_replay_lanes = self.max_replay_lanes;
        c.max_upstream_connections = self.max_upstream_connections;
        c.queued_status = if self.queued_status == "503" {
            QueuedStatus::Unavailable
        } else {
            QueuedStatus::Accepted
        };
        c.retry_after_secs = self.retry_after.as_secs().max(1);
        c.stale_reads = self.stale_reads;
        c.stale_cache_bytes = self.stale_cache_bytes;
        c.limits.max_body_bytes = self.max_body;
        c.limits.max_body_bytes_in_flight = self.max_body_in_flight;
        c.body_read_timeout = self.body_read_timeout;
        c.limits.max_header_bytes = self.max_header_bytes;
        c.limits.max_headers = self.max_headers;
        c.limits.max_queue_entries = self.max_queue_entries;
        c.limits.max_queue_bytes = self.max_queue_bytes;
        c.limits.max_response_capture = self.max_response_capture;
        c.done_retention = self.done_retention;
        c.retry.max_attempts = self.max_attempts;
        c.retry.max_age = self.max_age;
        c.retry.upstream_honours_keys = self.upstream_honours_idempotency_key;
        c.retry.base_delay = self.retry_base;
        c.retry.max_delay = self.retry_max;
        c.retry.max_retry_after = self.max_retry_after;
        c.trusted_proxies = self
            .trusted_proxy
            .iter()
            .map(|p| outpost_gateway::config::parse_trusted_proxy(p))
            .collect::<Result<_, _>>()?;
        c.admin_token = self.admin_token.clone();
        c.admin_accounts = match &self.server_accounts {
            Some(accounts) => Some(accounts.clone()),
            None => self.accounts()?,
        };
        c.prefix = self.prefix.clone();
        c.key = self.key.source();
        c.shutdown_grace = self.shutdown_grace;
        Ok(c.validate()?)
    }
}

impl GatewayOptions {
    /// The admin and JWT settings given to the gateway itself.
    fn accounts(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<outpost_gateway::accounts::AdminAccounts>>> {
        use outpost_auth::Credentials;
        let mut admins = Vec::new();
        if let (Some(user), Some(password)) = (&self.admin_user, &self.admin_password) {
            let creds = match Credentials::parse_admin_string(password) {
                Some(parsed) => parsed.map_err(|e| anyhow::anyhow!("admin {user}: {e}"))?,
                None => Credentials::hash(password, outpost_auth::password::DEFAULT_ITERATIONS),
            };
            admins.push((user.clone(), creds));
        }
        let mut jwt = outpost_auth::JwtConfig::default();
        if let Some(secret) = &self.jwt_hs256_secret {
            jwt.set_hs256_secret(secret.as_bytes());
        }
        let accounts = outpost_gateway::accounts::AdminAccounts::new(admins, jwt);
        Ok((!accounts.is_empty()).then(|| std::sync::Arc::new(accounts)))
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let shutdown = super::shutdown::on_signal();
    let gateway = bind(&args).await?;
    gateway.run(shutdown).await.context("gateway failed")?;
    Ok(())
}

/// Validates the configuration, opens the queue and binds the listener, then prints
/// `listening on ADDR` (shared by `outpost gateway` and `outpost serve` running a gateway).
pub async fn bind(args: &GatewayArgs) -> anyhow::Result<Gateway> {
    let config = args.options.config()?;
    if matches!(config.store, QueueStore::DataDir) {
        outpost_telemetry::watch_database(
            "gateway_queue",
            config.data_dir.join(outpost_gateway::queue::DB_FILE),
        );
    }
    let gateway = Gateway::bind(config)
        .await
        .context("cannot start the gateway")?;
    println!("listening on {}", gateway.local_addr());
    Ok(gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
