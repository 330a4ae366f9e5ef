//! Checkpoints: the replication logs kept in `_local/<replication id>` on both sides.
//!
//! The document follows CouchDB's replication-log format (docs.couchdb.org,
//! "replication/protocol", "Retrieve Replication Logs from Source and Target" and "Record
//! Replication Checkpoint"): `session_id`, `source_last_seq` and a `history` of sessions with
//! their statistics. It also carries PouchDB's fields (`last_seq`, `replicator`, `version`, and
//! `last_seq` in each history entry) so that either implementation can resume from a checkpoint
//! the other wrote.
//!
//! Finding the start point ("compare logs"): when both logs name the same session, that
//! session's sequence is safe; otherwise the most recent session found in both histories is;
//! otherwise replication starts from the beginning. A sequence recorded on one side only is never
//! trusted, because the other side may have lost the writes behind it (a restored backup, a
//! recreated database).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use crate::{Endpoint, ReplicationError, Seq, Stats};

/// How many past sessions a log keeps. PouchDB keeps 5; more only helps when the two sides'
/// logs diverged many sessions ago, and each checkpoint write carries the whole list.
pub const MAX_HISTORY: usize = 5;

/// One session in a replication log's `history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub session_id: String,
    /// PouchDB's name for the checkpointed sequence.
    pub last_seq: Seq,
    /// CouchDB's name for the same thing.
    #[serde(default)]
    pub recorded_seq: Seq,
    #[serde(default)]
    pub start_last_seq: Seq,
    #[serde(default)]
    pub end_last_seq: Seq,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub end_time: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// Reads the sequence a history entry or log recorded, in either implementation's field.
fn recorded(v: &Value, couch: &str, pouch: &str) -> Option<Seq> {
    v.get(couch)
        .or_else(|| v.get(pouch))
        .filter(|s| !s.is_null())
        .cloned()
        .map(Seq)
}

/// The sequence to start from, given the two logs as read (`None` when absent).
pub fn compare_logs(source: Option<&Value>, target: Option<&Value>) -> Seq {
    let (Some(source), Some(target)) = (source, target) else {
        return Seq::zero();
    };
    let session = |v: &Value| {
        v.get("session_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let (Some(s), Some(t)) = (session(source), session(target))
        && s == t
    {
        return recorded(source, "source_last_seq", "last_seq").unwrap_or_default();
    }
    let history = |v: &Value| {
        v.get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let target_history = history(target);
    // The source's history is newest first, so the first session both know is the latest one.
    for entry in history(source) {
        let Some(id) = session(&entry) else { continue };
        if target_history
            .iter()
            .any(|t| session(t).as_deref() == Some(id.as_str()))
        {
            return recorded(&entry, "recorded_seq", "last_seq").unwrap_or_default();
        }
    }
    Seq::zero()
}

/// Writes checkpoints for one replication session and remembers the documents' revisions.
pub(crate) struct Checkpointer {
    /// `_local/<replication id>`.
    doc_id: String,
    session_id: String,
    /// The current `_rev` of each side's log, needed to replace it.
    source_rev: Option<String>,
    target_rev: Option<String>,
    /// Cleared when the source refuses a checkpoint write (a read-only source, such as a
    /// database the user may only read): PouchDB then keeps checkpointing the target only.
    source_writable: bool,
    /// Past sessions from the previous log, newest first.
    previous: Vec<HistoryEntry>,
    start_time: String,
    start_seq: Seq,
    /// The last sequence written, so an unchanged position is not written again.
    last_written: Option<Seq>,
}

impl Checkpointer {
    /// Reads both logs and works out where to start. `since_seq` (from the replication's
    /// settings) overrides the logs.
    pub(crate) async fn open(
        source: &dyn Endpoint,
        target: &dyn Endpoint,
        replication_id: &str,
        session_id: &str,
        since_seq: Option<&Seq>,
    ) -> Result<Checkpointer, ReplicationError> {
        let doc_id = format!("_local/{replication_id}");
        let source_log = source.get_local(&doc_id).await?;
        let target_log = target.get_local(&doc_id).await?;
        let rev = |log: &Option<Value>| {
            log.as_ref()
                .and_then(|l| l.get("_rev"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut source_rev = rev(&source_log);
        let mut source_writable = true;
        let start_seq = match (since_seq, &source_log, &target_log) {
            (Some(seq), _, _) => seq.clone(),
            // Only the target has a log: either the source lost its log, or it never took one
            // because it is read-only. PouchDB (checkpointer `getCheckpoint`) tells the two apart
            // by writing an empty log to the source: a refusal means a read-only source, whose
            // changes the target's log is then trusted for, as nothing else could record them.
            (None, None, Some(target_log)) => {
                let probe = json!({ "_id": doc_id, "last_seq": Seq::zero() });
                match source.put_local(&probe).await {
                    Ok(rev) => {
                        source_rev = Some(rev);
                        Seq::zero()
                    }
                    Err(e) if refuses_checkpoints(&e) => {
                        warn!(error = %e, endpoint = %source, "source refuses checkpoints; resuming from the target's log");
                        source_writable = false;
                        recorded(target_log, "source_last_seq", "last_seq").unwrap_or_default()
                    }
                    Err(e) => return Err(e),
                }
            }
            (None, _, _) => compare_logs(source_log.as_ref(), target_log.as_ref()),
        };
        let previous = target_log
            .as_ref()
            .or(source_log.as_ref())
            .and_then(|l| l.get("history"))
            .and_then(|h| serde_json::from_value::<Vec<Value>>(h.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|h| serde_json::from_value::<HistoryEntry>(h).ok())
            .collect();
        Ok(Checkpointer {
            source_rev,
            target_rev: rev(&target_log),
            doc_id,
            session_id: session_id.to_string(),
            source_writable,
            previous,
            start_time: http_date(SystemTime::now()),
            last_written: Some(start_seq.clone()),
            start_seq,
        })
    }

    /// Where this session starts.
    pub(crate) fn start_seq(&self) -> &Seq {
        &self.start_seq
    }

    /// The history as it would be written with `seq` checkpointed now.
    pub(crate) fn history(&self, seq: &Seq, stats: &Stats) -> Vec<HistoryEntry> {
        let current = HistoryEntry {
            session_id: self.session_id.clone(),
            last_seq: seq.clone(),
            recorded_seq: seq.clone(),
            start_last_seq: self.start_seq.clone(),
            end_last_seq: seq.clone(),
            start_time: self.start_time.clone(),
            end_time: http_date(SystemTime::now()),
            stats: stats.clone(),
        };
        std::iter::once(current)
            .chain(
                self.previous
                    .iter()
                    .filter(|h| h.session_id != self.session_id)
                    .cloned(),
            )
            .take(MAX_HISTORY)
            .collect()
    }

    /// Records `seq` on the target, then on the source. Does nothing when `seq` is already
    /// recorded.
    pub(crate) async fn write(
        &mut self,
        source: &dyn Endpoint,
        target: &dyn Endpoint,
        seq: &Seq,
        stats: &Stats,
    ) -> Result<(), ReplicationError> {
        if self.last_written.as_ref() == Some(seq) {
            return Ok(());
        }
        let history = self.history(seq, stats);
        let body = json!({
            "_id": self.doc_id,
            "session_id": self.session_id,
            "source_last_seq": seq,
            "last_seq": seq,
            "replication_id_version": 3,
            "replicator": "outpost",
            "version": 1,
            "history": history,
        });
        self.target_rev = Some(put_log(target, &body, self.target_rev.take(), &self.doc_id).await?);
        if self.source_writable {
            match put_log(source, &body, self.source_rev.take(), &self.doc_id).await {
                Ok(rev) => self.source_rev = Some(rev),
                Err(e) if refuses_checkpoints(&e) => {
                    warn!(error = %e, endpoint = %source, "source refuses checkpoints; checkpointing the target only");
                    self.source_writable = false;
                }
                Err(e) => return Err(e),
            }
        }
        self.last_written = Some(seq.clone());
        Ok(())
    }
}

/// Whether a failed log write means the endpoint does not take checkpoints at all (access
/// rules, a read-only database), rather than a failure worth retrying.
fn refuses_checkpoints(e: &ReplicationError) -> bool {
    matches!(
        e,
        ReplicationError::Forbidden { .. }
            | ReplicationError::Unauthorized { .. }
            | ReplicationError::Http {
                status: 400..=499,
                ..
            }
    )
}

/// Writes one log, re-reading its `_rev` once on a conflict (another run of the same
/// replication, or a log rewritten by PouchDB, moved it on).
async fn put_log(
    endpoint: &dyn Endpoint,
    body: &Value,
    rev: Option<String>,
    doc_id: &str,
) -> Result<String, ReplicationError> {
    let with_rev = |rev: Option<String>| {
        let mut doc = body.clone();
        if let (Some(rev), Some(obj)) = (rev, doc.as_object_mut()) {
            obj.insert("_rev".into(), Value::String(rev));
        }
        doc
    };
    match endpoint.put_local(&with_rev(rev)).await {
        Err(ReplicationError::Conflict { .. }) => {
            let current = endpoint.get_local(doc_id).await?;
            let rev = current
                .as_ref()
                .and_then(|d| d.get("_rev"))
                .and_then(Value::as_str);
            endpoint.put_local(&with_rev(rev.map(str::to_owned))).await
        }
        other => other,
    }
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`), the format of CouchDB's `start_time`
/// and `end_time`.
pub(crate) fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[track_caller]
    fn check(source: Option<Value>, target: Option<Value>, expected: Value) {
        assert_eq!(
            compare_logs(source.as_ref(), target.as_ref()),
            Seq(expected)
        );
    }

    #[test]
    fn compare() {
        let log = |session: &str, seq: Value, history: Value| json!({"session_id": session, "source_last_seq": seq, "history": history});
        // No log on either side: from the start.
        check(None, None, json!(0));
        check(Some(log("a", json!(5), json!([]))), None, json!(0));
        check(None, Some(log("a", json!(5), json!([]))), json!(0));
        // Same session on both sides.
        check(
            Some(log("a", json!(5), json!([]))),
            Some(log("a", json!(5), json!([]))),
            json!(5),
        );
        check(
            Some(log("a", json!("7-g1AAAA"), json!([]))),
            Some(log("a", json!("7-g1AAAA"), json!([]))),
            json!("7-g1AAAA"),
        );
        // Diverged: the newest common session in the histories wins.
        let src_hist = json!([
            {"session_id": "c", "recorded_seq": 30},
            {"session_id": "b", "recorded_seq": 20},
            {"session_id": "a", "recorded_seq": 10},
        ]);
        let tgt_hist = json!([
            {"session_id": "d", "recorded_seq": 40},
            {"session_id": "b", "recorded_seq": 20},
            {"session_id": "a", "recorded_seq": 10},
        ]);
        check(
            Some(log("c", json!(30), src_hist.clone())),
            Some(log("d", json!(40), tgt_hist)),
            json!(20),
        );
        // Nothing in common.
        let other = json!([{"session_id": "z", "recorded_seq": 99}]);
        check(
            Some(log("c", json!(30), src_hist)),
            Some(log("z", json!(99), other)),
            json!(0),
        );
        // PouchDB's field names.
        let pouch = |s: &str, seq: u64| json!({"session_id": s, "last_seq": seq, "history": [{"session_id": s, "last_seq": seq}]});
        check(Some(pouch("p", 12)), Some(pouch("p", 12)), json!(12));
        let mut newer = pouch("q", 15);
        newer["history"]
            .as_array_mut()
            .unwrap()
            .push(json!({"session_id": "p", "last_seq": 12}));
        check(Some(newer), Some(pouch("p", 12)), json!(12));
    }

    #[test]
    fn dates() {
        let at = |secs| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(1_709_210_096), "Thu, 29 Feb 2024 12:34:56 GMT");
    }
}
