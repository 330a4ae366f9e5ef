//! The gateway process: the listener, one task per connection, the probe, the replay worker and
//! the maintenance sweep, all owned by one [`TaskTracker`] and stopped by one token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AdminState};
use crate::cache::StaleCache;
use crate::config::{Config, QueueStore};
use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::proxy::{App, BodyLimits, ProxySettings};
use crate::queue::{DirLock, Queue, QueueLimits, now_ms};
use crate::stats::Stats;
use crate::upstream::Upstream;
use crate::worker::Worker;

/// Most connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the first probe's answer before serving (at least the connect timeout).
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(5);
/// Longest pause between maintenance sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Time between copies of the gateway's counters and queue state into the process-wide
/// metrics registry, so a scrape of another listener of the process (the sync server's, when
/// both run together) sees them too; a scrape of the gateway's own endpoint refreshes them at once.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// A gateway bound to its address, ready to run.
pub struct Gateway {
    config: Config,
    listener: TcpListener,
    app: Arc<App>,
    /// What the admin API reads, kept to publish metrics on an interval.
    admin: Arc<AdminState>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

/// Opens the queue of a data directory with the configured key (blocking file I/O), without
/// taking the directory's lock: for inspecting and changing entries beside a running gateway.
pub fn open_queue(config: &Config) -> Result<Queue> {
    let cipher = Cipher::load(&config.key, &config.data_dir)?;
    Queue::open(&config.data_dir, cipher, queue_limits(config))
}

/// Opens the queue to replay: in the data directory holding its exclusive lock, or in
/// PostgreSQL, which any number of gateways share.
async fn open_replaying_queue(config: &Config) -> Result<Queue> {
    match &config.store {
        QueueStore::DataDir => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                let lock = DirLock::acquire(&config.data_dir)?;
                let cipher = Cipher::load(&config.key, &config.data_dir)?;
                Queue::open_locked(&config.data_dir, cipher, queue_limits(&config), lock)
            })
            .await
            .map_err(|_| Error::Closed)?
        }
        QueueStore::Postgres(store) => {
            let (key, dir) = (config.key.clone(), config.data_dir.clone());
            let cipher = tokio::task::spawn_blocking(move || Cipher::load(&key, &dir))
                .await
                .map_err(|_| Error::Closed)??;
            Queue::open_postgres(store, cipher, queue_limits(config)).await
        }
    }
}

fn queue_limits(config: &Config) -> QueueLimits {
    QueueLimits {
        max_entries: config.limits.max_queue_entries,
        max_bytes: config.limits.max_queue_bytes,
    }
}

impl Gateway {
    /// Validates `config`, opens the queue and binds the listener.
    pub async fn bind(config: Config) -> Result<Self> {
        let config = config.validate()?;
        let queue = open_replaying_queue(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let health = Arc::new(Health::with_thresholds(
            true,
            config.health_fall,
            config.health_rise,
        ));
        let stats = Arc::new(Stats::default());
        let admin_state = Arc::new(AdminState {
            queue: queue.clone(),
            stats: stats.clone(),
            health: Some(health.clone()),
            upstream: Some(format!(
                "{}://{}{}",
                config.upstream.scheme, config.upstream.authority, config.upstream.base_path
            )),
            token: config.admin_token.clone(),
            accounts: config.admin_accounts.clone(),
            prefix: config.prefix.clone(),
            trusted: false,
        });
        let admin = api::router(admin_state.clone());
        let app = Arc::new(App {
            settings: ProxySettings {
                prefix: config.prefix.clone(),
                ordering: config.ordering.clone(),
                queued_status: config.queued_status,
                retry_after_secs: config.retry_after_secs,
                body: BodyLimits {
                    max_bytes: config.limits.max_body_bytes,
                    idle_timeout: config.body_read_timeout,
                    budget: Some(Arc::new(Semaphore::new(
                        usize::try_from(config.limits.max_body_bytes_in_flight)
                            .unwrap_or(usize::MAX)
                            .min(Semaphore::MAX_PERMITS),
                    ))),
                },
                upstream_honours_keys: config.retry.upstream_honours_keys,
                trusted_proxies: config.trusted_proxies.clone(),
            },
            upstream: Upstream::new(&config),
            queue,
            health,
            stats,
            cache: config
                .stale_reads
                .then(|| StaleCache::new(config.stale_cache_bytes)),
            admin,
        });
        Ok(Self {
            config,
            listener,
            app,
            admin: admin_state,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin API (queue listing, retry, drop, status) under `/v1/`, for the process that
    /// runs this gateway beside its sync server: that server checks the caller is one of its
    /// admins and hands the request over, so the router itself asks for no credentials. It must
    /// never be served on a listener.
    pub fn embedded_admin(&self) -> axum::Router {
        api::embedded_router(&self.admin)
    }

    /// The queue, for inspection.
    pub fn queue(&self) -> &Queue {
        &self.app.queue
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets requests and the
    /// delivery in flight finish (up to the configured grace period) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Gateway {
            config,
            listener,
            app,
            admin,
        } = self;
        let tracker = TaskTracker::new();

        // The first probe decides the starting state before the first client is served (they
        // wait in the listen backlog), so a restart during an outage neither forwards writes
        // into a dead backend nor spends a delivery attempt finding out.
        // A backend that accepts and never answers must not hold the start for a whole
        // response timeout: past `FIRST_PROBE_WAIT` it starts as down.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = tokio::time::timeout(
                FIRST_PROBE_WAIT.max(config.connect_timeout),
                app.upstream.probe(&config.probe_path),
            ) => match r {
                Ok(Ok(())) => app.health.set(true, ""),
                Ok(Err(reason)) => app.health.set(false, &reason),
                Err(_) => app.health.set(false, "the first probe got no answer in time"),
            },
        }
        tracker.spawn(probe(
            app.upstream.clone(),
            app.health.clone(),
            config.probe_path.clone(),
            config.probe_interval,
            shutdown.clone(),
        ));
        let worker = Worker::new(
            app.queue.clone(),
            app.upstream.clone(),
            Some(app.health.clone()),
            config.retry.clone(),
            app.stats.clone(),
        )
        .with_max_lanes(config.max_replay_lanes);
        tracker.spawn(worker.supervise(shutdown.clone()));
        tracker.spawn(sweep(app.clone(), config.clone(), shutdown.clone()));
        tracker.spawn(publish(admin, shutdown.clone()));

        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tracing::info!(addr = %listener.local_addr().map_err(|source| Error::Listen { addr: config.listen, source })?, "gateway listening");
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually out of file descriptors: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            tracker.spawn(serve_connection(
                app.clone(),
                stream,
                peer,
                config.limits.max_header_bytes,
                config.limits.max_headers,
                shutdown.clone(),
                permit,
            ));
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; abandoning unfinished work");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

async fn serve_connection(
    app: Arc<App>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    max_header_bytes: usize,
    max_headers: usize,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(req.map(Body::new), peer).await) }
    });
    let conn = http1::Builder::new()
        // The buffer bound stops a client that trickles headers forever; the size bound also
        // catches a head that arrived whole in one read.
        .max_buf_size(max_header_bytes)
        .max_header_size(max_header_bytes)
        .max_headers(max_headers)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

async fn probe(
    upstream: Upstream,
    health: Arc<Health>,
    path: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = upstream.probe(&path) => match r {
                Ok(()) => health.success(),
                Err(reason) => health.failure(&reason),
            },
        }
    }
}

async fn publish(admin: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = api::publish_metrics(&admin).await {
            tracing::debug!(error = ?e, "cannot publish the gateway's metrics");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(PUBLISH_INTERVAL) => {}
        }
    }
}

async fn sweep(app: Arc<App>, config: Config, shutdown: CancellationToken) {
    let every = SWEEP_INTERVAL
        .min(config.done_retention)
        .max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let now = now_ms();
        let expire = now - config.retry.max_age.as_millis() as i64;
        let purge = now - config.done_retention.as_millis() as i64;
        match app.queue.sweep(expire, purge).await {
            Ok((expired, purged)) => {
                if expired > 0 {
                    app.stats
                        .dead_lettered
                        .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(expired, "dead-lettered entries older than the maximum age");
                }
                if purged > 0 {
                    tracing::debug!(purged, "purged delivered entries past retention");
                }
            }
            Err(e) => tracing::error!(error = %e, "queue sweep failed"),
        }
    }
}
