//! The lock of a data directory: the SQLite store belongs to one process.
//!
//! `outpost serve` holds an exclusive lock on `outpost.lock` in the data directory for as long
//! as it runs, and `outpost db rebuild`, which replaces the store's file, takes it too, so it
//! never swaps a file out from under a server (which would go on writing into the old file, and
//! lose everything it wrote). The kernel drops the lock when its process dies, so a crash never
//! leaves a stale lock. Read-only tools (`outpost db verify`) take no lock: SQLite's own locks
//! let them read beside a running server.

use std::fs::{File, TryLockError};
use std::path::Path;

use crate::StoreError;

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "outpost.lock";

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked file; closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (creating the directory if needed), or fails at once with
    /// [`StoreError::InUse`] when another process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Corrupt(format!(
                "cannot lock the data directory {}: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::InUse(format!(
                "the data directory {} is in use by another process (a running server); stop it first",
                dir.display()
            ))),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(StoreError::InUse(_))
        ));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
