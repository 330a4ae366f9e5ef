//! Live feeds across nodes: waking this node's feeds when any node commits (and telling this
//! node when any node changed the shared configuration).
//!
//! This node's own commits are announced by its writer right after they commit. Commits of
//! other nodes are learnt from the database: every write transaction sends one `NOTIFY` on
//! [`CHANNEL`](crate::writer::CHANNEL), and a listener task here, on its own connection, reads
//! the sequences of the watched databases and of `_db_updates` from the tables whenever one
//! arrives. A notification carries no data and any number of them coalesce into one read, so it
//! only says "look now"; the listener also looks every [`POLL_INTERVAL`] without one, so a lost
//! notification (a dropped connection, a failover) delays a feed but never loses a change. The
//! feeds themselves read their rows from the tables, never from the notification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::read::Reader;
use crate::writer::CHANNEL;

/// How often the listener reads the sequences without being notified.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often the listener samples the database's size on disk (`pg_database_size`, which walks
/// the database's files).
const SIZE_INTERVAL: Duration = Duration::from_secs(30);

/// How long the listener waits before connecting again after losing its connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// One watched database: its feeds' channel and the row id it had when last seen, so a
/// database deleted and created again between two looks still ends the old feeds.
pub struct Watched {
    /// The feeds' channel; dropping it ends them.
    pub tx: watch::Sender<u64>,
    /// The database's row id when last seen, `None` before the listener first looked.
    pub id: Option<i64>,
}

/// The channels of this node's live feeds, shared by the writer's announcements and the
/// listener.
#[derive(Clone, Default)]
pub struct Watchers {
    /// By database name; shared by the writer's announcements and the listener.
    pub dbs: Arc<Mutex<HashMap<String, Watched>>>,
}

impl Watchers {
    /// Moves a database's channel to `seq` when it is ahead of what the feeds saw.
    pub fn advance(&self, db: &str, seq: u64) {
        let map = self.dbs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = map.get(db) {
            advance(&w.tx, seq);
        }
    }

    /// Ends the live feeds of a deleted database.
    pub fn end(&self, db: &str) {
        self.dbs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }

    fn names(&self) -> Vec<String> {
        self.dbs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// The server-wide counters the listener follows besides the databases' sequences.
pub struct Counters {
    /// The `_db_updates` sequence.
    pub db_updates: watch::Sender<u64>,
    /// The shared configuration's version (see [`crate::config`]).
    pub config: watch::Sender<u64>,
}

/// Sends `seq` to a channel's receivers if it is ahead of the value they have.
pub fn advance(tx: &watch::Sender<u64>, seq: u64) {
    tx.send_if_modified(|current| {
        if seq > *current {
            *current = seq;
            true
        } else {
            false
        }
    });
}

/// Runs the listener until the task is aborted: LISTEN on its own connection, and on each
/// notification (coalesced) or every [`POLL_INTERVAL`], read what moved.
pub async fn listen(
    config: tokio_postgres::Config,
    watchers: Watchers,
    counters: Counters,
    reader: Reader,
    database_bytes: Arc<AtomicU64>,
) {
    let mut sized: Option<Instant> = None;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                // The connection delivers notifications only while it is polled; it runs beside
                // the reading below, in this same task.
                let driver = async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => {
                                let _ = wake_tx.send(());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "live-feed listener lost its connection");
                                break;
                            }
                        }
                    }
                };
                let reader = async {
                    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                        tracing::warn!(error = %e, "live-feed listener cannot LISTEN");
                        return;
                    }
                    loop {
                        if let Err(e) = look(&client, &watchers, &counters).await {
                            tracing::warn!(error = %e, "live-feed listener cannot read sequences");
                            return;
                        }
                        record_pool(&reader);
                        if sized.is_none_or(|at| at.elapsed() >= SIZE_INTERVAL) {
                            sized = Some(Instant::now());
                            match client
                                .query_one("SELECT pg_database_size(current_database())", &[])
                                .await
                            {
                                Ok(row) => database_bytes
                                    .store(row.get::<_, i64>(0).max(0) as u64, Ordering::Relaxed),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot read the database's size");
                                }
                            }
                        }
                        tokio::select! {
                            woken = wake_rx.recv() => {
                                if woken.is_none() {
                                    return;
                                }
                                // Every notification that arrived meanwhile is answered by the
                                // one read that follows.
                                while wake_rx.try_recv().is_ok() {}
                            }
                            () = tokio::time::sleep(POLL_INTERVAL) => {}
                        }
                    }
                };
                tokio::select! {
                    () = driver => {}
                    () = reader => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "live-feed listener cannot reach postgres");
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Reads the sequences of the watched databases, of `_db_updates` and of the configuration, and
/// wakes the feeds whose sequence moved; ends the feeds of databases that are gone (or were
/// created again).
async fn look(
    client: &tokio_postgres::Client,
    watchers: &Watchers,
    counters: &Counters,
) -> Result<(), tokio_postgres::Error> {
    let names = watchers.names();
    let rows = if names.is_empty() {
        Vec::new()
    } else {
        client
            .query(
                "SELECT name, id, update_seq FROM dbs WHERE name = ANY($1)",
                &[&names],
            )
            .await?
    };
    let found: HashMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    {
        let mut map = watchers.dbs.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|name, w| match (found.get(name), w.id) {
            // Gone, or another database of that name: its feeds end.
            (None, Some(_)) => false,
            (Some((id, _)), Some(seen)) if *id != seen => false,
            _ => true,
        });
        for (name, w) in map.iter_mut() {
            if let Some((id, seq)) = found.get(name) {
                w.id = Some(*id);
                advance(&w.tx, (*seq).max(0) as u64);
            }
        }
    }
    for row in client
        .query(
            "SELECT name, value FROM counters WHERE name IN ('db_updates', 'config')",
            &[],
        )
        .await?
    {
        let value = row.get::<_, i64>(1).max(0) as u64;
        match row.get::<_, &str>(0) {
            "db_updates" => advance(&counters.db_updates, value),
            _ => advance(&counters.config, value),
        }
    }
    Ok(())
}

/// The read pool's connections as gauges, sampled at the listener's pace.
fn record_pool(reader: &Reader) {
    let status = reader.status();
    metrics::gauge!("outpost_store_pool_connections", "state" => "open").set(status.size as f64);
    metrics::gauge!("outpost_store_pool_connections", "state" => "idle")
        .set(status.available as f64);
    metrics::gauge!("outpost_store_pool_waiting").set(status.waiting as f64);
}
