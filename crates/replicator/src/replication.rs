//! One replication from a source to a target: the protocol loop, retries and progress.
//!
//! Each batch follows CouchDB's protocol description (docs.couchdb.org, "replication/protocol"):
//! read up to `batch_size` changes (`style=all_docs`), ask the target which of those revisions
//! it lacks (`_revs_diff`), fetch them from the source with their history (`_bulk_get`, in
//! chunks fetched in parallel), write them with `new_edits: false`, then record a checkpoint on
//! both sides. A batch is checkpointed only once every document in it is written, so a restart
//! resumes after the last complete batch and never skips a change; revisions it re-reads are
//! filtered out by `_revs_diff`, so nothing already on the target is written twice.
//!
//! While one full batch is being written the next page of changes is already being read, so the
//! source's feed and the target's writes overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{Checkpointer, HistoryEntry};
use crate::endpoint::{Change, ChangesPage, ChangesRequest, DocRevs, Endpoint, Feed};
use crate::{Backoff, ChangesFilter, ReplicationError, Seq, replication_id};

/// How a replication runs.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Keep following the source's changes after catching up.
    pub continuous: bool,
    /// Create the target database when it does not exist.
    pub create_target: bool,
    /// Which documents to replicate.
    pub filter: ChangesFilter,
    /// Start here instead of where the checkpoints say.
    pub since_seq: Option<Seq>,
    /// Changes per batch (CouchDB's and PouchDB's default is 100).
    pub batch_size: usize,
    /// How many chunks of a batch are fetched and written at once.
    pub fetch_parallelism: usize,
    /// Delays between retries.
    pub backoff: Backoff,
    /// Consecutive failed attempts before giving up; `None` retries transient errors forever.
    /// Any completed batch resets the count.
    pub max_attempts: Option<u32>,
    /// Longpoll heartbeat (PouchDB sends 10 s).
    pub heartbeat: Duration,
    /// How long a longpoll request waits for a change before the server ends it.
    pub longpoll_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            continuous: false,
            create_target: false,
            filter: ChangesFilter::All,
            since_seq: None,
            batch_size: 100,
            fetch_parallelism: 4,
            backoff: Backoff::default(),
            max_attempts: Some(5),
            heartbeat: Duration::from_secs(10),
            longpoll_timeout: Duration::from_secs(60),
        }
    }
}

impl ReplicationConfig {
    /// Refuses settings that cannot work, before any request is made.
    pub fn validate(&self) -> Result<(), ReplicationError> {
        if self.batch_size == 0 {
            return Err(ReplicationError::InvalidConfig(
                "batch size must be at least 1".into(),
            ));
        }
        if self.fetch_parallelism == 0 {
            return Err(ReplicationError::InvalidConfig(
                "fetch parallelism must be at least 1".into(),
            ));
        }
        if let ChangesFilter::Selector(selector) = &self.filter {
            outpost_core::Selector::parse(selector)
                .map_err(|e| ReplicationError::InvalidConfig(format!("invalid selector: {e}")))?;
        }
        Ok(())
    }
}

/// Counters with CouchDB's names, as in `_active_tasks` and `POST /_replicate` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub docs_read: u64,
    #[serde(default)]
    pub docs_written: u64,
    #[serde(default)]
    pub doc_write_failures: u64,
    #[serde(default)]
    pub missing_checked: u64,
    #[serde(default)]
    pub missing_found: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.docs_read += other.docs_read;
        self.docs_written += other.docs_written;
        self.doc_write_failures += other.doc_write_failures;
        self.missing_checked += other.missing_checked;
        self.missing_found += other.missing_found;
    }
}

/// Where a replication is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Reading checkpoints and setting up.
    Starting,
    /// Copying a batch.
    Running,
    /// Continuous and caught up: waiting for the source to change.
    Idle,
    /// A transient error; waiting before the next attempt.
    Retrying,
    /// A one-shot replication finished.
    Completed,
    /// A permanent error, or too many transient ones.
    Failed,
    /// Stopped on request, after its last checkpoint.
    Stopped,
}

/// A snapshot of a replication's progress, for progress bars and status endpoints.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    pub stats: Stats,
    pub replication_id: Option<String>,
    /// The last source sequence recorded in a checkpoint.
    pub checkpointed_seq: Option<Seq>,
    /// The source's `update_seq` when the replication last looked.
    pub source_seq: Option<Seq>,
    /// Changes the source still had to send, when it said.
    pub pending: Option<u64>,
    /// The last error, with credentials redacted.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// When the replication last completed a batch or found nothing to do.
    pub last_sync: Option<SystemTime>,
    pub started_at: SystemTime,
}

/// What a replication did, with the fields of CouchDB's `POST /_replicate` answer.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationResult {
    pub ok: bool,
    pub session_id: String,
    pub source_last_seq: Seq,
    pub replication_id_version: u32,
    pub history: Vec<HistoryEntry>,
    #[serde(flatten)]
    pub stats: Stats,
    /// CouchDB says so when there was nothing to replicate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_changes: bool,
    #[serde(skip)]
    pub replication_id: String,
    /// Whether it was stopped on request before finishing (continuous replications always are).
    #[serde(skip)]
    pub stopped: bool,
}

/// How an attempt ended without error.
enum Outcome {
    Completed,
    Stopped,
}

/// State carried across attempts of one run.
struct Progress {
    session_id: String,
    replication_id: Option<String>,
    stats: Stats,
    start_seq: Option<Seq>,
    /// The sequence of the last checkpoint this run wrote: a retry resumes from here.
    checkpointed: Option<Seq>,
    history: Vec<HistoryEntry>,
    failures: u32,
}

/// A replication between two endpoints.
pub struct Replication {
    source: Arc<dyn Endpoint>,
    target: Arc<dyn Endpoint>,
    config: ReplicationConfig,
    /// Progress for observers; the replication is the only writer.
    status: watch::Sender<Status>,
}

impl Replication {
    pub fn new(
        source: Arc<dyn Endpoint>,
        target: Arc<dyn Endpoint>,
        config: ReplicationConfig,
    ) -> Replication {
        let status = Status {
            state: State::Starting,
            stats: Stats::default(),
            replication_id: None,
            checkpointed_seq: None,
            source_seq: None,
            pending: None,
            last_error: None,
            consecutive_failures: 0,
            last_sync: None,
            started_at: SystemTime::now(),
        };
        Replication {
            source,
            target,
            config,
            status: watch::Sender::new(status),
        }
    }

    /// Follows the replication's progress.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub fn source(&self) -> &Arc<dyn Endpoint> {
        &self.source
    }

    pub fn target(&self) -> &Arc<dyn Endpoint> {
        &self.target
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// The replication id, which names the checkpoint documents.
    pub async fn replication_id(&self) -> Result<String, ReplicationError> {
        let source = self.source.id().await?;
        let target = self.target.id().await?;
        Ok(replication_id(&source, &target, &self.config.filter))
    }

    /// Runs until a one-shot replication completes, a permanent error (or too many transient
    /// ones) stops it, or `cancel` fires. Cancellation never interrupts a batch between its
    /// write and its checkpoint: the current batch finishes and is checkpointed first.
    pub async fn run(
        &self,
        cancel: CancellationToken,
    ) -> Result<ReplicationResult, ReplicationError> {
        self.config.validate()?;
        info!(source = %self.source, target = %self.target, continuous = self.config.continuous, "replication starting");
        let mut progress = Progress {
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            replication_id: None,
            stats: Stats::default(),
            start_seq: None,
            checkpointed: None,
            history: Vec::new(),
            failures: 0,
        };
        loop {
            let outcome = self.attempt(&mut progress, &cancel).await;
            let error = match outcome {
                Ok(outcome) => {
                    let stopped = matches!(outcome, Outcome::Stopped);
                    let state = if stopped {
                        State::Stopped
                    } else {
                        State::Completed
                    };
                    self.status.send_modify(|s| s.state = state);
                    info!(source = %self.source, target = %self.target, ?state, docs_written = progress.stats.docs_written, "replication ended");
                    return Ok(self.result(progress, stopped));
                }
                Err(e) => e,
            };
            progress.failures += 1;
            let give_up = !error.is_retryable()
                || self
                    .config
                    .max_attempts
                    .is_some_and(|max| progress.failures >= max);
            self.status.send_modify(|s| {
                s.last_error = Some(error.to_string());
                s.consecutive_failures = progress.failures;
                s.state = if give_up {
                    State::Failed
                } else {
                    State::Retrying
                };
            });
            if give_up {
                warn!(error = %error, source = %self.source, target = %self.target, "replication failed");
                return Err(error);
            }
            let delay = self.config.backoff.delay(progress.failures);
            warn!(error = %error, attempt = progress.failures, delay_ms = delay.as_millis() as u64, "replication interrupted; retrying");
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.status.send_modify(|s| s.state = State::Stopped);
                    return Ok(self.result(progress, true));
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn result(&self, progress: Progress, stopped: bool) -> ReplicationResult {
        let source_last_seq = progress
            .checkpointed
            .clone()
            .or_else(|| progress.start_seq.clone())
            .unwrap_or_default();
        ReplicationResult {
            ok: true,
            no_changes: progress.stats.missing_checked == 0
                && progress.start_seq.as_ref() == Some(&source_last_seq),
            session_id: progress.session_id,
            source_last_seq,
            replication_id_version: 3,
            history: progress.history,
            stats: progress.stats,
            replication_id: progress.replication_id.unwrap_or_default(),
            stopped,
        }
    }

    /// One attempt: set up, read the checkpoints, replicate batch after batch.
    async fn attempt(
        &self,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ReplicationError> {
        let (source, target) = (&*self.source, &*self.target);
        self.status.send_modify(|s| s.state = State::Starting);
        let rep_id = match &progress.replication_id {
            Some(id) => id.clone(),
            None => {
                let id = self.replication_id().await?;
                progress.replication_id = Some(id.clone());
                self.status
                    .send_modify(|s| s.replication_id = Some(id.clone()));
                id
            }
        };
        match target.info().await {
            Ok(_) => {}
            Err(ReplicationError::NotFound { .. }) if self.config.create_target => {
                target.create().await?
            }
            Err(e) => return Err(e),
        }
        let source_info = source.info().await?;
        self.status
            .send_modify(|s| s.source_seq = Some(source_info.update_seq.clone()));

        // A retry resumes from this run's own last checkpoint; the first attempt from the
        // configured `since_seq` or the logs.
        let resume = progress
            .checkpointed
            .clone()
            .or_else(|| self.config.since_seq.clone());
        let mut checkpointer = Checkpointer::open(
            source,
            target,
            &rep_id,
            &progress.session_id,
            resume.as_ref(),
        )
        .await?;
        let mut since = checkpointer.start_seq().clone();
        progress.start_seq.get_or_insert_with(|| since.clone());
        debug!(replication_id = %rep_id, since = %since, "starting from checkpoint");

        let mut prefetched: Option<ChangesPage> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(Outcome::Stopped);
            }
            let page = match prefetched.take() {
                Some(page) => page,
                None => {
                    let req = self.changes_request(&since, self.config.continuous);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(Outcome::Stopped),
                        page = source.changes(&req) => page?,
                    }
                }
            };
            if page.results.is_empty() {
                // Nothing (left) to copy. With a filter, the feed may still have moved past
                // changes that were filtered out: record that so the next run skips them too.
                if page.last_seq != since && !page.last_seq.is_zero() {
                    since = page.last_seq.clone();
                    self.checkpoint(&mut checkpointer, progress, &since).await?;
                }
                self.status.send_modify(|s| {
                    s.last_sync = Some(SystemTime::now());
                    s.pending = Some(0);
                    s.state = State::Idle;
                });
                if !self.config.continuous {
                    return Ok(Outcome::Completed);
                }
                continue;
            }
            self.status.send_modify(|s| {
                s.state = State::Running;
                s.pending = page.pending;
            });
            let full = page.results.len() >= self.config.batch_size;
            let next_since = page
                .results
                .last()
                .map(|c| c.seq.clone())
                .expect("non-empty page");
            let batch_stats = if full {
                let req = self.changes_request(&next_since, false);
                let (next, done) = tokio::join!(source.changes(&req), self.batch(&page.results));
                let batch_stats = done?;
                self.record(progress, &batch_stats);
                since = next_since;
                self.checkpoint(&mut checkpointer, progress, &since).await?;
                prefetched = Some(next?);
                batch_stats
            } else {
                let batch_stats = self.batch(&page.results).await?;
                self.record(progress, &batch_stats);
                since = next_since;
                self.checkpoint(&mut checkpointer, progress, &since).await?;
                batch_stats
            };
            debug!(since = %since, written = batch_stats.docs_written, "batch checkpointed");
            if !self.config.continuous && !full {
                return Ok(Outcome::Completed);
            }
        }
    }

    fn changes_request(&self, since: &Seq, longpoll: bool) -> ChangesRequest {
        ChangesRequest {
            since: since.clone(),
            limit: self.config.batch_size,
            filter: self.config.filter.clone(),
            feed: if longpoll {
                Feed::Longpoll {
                    heartbeat: self.config.heartbeat,
                    timeout: self.config.longpoll_timeout,
                }
            } else {
                Feed::Normal
            },
        }
    }

    fn record(&self, progress: &mut Progress, batch: &Stats) {
        progress.stats.add(batch);
        let stats = progress.stats.clone();
        self.status.send_modify(|s| s.stats = stats);
    }

    async fn checkpoint(
        &self,
        checkpointer: &mut Checkpointer,
        progress: &mut Progress,
        seq: &Seq,
    ) -> Result<(), ReplicationError> {
        checkpointer
            .write(&*self.source, &*self.target, seq, &progress.stats)
            .await?;
        progress.checkpointed = Some(seq.clone());
        progress.history = checkpointer.history(seq, &progress.stats);
        progress.failures = 0;
        self.status.send_modify(|s| {
            s.checkpointed_seq = Some(seq.clone());
            s.last_sync = Some(SystemTime::now());
            s.consecutive_failures = 0;
            s.last_error = None;
        });
        Ok(())
    }

    /// Copies the revisions of one page of changes that the target lacks.
    async fn batch(&self, changes: &[Change]) -> Result<Stats, ReplicationError> {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for change in changes {
            let revs = wanted.entry(change.id.clone()).or_default();
            for rev in &change.revs {
                if !revs.contains(rev) {
                    revs.push(rev.clone());
                }
            }
        }
        let mut stats = Stats {
            missing_checked: wanted.values().map(|r| r.len() as u64).sum(),
            ..Stats::default()
        };
        let diff = self.target.revs_diff(&wanted).await?;
        let missing: Vec<DocRevs> = diff
            .into_iter()
            .filter(|(_, entry)| !entry.missing.is_empty())
            .map(|(id, entry)| DocRevs {
                id,
                revs: entry.missing,
            })
            .collect();
        stats.missing_found = missing.iter().map(|d| d.revs.len() as u64).sum();
        if missing.is_empty() {
            return Ok(stats);
        }
        let parallelism = self.config.fetch_parallelism;
        let chunk = missing.len().div_ceil(parallelism).max(1);
        // Collected first: a lazy `map` closure inside the stream would make `run`'s future
        // fail the `Send` check that spawning it needs (rust-lang/rust#102211).
        let copies: Vec<_> = missing.chunks(chunk).map(|docs| self.copy(docs)).collect();
        let chunks: Vec<Stats> = futures::stream::iter(copies)
            .buffer_unordered(parallelism)
            .try_collect()
            .await?;
        for c in &chunks {
            stats.add(c);
        }
        Ok(stats)
    }

    /// Fetches some revisions from the source and writes them to the target.
    async fn copy(&self, docs: &[DocRevs]) -> Result<Stats, ReplicationError> {
        let mut fetched = self.source.get_revs(docs).await?;
        for doc in &mut fetched {
            self.inline_attachments(doc).await?;
        }
        let failures = self.target.bulk_docs(&fetched).await?;
        let (denied, errors): (Vec<_>, Vec<_>) = failures.into_iter().partition(|f| f.is_denied());
        if let Some(first) = errors.first() {
            return Err(ReplicationError::WriteFailed {
                endpoint: self.target.to_string(),
                count: errors.len(),
                id: first.id.clone(),
                error: first.error.clone(),
                reason: first.reason.clone(),
            });
        }
        for d in &denied {
            warn!(target = %self.target, id = %d.id, error = %d.error, reason = %d.reason, "document refused by the target");
        }
        let read = fetched.len() as u64;
        Ok(Stats {
            docs_read: read,
            docs_written: read - denied.len() as u64,
            doc_write_failures: denied.len() as u64,
            ..Stats::default()
        })
    }

    /// Replaces attachment stubs with their data, fetched one by one as PouchDB does, so the
    /// target receives complete revisions (`new_edits: false` cannot refer to attachment bodies
    /// the target may not have).
    async fn inline_attachments(&self, doc: &mut Value) -> Result<(), ReplicationError> {
        let (Some(id), Some(rev)) = (
            doc.get("_id").and_then(Value::as_str).map(str::to_owned),
            doc.get("_rev").and_then(Value::as_str).map(str::to_owned),
        ) else {
            return Ok(());
        };
        let Some(atts) = doc.get_mut("_attachments").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        for (name, att) in atts.iter_mut() {
            let Some(meta) = att.as_object_mut() else {
                continue;
            };
            if meta.get("stub").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let bytes = self.source.get_attachment(&id, name, &rev).await?;
            meta.remove("stub");
            meta.remove("length");
            meta.remove("encoding");
            meta.remove("encoded_length");
            // The digest describes the bytes as the source stores them (possibly compressed);
            // the target computes its own from the data.
            meta.remove("digest");
            meta.insert(
                "data".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replications are spawned as tasks by the server and the CLI, so `run` must be `Send`.
    #[test]
    fn run_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let http = || -> Arc<dyn Endpoint> {
            Arc::new(
                crate::HttpEndpoint::new(crate::http_client().unwrap(), "http://h/db", &[])
                    .unwrap(),
            )
        };
        let replication = Replication::new(http(), http(), ReplicationConfig::default());
        let run = replication.run(CancellationToken::new());
        assert_send(&run);
    }
}
