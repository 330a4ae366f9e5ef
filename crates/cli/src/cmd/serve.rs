//! `outpost serve`: the CouchDB-compatible sync server on the embedded SQLite store (or on
//! PostgreSQL with `--store postgres://…`, one of any number of nodes), and, when
//! a gateway is configured too (a `[gateway]` table in the configuration file, or
//! `--gateway-upstream`), the offline request gateway on its own listener in the same process.
//! Both stop on the same SIGINT/SIGTERM and record into the same metrics registry; either
//! failing stops the other, and the process exits 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_server::{AppState, Config};

use crate::cmd::gateway::{GatewayArgs, parse_duration};

/// Arguments of `outpost serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory holding the database file; created if missing.
    #[arg(long, env = "OUTPOST_DATA", default_value = "./outpost-data")]
    pub data: PathBuf,
    /// Where the documents are: a PostgreSQL URL (postgres://user@host/db), shared by any
    /// number of `outpost serve` nodes, or a directory for the embedded SQLite store. Without
    /// it, the SQLite store in --data.
    #[arg(long, env = "OUTPOST_STORE", value_name = "URL|PATH")]
    pub store: Option<String>,
    /// Address and port to listen on.
    #[arg(long, env = "OUTPOST_LISTEN", default_value = "127.0.0.1:5984")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key. HTTP/2 and
    /// HTTP/1.1 are both offered (ALPN). On SIGHUP both files are read again and new
    /// connections get the new certificate; the listener stays open.
    #[arg(long, env = "OUTPOST_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "OUTPOST_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Keep the store encrypted (SQLCipher) with the key in this file: 64 hex digits (a raw
    /// 256-bit key, e.g. from `openssl rand -hex 32`) or a passphrase (stretched on every
    /// connection, so slower to open). The key may instead be in OUTPOST_STORE_KEY; it is never
    /// a flag's value. A store created with a key always needs it; see `outpost db rekey`.
    #[arg(long, env = "OUTPOST_STORE_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without any server admin configured: then
    /// there is no authentication, and anyone who can reach the port can read and change every
    /// database. Not needed once an admin is configured.
    #[arg(long)]
    pub insecure_open: bool,
    /// Name of a server admin; with --admin-password, turns authentication on.
    #[arg(long, env = "OUTPOST_ADMIN_USER", requires = "admin_password")]
    pub admin_user: Option<String>,
    /// Password of --admin-user (better given by the environment than on the command line).
    #[arg(
        long,
        env = "OUTPOST_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_user"
    )]
    pub admin_password: Option<String>,
    /// More server admins as NAME=PASSWORD, the password in clear or hashed
    /// (-pbkdf2:sha256-KEY,SALT,ITERATIONS), repeatable; in the file, `admins = ["name=password"]`.
    #[arg(long = "admins", value_name = "NAME=PASSWORD")]
    pub admins: Vec<String>,
    /// Secret of HS256 bearer tokens (JWT), as raw text.
    #[arg(long, env = "OUTPOST_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// Public keys of RS256 and ES256 tokens as KID=PEM-FILE, repeatable; a token names its key
    /// by its `kid` header.
    #[arg(long = "jwt-keys", value_name = "KID=PEM-FILE")]
    pub jwt_keys: Vec<String>,
    /// Claim of a JWT holding the user's roles (a top-level key, else a dotted path).
    #[arg(
        long,
        env = "OUTPOST_JWT_ROLES_CLAIM",
        default_value = "_couchdb.roles"
    )]
    pub jwt_roles_claim: String,
    /// Claims every JWT must carry besides `sub`, comma-separated.
    #[arg(long, env = "OUTPOST_JWT_REQUIRED_CLAIMS", value_delimiter = ',')]
    pub jwt_required_claims: Vec<String>,
    /// Who may use a database without a _security object: admin_only (CouchDB 3's default)
    /// or everyone.
    #[arg(long, env = "OUTPOST_DEFAULT_SECURITY", default_value = "admin_only", value_parser = ["admin_only", "everyone"])]
    pub default_security: String,
    /// Let anyone create a user document in _users (without roles).
    #[arg(long, env = "OUTPOST_PUBLIC_SIGNUP")]
    pub public_signup: bool,
    /// Create a private database userdb-<hex of name> for each new user.
    #[arg(long, env = "OUTPOST_COUCH_PERUSER")]
    pub couch_peruser: bool,
    /// Lifetime of a session cookie, refreshed as it is used.
    #[arg(long, env = "OUTPOST_SESSION_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Secret that signs session cookies; by default one is made once per data directory
    /// (`cookie-secret`, mode 0600). Changing it ends every session.
    #[arg(long, env = "OUTPOST_COOKIE_SECRET", hide_env_values = true)]
    pub cookie_secret: Option<String>,
    /// Mark session cookies `Secure` (sent over HTTPS only), as behind a TLS-terminating proxy;
    /// always on with --tls-cert.
    #[arg(long, env = "OUTPOST_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// SameSite attribute of session cookies (Strict, Lax or None); none by default.
    #[arg(long, env = "OUTPOST_SAME_SITE", value_parser = ["Strict", "Lax", "None"])]
    pub same_site: Option<String>,
    /// Failed logins of one user from one address before further attempts are refused for
    /// --lockout-window; 0 turns lockout off.
    #[arg(long, env = "OUTPOST_LOCKOUT_THRESHOLD", default_value_t = 5)]
    pub lockout_threshold: u32,
    /// How long failed logins are remembered and a lockout lasts.
    #[arg(long, env = "OUTPOST_LOCKOUT_WINDOW", default_value = "300s", value_parser = parse_duration)]
    pub lockout_window: Duration,
    /// PBKDF2-SHA256 iterations of new password hashes (CouchDB 3.5's default).
    #[arg(long, env = "OUTPOST_PASSWORD_ITERATIONS", default_value_t = outpost_auth::password::DEFAULT_ITERATIONS, value_parser = clap::value_parser!(u32).range(1000..=10_000_000))]
    pub password_iterations: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "OUTPOST_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Request body bytes all requests together may hold at once; a body that would go beyond
    /// is answered 503 with Retry-After. At least --max-body-bytes.
    #[arg(long, env = "OUTPOST_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 512 * 1024 * 1024)]
    pub max_body_bytes_in_flight: usize,
    /// Largest document accepted (its JSON without attachments), in bytes; above it a write is
    /// answered 413 document_too_large, as by CouchDB's max_document_size.
    #[arg(long, env = "OUTPOST_MAX_DOCUMENT_SIZE", default_value_t = 8_000_000)]
    pub max_document_size: usize,
    /// Largest attachment accepted, inline or uploaded alone, in bytes; above it a write is
    /// answered 413 attachment_too_large.
    #[arg(long, env = "OUTPOST_MAX_ATTACHMENT_SIZE", default_value_t = 64 * 1024 * 1024)]
    pub max_attachment_size: usize,
    /// gzip level (1 to 9) at which attachments of compressible types are stored, as CouchDB's
    /// [attachments] compression_level; 0 stores every attachment as it came.
    #[arg(long, env = "OUTPOST_ATTACHMENTS_COMPRESSION_LEVEL", default_value_t = outpost_core::attachment::DEFAULT_COMPRESSION_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub attachments_compression_level: u32,
    /// Content types of the attachments stored gzip-encoded, comma-separated, `*` standing for
    /// any run of characters (CouchDB's [attachments] compressible_types).
    #[arg(long, env = "OUTPOST_ATTACHMENTS_COMPRESSIBLE_TYPES", default_value = outpost_core::attachment::DEFAULT_COMPRESSIBLE_TYPES)]
    pub attachments_compressible_types: String,
    /// How long a design-document function (view, filter, validate_doc_update) may run on one
    /// document before it is stopped, as CouchDB's os_process_timeout.
    #[arg(long, env = "OUTPOST_JS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub js_timeout: Duration,
    /// Memory each JavaScript engine may hold, in bytes (one engine per core).
    #[arg(long, env = "OUTPOST_JS_MEMORY", default_value_t = 64 * 1024 * 1024)]
    pub js_memory: usize,
    /// Connections of the multiplexed feed (/_outpost/v1/feed) open at once; more get 503.
    #[arg(long, env = "OUTPOST_FEED_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub feed_max_connections: usize,
    /// Databases one multiplexed feed connection may follow at once.
    #[arg(long, env = "OUTPOST_FEED_MAX_SUBSCRIPTIONS", default_value_t = 200)]
    pub feed_max_subscriptions: usize,
    /// Frames waiting to be written to one multiplexed feed client.
    #[arg(long, env = "OUTPOST_FEED_BUFFER", default_value_t = 256)]
    pub feed_buffer: usize,
    /// How long a multiplexed feed client may leave its buffer full before it is cut.
    #[arg(long, env = "OUTPOST_FEED_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub feed_slow_client_timeout: Duration,
    /// Origins allowed to call the API from a browser (CORS), comma-separated; by default any
    /// origin is allowed.
    #[arg(long, env = "OUTPOST_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// First delay before a failed replication (`_replicate`, `_replicator`) is retried; it
    /// doubles on each further failure.
    #[arg(long, env = "OUTPOST_REPLICATION_RETRY_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub replication_retry_initial: Duration,
    /// Longest delay between retries of a failed replication.
    #[arg(long, env = "OUTPOST_REPLICATION_RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    pub replication_retry_max: Duration,
    /// How long a node's lease on a `_replicator` job lasts without renewal; the holder renews
    /// it every third of this. When several nodes share a PostgreSQL store, each job runs on
    /// one node, and a dead node's jobs move to another after this long.
    #[arg(long, env = "OUTPOST_REPLICATOR_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub replicator_lease_ttl: Duration,
    /// This node's name in `_scheduler/jobs`, `_scheduler/docs` and `_active_tasks` (the
    /// `node` field, telling which node of several runs a job); `outpost@localhost` by default.
    #[arg(long, env = "OUTPOST_NODE_NAME")]
    pub node_name: Option<String>,
    /// On SIGINT/SIGTERM, how long requests in flight may take to finish before the server
    /// stops anyway (live change feeds end at once).
    #[arg(long, env = "OUTPOST_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Also run the offline request gateway in this process, in front of this backend
    /// (`http://host:port[/base-path]`); its other settings come from the `[gateway]` table of
    /// the configuration file and the `OUTPOST_GATEWAY_*` variables. A `[gateway]` table alone
    /// starts it too.
    #[arg(long)]
    pub gateway_upstream: Option<String>,
    /// Address the gateway started with the sync server accepts clients on (the gateway's
    /// `listen`).
    #[arg(long)]
    pub gateway_listen: Option<SocketAddr>,
    /// The gateway to run alongside, resolved from the file, the environment and the two flags
    /// above by the configuration loader.
    #[arg(skip)]
    pub gateway: Option<GatewayArgs>,
}

pub async fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    if args.max_body_bytes_in_flight < args.max_body_bytes {
        anyhow::bail!(
            "--max-body-bytes-in-flight ({}) is below --max-body-bytes ({}): a body of the largest \
             size could never be accepted",
            args.max_body_bytes_in_flight,
            args.max_body_bytes
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(outpost_tls::Tls::load(cert, key).context("cannot set up TLS")?)
        }
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
    };
    let key = super::store_key::load(args.key_file.as_deref(), super::store_key::KEY_VAR)?;
    let encrypted = key.is_some();
    let location = super::store::Location::parse(args.store.as_deref(), &args.data);
    let opened = super::store::Opened::open(&location, key).await?;
    let store = opened.store();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let auth = auth_settings(&args)?;
    let attachments = outpost_core::attachment::Compression::new(
        args.attachments_compression_level,
        &args.attachments_compressible_types,
    )
    .context("invalid attachment compression settings")?;
    let config = Config {
        attachments,
        auth,
        max_body_bytes: args.max_body_bytes,
        max_body_bytes_in_flight: args.max_body_bytes_in_flight,
        max_document_size: args.max_document_size,
        max_attachment_size: args.max_attachment_size,
        cors_origins: (!args.cors_origin.is_empty()).then_some(args.cors_origin),
        js_timeout: args.js_timeout,
        js_memory_bytes: args.js_memory,
        feed: outpost_server::mux::FeedLimits {
            max_connections: args.feed_max_connections,
            max_subscriptions: args.feed_max_subscriptions,
            buffer: args.feed_buffer.max(1),
            slow_client_timeout: args.feed_slow_client_timeout,
            ..outpost_server::mux::FeedLimits::default()
        },
        ..Config::default()
    };
    let shutdown = super::shutdown::on_signal();
    let gateway = match args.gateway.take() {
        Some(mut gateway) => {
            // The gateway's admin API takes the sync server's admins and tokens too.
            let accounts = outpost_gateway::accounts::AdminAccounts::new(
                config.auth.admins.clone(),
                config.auth.jwt.clone(),
            );
            if !accounts.is_empty() {
                gateway.options.server_accounts = Some(Arc::new(accounts));
            }
            Some(super::gateway::bind(&gateway).await?)
        }
        None => None,
    };
    let mut state = AppState::new(store.clone(), config, shutdown.clone());
    // The console works the gateway's queue through the sync server, as a server admin.
    state.gateway = gateway
        .as_ref()
        .map(outpost_gateway::Gateway::embedded_admin);
    // On a store several nodes share, server admins added through any node live in the store:
    // read them before deciding whether this node runs as an admin party.
    state
        .auth
        .refresh(state.store.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the server admins kept in the store: {e}"))?;
    if !state.auth.enforced() {
        if !args.listen.ip().is_loopback() && !args.insecure_open {
            anyhow::bail!(
                "refusing to listen on {}: no server admin is configured, so anyone who can reach it \
                 could read and change every database; set OUTPOST_ADMIN_USER and \
                 OUTPOST_ADMIN_PASSWORD, listen on a loopback address, or pass --insecure-open if \
                 the network is trusted",
                args.listen
            );
        }
        tracing::warn!(
            listen = %args.listen,
            "NO SERVER ADMIN IS CONFIGURED: every request is treated as an admin (set OUTPOST_ADMIN_USER and OUTPOST_ADMIN_PASSWORD to turn authentication on)"
        );
    }
    anyhow::ensure!(
        args.replicator_lease_ttl >= Duration::from_secs(1),
        "--replicator-lease-ttl must be at least 1s"
    );
    state
        .replications
        .set_settings(outpost_server::replication::Settings {
            backoff: outpost_replicator::Backoff {
                initial: args.replication_retry_initial,
                max: args.replication_retry_max,
            },
            lease_ttl: args.replicator_lease_ttl,
        });
    if let Some(name) = &args.node_name {
        state.replications.set_node(name.clone());
    }
    // Persistent replications: the `_replicator` database's documents, resumed from their
    // checkpoints.
    outpost_server::replication::start_jobs(&state).await;
    tracing::info!(
        listen = %local,
        data = %args.data.display(),
        store = %location.describe(),
        uuid = store.server_uuid(),
        tls = tls.is_some(),
        encrypted,
        "outpost is serving"
    );
    let grace = args.shutdown_grace;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let server = async {
        let result = tokio::select! {
            served = outpost_server::serve_tls(listener, state, tls.clone()) => served.context("server failed"),
            () = deadline => {
                tracing::warn!(
                    grace = ?grace,
                    "requests still in flight after the shutdown grace period; stopping anyway"
                );
                Ok(())
            }
        };
        // The gateway must not outlive a server that failed.
        shutdown.cancel();
        result
    };
    let gateway = async {
        let Some(gateway) = gateway else {
            return Ok(());
        };
        let result = gateway
            .run(shutdown.clone())
            .await
            .context("gateway failed");
        shutdown.cancel();
        result
    };
    let reloads = reload_on_hangup(tls.clone(), shutdown.clone());
    let (served, gatewayed, ()) = tokio::join!(server, gateway, reloads);
    opened.close();
    served?;
    gatewayed?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the TLS certificate and key again on every SIGHUP until shutdown. A reload that fails
/// is logged and the certificate in use is kept. Without TLS a SIGHUP is logged and changes
/// nothing (rather than ending the process, a hang-up's default), so `systemctl reload` is
/// always safe.
async fn reload_on_hangup(
    tls: Option<outpost_tls::Tls>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: nothing to reload (no TLS)");
                continue;
            };
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.cert_path().display(), "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, shutdown);
    }
}

/// The authentication settings from the flags, with the cookie secret of the data directory
/// (created once, readable by the owner only).
fn auth_settings(args: &ServeArgs) -> anyhow::Result<outpost_server::auth::AuthSettings> {
    use outpost_auth::Credentials;
    let iterations = args.password_iterations;
    let credentials = |name: &str, password: &str| -> anyhow::Result<Credentials> {
        match Credentials::parse_admin_string(password) {
            Some(parsed) => parsed.map_err(|e| anyhow::anyhow!("admin {name}: {e}")),
            None => Ok(Credentials::hash(password, iterations)),
        }
    };
    let mut admins = Vec::new();
    if let (Some(user), Some(password)) = (&args.admin_user, &args.admin_password) {
        admins.push((user.clone(), credentials(user, password)?));
    }
    for entry in &args.admins {
        let Some((name, password)) = entry.split_once('=') else {
            anyhow::bail!("an admin must be given as NAME=PASSWORD");
        };
        if name.is_empty() || name.contains(':') || password.is_empty() {
            anyhow::bail!("an admin needs a name without ':' and a password");
        }
        admins.push((name.to_owned(), credentials(name, password)?));
    }
    let mut jwt = outpost_auth::JwtConfig::default();
    if let Some(secret) = &args.jwt_hs256_secret {
        jwt.set_hs256_secret(secret.as_bytes());
    }
    for entry in &args.jwt_keys {
        let Some((kid, file)) = entry.split_once('=') else {
            anyhow::bail!("a JWT key must be given as KID=PEM-FILE");
        };
        let pem = std::fs::read(file).with_context(|| format!("cannot read the JWT key {file}"))?;
        // The key's type decides the algorithm: RSA keys check RS256, EC keys ES256.
        if jwt.add_rsa_pem(kid, &pem).is_err() && jwt.add_ec_pem(kid, &pem).is_err() {
            anyhow::bail!("{file} is not a PEM RSA or EC public key");
        }
    }
    jwt.roles_claim = Some(args.jwt_roles_claim.clone());
    jwt.required_claims = args.jwt_required_claims.clone();
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    Ok(outpost_server::auth::AuthSettings {
        admins,
        admins_file: Some(args.data.join("admins.json")),
        cookie_secret: outpost_server::auth::Secret(match &args.cookie_secret {
            Some(secret) if !secret.is_empty() => secret.as_bytes().to_vec(),
            Some(_) => anyhow::bail!("the cookie secret must not be empty"),
            None => cookie_secret(&args.data)?,
        }),
        session_timeout: args.session_timeout.as_secs().max(1),
        // Under TLS, cookies are always `Secure`.
        secure_cookies: args.secure_cookies || args.tls_cert.is_some(),
        same_site: args.same_site.clone(),
        jwt,
        default_security: match args.default_security.as_str() {
            "everyone" => outpost_server::auth::DefaultSecurity::Everyone,
            _ => outpost_server::auth::DefaultSecurity::AdminOnly,
        },
        public_signup: args.public_signup,
        couch_peruser: args.couch_peruser,
        password_iterations: iterations,
        lockout_threshold: args.lockout_threshold,
        lockout_window: args.lockout_window,
    })
}

/// The data directory's cookie-signing secret, made on first use (mode 0600).
fn cookie_secret(data: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let path = data.join("cookie-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) => hex::decode(text.trim())
            .with_context(|| format!("{} is not a hex secret", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            outpost_server::auth::write_private(&path, hex::encode(secret).as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret.to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
