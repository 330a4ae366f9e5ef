//! What the gateway believes about the upstream: up or down.
//!
//! Never decided by one request. Failures (a failed probe, or live traffic and deliveries that
//! end in a connection failure, a timeout or 502/503/504) and successes (a probe or a delivery
//! answered) are counted: the upstream goes down after `fall` consecutive failures and comes
//! back after `rise` consecutive successes, like the thresholds of Envoy's health checking and
//! outlier detection. One client hitting a broken path, or one slow request, thus cannot take
//! the gateway offline for everybody. Watchers (the replay worker) are woken on every change.

use std::sync::Mutex;

use tokio::sync::watch;

/// Consecutive failures that mark the upstream down, unless configured otherwise.
pub const DEFAULT_FALL: u32 = 3;
/// Consecutive successes that mark the upstream up again, unless configured otherwise.
pub const DEFAULT_RISE: u32 = 2;

/// The upstream's state, shared by the proxy, the probe and the worker.
#[derive(Debug)]
pub struct Health {
    /// A watch channel rather than an atomic so the worker can sleep until the state changes.
    state: watch::Sender<bool>,
    /// The current run of failures (while up) or successes (while down). One lock for both so
    /// a failure and a success racing each other cannot leave both counts set.
    run: Mutex<Run>,
    fall: u32,
    rise: u32,
}

#[derive(Debug, Default)]
struct Run {
    failures: u32,
    successes: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Health {
    /// A health state starting as `up` or `down`, with the default thresholds.
    pub fn new(up: bool) -> Self {
        Self::with_thresholds(up, DEFAULT_FALL, DEFAULT_RISE)
    }

    /// A health state with the given thresholds (each at least 1).
    pub fn with_thresholds(up: bool, fall: u32, rise: u32) -> Self {
        Self {
            state: watch::Sender::new(up),
            run: Mutex::new(Run::default()),
            fall: fall.max(1),
            rise: rise.max(1),
        }
    }

    /// Whether the upstream is believed to be up.
    pub fn is_up(&self) -> bool {
        *self.state.borrow()
    }

    /// Sets the state at once, without thresholds (the first probe at startup).
    pub fn set(&self, up: bool, reason: &str) {
        *self.run.lock().expect("health lock") = Run::default();
        if up {
            self.mark_up();
        } else {
            self.mark_down(reason);
        }
    }

    /// Counts an answer from the upstream (a probe below 500, a delivery answered).
    pub fn success(&self) {
        let rise = {
            let mut run = self.run.lock().expect("health lock");
            run.failures = 0;
            run.successes = run.successes.saturating_add(1);
            run.successes >= self.rise
        };
        if rise {
            self.mark_up();
        }
    }

    /// Counts a failure that says the upstream may be down; `reason` is logged when it goes down.
    pub fn failure(&self, reason: &str) {
        let fall = {
            let mut run = self.run.lock().expect("health lock");
            run.successes = 0;
            run.failures = run.failures.saturating_add(1);
            run.failures >= self.fall
        };
        if fall {
            self.mark_down(reason);
        }
    }

    fn mark_up(&self) {
        if self
            .state
            .send_if_modified(|up| !std::mem::replace(up, true))
        {
            tracing::info!("upstream is up");
        }
    }

    fn mark_down(&self, reason: &str) {
        if self
            .state
            .send_if_modified(|up| std::mem::replace(up, false))
        {
            tracing::warn!(reason, "upstream is down");
        }
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_not_single_events() {
        let h = Health::with_thresholds(true, 3, 2);
        h.failure("x");
        h.failure("x");
        assert!(h.is_up(), "two failures are not three");
        h.success();
        h.failure("x");
        h.failure("x");
        assert!(h.is_up(), "a success in between restarts the count");
        h.failure("x");
        assert!(!h.is_up());
        h.success();
        assert!(!h.is_up(), "one success is not two");
        h.failure("x");
        h.success();
        assert!(!h.is_up());
        h.success();
        assert!(h.is_up());
        h.set(false, "first probe failed");
        assert!(!h.is_up());
    }
}
