//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that commit,
//! and every caller group-committed with it, waits while a thousand pages are copied into the
//! database file and the file is synced. Outpost's single writers (the document store's and the
//! gateway queue's) hand checkpoints instead to a thread of their own with its own connection.
//! A `PASSIVE` checkpoint copies frames while later commits go on appending to the WAL; once
//! everything is copied, the writer's next transaction starts the WAL over from its beginning,
//! as after an automatic checkpoint. Durability is unchanged: a commit is still acknowledged
//! only after the WAL is synced, and with `synchronous = FULL` a checkpoint syncs the WAL before
//! copying and the database file after.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// WAL size, in pages, that asks for a checkpoint: SQLite's own automatic threshold.
pub const CHECKPOINT_PAGES: i32 = 1000;

/// Why the checkpoint thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot install the WAL hook: {0}")]
    Sqlite(rusqlite::Error),
}

/// Starts a thread named `name` that checkpoints with `checkpointer` (a connection of its own
/// to the same database, opened as the writer's) whenever a commit of `writer` leaves
/// [`CHECKPOINT_PAGES`] or more in the WAL. This replaces `writer`'s automatic checkpoints. The
/// thread ends once `writer` is closed.
pub fn start(
    writer: &mut Connection,
    checkpointer: Connection,
    name: &str,
) -> Result<JoinHandle<()>, StartError> {
    let (ask, asked) = sync_channel::<()>(1);
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(checkpointer, asked))
        .map_err(StartError::Thread)?;
    writer
        .wal_hook(Some(move |_: &mut Wal, pages: i32| {
            request(&ask, pages);
            Ok(())
        }))
        .map_err(StartError::Sqlite)?;
    Ok(handle)
}

/// Asks for a checkpoint when the WAL is large enough.
fn request(ask: &SyncSender<()>, pages: i32) {
    if pages >= CHECKPOINT_PAGES {
        // Full: a request is already waiting. Disconnected: the thread is gone.
        let _ = ask.try_send(());
    }
}

fn run(conn: Connection, asked: Receiver<()>) {
    while asked.recv().is_ok() {
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((log, copied)) => tracing::debug!(log, copied, "checkpoint"),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
}

/// Copies the whole WAL into the database file and truncates it, on `conn` (the writer's
/// connection, between transactions). The checkpoint thread may be running a checkpoint of its
/// own, and then this one reports itself blocked at once (the checkpoint lock has no busy
/// wait): it is tried again until it completes or `patience` runs out. Whether it completed.
pub fn checkpoint_truncate(conn: &Connection, patience: Duration) -> rusqlite::Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        let blocked: bool = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if !blocked {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .unwrap();
        conn
    }

    /// The writer's commits no longer checkpoint; the thread must, or the WAL would grow
    /// forever and the database file would never receive a page.
    #[test]
    fn commits_are_checkpointed_by_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut writer = open(&path);
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let handle = start(&mut writer, open(&path), "test-checkpoint").unwrap();
        let initial = std::fs::metadata(&path).unwrap().len();
        let page = vec![7u8; 4000];
        // One page per row, one commit per row: three thresholds' worth.
        for _ in 0..3 * CHECKPOINT_PAGES {
            writer
                .execute("INSERT INTO t VALUES (?1)", [&page])
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() < initial + 2 * 1024 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was checkpointed into the database file"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(writer);
        // Closing the writer ends the thread.
        handle.join().unwrap();
        let count: i64 = open(&path)
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, i64::from(3 * CHECKPOINT_PAGES));
    }
}
