//! The replay worker: delivers queued writes in order, one in flight per ordering key.
//!
//! Shaped as `work()` / `wait_for_work()`: load the next deliverable entries (oldest first,
//! skipping ordering keys whose head is backing off), deliver each key's entries one after the
//! other, record each outcome compare-and-set on the entry's version, then wait for new entries,
//! a back-off to end, the upstream to come back, or shutdown.
//!
//! With the PostgreSQL engine several processes replay one queue: a lane runs only while its
//! process holds the lease of its ordering key, renewed by this loop and handed back when the
//! lane ends (see [`crate::queue`]).
//!
//! Outcomes are committed in the background while the next entry of the same key is already on
//! its way: an outcome lost to a crash only means the entry is delivered again, with the same
//! `Idempotency-Key`, which is the at-least-once half of exactly-once toward a backend that
//! honours the key. Before loading again the worker waits for every outcome to be committed, so
//! it never sees an entry it has already delivered as pending.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RetryPolicy;
use crate::health::Health;
use crate::queue::{Deliverable, Finish, Queue, now_ms};
use crate::record::{StoredRequest, StoredResponse};
use crate::stats::Stats;

/// Most entries loaded at once.
const BATCH_ENTRIES: u32 = 512;
/// Most request bytes loaded at once (at least one entry is always loaded).
const BATCH_BYTES: i64 = 32 * 1024 * 1024;
/// How often the worker looks at the queue when nothing woke it, so changes made by another
/// process (`outpost queue retry`) are noticed.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Pause after the queue itself failed, so a broken disk does not turn into a busy loop.
const STORAGE_BACKOFF: Duration = Duration::from_secs(1);

/// Where queued requests are delivered: the upstream over HTTP, or a service in this process.
pub trait Deliver: Send + Sync + 'static {
    /// Makes one delivery attempt.
    fn deliver(&self, request: &StoredRequest) -> impl Future<Output = Delivery> + Send;
}

/// The result of one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    /// The target answered; the status decides what happens next.
    Answered(StoredResponse),
    /// No answer (connection failure, timeout, unavailable database): retried later, unless the
    /// request may have been applied and the target is not known to honour idempotency keys.
    Failed {
        /// Whether this says the target as a whole is down.
        upstream_down: bool,
        /// Whether the request was sent and may have been applied (a timeout or a broken
        /// connection after sending), as opposed to certainly not applied (no connection).
        outcome_unknown: bool,
        /// What happened, for `last_error`.
        reason: String,
    },
    /// The stored request cannot be sent at all: dead-lettered.
    Rejected(String),
}

/// What a status means for a queued write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Delivered.
    Done,
    /// Transient: try again later.
    Retry,
    /// Permanent refusal: dead-letter.
    Dead,
}

/// Classifies an upstream status for a queued write; `honours_keys` says whether the upstream
/// honours `Idempotency-Key`, in which case 409 means "the first request with this key is still
/// running" and is retried later.
pub fn classify(status: u16, honours_keys: bool) -> StatusClass {
    match status {
        409 if honours_keys => StatusClass::Retry,
        200..=299 => StatusClass::Done,
        // A redirect is not a delivery: typically a login page after a session expired. It is
        // kept, with the answer, for the operator to look at, never silently counted as done.
        300..=399 => StatusClass::Dead,
        408 | 425 | 429 | 500..=599 => StatusClass::Retry,
        // 1xx cannot be a final answer; treat a confused upstream as transient.
        100..=199 => StatusClass::Retry,
        _ => StatusClass::Dead,
    }
}

/// The delay before attempt `attempts + 1`: exponential from `base`, capped, with jitter in the
/// upper half so a crowd of clients does not retry in lockstep; a longer `Retry-After` wins, up
/// to the policy's `max_retry_after`.
pub fn backoff(policy: &RetryPolicy, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let delay = policy
        .base_delay
        .saturating_mul(1u32 << exp)
        .min(policy.max_delay);
    let half = delay / 2;
    let jitter = if half.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(rand::random_range(0..=half.as_nanos() as u64))
    };
    let delay = half + jitter;
    match retry_after.map(|ra| ra.min(policy.max_retry_after)) {
        Some(ra) if ra > delay => ra,
        _ => delay,
    }
}

/// Parses a `Retry-After` (RFC 9110 section 10.2.3) as a delay from `now`: delay-seconds, where
/// a number too large for any clock counts as "as long as possible", or an HTTP-date, where a
/// date in the past means "now". Callers clamp the result to their own maximum.
pub fn retry_after(response: &StoredResponse, now: std::time::SystemTime) -> Option<Duration> {
    let value = response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `now_ms + delay` in milliseconds, saturating instead of overflowing.
fn at_ms(now_ms: i64, delay: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

struct Ctx<D> {
    queue: Queue,
    deliver: D,
    /// When set, nothing is attempted while the upstream is known to be down; the probe brings
    /// it back. The in-process layer has no probe and relies on back-off alone.
    health: Option<Arc<Health>>,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    /// Most lanes (ordering keys) replaying at once, so a queue of many keys cannot open
    /// unbounded concurrent requests toward the upstream.
    max_lanes: usize,
}

/// Lanes replaying at once unless configured otherwise.
pub const DEFAULT_MAX_LANES: usize = 64;

/// The replay worker.
pub struct Worker<D> {
    ctx: Arc<Ctx<D>>,
}

impl<D: Deliver> Worker<D> {
    /// A worker delivering `queue` through `deliver`.
    pub fn new(
        queue: Queue,
        deliver: D,
        health: Option<Arc<Health>>,
        retry: RetryPolicy,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            ctx: Arc::new(Ctx {
                queue,
                deliver,
                health,
                retry,
                stats,
                max_lanes: DEFAULT_MAX_LANES,
            }),
        }
    }

    /// Sets the most lanes replaying at once (at least 1); only before [`Worker::run`].
    pub fn with_max_lanes(mut self, max_lanes: usize) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.max_lanes = max_lanes.max(1);
        }
        self
    }

    /// Runs until `shutdown`, restarting the replay loop (after a pause) if it panics; each
    /// panic is counted in [`Stats::worker_panics`].
    pub async fn supervise(self, shutdown: CancellationToken) {
        loop {
            let worker = Worker {
                ctx: self.ctx.clone(),
            };
            let run = AssertUnwindSafe(worker.run(shutdown.clone())).catch_unwind();
            if run.await.is_ok() {
                break;
            }
            Stats::bump(&self.ctx.stats.worker_panics);
            tracing::error!("the replay worker panicked; restarting it");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(STORAGE_BACKOFF) => {}
            }
        }
    }

    /// Runs until `shutdown`; deliveries in flight at that moment are finished first.
    ///
    /// Each ordering key with deliverable entries gets a lane: a task delivering that key's
    /// entries one after the other. Lanes are independent: a slow lane never holds up the
    /// others, and a key whose lane ends (its entries done, or its head backing off) is picked
    /// up again by the next load. At most `max_lanes` run at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let ctx = self.ctx;
        let mut health_rx = ctx.health.as_ref().map(|h| h.subscribe());
        let mut lanes: JoinSet<()> = JoinSet::new();
        // Ordering keys with a running lane, by task id, so even a lane that panicked frees its
        // key.
        let mut active: HashMap<tokio::task::Id, String> = HashMap::new();
        // Leases on ordering keys (PostgreSQL) are renewed on this loop, which wakes at
        // least this often; with SQLite there is nothing to renew.
        let renew_every = ctx.queue.renew_interval();
        let mut renewed = tokio::time::Instant::now();
        loop {
            while let Some(done) = lanes.try_join_next_with_id() {
                lane_ended(&mut active, done);
            }
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(every) = renew_every
                && renewed.elapsed() >= every
            {
                renewed = tokio::time::Instant::now();
                ctx.queue.renew_lanes().await;
            }
            let renew_wait = renew_every.unwrap_or(IDLE_POLL);
            if let Some(rx) = health_rx.as_mut()
                && !*rx.borrow_and_update()
            {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = rx.wait_for(|up| *up) => if r.is_err() { break },
                    Some(done) = lanes.join_next_with_id(), if !lanes.is_empty() => {
                        lane_ended(&mut active, done);
                    }
                    _ = tokio::time::sleep(renew_wait), if renew_every.is_some() => {}
                }
                continue;
            }
            let now = now_ms();
            let running: Vec<String> = active.values().cloned().collect();
            let free = ctx.max_lanes.saturating_sub(active.len());
            let (batch, wake) = match ctx
                .queue
                .load_deliverable(now, BATCH_ENTRIES, BATCH_BYTES, &running, free)
                .await
            {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::error!(error = %e, "cannot load queued requests");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(STORAGE_BACKOFF) => continue,
                    }
                }
            };
            let running: std::collections::HashSet<&String> = running.iter().collect();
            let mut new_lanes: Vec<(String, Vec<Deliverable>)> = Vec::new();
            let mut index: HashMap<String, usize> = HashMap::new();
            for entry in batch {
                if running.contains(&entry.ordering_key) {
                    continue;
                }
                let i = *index.entry(entry.ordering_key.clone()).or_insert_with(|| {
                    new_lanes.push((entry.ordering_key.clone(), Vec::new()));
                    new_lanes.len() - 1
                });
                new_lanes[i].1.push(entry);
            }
            drop(running);
            for (key, entries) in new_lanes {
                if active.len() >= ctx.max_lanes {
                    // No lane for it now: hand its lease back (PostgreSQL) for anyone to take.
                    ctx.queue.release_lane(&key).await;
                    continue;
                }
                let handle = lanes.spawn(run_lane(ctx.clone(), entries, shutdown.clone()));
                active.insert(handle.id(), key);
            }
            let wait = wake
                .map(|at| Duration::from_millis((at - now).max(1) as u64))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL)
                .min(renew_wait);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = lanes.join_next_with_id(), if !lanes.is_empty() => {
                    lane_ended(&mut active, done);
                }
                _ = ctx.queue.shared().changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Let the deliveries in flight finish and their outcomes be recorded.
        while let Some(done) = lanes.join_next_with_id().await {
            lane_ended(&mut active, done);
        }
    }
}

fn lane_ended(
    active: &mut HashMap<tokio::task::Id, String>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let id = match done {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "replay lane failed");
            e.id()
        }
    };
    active.remove(&id);
}

async fn run_lane<D: Deliver>(
    ctx: Arc<Ctx<D>>,
    entries: Vec<Deliverable>,
    shutdown: CancellationToken,
) {
    let Some(key) = entries.first().map(|e| e.ordering_key.clone()) else {
        return;
    };
    let mut commits = Vec::with_capacity(entries.len());
    for entry in entries {
        if shutdown.is_cancelled() || ctx.health.as_ref().is_some_and(|h| !h.is_up()) {
            break;
        }
        if !ctx.queue.holds_lane(&key) {
            // The lease could not be renewed in time; another instance may take the key over.
            tracing::warn!("a lane lost its lease; its remaining entries are left to others");
            break;
        }
        let delivery = match &entry.request {
            // A delivery that panics (a bug in the target, or in an in-process handler) is
            // dead-lettered like a poison entry; otherwise it would be retried, and panic,
            // forever, and hold up its ordering key.
            Ok(request) => match AssertUnwindSafe(ctx.deliver.deliver(request))
                .catch_unwind()
                .await
            {
                Ok(delivery) => delivery,
                Err(_) => {
                    Stats::bump(&ctx.stats.worker_panics);
                    tracing::error!(id = %entry.id, "a delivery panicked; dead-lettered");
                    Delivery::Rejected("the delivery panicked".into())
                }
            },
            Err(reason) => {
                tracing::error!(id = %entry.id, %reason, "poison entry");
                Delivery::Rejected(reason.clone())
            }
        };
        let (finish, stop) = outcome(&ctx, &entry, delivery);
        match ctx
            .queue
            .finish(entry.id.clone(), entry.version, finish)
            .await
        {
            Ok(rx) => commits.push((entry.id, rx)),
            Err(e) => {
                tracing::error!(error = %e, id = %entry.id, "cannot record a delivery");
                break;
            }
        }
        if stop {
            break;
        }
    }
    for (id, rx) in commits {
        match rx.await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::info!(%id, "entry changed during delivery; its new state was kept")
            }
            Ok(Err(e)) => tracing::error!(error = %e, %id, "cannot record a delivery"),
            Err(_) => tracing::error!(%id, "the queue writer stopped"),
        }
    }
    // Only now, with every outcome committed, may another instance take the key.
    ctx.queue.release_lane(&key).await;
}

/// What to record for a delivery, and whether the lane must stop (the key's head is now
/// backing off, so nothing after it may overtake it).
fn outcome<D>(ctx: &Ctx<D>, entry: &Deliverable, delivery: Delivery) -> (Finish, bool) {
    let attempts = entry.attempts + 1;
    match delivery {
        Delivery::Answered(resp) => match classify(resp.status, ctx.retry.upstream_honours_keys) {
            StatusClass::Done => {
                Stats::bump(&ctx.stats.delivered);
                if let Some(h) = &ctx.health {
                    h.success();
                }
                let finish = Finish::Done {
                    attempts,
                    status: resp.status,
                    response: ctx.queue.seal_response(&entry.id, &resp),
                };
                (finish, false)
            }
            StatusClass::Dead => {
                Stats::bump(&ctx.stats.dead_lettered);
                tracing::warn!(id = %entry.id, status = resp.status, "upstream refused a queued request; dead-lettered");
                let finish = Finish::Dead {
                    attempts,
                    error: format!("the upstream refused it with status {}", resp.status),
                    status: Some(resp.status),
                    response: Some(ctx.queue.seal_response(&entry.id, &resp)),
                };
                (finish, false)
            }
            StatusClass::Retry => {
                if let Some(h) = &ctx.health {
                    if matches!(resp.status, 502..=504) {
                        h.failure(&format!("delivery answered {}", resp.status));
                    } else {
                        h.success();
                    }
                }
                let reason = format!("the upstream answered {}", resp.status);
                let after = retry_after(&resp, std::time::SystemTime::now());
                retry_or_dead(ctx, entry, attempts, reason, after, Some(resp))
            }
        },
        Delivery::Failed {
            upstream_down,
            outcome_unknown,
            reason,
        } => {
            if upstream_down && let Some(h) = &ctx.health {
                h.failure(&reason);
            }
            if upstream_down && !outcome_unknown {
                // Nothing was sent (no connection): the attempt does not count toward
                // `max_attempts`, so a flapping upstream cannot use them up.
                return retry_or_dead(ctx, entry, attempts - 1, reason, None, None);
            }
            if outcome_unknown && !ctx.retry.upstream_honours_keys {
                // Sending it again could apply it twice; the operator decides.
                Stats::bump(&ctx.stats.dead_lettered);
                tracing::warn!(id = %entry.id, %reason, "delivery outcome unknown; dead-lettered");
                let finish = Finish::Dead {
                    attempts,
                    error: format!(
                        "{reason}; the outcome is unknown and the upstream is not configured as \
                         honouring Idempotency-Key, so it is not sent again"
                    ),
                    status: None,
                    response: None,
                };
                return (finish, false);
            }
            retry_or_dead(ctx, entry, attempts, reason, None, None)
        }
        Delivery::Rejected(reason) => {
            Stats::bump(&ctx.stats.dead_lettered);
            (
                Finish::Dead {
                    attempts,
                    error: reason,
                    status: None,
                    response: None,
                },
                false,
            )
        }
    }
}

fn retry_or_dead<D>(
    ctx: &Ctx<D>,
    entry: &Deliverable,
    attempts: i64,
    reason: String,
    retry_after: Option<Duration>,
    response: Option<StoredResponse>,
) -> (Finish, bool) {
    let now = now_ms();
    let age = Duration::from_millis((now - entry.created_ms).max(0) as u64);
    if attempts >= i64::from(ctx.retry.max_attempts) || age >= ctx.retry.max_age {
        Stats::bump(&ctx.stats.dead_lettered);
        tracing::warn!(id = %entry.id, attempts, %reason, "giving up on a queued request; dead-lettered");
        let status = response.as_ref().map(|r| r.status);
        let finish = Finish::Dead {
            attempts,
            error: format!("{reason}; gave up after {attempts} attempts"),
            status,
            response: response.map(|r| ctx.queue.seal_response(&entry.id, &r)),
        };
        return (finish, false);
    }
    Stats::bump(&ctx.stats.retried);
    let delay = backoff(&ctx.retry, attempts as u32, retry_after);
    tracing::debug!(id = %entry.id, attempts, ?delay, %reason, "delivery will be retried");
    let finish = Finish::Later {
        attempts,
        next_attempt_ms: at_ms(now, delay),
        error: reason,
    };
    (finish, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        for (status, class) in [
            (200, StatusClass::Done),
            (201, StatusClass::Done),
            (204, StatusClass::Done),
            (301, StatusClass::Dead),
            (302, StatusClass::Dead),
            (304, StatusClass::Dead),
            (400, StatusClass::Dead),
            (401, StatusClass::Dead),
            (404, StatusClass::Dead),
            (409, StatusClass::Dead),
            (422, StatusClass::Dead),
            (408, StatusClass::Retry),
            (425, StatusClass::Retry),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (503, StatusClass::Retry),
            (599, StatusClass::Retry),
        ] {
            assert_eq!(classify(status, false), class, "{status}");
        }
        assert_eq!(classify(409, true), StatusClass::Retry);
        assert_eq!(classify(422, true), StatusClass::Dead);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d1 = backoff(&policy, 1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = backoff(&policy, 3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d20 = backoff(&policy, 20, None);
            assert!(d20 >= Duration::from_secs(1) && d20 <= Duration::from_secs(2));
            assert_eq!(
                backoff(&policy, 1, Some(Duration::from_secs(7))),
                Duration::from_secs(7)
            );
        }
    }

    #[test]
    fn retry_after_seconds() {
        let resp = |v: &str| StoredResponse {
            status: 429,
            headers: vec![("Retry-After".into(), v.as_bytes().to_vec())],
            body: bytes::Bytes::new(),
            truncated: false,
        };
        let now = std::time::SystemTime::now();
        assert_eq!(retry_after(&resp("3"), now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&resp("soon"), now), None);
        assert_eq!(retry_after(&resp("-1"), now), None);
        // Larger than any clock: saturates instead of overflowing.
        let huge = retry_after(&resp("99999999999999999999999"), now).unwrap();
        assert_eq!(huge, Duration::from_secs(u64::MAX));
        assert_eq!(at_ms(now_ms(), huge), i64::MAX);
        // HTTP-date: relative to now, a past date meaning at once.
        let later = now + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        let d = retry_after(&resp(&date), now).unwrap();
        assert!(
            d > Duration::from_secs(118) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(retry_after(&resp(&past), now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_is_clamped_to_the_policy() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(u64::MAX))),
            Duration::from_secs(30)
        );
    }
}
