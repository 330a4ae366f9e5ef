//! Lockout after repeated failed logins, as CouchDB 3.4's `chttpd_auth_lockout`: once a user
//! name has failed `threshold` times from one source within `window` seconds, further attempts
//! for that pair are refused (without checking the password) until the window has passed since
//! the first failure counted. A success clears the pair. The table is bounded: when it is full,
//! entries whose window has passed are dropped, and if none has, the oldest is.

use std::collections::HashMap;
use std::sync::Mutex;

/// One (user, source) pair's failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// When the first counted failure happened, seconds since the epoch.
    since: u64,
}

/// The failure table.
#[derive(Debug)]
pub struct Lockout {
    pub threshold: u32,
    /// Seconds a run of failures is remembered.
    pub window: u64,
    max_entries: usize,
    table: Mutex<HashMap<(String, String), Failures>>,
}

impl Lockout {
    /// `threshold` 0 turns lockout off.
    pub fn new(threshold: u32, window: u64, max_entries: usize) -> Lockout {
        Lockout {
            threshold,
            window,
            max_entries: max_entries.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn key(user: &str, source: &str) -> (String, String) {
        (user.to_owned(), source.to_owned())
    }

    /// Whether `user` from `source` is locked out at `now`.
    pub fn is_locked(&self, user: &str, source: &str, now: u64) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .get(&Self::key(user, source))
            .is_some_and(|f| f.count >= self.threshold && now < f.since.saturating_add(self.window))
    }

    /// Counts a failed login.
    pub fn failed(&self, user: &str, source: &str, now: u64) {
        if self.threshold == 0 {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(user, source);
        if !table.contains_key(&key) && table.len() >= self.max_entries {
            let window = self.window;
            table.retain(|_, f| now < f.since.saturating_add(window));
            if table.len() >= self.max_entries
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        let entry = table.entry(key).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now >= entry.since.saturating_add(self.window) {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    /// Forgets the failures of a pair that just logged in.
    pub fn succeeded(&self, user: &str, source: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&Self::key(user, source));
    }

    /// Pairs remembered.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn locks_after_threshold_then_expires() {
        let l = Lockout::new(3, 60, 100);
        for _ in 0..2 {
            l.failed("bob", "1.2.3.4", 100);
        }
        assert!(!l.is_locked("bob", "1.2.3.4", 100));
        l.failed("bob", "1.2.3.4", 101);
        assert!(l.is_locked("bob", "1.2.3.4", 101));
        assert!(
            !l.is_locked("bob", "5.6.7.8", 101),
            "another source is not locked"
        );
        assert!(
            !l.is_locked("alice", "1.2.3.4", 101),
            "another user is not locked"
        );
        assert!(l.is_locked("bob", "1.2.3.4", 159));
        assert!(!l.is_locked("bob", "1.2.3.4", 160));
    }

    #[test]
    fn success_clears_and_zero_disables() {
        let l = Lockout::new(1, 60, 100);
        l.failed("bob", "s", 0);
        assert!(l.is_locked("bob", "s", 1));
        l.succeeded("bob", "s");
        assert!(!l.is_locked("bob", "s", 1));
        let off = Lockout::new(0, 60, 100);
        off.failed("bob", "s", 0);
        assert!(!off.is_locked("bob", "s", 0));
    }

    proptest! {
        #[test]
        fn table_stays_bounded(users in proptest::collection::vec("[a-z]{1,4}", 0..200), cap in 1usize..20) {
            let l = Lockout::new(2, 60, cap);
            for (i, u) in users.iter().enumerate() {
                l.failed(u, "s", i as u64);
                prop_assert!(l.len() <= cap);
            }
        }

        #[test]
        fn locked_iff_threshold_failures_in_window(times in proptest::collection::vec(0u64..300, 0..12), probe in 0u64..400) {
            let mut times = times;
            times.sort_unstable();
            let l = Lockout::new(3, 60, 100);
            for t in &times {
                l.failed("u", "s", *t);
            }
            // The model: runs of failures start at the first failure after the previous run's
            // window ended.
            let mut since = None;
            let mut count = 0;
            for t in &times {
                match since {
                    Some(s) if *t < s + 60 => count += 1,
                    _ => { since = Some(*t); count = 1; }
                }
            }
            let locked = since.is_some_and(|s| count >= 3 && probe < s + 60 && probe >= *times.last().unwrap());
            if probe >= *times.last().unwrap_or(&0) {
                prop_assert_eq!(l.is_locked("u", "s", probe), locked);
            }
        }
    }
}
