//! What the gateway believes about the upstream: up or down.
//!
//! Set by the active probe (a successful probe marks it up, a failed one down) and by live
//! traffic (connection failures, timeouts and 502/503/504 mark it down). Watchers (the replay
//! worker) are woken on every change.

use tokio::sync::watch;

/// The upstream's state, shared by the proxy, the probe and the worker.
#[derive(Debug)]
pub struct Health {
    /// A watch channel rather than an atomic so the worker can sleep until the state changes.
    state: watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Health {
    /// A health state starting as `up`.
    pub fn new(up: bool) -> Self {
        Self {
            state: watch::Sender::new(up),
        }
    }

    /// Whether the upstream is believed to be up.
    pub fn is_up(&self) -> bool {
        *self.state.borrow()
    }

    /// Marks the upstream up (after a successful probe or delivery).
    pub fn mark_up(&self) {
        if self
            .state
            .send_if_modified(|up| !std::mem::replace(up, true))
        {
            tracing::info!("upstream is up");
        }
    }

    /// Marks the upstream down, saying why.
    pub fn mark_down(&self, reason: &str) {
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
