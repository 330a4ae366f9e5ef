//! The replications this server is running, whoever started them (`POST /_replicate` or a
//! `_replicator` document), and the per-document states `_scheduler/docs` reports.
//!
//! Every replication runs as a task on [`AppState::tasks`] with a child of the shutdown token,
//! so it is cancelled on shutdown (after checkpointing the batch in flight) and waited for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use outpost_replicator::{Backoff, ReplicationError, State, Status, http_client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::spec::LocalDbs;

/// Retry and lease settings of replications run by the server.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub backoff: Backoff,
    /// How long a node's lease on a `_replicator` job lasts without renewal (see
    /// [`super::lease`]): how long the job stays stopped when its node dies.
    pub lease_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// The name `_scheduler/*` and `_active_tasks` give this node when none is configured.
pub const DEFAULT_NODE: &str = "outpost@localhost";

/// One running replication.
#[derive(Clone)]
pub struct Job {
    /// CouchDB's job id: the replication id with `+continuous` / `+create_target` suffixes.
    pub id: String,
    /// The `_replicator` document that started it, if any.
    pub doc_id: Option<String>,
    /// Source and target, without credentials.
    pub source: String,
    pub target: String,
    /// Which sides are databases of this server, so database info can list the job.
    pub local: LocalDbs,
    pub continuous: bool,
    /// The replication's own progress.
    pub status: watch::Receiver<Status>,
    /// Stops it (after the batch in flight is checkpointed).
    pub cancel: CancellationToken,
    pub started: SystemTime,
}

/// What `_scheduler/docs` says about one `_replicator` document.
#[derive(Clone, Debug)]
pub struct DocState {
    pub replication_id: Option<String>,
    pub source: String,
    pub target: String,
    /// CouchDB's scheduler state: `initializing`, `running`, `crashing`, `completed`,
    /// `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    pub error_count: u32,
    pub last_updated: SystemTime,
    pub start_time: SystemTime,
    /// The job's status when it ended (completed or failed), so the scheduler still shows
    /// what it did once the job itself is gone, as CouchDB's does.
    pub final_status: Option<Status>,
}

/// Which way documents flow, seen from a database of this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// The database is the source: it pushes to the peer.
    Push,
    /// The database is the target: it pulls from the peer.
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// The replication of one local database with one peer, running or ended, as database info
/// reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerSync {
    /// The other side, without credentials.
    pub peer: String,
    pub direction: Direction,
    /// When a batch last completed or the replication last found nothing to do.
    pub last_sync: Option<SystemTime>,
    pub state: State,
}

/// The registry of jobs and document states. Locks are held only to copy in or out, never
/// across an `.await`.
#[derive(Default)]
pub struct Replications {
    jobs: Mutex<BTreeMap<String, Job>>,
    docs: Mutex<BTreeMap<String, DocState>>,
    /// How each ended job left each local database it involved, by (database, peer,
    /// direction): database info reports the last successful sync after the job is gone.
    /// Bounded by the replications an operator configures; dropped with the database.
    ended: Mutex<BTreeMap<(String, String, Direction), PeerSync>>,
    /// Built on first use: most servers never replicate over HTTP.
    client: OnceLock<reqwest::Client>,
    settings: Mutex<Settings>,
    /// This node's name, as `_scheduler/*` and `_active_tasks` show it.
    node: Mutex<Option<String>>,
    /// Tells this process apart from every other holder of a lease, even one with the same
    /// node name (or this node before a restart).
    instance: OnceLock<String>,
    /// `_replicator` leases this node holds, and how many it took and lost, for metrics.
    pub leases: super::lease::LeaseCounts,
}

impl std::fmt::Debug for Replications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replications").finish_non_exhaustive()
    }
}

impl Replications {
    pub fn new() -> Arc<Replications> {
        Arc::new(Replications::default())
    }

    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_settings(&self, settings: Settings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// This node's name ([`DEFAULT_NODE`] unless set).
    pub fn node(&self) -> String {
        self.node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| DEFAULT_NODE.to_owned())
    }

    pub fn set_node(&self, name: String) {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(name);
    }

    /// Who holds this node's leases: its name and an id of this process.
    pub fn holder(&self) -> String {
        let instance = self
            .instance
            .get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
        format!("{} {instance}", self.node())
    }

    pub fn client(&self) -> Result<reqwest::Client, ReplicationError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = http_client()?;
        Ok(self.client.get_or_init(|| c).clone())
    }

    /// Registers a job; `false` (and nothing registered) when one with that id runs already.
    pub fn insert(&self, job: Job) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.contains_key(&job.id) {
            return false;
        }
        jobs.insert(job.id.clone(), job);
        true
    }

    /// Unregisters a job that has ended, keeping its last sync for database info.
    pub fn remove(&self, id: &str) {
        let job = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let Some(job) = job else { return };
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        for (db, sync) in job.peer_syncs() {
            let key = (db, sync.peer.clone(), sync.direction);
            let last_sync = latest(
                sync.last_sync,
                ended.get(&key).and_then(|old| old.last_sync),
            );
            ended.insert(key, PeerSync { last_sync, ..sync });
        }
    }

    /// The replications of database `db` of this server, running or ended, one per peer and
    /// direction, a running job taking precedence over an ended one.
    pub fn peer_syncs(&self, db: &str) -> Vec<PeerSync> {
        let mut by_peer: BTreeMap<(String, Direction), PeerSync> = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((d, _, _), _)| d == db)
            .map(|((_, peer, dir), sync)| ((peer.clone(), *dir), sync.clone()))
            .collect();
        for job in self.jobs() {
            for (d, sync) in job.peer_syncs() {
                if d != db {
                    continue;
                }
                let key = (sync.peer.clone(), sync.direction);
                let last_sync = latest(
                    sync.last_sync,
                    by_peer.get(&key).and_then(|old| old.last_sync),
                );
                by_peer.insert(key, PeerSync { last_sync, ..sync });
            }
        }
        by_peer.into_values().collect()
    }

    /// Forgets the ended replications of a database that is deleted.
    pub fn forget_db(&self, db: &str) {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(d, _, _), _| d != db);
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn set_doc(&self, doc_id: &str, state: DocState) {
        self.docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(doc_id.to_owned(), state);
    }

    pub fn update_doc(&self, doc_id: &str, f: impl FnOnce(&mut DocState)) {
        if let Some(d) = self
            .docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(doc_id)
        {
            f(d);
        }
    }

    pub fn remove_doc(&self, doc_id: &str) {
        self.docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(doc_id);
    }

    pub fn docs(&self) -> Vec<(String, DocState)> {
        self.docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Job {
    /// The job as seen from each database of this server it involves: the source pushes to
    /// the target, the target pulls from the source.
    fn peer_syncs(&self) -> Vec<(String, PeerSync)> {
        let status = self.status.borrow();
        let mut out = Vec::new();
        let sides = [
            (&self.local.source, &self.target, Direction::Push),
            (&self.local.target, &self.source, Direction::Pull),
        ];
        for (db, peer, direction) in sides {
            if let Some(db) = db {
                let sync = PeerSync {
                    peer: peer.clone(),
                    direction,
                    last_sync: status.last_sync,
                    state: status.state,
                };
                out.push((db.clone(), sync));
            }
        }
        out
    }
}

fn latest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    a.max(b)
}

/// CouchDB's job id: the replication id and the options that make a different job of it.
pub fn job_id(replication_id: &str, continuous: bool, create_target: bool) -> String {
    let mut id = replication_id.to_owned();
    if continuous {
        id.push_str("+continuous");
    }
    if create_target {
        id.push_str("+create_target");
    }
    id
}

/// An ISO 8601 UTC timestamp (`2024-01-31T12:00:00Z`), the form of CouchDB's
/// `_replication_state_time` and scheduler times.
pub fn iso_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ids() {
        assert_eq!(iso_time(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(iso_time(t), "2024-02-29T12:34:56Z");
        assert_eq!(job_id("abc", true, true), "abc+continuous+create_target");
        assert_eq!(job_id("abc", false, false), "abc");
    }
}
