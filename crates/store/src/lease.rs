//! Named leases: a name held by one holder until an expiry, renewed by the holder and taken
//! over by another once it expires, so that work meant to run once (a `_replicator` job) runs
//! on one node of several sharing a store.
//!
//! [`Store::try_lease`](crate::Store::try_lease) takes or renews a lease and
//! [`Store::release_lease`](crate::Store::release_lease) gives it up. An engine shared by
//! several processes keeps leases in the store, on the store's clock; the SQLite engine's data
//! directory belongs to one process, so its leases are [`LocalLeases`], in memory, with the
//! same rules.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Leases held in this process: the holder and expiry of each name.
#[derive(Debug, Default)]
pub struct LocalLeases {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLeases {
    /// Takes `name` for `holder` until `ttl` from now when it is free, expired or already
    /// `holder`'s; false when another holder's lease still runs.
    pub fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(name) {
            Some((h, expires)) if h != holder && *expires > now => false,
            _ => {
                held.insert(name.to_owned(), (holder.to_owned(), now + ttl));
                true
            }
        }
    }

    /// Gives up `name` if `holder` holds it.
    pub fn release_lease(&self, name: &str, holder: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(name).is_some_and(|(h, _)| h == holder) {
            held.remove(name);
        }
    }
}
