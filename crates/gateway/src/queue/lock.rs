//! The exclusive lock of a data directory.
//!
//! Two processes replaying one queue would each deliver every entry, out of order with each
//! other. The gateway (and the in-process layer, which runs a worker) therefore holds an
//! exclusive `flock` on `gateway.lock` in the data directory for as long as its queue is open;
//! a second one fails to start with [`Error::Locked`]. The kernel drops the lock when the
//! process dies, so a crash never leaves a stale lock behind. `outpost queue` (list, show,
//! retry, drop) takes no lock: its changes are compare-and-set and meant to work beside a
//! running gateway.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "gateway.lock";

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The locked file; closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (creating the directory if needed), or fails at once with
    /// [`Error::Locked`] when another queue holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let file_err = |source| Error::File {
            path: path.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(file_err)?;
        #[cfg(unix)]
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(Error::Locked(dir.to_owned()));
            }
            Err(e) => return Err(file_err(e.into())),
        }
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(Error::Locked(p)) if p == dir.path()
        ));
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
