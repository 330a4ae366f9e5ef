//! Which databases are being compacted, for `compact_running` in database info.
//!
//! A compaction is marked from the moment it is accepted, not from when its first step runs:
//! `POST /{db}/_compact` answers 202 at once and compacts in the background, and a client that
//! polls `compact_running` right after the answer must not see `false` before the work is done.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The databases with a compaction running; cheap to clone, shared by every mark.
#[derive(Debug, Clone, Default)]
pub struct Compactions {
    running: Arc<Mutex<HashSet<String>>>,
}

impl Compactions {
    /// Marks `db` as compacting until the returned mark is dropped; `None` when it already is.
    pub fn mark(&self, db: &str) -> Option<CompactionMark> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(db.to_owned()).then(|| CompactionMark {
            running: self.running.clone(),
            db: db.to_owned(),
        })
    }

    /// Whether a compaction of `db` is marked.
    pub fn is_running(&self, db: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(db)
    }
}

/// Proof that a compaction of one database is running; dropping it clears the mark.
#[derive(Debug)]
pub struct CompactionMark {
    running: Arc<Mutex<HashSet<String>>>,
    db: String,
}

impl Drop for CompactionMark {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_exclusive_and_released_on_drop() {
        let c = Compactions::default();
        let mark = c.mark("a").unwrap();
        assert!(c.is_running("a"));
        assert!(c.mark("a").is_none());
        assert!(!c.is_running("b"));
        drop(mark);
        assert!(!c.is_running("a"));
        assert!(c.mark("a").is_some());
    }
}
