//! One replication from a source to a target: the protocol loop, retries and progress.
//!
//! Each batch follows CouchDB's protocol description (docs.couchdb.org, "replication/protocol"):
//! read up to `batch_size` changes (`style=all_docs`), ask the target which of those revisions
//! it lacks (`_revs_diff`), fetch them from the source with their history (`_bulk_get`, in
//! chunks fetched in parallel), write them with `new_edits: false` in one `_bulk_docs`.
//!
//! Reading and writing are two stages joined by a queue one batch deep: while one batch is
//! written to the target, the next is read from the source. Batches are written in feed order,
//! so once a batch is acknowledged every change up to its last sequence is on the target.
//!
//! Checkpoints are recorded on both sides on an interval (as CouchDB's replicator does), at the
//! end of a one-shot run and when a replication is stopped, never after every batch. A
//! checkpoint only ever names a sequence whose batch the target acknowledged, so a restart
//! resumes at or before the last written change and never skips one; the revisions it re-reads
//! are filtered out by `_revs_diff`, so nothing already on the target is written twice.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{Checkpointer, HistoryEntry};
use crate::endpoint::{Change, ChangesRequest, DocRevs, Endpoint, Feed};
use crate::{Backoff, ChangesFilter, ReplicationError, Seq, replication_id};

/// Changes per batch unless configured: CouchDB's `worker_batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Least time between checkpoints unless configured. CouchDB waits 30 s; a shorter interval
/// costs two small writes and bounds the work a crash makes the next run repeat.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Fetched batches waiting for the write stage: one queued while the next is being read.
const PIPELINE_DEPTH: usize = 1;

/// One batch read from the source, ready to write.
struct Fetched {
    /// The revisions the target lacks, with `_revisions` and inline attachments.
    docs: Vec<Value>,
    /// What the fetch counted (`missing_checked`, `missing_found`, `docs_read`).
    stats: Stats,
    /// The source sequence this batch reaches: once it is written, every change up to here is.
    seq: Seq,
    /// The source had nothing more to send after this batch: once it is written, the
    /// replication has caught up.
    caught_up: bool,
}

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
    /// Changes per batch. CouchDB's replicator reads 500 per batch (`worker_batch_size`),
    /// PouchDB 100; a batch is one `_revs_diff` and one `_bulk_docs`, so larger batches mean
    /// fewer round trips and fewer durable commits on the target.
    pub batch_size: usize,
    /// How many `_bulk_get` chunks of a batch are fetched at once.
    pub fetch_parallelism: usize,
    /// Least time between two checkpoints (CouchDB's `checkpoint_interval`). A checkpoint is
    /// also written when a one-shot replication ends and when a replication is stopped; zero
    /// checkpoints after every batch, as PouchDB does. A crash loses at most this much progress
    /// (the changes are read again and `_revs_diff` finds them already there), never a change.
    pub checkpoint_interval: Duration,
    /// Delays between retries.
    pub backoff: Backoff,
    /// Failed attempts in a row before giving up; `None` retries transient errors forever.
    /// Only progress resets the count: a batch that wrote documents the target lacked, or
    /// catching up with the source. A retry re-reads from the last checkpoint, and batches
    /// re-read that way (already on the target) are not progress.
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
            batch_size: DEFAULT_BATCH_SIZE,
            fetch_parallelism: 4,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
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
    /// When the replication last recorded a checkpoint.
    pub last_checkpoint: Option<SystemTime>,
    pub started_at: SystemTime,
}

impl Status {
    /// A replication that started at `started_at` and has done nothing yet.
    pub fn new(started_at: SystemTime) -> Status {
        Status {
            state: State::Starting,
            stats: Stats::default(),
            replication_id: None,
            checkpointed_seq: None,
            source_seq: None,
            pending: None,
            last_error: None,
            consecutive_failures: 0,
            last_sync: None,
            last_checkpoint: None,
            started_at,
        }
    }
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
        Replication {
            source,
            target,
            config,
            status: watch::Sender::new(Status::new(SystemTime::now())),
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
        let since = checkpointer.start_seq().clone();
        progress.start_seq.get_or_insert_with(|| since.clone());
        debug!(replication_id = %rep_id, since = %since, "starting from checkpoint");

        // Two stages joined by a short queue: the fetch stage reads the source (changes,
        // `_revs_diff`, `_bulk_get`) while the write stage writes the previous batch to the
        // target, so neither side waits for the other's round trips.
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let fetch = self.fetch_stage(since.clone(), tx, cancel);
        let write = self.write_stage(rx, since, &mut checkpointer, progress);
        tokio::pin!(fetch, write);
        tokio::select! {
            // The write stage ends early only on an error; the fetch stage is dropped with it.
            written = &mut write => {
                written?;
                fetch.await
            }
            // When the fetch stage ends (caught up, stopped or failed) its queue closes: the
            // write stage writes what was already fetched and records the final checkpoint, so a
            // failed read never throws away completed writes.
            fetched = &mut fetch => {
                write.await?;
                fetched
            }
        }
    }

    /// Reads batches from the source until a one-shot replication has caught up or `cancel`
    /// fires, and queues each for the write stage.
    async fn fetch_stage(
        &self,
        mut since: Seq,
        tx: mpsc::Sender<Fetched>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ReplicationError> {
        let source = &*self.source;
        // After a full page more changes are waiting, so the next read need not wait for one.
        let mut longpoll = self.config.continuous;
        // The revisions of the batches that may not be written yet: the one being written and
        // those queued. The target's `_revs_diff` still lists them as missing, and a document
        // that changed again shows up in a later page with the same leaves, so without this a
        // revision could be fetched and written twice. Batches are written in order and any
        // failed write ends the attempt, so skipping them here never loses one.
        let mut in_flight: VecDeque<HashSet<(String, String)>> = VecDeque::new();
        loop {
            if cancel.is_cancelled() {
                return Ok(Outcome::Stopped);
            }
            let req = self.changes_request(&since, longpoll);
            let page = tokio::select! {
                _ = cancel.cancelled() => return Ok(Outcome::Stopped),
                page = source.changes(&req) => page?,
            };
            if page.results.is_empty() {
                // Nothing (left) to copy. With a filter, the feed may still have moved past
                // changes that were filtered out: the marker records that, so the next run skips
                // them too.
                if !page.last_seq.is_zero() {
                    since = page.last_seq.clone();
                }
                let caught_up = Fetched {
                    docs: Vec::new(),
                    stats: Stats::default(),
                    seq: since.clone(),
                    caught_up: true,
                };
                if tx.send(caught_up).await.is_err() {
                    return Ok(Outcome::Stopped);
                }
                self.status.send_modify(|s| {
                    s.last_sync = Some(SystemTime::now());
                    s.pending = Some(0);
                    s.state = State::Idle;
                });
                if !self.config.continuous {
                    return Ok(Outcome::Completed);
                }
                longpoll = true;
                continue;
            }
            self.status.send_modify(|s| {
                s.state = State::Running;
                s.pending = page.pending;
            });
            let full = page.results.len() >= self.config.batch_size;
            since = page
                .results
                .last()
                .map(|c| c.seq.clone())
                .expect("non-empty page");
            let (docs, stats, sent) = self.fetch(&page.results, &in_flight).await?;
            if in_flight.len() > PIPELINE_DEPTH {
                in_flight.pop_front();
            }
            in_flight.push_back(sent);
            let fetched = Fetched {
                docs,
                stats,
                seq: since.clone(),
                caught_up: false,
            };
            // The write stage only goes away on an error, which the caller reports.
            if tx.send(fetched).await.is_err() {
                return Ok(Outcome::Stopped);
            }
            if !self.config.continuous && !full {
                return Ok(Outcome::Completed);
            }
            longpoll = self.config.continuous && !full;
        }
    }

    /// Writes each fetched batch, in order, and checkpoints at most once per
    /// `checkpoint_interval` (and once more when the queue closes). A checkpoint names the
    /// last batch whose write the target acknowledged, so it is never ahead of the target.
    async fn write_stage(
        &self,
        mut rx: mpsc::Receiver<Fetched>,
        since: Seq,
        checkpointer: &mut Checkpointer,
        progress: &mut Progress,
    ) -> Result<(), ReplicationError> {
        let interval = self.config.checkpoint_interval;
        let mut last_checkpoint = Instant::now();
        // The sequence up to which every change is on the target, when not yet checkpointed.
        let mut unrecorded: Option<Seq> = None;
        // The sequence the last batch reached (checkpointed or not), so an idle replication's
        // repeated "caught up" markers do not count as new positions.
        let mut reached = since;
        loop {
            let due = last_checkpoint + interval;
            let fetched = tokio::select! {
                fetched = rx.recv() => fetched,
                // Idle with writes not yet recorded (a continuous replication waiting for
                // changes): record them once the interval is up rather than at the next change.
                _ = tokio::time::sleep_until(due), if unrecorded.is_some() => {
                    let seq = unrecorded.take().expect("guarded");
                    self.checkpoint(checkpointer, progress, &seq).await?;
                    last_checkpoint = Instant::now();
                    continue;
                }
            };
            let Some(fetched) = fetched else {
                if let Some(seq) = unrecorded {
                    self.checkpoint(checkpointer, progress, &seq).await?;
                }
                return Ok(());
            };
            let mut stats = fetched.stats;
            stats.add(&self.write(&fetched.docs).await?);
            let progressed = fetched.caught_up || stats.docs_written + stats.doc_write_failures > 0;
            self.record(progress, &stats, progressed);
            debug!(since = %fetched.seq, written = stats.docs_written, "batch written");
            if fetched.seq == reached {
                continue;
            }
            reached = fetched.seq.clone();
            unrecorded = Some(fetched.seq);
            if last_checkpoint.elapsed() >= interval {
                let seq = unrecorded.take().expect("just set");
                self.checkpoint(checkpointer, progress, &seq).await?;
                last_checkpoint = Instant::now();
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

    /// Adds a written batch's counters. `progressed` says whether the batch moved the
    /// replication on (see [`ReplicationConfig::max_attempts`]); only then are past failures
    /// forgiven.
    fn record(&self, progress: &mut Progress, batch: &Stats, progressed: bool) {
        progress.stats.add(batch);
        if progressed {
            progress.failures = 0;
        }
        let stats = progress.stats.clone();
        self.status.send_modify(|s| {
            s.stats = stats;
            if progressed {
                s.last_sync = Some(SystemTime::now());
                s.consecutive_failures = 0;
                s.last_error = None;
            }
        });
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
        self.status.send_modify(|s| {
            s.checkpointed_seq = Some(seq.clone());
            s.last_checkpoint = Some(SystemTime::now());
        });
        Ok(())
    }

    /// Fetches the revisions of one page of changes that the target lacks, with their history
    /// and attachments.
    /// Also returns the revisions asked for and fetched, as `(id, rev)`. Revisions in
    /// `in_flight` are already on their way to the target and are not fetched again.
    async fn fetch(
        &self,
        changes: &[Change],
        in_flight: &VecDeque<HashSet<(String, String)>>,
    ) -> Result<(Vec<Value>, Stats, HashSet<(String, String)>), ReplicationError> {
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
        let mut sent = HashSet::new();
        // Revisions the target holds that may be ancestors of the missing ones: attachments
        // unchanged since one of them are already there and travel as stubs.
        let mut ancestors: HashMap<String, Vec<String>> = HashMap::new();
        let missing: Vec<DocRevs> = diff
            .into_iter()
            .filter_map(|(id, entry)| {
                if !entry.possible_ancestors.is_empty() {
                    ancestors.insert(id.clone(), entry.possible_ancestors);
                }
                let revs: Vec<String> = entry
                    .missing
                    .into_iter()
                    .filter(|rev| {
                        let key = (id.clone(), rev.clone());
                        !in_flight.iter().any(|batch| batch.contains(&key))
                    })
                    .collect();
                for rev in &revs {
                    sent.insert((id.clone(), rev.clone()));
                }
                (!revs.is_empty()).then_some(DocRevs { id, revs })
            })
            .collect();
        stats.missing_found = missing.iter().map(|d| d.revs.len() as u64).sum();
        if missing.is_empty() {
            return Ok((Vec::new(), stats, sent));
        }
        let parallelism = self.config.fetch_parallelism;
        let chunk = missing.len().div_ceil(parallelism).max(1);
        // Collected first: a lazy `map` closure inside the stream would make `run`'s future
        // fail the `Send` check that spawning it needs (rust-lang/rust#102211).
        let gets: Vec<_> = missing
            .chunks(chunk)
            .map(|docs| self.fetch_chunk(docs, &ancestors))
            .collect();
        let chunks: Vec<Vec<Value>> = futures::stream::iter(gets)
            .buffered(parallelism)
            .try_collect()
            .await?;
        let docs: Vec<Value> = chunks.into_iter().flatten().collect();
        stats.docs_read = docs.len() as u64;
        // With `latest`, a revision asked for may come back as a newer leaf: that one is on its
        // way too.
        for doc in &docs {
            if let (Some(id), Some(rev)) = (
                doc.get("_id").and_then(Value::as_str),
                doc.get("_rev").and_then(Value::as_str),
            ) {
                sent.insert((id.to_owned(), rev.to_owned()));
            }
        }
        Ok((docs, stats, sent))
    }

    async fn fetch_chunk(
        &self,
        docs: &[DocRevs],
        ancestors: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<Value>, ReplicationError> {
        let mut fetched = self.source.get_revs(docs).await?;
        let probed = self.probe_ancestors(&fetched, ancestors).await?;
        for doc in &mut fetched {
            let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
            let on_target = ancestors
                .get(id)
                .or_else(|| probed.get(id))
                .map_or(0, |revs| target_ancestor_generation(doc, revs));
            self.inline_attachments(doc, on_target).await?;
        }
        Ok(fetched)
    }

    /// For targets whose `_revs_diff` names no `possible_ancestors` (PouchDB), asks the
    /// target which recent ancestors of each fetched revision it holds, for the documents
    /// whose attachments may be unchanged since one of them: one `_revs_diff` per chunk, and
    /// only when there is an attachment to save.
    async fn probe_ancestors(
        &self,
        docs: &[Value],
        known: &HashMap<String, Vec<String>>,
    ) -> Result<HashMap<String, Vec<String>>, ReplicationError> {
        let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for doc in docs {
            let Some(id) = doc.get("_id").and_then(Value::as_str) else {
                continue;
            };
            if known.contains_key(id) {
                continue;
            }
            let oldest = attachment_revpos(doc).min().unwrap_or(u64::MAX);
            let history = doc.get("_revisions");
            let start = history
                .and_then(|h| h.get("start"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let ids = history
                .and_then(|h| h.get("ids"))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let candidates: Vec<String> = ids
                .iter()
                .enumerate()
                .skip(1)
                .take(ANCESTORS_PROBED)
                .filter_map(|(back, hash)| {
                    let generation = start.checked_sub(back as u64)?;
                    let hash = hash.as_str()?;
                    (generation >= oldest).then(|| format!("{generation}-{hash}"))
                })
                .collect();
            if !candidates.is_empty() {
                asked.entry(id.to_owned()).or_default().extend(candidates);
            }
        }
        if asked.is_empty() {
            return Ok(HashMap::new());
        }
        let missing = self.target.revs_diff(&asked).await?;
        Ok(asked
            .into_iter()
            .map(|(id, revs)| {
                let absent = missing
                    .get(&id)
                    .map(|e| e.missing.as_slice())
                    .unwrap_or_default();
                let held = revs.into_iter().filter(|r| !absent.contains(r)).collect();
                (id, held)
            })
            .collect())
    }

    /// Writes one batch to the target with a single `_bulk_docs`: one request and, on our
    /// own server, one durable commit per batch. Documents carrying attachment data are written
    /// one by one instead, as CouchDB's replicator does, so their bytes travel unencoded
    /// ([`Endpoint::put_with_attachments`]) rather than as base64 inside the JSON.
    ///
    /// As CouchDB's replicator does, a batch the target finds too large (413) is split in
    /// halves, down to single documents; a single document still too large, and every document
    /// the target refuses (a `validate_doc_update`, an access rule, a size limit), is counted in
    /// `doc_write_failures`, logged and skipped: sending it again would be refused again, and it
    /// must not hold up the documents after it.
    async fn write(&self, docs: &[Value]) -> Result<Stats, ReplicationError> {
        let mut stats = Stats::default();
        // Documents with attachment data, and whether every attachment of each was inlined
        // already (a retry after the target could not resolve a stub).
        let mut with_data: VecDeque<(Value, bool)> = VecDeque::new();
        let plain: Cow<'_, [Value]> = if docs.iter().any(has_attachment_data) {
            let (data, plain): (Vec<Value>, Vec<Value>) =
                docs.iter().cloned().partition(has_attachment_data);
            with_data.extend(data.into_iter().map(|d| (d, false)));
            Cow::Owned(plain)
        } else {
            Cow::Borrowed(docs)
        };
        // Each part, and whether its attachments were all inlined already.
        let mut parts: VecDeque<(Cow<'_, [Value]>, bool)> = VecDeque::from([(plain, false)]);
        while let Some((part, inlined)) = parts.pop_front() {
            if part.is_empty() {
                continue;
            }
            match self.target.bulk_docs(&part).await {
                Ok(refused) => {
                    let (stubs, refused): (Vec<_>, Vec<_>) = refused
                        .into_iter()
                        .partition(|r| r.error == "missing_stub" && !inlined);
                    for r in &refused {
                        warn!(target = %self.target, id = %r.id, error = %r.error, reason = %r.reason, "document refused by the target");
                    }
                    stats.doc_write_failures += refused.len() as u64;
                    stats.docs_written +=
                        part.len().saturating_sub(refused.len() + stubs.len()) as u64;
                    if !stubs.is_empty() {
                        let ids: HashSet<&str> = stubs.iter().map(|r| r.id.as_str()).collect();
                        let again: Vec<Value> = part
                            .iter()
                            .filter(|d| {
                                d.get("_id")
                                    .and_then(Value::as_str)
                                    .is_some_and(|id| ids.contains(id))
                            })
                            .cloned()
                            .collect();
                        let again = self.inline_all(again).await?;
                        with_data.extend(again.into_iter().map(|d| (d, true)));
                    }
                }
                Err(e) if e.is_too_large() && part.len() > 1 => {
                    debug!(target = %self.target, docs = part.len(), "batch too large; splitting it");
                    let mid = part.len() / 2;
                    let (first, second) = match part {
                        Cow::Borrowed(p) => (Cow::Borrowed(&p[..mid]), Cow::Borrowed(&p[mid..])),
                        Cow::Owned(mut p) => {
                            let second = p.split_off(mid);
                            (Cow::Owned(p), Cow::Owned(second))
                        }
                    };
                    parts.push_front((second, inlined));
                    parts.push_front((first, inlined));
                }
                Err(e) if e.is_too_large() => {
                    let id = part[0].get("_id").and_then(Value::as_str).unwrap_or("");
                    warn!(target = %self.target, id, error = %e, "document too large for the target");
                    stats.doc_write_failures += 1;
                }
                Err(e) if e.is_missing_stub() && !inlined => {
                    debug!(target = %self.target, "the target lacks an attachment sent as a stub; sending the data");
                    let again = self.inline_all(part.into_owned()).await?;
                    let (data, plain): (Vec<Value>, Vec<Value>) =
                        again.into_iter().partition(has_attachment_data);
                    with_data.extend(data.into_iter().map(|d| (d, true)));
                    parts.push_front((Cow::Owned(plain), true));
                }
                Err(e) => return Err(e),
            }
        }
        while let Some((doc, inlined)) = with_data.pop_front() {
            match self.target.put_with_attachments(&doc).await {
                Ok(None) => stats.docs_written += 1,
                Ok(Some(r)) => {
                    warn!(target = %self.target, id = %r.id, error = %r.error, reason = %r.reason, "document refused by the target");
                    stats.doc_write_failures += 1;
                }
                Err(e) if e.is_too_large() => {
                    let id = doc.get("_id").and_then(Value::as_str).unwrap_or("");
                    warn!(target = %self.target, id, error = %e, "document too large for the target");
                    stats.doc_write_failures += 1;
                }
                Err(e) if e.is_missing_stub() && !inlined => {
                    debug!(target = %self.target, "the target lacks an attachment sent as a stub; sending the data");
                    let again = self.inline_all(vec![doc]).await?;
                    with_data.extend(again.into_iter().map(|d| (d, true)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Inlines every attachment of these documents, stubs kept for the target included.
    async fn inline_all(&self, mut docs: Vec<Value>) -> Result<Vec<Value>, ReplicationError> {
        for doc in &mut docs {
            self.inline_attachments(doc, 0).await?;
        }
        Ok(docs)
    }

    /// Replaces attachment stubs with their data, fetched one by one as PouchDB does, so the
    /// target receives complete revisions (`new_edits: false` cannot refer to attachment bodies
    /// the target may not have). Attachments last changed at or before generation `on_target`
    /// (an ancestor the target holds, see [`target_ancestor_generation`]) are already on the
    /// target: they stay, or become, stubs, so unchanged attachments never travel twice.
    async fn inline_attachments(
        &self,
        doc: &mut Value,
        on_target: u64,
    ) -> Result<(), ReplicationError> {
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
            let revpos = meta.get("revpos").and_then(Value::as_u64).unwrap_or(0);
            if revpos >= 1 && revpos <= on_target && meta.contains_key("digest") {
                if meta.shift_remove("data").is_some() {
                    meta.shift_remove("encoding");
                    meta.shift_remove("encoded_length");
                }
                meta.insert("stub".into(), Value::Bool(true));
                continue;
            }
            if meta.get("stub").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let bytes = self.source.get_attachment(&id, name, &rev).await?;
            meta.shift_remove("stub");
            meta.shift_remove("length");
            meta.shift_remove("encoding");
            meta.shift_remove("encoded_length");
            // The digest describes the bytes as the source stores them (possibly compressed);
            // the target computes its own from the data.
            meta.shift_remove("digest");
            meta.insert(
                "data".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            );
        }
        Ok(())
    }
}

/// How many ancestors of a revision [`Replication::probe_ancestors`] asks the target about.
const ANCESTORS_PROBED: usize = 10;

/// Whether any attachment of a document carries its data inline.
fn has_attachment_data(doc: &Value) -> bool {
    doc.get("_attachments")
        .and_then(Value::as_object)
        .is_some_and(|atts| atts.values().any(|att| att.get("data").is_some()))
}

/// The `revpos` of each attachment of a document.
fn attachment_revpos(doc: &Value) -> impl Iterator<Item = u64> + '_ {
    doc.get("_attachments")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|atts| atts.values())
        .filter_map(|att| att.get("revpos").and_then(Value::as_u64))
}

/// The highest generation among `ancestors` (revisions the target holds, from `_revs_diff`'s
/// `possible_ancestors`) that really is in this revision's `_revisions` history; 0 when none is.
fn target_ancestor_generation(doc: &Value, ancestors: &[String]) -> u64 {
    let Some(history) = doc.get("_revisions") else {
        return 0;
    };
    let start = history.get("start").and_then(Value::as_u64).unwrap_or(0);
    let ids = history
        .get("ids")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    ancestors
        .iter()
        .filter_map(|rev| {
            let (generation, hash) = rev.split_once('-')?;
            let generation: u64 = generation.parse().ok()?;
            let back = usize::try_from(start.checked_sub(generation)?).ok()?;
            (ids.get(back)?.as_str()? == hash).then_some(generation)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_must_be_in_the_history() {
        let doc = serde_json::json!({"_revisions": {"start": 4, "ids": ["d", "c", "b", "a"]}});
        let generation = |revs: &[&str]| {
            target_ancestor_generation(
                &doc,
                &revs.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(generation(&["2-b"]), 2);
        assert_eq!(generation(&["2-b", "3-c"]), 3);
        // Same generation, another branch; a later generation; garbage.
        assert_eq!(generation(&["3-x"]), 0);
        assert_eq!(generation(&["5-e"]), 0);
        assert_eq!(generation(&["x-b", "2", ""]), 0);
        assert_eq!(
            target_ancestor_generation(&serde_json::json!({}), &["1-a".into()]),
            0
        );
    }

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
