//! Exponential back-off with jitter between retries of a failed replication.
//!
//! PouchDB starts from a random delay of up to 2 s, doubles it on every failure and caps it at
//! 10 minutes (pouchdb-replication, `defaultBackOff`). We keep the doubling and the cap, make
//! both configurable, and draw each delay uniformly from the upper half of the current step
//! ("equal jitter"): the half that is random stops many replicators that lost the same peer
//! from retrying in lockstep, the half that is fixed keeps the growth real.

use std::time::Duration;

use rand::Rng;

/// Back-off settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The step after the first failure.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The step (upper bound of the delay) after `failures` consecutive failures (1-based).
    pub fn step(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }

    /// The delay to wait after `failures` consecutive failures: uniform in [step/2, step].
    pub fn delay(&self, failures: u32) -> Duration {
        let step = self.step(failures);
        let half = step / 2;
        let spread = (step - half).as_millis() as u64;
        half + Duration::from_millis(rand::rng().random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let steps: Vec<u64> = (1..=7).map(|n| b.step(n).as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.step(u32::MAX), Duration::from_secs(1));
        for n in 1..=10 {
            let d = b.delay(n);
            assert!(d >= b.step(n) / 2 && d <= b.step(n), "{n}: {d:?}");
        }
    }
}
