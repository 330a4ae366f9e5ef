//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that commit,
//! and every caller group-committed with it, waits while a thousand pages are copied into the
//! database file and the file is synced. The queue's writer hands checkpoints instead to a
//! thread of their own with its own connection. A `PASSIVE` checkpoint copies frames while
//! later commits go on appending to the WAL, and once everything is copied the writer's next
//! transaction starts the WAL over from its beginning, as after an automatic checkpoint.
//! Durability is unchanged: a commit is still acknowledged only after the WAL is synced, and a
//! checkpoint syncs the WAL before copying and the database file after (`synchronous = FULL`).

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::schema;
use crate::error::{Error, Result};

/// WAL size, in pages, that asks for a checkpoint: SQLite's own automatic threshold.
pub(crate) const CHECKPOINT_PAGES: i32 = 1000;

/// Starts the checkpoint thread for the database at `path` and makes `writer`'s commits ask it
/// for a checkpoint whenever the WAL holds [`CHECKPOINT_PAGES`] or more. This replaces the
/// writer's automatic checkpoints. The thread ends once `writer` is closed.
pub(crate) fn start(writer: &mut Connection, path: &Path) -> Result<JoinHandle<()>> {
    let conn = schema::connect(path)?;
    let (ask, asked) = sync_channel::<()>(1);
    writer.wal_hook(Some(move |_: &mut Wal, pages: i32| {
        request(&ask, pages);
        Ok(())
    }))?;
    std::thread::Builder::new()
        .name("outpost-queue-checkpoint".into())
        .spawn(move || run(conn, asked))
        .map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })
}

/// Asks for a checkpoint when the WAL is large enough; a request already waiting covers this
/// one.
fn request(ask: &SyncSender<()>, pages: i32) {
    if pages >= CHECKPOINT_PAGES {
        // Full: a request is already waiting. Disconnected: the thread is gone (closing).
        let _ = ask.try_send(());
    }
}

fn run(conn: Connection, asked: Receiver<()>) {
    while asked.recv().is_ok() {
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((log, copied)) => tracing::debug!(log, copied, "queue checkpoint"),
            Err(e) => tracing::warn!(error = %e, "queue checkpoint failed"),
        }
    }
}
