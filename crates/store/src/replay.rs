//! Replaying the event log, the same for every engine: a database's document tables, its
//! sequence and counters, and the settings they depend on are a projection of its log.
//!
//! Every document event names its revision, its parent and whether it is a deletion; a
//! replicated write also keeps the `_revisions` path it merged. Applying a database's events in
//! sequence order with the writer's own tree operations (edit, path merge, stemming once per
//! sequence) gives every document its tree, winner and latest sequence. Stemming depends on
//! `_revs_limit` as it was at each write, so a change of the limit is an event too, a
//! [`Setting`] recorded at the database's sequence when it was made; so is a change of the
//! conflict policy (replay does not run policies, whose resolutions are events of their own, but
//! a rebuilt database gets its policy back from the log). When retention trimmed a document's
//! old events, its replay starts from the baseline tree compaction kept for it.
//!
//! An engine reads the rows and hands them here: [`replay`] rebuilds, [`compare`] says how the
//! live tables differ from what the log rebuilds, and [`Replayed::rows`] gives the rows to
//! store when rebuilding.

use std::collections::BTreeMap;

use outpost_core::{Policy, Rev, RevTree};
use serde_json::{Value, json};

use crate::StoreError;

/// The `_revs_limit` of a database whose log records no change of it.
pub const DEFAULT_REVS_LIMIT: u64 = 1000;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// One document event as replay needs it.
#[derive(Debug, Clone)]
pub struct ReplayEvent {
    pub seq: u64,
    pub rev: Rev,
    pub parent: Option<Rev>,
    /// The `_revisions` path a replicated write merged.
    pub path: Option<Vec<Rev>>,
    pub deleted: bool,
    /// A `purged` event: `rev` is a leaf `_purge` removed at this sequence (see
    /// [`crate::Store::purge`]).
    pub purged: bool,
}

impl ReplayEvent {
    /// An event from the columns of its row in `events`.
    pub fn from_row(
        doc: &str,
        kind: &str,
        seq: u64,
        rev: &str,
        parent: Option<&str>,
        detail: Option<&str>,
        deleted: Option<bool>,
    ) -> Result<ReplayEvent, StoreError> {
        let rev: Rev = rev.parse().map_err(corrupt)?;
        let parent: Option<Rev> = parent.map(str::parse).transpose().map_err(corrupt)?;
        let detail: Option<Value> = detail
            .map(serde_json::from_str)
            .transpose()
            .map_err(corrupt)?;
        let path = match detail
            .as_ref()
            .and_then(|d| d.get("path"))
            .and_then(Value::as_array)
        {
            Some(path) => Some(
                path.iter()
                    .map(|r| r.as_str().unwrap_or_default().parse())
                    .collect::<Result<Vec<Rev>, _>>()
                    .map_err(corrupt)?,
            ),
            None => None,
        };
        // Every event records whether its revision is a deletion (a store older than that had
        // it filled in when upgraded); one without it means the store lost data.
        let deleted = deleted.ok_or_else(|| {
            corrupt(format!(
                "event {seq} ({rev} of {doc}) does not say whether it is a deletion"
            ))
        })?;
        Ok(ReplayEvent {
            seq,
            rev,
            parent,
            path,
            deleted,
            purged: kind == crate::docwrite::PURGED,
        })
    }
}

/// Applies one event to a tree exactly as the writer did. The writer stems a document once per
/// sequence, after all of its events of that sequence, with the `_revs_limit` of that moment:
/// `last_of_seq` says whether this event is the last of its sequence.
pub fn apply_event(
    tree: &mut RevTree,
    event: &ReplayEvent,
    revs_limit: usize,
    last_of_seq: bool,
) -> Result<(), StoreError> {
    if event.purged {
        // The writer purged against the tree as it stood at this sequence, which replay has
        // rebuilt: the same leaf takes the same revisions.
        tree.purge(std::slice::from_ref(&event.rev));
        if last_of_seq {
            tree.stem(revs_limit.max(1));
        }
        return Ok(());
    }
    let path: Vec<Rev> = match &event.path {
        Some(path) => path.clone(),
        None => std::iter::once(event.rev.clone())
            .chain(event.parent.clone())
            .collect(),
    };
    tree.merge_path(&path, event.deleted)
        .map_err(|e| corrupt(format!("event {}: {e}", event.seq)))?;
    if last_of_seq {
        tree.stem(revs_limit.max(1));
    }
    Ok(())
}

/// A change of a database setting the tables depend on, as the log records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// `PUT /{db}/_revs_limit`.
    RevsLimit(u64),
    /// `PUT /{db}/_outpost` with a `conflict_policy`.
    Policy(Policy),
}

impl Setting {
    /// The event's kind as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Setting::RevsLimit(_) => "revs_limit",
            Setting::Policy(_) => "policy",
        }
    }

    /// The event's detail as stored (JSON).
    pub fn detail(&self) -> String {
        match self {
            Setting::RevsLimit(limit) => json!({ "revs_limit": limit }),
            Setting::Policy(policy) => {
                json!({ "conflict_policy": policy.name(), "lww_field": policy.lww_field() })
            }
        }
        .to_string()
    }

    /// A setting from its stored kind and detail.
    pub fn parse(kind: &str, detail: &str) -> Result<Setting, StoreError> {
        let bad = || corrupt(format!("setting event {kind}: {detail}"));
        let value: Value = serde_json::from_str(detail).map_err(|_| bad())?;
        match kind {
            "revs_limit" => value["revs_limit"]
                .as_u64()
                .map(Setting::RevsLimit)
                .ok_or_else(bad),
            "policy" => {
                let name = value["conflict_policy"].as_str().ok_or_else(bad)?;
                let field = value["lww_field"].as_str().map(str::to_owned);
                Policy::from_parts(name, field)
                    .map(Setting::Policy)
                    .ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }
}

/// A database's setting events in log order: each applies to the writes after its sequence.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    changes: Vec<(u64, Setting)>,
}

impl Settings {
    /// Adds the next setting event, made when the database's sequence was `seq`.
    pub fn push(&mut self, seq: u64, setting: Setting) {
        self.changes.push((seq, setting));
    }

    /// The `_revs_limit` a write at sequence `seq` was stemmed with.
    pub fn revs_limit_for(&self, seq: u64) -> usize {
        let limit = self
            .changes
            .iter()
            .take_while(|(at, _)| *at < seq)
            .filter_map(|(_, s)| match s {
                Setting::RevsLimit(limit) => Some(*limit),
                Setting::Policy(_) => None,
            })
            .last()
            .unwrap_or(DEFAULT_REVS_LIMIT);
        usize::try_from(limit).unwrap_or(usize::MAX).max(1)
    }

    /// The `_revs_limit` after every event.
    pub fn revs_limit(&self) -> u64 {
        self.changes
            .iter()
            .filter_map(|(_, s)| match s {
                Setting::RevsLimit(limit) => Some(*limit),
                Setting::Policy(_) => None,
            })
            .next_back()
            .unwrap_or(DEFAULT_REVS_LIMIT)
    }

    /// The conflict policy after every event.
    pub fn policy(&self) -> Policy {
        self.changes
            .iter()
            .filter_map(|(_, s)| match s {
                Setting::Policy(policy) => Some(policy.clone()),
                Setting::RevsLimit(_) => None,
            })
            .next_back()
            .unwrap_or_default()
    }

    /// The sequence of the last event (0 when there is none).
    fn last_seq(&self) -> u64 {
        self.changes.last().map_or(0, |(seq, _)| *seq)
    }
}

/// One document rebuilt from its events.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub tree: RevTree,
    /// Its latest sequence.
    pub seq: u64,
}

/// A database rebuilt from its log.
#[derive(Debug, Default)]
pub struct Replayed {
    pub docs: BTreeMap<String, Rebuilt>,
    /// Document events replayed.
    pub events: u64,
    pub settings: Settings,
    /// The latest sequence of any document, those a purge removed whole included.
    last_doc_seq: u64,
}

/// A document's row as a rebuild stores it.
#[derive(Debug)]
pub struct RebuiltRow<'a> {
    pub id: &'a str,
    pub seq: u64,
    pub deleted: bool,
    pub conflicted: bool,
    pub winner: String,
    pub tree: String,
}

impl Replayed {
    /// The database's update sequence: its last document write or setting change.
    pub fn update_seq(&self) -> u64 {
        self.last_doc_seq.max(self.settings.last_seq())
    }

    /// `(doc_count, doc_del_count)`.
    pub fn counts(&self) -> (i64, i64) {
        let deleted = self.docs.values().filter(|d| d.tree.is_deleted()).count() as i64;
        (self.docs.len() as i64 - deleted, deleted)
    }

    /// Every document's row, in id order.
    pub fn rows(&self) -> impl Iterator<Item = Result<RebuiltRow<'_>, StoreError>> {
        self.docs.iter().map(|(id, doc)| {
            Ok(RebuiltRow {
                id,
                seq: doc.seq,
                deleted: doc.tree.is_deleted(),
                conflicted: doc.tree.is_conflicted(),
                winner: doc
                    .tree
                    .winner()
                    .map(|w| w.rev.to_string())
                    .unwrap_or_default(),
                tree: serde_json::to_string(&doc.tree).map_err(corrupt)?,
            })
        })
    }
}

/// Replays a database: `events` are all its document events in `(seq, pos)` order with their
/// document ids, `baselines` the trees retention left where trimmed histories start
/// (`doc → (seq, tree)`), `settings` its setting events.
pub fn replay(
    events: Vec<(String, ReplayEvent)>,
    mut baselines: BTreeMap<String, (u64, RevTree)>,
    settings: Settings,
) -> Result<Replayed, StoreError> {
    let mut out = Replayed {
        settings,
        ..Replayed::default()
    };
    for (i, (id, event)) in events.iter().enumerate() {
        let doc = out.docs.entry(id.clone()).or_insert_with(|| {
            let (seq, tree) = baselines.remove(id).unwrap_or((0, RevTree::new()));
            Rebuilt { tree, seq }
        });
        // A sequence holds one document's events, so the next event tells where it ends.
        let last_of_seq = events.get(i + 1).is_none_or(|(_, e)| e.seq != event.seq);
        apply_event(
            &mut doc.tree,
            event,
            out.settings.revs_limit_for(event.seq),
            last_of_seq,
        )?;
        doc.seq = event.seq;
        out.events += 1;
    }
    // A document whose every event was trimmed lives on in its baseline alone.
    for (id, (seq, tree)) in baselines {
        out.docs.insert(id, Rebuilt { tree, seq });
    }
    out.last_doc_seq = out.docs.values().map(|d| d.seq).max().unwrap_or(0);
    // A document purged whole replays to an empty tree: it does not exist, though its purge
    // took a sequence.
    out.docs.retain(|_, d| !d.tree.is_empty());
    Ok(out)
}

/// A document as the live tables hold it.
#[derive(Debug)]
pub struct LiveDoc {
    pub id: String,
    pub seq: u64,
    pub deleted: bool,
    pub tree: RevTree,
}

/// A database's row as the live tables hold it.
#[derive(Debug)]
pub struct LiveDb {
    pub update_seq: u64,
    pub doc_count: i64,
    pub doc_del_count: i64,
    pub revs_limit: u64,
    pub policy: Policy,
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Events replayed.
    pub events: u64,
    /// Documents rebuilt.
    pub docs: u64,
    /// Every difference between the rebuilt and the live tables, one line each.
    pub differences: Vec<String>,
}

impl ReplayReport {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }
}

/// What a rebuild did.
#[derive(Debug)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// Documents rebuilt.
    pub docs: u64,
    /// The database's update sequence after the rebuild.
    pub update_seq: u64,
}

/// Compares the live tables (`db`, and its `docs`) with what the log rebuilt.
pub fn compare(
    replayed: &Replayed,
    db: &LiveDb,
    docs: impl IntoIterator<Item = Result<LiveDoc, StoreError>>,
) -> Result<ReplayReport, StoreError> {
    let mut differences = Vec::new();
    let mut in_table = std::collections::BTreeSet::new();
    for live in docs {
        let live = live?;
        let id = &live.id;
        let Some(r) = replayed.docs.get(id) else {
            differences.push(format!(
                "{id}: in the document table but not in the event log"
            ));
            continue;
        };
        if r.tree != live.tree {
            differences.push(format!(
                "{id}: revision tree differs (log has {} revisions, winner {:?}; table has {}, winner {:?})",
                r.tree.len(),
                r.tree.winner().map(|w| w.rev.to_string()),
                live.tree.len(),
                live.tree.winner().map(|w| w.rev.to_string()),
            ));
        }
        if r.seq != live.seq {
            differences.push(format!(
                "{id}: sequence differs (log {}, table {})",
                r.seq, live.seq
            ));
        }
        if r.tree.is_deleted() != live.deleted {
            differences.push(format!("{id}: deleted flag differs"));
        }
        in_table.insert(live.id);
    }
    for id in replayed.docs.keys() {
        if !in_table.contains(id) {
            differences.push(format!(
                "{id}: in the event log but not in the document table"
            ));
        }
    }
    let mut database = |what: &str, log: String, table: String| {
        if log != table {
            differences.push(format!(
                "database: {what} differs (log {log}, table {table})"
            ));
        }
    };
    database(
        "update_seq",
        replayed.update_seq().to_string(),
        db.update_seq.to_string(),
    );
    let (live, deleted) = replayed.counts();
    database("doc_count", live.to_string(), db.doc_count.to_string());
    database(
        "doc_del_count",
        deleted.to_string(),
        db.doc_del_count.to_string(),
    );
    database(
        "revs_limit",
        replayed.settings.revs_limit().to_string(),
        db.revs_limit.to_string(),
    );
    let policy = |p: &Policy| Setting::Policy(p.clone()).detail();
    database(
        "conflict policy",
        policy(&replayed.settings.policy()),
        policy(&db.policy),
    );
    Ok(ReplayReport {
        events: replayed.events,
        docs: replayed.docs.len() as u64,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_applies_to_the_writes_after_it() {
        let mut settings = Settings::default();
        assert_eq!(settings.revs_limit_for(1), DEFAULT_REVS_LIMIT as usize);
        settings.push(3, Setting::RevsLimit(2));
        settings.push(3, Setting::RevsLimit(5));
        settings.push(
            7,
            Setting::Policy(Policy::Lww {
                field: Some("at".into()),
            }),
        );
        assert_eq!(settings.revs_limit_for(3), DEFAULT_REVS_LIMIT as usize);
        assert_eq!(settings.revs_limit_for(4), 5);
        assert_eq!(settings.revs_limit(), 5);
        assert_eq!(settings.policy().name(), "lww");
        for setting in [
            Setting::RevsLimit(9),
            Setting::Policy(Policy::Merge { field: None }),
            Setting::Policy(Policy::Lww {
                field: Some("x.y".into()),
            }),
        ] {
            assert_eq!(
                Setting::parse(setting.kind(), &setting.detail()).unwrap(),
                setting
            );
        }
        assert!(Setting::parse("colour", "{}").is_err());
    }
}
