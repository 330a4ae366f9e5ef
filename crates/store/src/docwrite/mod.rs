//! Applying document updates inside an engine's write transaction, the same for every engine.
//!
//! Everything here is engine-neutral: merging a request's revisions into a document's tree,
//! resolving attachment stubs, running the database's conflict policy, stemming, numbering the
//! document under one new sequence and building its events. An engine implements [`DocTx`]
//! (a handful of reads and writes on its open transaction) and calls [`apply_docs_step`] and
//! [`apply_manual_resolution`] from its writer, so both engines write exactly the same trees,
//! revisions and events.
//!
//! The transaction is the engine's business: it decides how requests are grouped into commits
//! and what locks give its sequences their order (see [`DocTx::db_state`]).

mod writes;

use std::collections::HashMap;

use outpost_core::rev::MAX_GENERATION;
use outpost_core::{Policy, Rev, RevTree, hash, policy};
use serde_json::{Map, Value};

use crate::{DocError, DocUpdate, Origin, StoreError, UpdateMode};
use writes::Pending;
pub use writes::{DocRowWrite, EventWrite, RevWrite, Writes};

/// The reads and writes the document writer needs, on an engine's open write transaction.
///
/// A step (the documents of a request's chunk) reads its documents' rows in one call and
/// revision bodies one by one, and its writes reach the engine at once, in [`DocTx::write`], so
/// that an engine whose statements cost a round trip each can make them a few multi-row ones.
pub trait DocTx {
    /// The state of the database named `name`, `None` when there is none. An engine whose
    /// writers can run concurrently (several nodes on one server) must make sure that sequences
    /// are handed out in commit order: by locking the row here until the transaction ends, or by
    /// numbering the step's documents tentatively and renumbering them under the row's lock
    /// just before its commit (the PostgreSQL engine, with every document it writes locked
    /// before its row is read).
    fn db_state(&self, name: &str) -> Result<Option<DbState>, StoreError>;
    /// Writes the counters and sequence of `state` back to its database's row.
    fn save_state(&self, state: &DbState) -> Result<(), StoreError>;
    /// The stored `deleted` flag and revision tree (JSON) of each of `ids` that has a row, by id.
    fn doc_rows(
        &self,
        db: i64,
        ids: &[&str],
    ) -> Result<HashMap<String, (bool, String)>, StoreError>;
    /// The stored body (JSON) of one revision, `None` when there is none (an engine that stores
    /// revisions only at the end of its transaction answers one written earlier in it too).
    fn rev_body(&self, db: i64, doc: &str, rev: &str) -> Result<Option<String>, StoreError>;
    /// Stores what a step wrote, in this order: attachment bytes under their digest (one
    /// already stored is kept), revision bodies (one already stored is kept as it is), document
    /// rows (inserted or replaced), events (appended).
    fn write(&self, writes: &Writes) -> Result<(), StoreError>;
    /// Brings the access index of a database with per-document access up to date with a
    /// document just stored (its new sequence, winning revision and deletion flag), in the same
    /// transaction: who gains the document, who loses it (kept as a deletion at `seq`). Called
    /// after [`DocTx::write`] stored the document's revisions.
    fn index_access(
        &self,
        db: i64,
        id: &str,
        seq: u64,
        winner: &str,
        deleted: bool,
    ) -> Result<(), StoreError>;
    /// Deletes the stored bodies of a document's revisions other than `keep`, after copying
    /// each one's deletion flag into its events (replay needs it once the body is gone).
    /// Answers the bytes of body freed and whether a body deleted had attachments.
    fn drop_bodies(&self, db: i64, doc: &str, keep: &[String]) -> Result<(i64, bool), StoreError>;
    /// Removes every trace of a purged document but its bodies (dropped first, by
    /// [`DocTx::drop_bodies`]): its row, its events and baseline, its access rows, and its rows
    /// in every secondary index of the database. An engine whose index steps can run
    /// concurrently must lock the database's indexes here so that a step computed before the
    /// purge cannot write the document's rows back (see [`crate::index`]).
    fn forget_doc(&self, db: i64, doc: &str) -> Result<(), StoreError>;
}

/// The results of a document write, one per update, once every document is applied; and the
/// database's sequence after the step.
pub type DocsStep = (Option<Vec<Result<Rev, DocError>>>, u64);

/// Applies the next chunk of a document write: whole documents, up to `allowance` updates (at
/// least one document; `usize::MAX` for all of them). Answers the results, one per update,
/// once every document is applied (`None` while documents remain), and the database's sequence
/// after the chunk.
pub fn apply_docs_step(
    tx: &dyn DocTx,
    db: &str,
    updates: &mut [DocUpdate],
    progress: &mut Option<DocsProgress>,
    allowance: usize,
    now: i64,
) -> Result<DocsStep, StoreError> {
    let mut state = load_state(tx, db)?;
    let progress = progress.get_or_insert_with(|| DocsProgress::new(state.id, updates));
    if progress.db_id != state.id {
        // Deleted and created again between two chunks: the rest is not for this database.
        return Err(StoreError::NoDb);
    }
    let first = progress.next;
    let end = progress.step_end(allowance);
    // Every document's row in one read.
    let ids: Vec<&str> = progress.groups[first..end]
        .iter()
        .map(|g| updates[g[0]].id.as_str())
        .collect();
    let mut rows = tx.doc_rows(state.id, &ids)?;
    let mut pending = Pending::default();
    for g in first..end {
        let group = &progress.groups[g];
        let row = rows.remove(&updates[group[0]].id);
        apply_doc_group(
            tx,
            &mut pending,
            &mut state,
            updates,
            group,
            row,
            &mut progress.results,
            now,
        )?;
    }
    progress.next = end;
    pending.flush(tx, state.id)?;
    tx.save_state(&state)?;
    if progress.next < progress.groups.len() {
        return Ok((None, state.seq));
    }
    let results = std::mem::take(&mut progress.results)
        .into_iter()
        .map(|r| r.unwrap_or(Err(DocError::Conflict)))
        .collect();
    Ok((Some(results), state.seq))
}

/// The per-database state a batch of document updates works on: the database's row, read once
/// at the start of a request's chunk and written back once at its end.
#[derive(Debug, Clone)]
pub struct DbState {
    /// The database's row id.
    pub id: i64,
    /// Its update sequence: each document a request changes takes the next one.
    pub seq: u64,
    pub revs_limit: usize,
    pub doc_count: i64,
    pub doc_del_count: i64,
    /// Bytes of stored bodies.
    pub active_size: i64,
    pub policy: Policy,
    /// Whether the database keeps an access index (per-document access).
    pub access: bool,
    /// Document purges so far (`purge_seq`).
    pub purge_seq: u64,
}

/// Either a per-document refusal or a failure of the whole transaction.
enum ApplyError {
    Doc(DocError),
    Store(StoreError),
}

impl From<DocError> for ApplyError {
    fn from(e: DocError) -> Self {
        ApplyError::Doc(e)
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

/// The state of database `db`, [`StoreError::NoDb`] when there is none.
pub fn load_state(tx: &dyn DocTx, db: &str) -> Result<DbState, StoreError> {
    tx.db_state(db)?.ok_or(StoreError::NoDb)
}

/// How far the writer got with one request's document updates.
pub struct DocsProgress {
    /// The database's row id when the first chunk ran: a later chunk that finds another database
    /// of that name (deleted and created again in between) stops.
    db_id: i64,
    /// Indexes of the updates, grouped by document, documents in order of first appearance.
    groups: Vec<Vec<usize>>,
    /// The next group to apply.
    next: usize,
    /// One result per update, in request order, filled in as groups are applied.
    results: Vec<Option<Result<Rev, DocError>>>,
}

impl DocsProgress {
    pub fn new(db_id: i64, updates: &[DocUpdate]) -> DocsProgress {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (i, update) in updates.iter().enumerate() {
            let group = *by_id.entry(update.id.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(i);
        }
        DocsProgress {
            db_id,
            groups,
            next: 0,
            results: vec![None; updates.len()],
        }
    }

    /// Where the next step ends: whole groups up to `allowance` updates (at least one group).
    fn step_end(&self, allowance: usize) -> usize {
        let mut end = self.next;
        let mut taken = 0;
        while taken < allowance.max(1) {
            let Some(group) = self.groups.get(end) else {
                break;
            };
            taken += group.len();
            end += 1;
        }
        end
    }

    /// The ids of the documents the next step with `allowance` will write, each once: what an
    /// engine locks before the step when its writers lock documents rather than databases.
    pub fn step_ids<'u>(&self, updates: &'u [DocUpdate], allowance: usize) -> Vec<&'u str> {
        self.groups[self.next.min(self.groups.len())..self.step_end(allowance)]
            .iter()
            .map(|g| updates[g[0]].id.as_str())
            .collect()
    }

    /// Updates not applied yet.
    pub fn remaining(&self) -> usize {
        self.groups[self.next.min(self.groups.len())..]
            .iter()
            .map(Vec::len)
            .sum()
    }
}

/// Applies every update of one document in request order, on its tree loaded once, then
/// resolves it once and stores it once.
#[allow(clippy::too_many_arguments)]
fn apply_doc_group(
    tx: &dyn DocTx,
    pending: &mut Pending,
    state: &mut DbState,
    updates: &mut [DocUpdate],
    group: &[usize],
    row: Option<(bool, String)>,
    results: &mut [Option<Result<Rev, DocError>>],
    now: i64,
) -> Result<(), StoreError> {
    let mut doc = DocWrite::new(&updates[group[0]].id, row)?;
    let mut accepted = false;
    for &i in group {
        results[i] = Some(
            match apply_doc(tx, pending, state, &mut doc, &mut updates[i]) {
                Ok(rev) => {
                    accepted = true;
                    Ok(rev)
                }
                Err(ApplyError::Doc(e)) => Err(e),
                Err(ApplyError::Store(e)) => return Err(e),
            },
        );
    }
    // Automatic policies resolve once per document after all of its revisions in the request,
    // so the revisions a replicator sends together (a peer's resolution and its tombstones) are
    // judged together.
    if accepted && state.policy != Policy::Manual {
        settle_automatically(tx, pending, state, &mut doc)?;
    }
    doc.store(pending, state, now)
}

/// One document as a request writes it: its tree, loaded once; every revision the request adds
/// goes into it, and the document row, the tree and the events are written once at the end, with
/// one new sequence for the document however many revisions it received (as CouchDB does).
struct DocWrite {
    id: String,
    tree: RevTree,
    /// The stored row's `deleted` flag, for the counters; `None` when the document had no row.
    was_deleted: Option<bool>,
    /// Events of the revisions added, in order; they are written with the document's sequence.
    events: Vec<PendingEvent>,
    /// The revisions replicated writes of this request added to the tree, for judging
    /// resolutions made elsewhere ([`policy::settle`]).
    arrived: Vec<Rev>,
}

/// An accepted revision's event, waiting for its document's sequence.
struct PendingEvent {
    kind: &'static str,
    rev: Rev,
    parent: Option<Rev>,
    origin: String,
    detail: Option<String>,
    deleted: bool,
}

impl DocWrite {
    /// The document `id` with its stored row (`deleted` flag and tree), if it has one.
    fn new(id: &str, row: Option<(bool, String)>) -> Result<DocWrite, StoreError> {
        let (was_deleted, tree) = match row {
            Some((deleted, json)) => {
                let tree = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("revision tree of {id}: {e}")))?;
                (Some(deleted), tree)
            }
            None => (None, RevTree::new()),
        };
        Ok(DocWrite {
            id: id.to_owned(),
            tree,
            was_deleted,
            events: Vec::new(),
            arrived: Vec::new(),
        })
    }

    /// Stores a revision just added to the tree: its body now (later revisions of the request may
    /// take attachment stubs from it, and policies read it, from `pending`), its event with the
    /// document.
    fn add(
        &mut self,
        pending: &mut Pending,
        state: &mut DbState,
        revision: &NewRevision<'_>,
        origin: &Origin,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let body_json =
            serde_json::to_string(revision.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        state.active_size += body_json.len() as i64;
        pending.put_rev(RevWrite {
            db: state.id,
            doc: self.id.clone(),
            rev: revision.rev.to_string(),
            deleted: revision.deleted,
            body: body_json,
        });
        self.events.push(PendingEvent {
            kind: revision.kind,
            rev: revision.rev.clone(),
            parent: revision.parent.cloned(),
            origin: origin.label(),
            detail,
            deleted: revision.deleted,
        });
        // Counted when stored in the transaction, so a rolled-back batch is counted too; rare
        // enough (a failed commit) not to matter for rates.
        metrics::counter!("outpost_documents_written_total", "kind" => revision.kind).increment(1);
        match revision.kind {
            "conflict" => {
                metrics::counter!("outpost_conflicts_detected_total", "policy" => state.policy.name())
                    .increment(1)
            }
            "resolved" => {
                metrics::counter!("outpost_conflicts_resolved_total", "policy" => state.policy.name())
                    .increment(1)
            }
            _ => {}
        }
        Ok(())
    }

    /// Stems the tree and writes the document row, the counters and the events, under one new
    /// sequence. Does nothing when no revision was added.
    fn store(
        &mut self,
        pending: &mut Pending,
        state: &mut DbState,
        now: i64,
    ) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        self.tree.stem(state.revs_limit);
        state.seq += 1;
        let deleted = self.tree.is_deleted();
        let winner = self
            .tree
            .winner()
            .map(|l| l.rev.to_string())
            .unwrap_or_default();
        let tree_json =
            serde_json::to_string(&self.tree).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if state.access {
            pending
                .access
                .push((self.id.clone(), state.seq, winner.clone(), deleted));
        }
        pending.writes.docs.push(DocRowWrite {
            db: state.id,
            id: self.id.clone(),
            new: self.was_deleted.is_none(),
            seq: state.seq,
            deleted,
            conflicted: self.tree.is_conflicted(),
            winner,
            tree: tree_json,
        });
        match (self.was_deleted, deleted) {
            (None, false) => state.doc_count += 1,
            (None, true) => state.doc_del_count += 1,
            (Some(true), false) => {
                state.doc_del_count -= 1;
                state.doc_count += 1;
            }
            (Some(false), true) => {
                state.doc_count -= 1;
                state.doc_del_count += 1;
            }
            _ => {}
        }
        self.was_deleted = Some(deleted);
        self.write_events(pending, state, now);
        Ok(())
    }

    /// A purge took every revision: the document's row and history go, and only the events
    /// of the purge are left, under a new sequence, so that the log says what happened and
    /// replay (which finds an empty tree) rebuilds no document. The row and history go at once;
    /// the events wait in `pending`, which must hold no earlier write of the document.
    fn forget(
        &mut self,
        tx: &dyn DocTx,
        pending: &mut Pending,
        state: &mut DbState,
        now: i64,
    ) -> Result<(), StoreError> {
        tx.forget_doc(state.id, &self.id)?;
        match self.was_deleted {
            Some(true) => state.doc_del_count -= 1,
            Some(false) => state.doc_count -= 1,
            None => {}
        }
        self.was_deleted = None;
        state.seq += 1;
        self.write_events(pending, state, now);
        Ok(())
    }

    /// Appends the pending events under the document's sequence (`state.seq`).
    fn write_events(&mut self, pending: &mut Pending, state: &DbState, now: i64) {
        for (pos, event) in self.events.drain(..).enumerate() {
            pending.writes.events.push(EventWrite {
                db: state.id,
                seq: state.seq,
                pos: pos as i64,
                kind: event.kind,
                doc: self.id.clone(),
                rev: event.rev.to_string(),
                parent: event.parent.as_ref().map(Rev::to_string),
                origin: event.origin,
                at: now / 1000,
                detail: event.detail,
                deleted: event.deleted,
            });
        }
    }
}

/// The kind of the event that records a purged leaf.
pub const PURGED: &str = "purged";

/// The result of [`apply_purge`]: what it did, and the database's sequence afterwards.
pub type PurgeStep = (crate::PurgeOutcome, u64);

/// `_purge` in the writer's transaction (see [`crate::Store::purge`]): each document's tree is
/// loaded, purged and stored (or forgotten, when no leaf is left) under one new sequence, with
/// one `purged` event per leaf purged; the purged revisions' bodies go.
///
/// Each document's writes are handed to the engine before the next document is read: bodies
/// are dropped and forgotten documents removed at once, so a later request for the same
/// document must find the engine up to date, and no batched write may land after a removal.
pub fn apply_purge(
    tx: &dyn DocTx,
    db: &str,
    requests: &[crate::PurgeRequest],
    now: i64,
) -> Result<PurgeStep, StoreError> {
    let mut state = load_state(tx, db)?;
    let mut outcome = crate::PurgeOutcome::default();
    for request in requests {
        state.purge_seq += 1;
        let row = tx
            .doc_rows(state.id, &[request.id.as_str()])?
            .remove(&request.id);
        let mut doc = DocWrite::new(&request.id, row)?;
        // Each purged leaf's deletion flag, for its event, before the tree forgets it.
        let flags: HashMap<Rev, bool> = request
            .revs
            .iter()
            .filter_map(|r| doc.tree.is_deleted_rev(r).map(|d| (r.clone(), d)))
            .collect();
        let purged = doc.tree.purge(&request.revs);
        if purged.leaves.is_empty() {
            outcome.purged.push((request.id.clone(), Vec::new()));
            continue;
        }
        let keep: Vec<String> = doc.tree.revs().map(Rev::to_string).collect();
        let (freed, attachments) = tx.drop_bodies(state.id, &doc.id, &keep)?;
        state.active_size = (state.active_size - freed).max(0);
        outcome.attachments |= attachments;
        let detail = serde_json::json!({
            "removed": purged.removed.iter().map(Rev::to_string).collect::<Vec<_>>(),
        })
        .to_string();
        for leaf in &purged.leaves {
            doc.events.push(PendingEvent {
                kind: PURGED,
                rev: leaf.clone(),
                parent: None,
                origin: Origin::Client.label(),
                detail: Some(detail.clone()),
                deleted: flags.get(leaf).copied().unwrap_or(false),
            });
        }
        metrics::counter!("outpost_documents_purged_total").increment(1);
        let mut pending = Pending::default();
        if doc.tree.is_empty() {
            doc.forget(tx, &mut pending, &mut state, now)?;
        } else {
            doc.store(&mut pending, &mut state, now)?;
        }
        pending.flush(tx, state.id)?;
        outcome.purged.push((request.id.clone(), purged.leaves));
    }
    tx.save_state(&state)?;
    outcome.purge_seq = state.purge_seq;
    Ok((outcome, state.seq))
}

fn load_bodies(
    tx: &dyn DocTx,
    pending: &Pending,
    db: i64,
    id: &str,
    revs: &[Rev],
) -> Result<HashMap<Rev, Value>, StoreError> {
    let mut out = HashMap::new();
    for rev in revs {
        if let Some(body) = pending.rev_body(tx, db, id, &rev.to_string())? {
            let value =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.insert(rev.clone(), value);
        }
    }
    Ok(out)
}

/// Whether an edit of `rev` would pass [`MAX_GENERATION`].
fn at_generation_limit(rev: &Rev) -> bool {
    rev.generation >= MAX_GENERATION
}

fn generation_limit_error(rev: &Rev) -> DocError {
    DocError::Invalid(format!(
        "revision {rev} is at the highest generation ({MAX_GENERATION}) and cannot be edited"
    ))
}

/// The text of a fingerprint, for logs.
fn fingerprint_text(fingerprint: Option<&Value>) -> String {
    fingerprint.map_or_else(|| "manual".to_owned(), Value::to_string)
}

/// Applies the database's policy to a document a request just wrote: judges resolutions that
/// replicated writes brought in from replicas with other settings (bringing back a branch one
/// deleted when this replica's policy keeps it), then resolves live conflicts.
fn settle_automatically(
    tx: &dyn DocTx,
    pending: &mut Pending,
    state: &mut DbState,
    doc: &mut DocWrite,
) -> Result<(), StoreError> {
    let needed = policy::settle_bodies(&state.policy, &doc.tree, &doc.arrived);
    if needed.is_empty() {
        return Ok(());
    }
    let bodies = load_bodies(tx, pending, state.id, &doc.id, &needed)?;
    let settled = policy::settle(&state.policy, &doc.tree, &bodies, &doc.arrived);
    let ours = state.policy.fingerprint();
    for foreign in &settled.foreign {
        // Replicas resolve this document under other settings: worth an operator's attention
        // whatever this replica made of it, since they will disagree again on other documents.
        tracing::warn!(
            doc = %doc.id,
            ours = %fingerprint_text(ours.as_ref()),
            theirs = %foreign.theirs,
            tombstone = %foreign.tombstone,
            verdict = foreign.verdict.as_str(),
            "a conflict resolution made under other settings arrived",
        );
        metrics::counter!("outpost_conflicts_policy_mismatch_total", "policy" => state.policy.name(), "verdict" => foreign.verdict.as_str())
            .increment(1);
    }
    if let Some(back) = &settled.reinstated {
        let theirs = settled
            .foreign
            .iter()
            .find(|f| f.tombstone == back.tombstone)
            .map(|f| f.theirs.clone());
        let detail = serde_json::json!({
            "policy": state.policy.name(),
            "reinstates": back.branch.to_string(),
            "resolution": theirs,
        })
        .to_string();
        let Value::Object(body) = &back.body else {
            return Err(StoreError::Corrupt(format!(
                "body of {} {} is not an object",
                doc.id, back.branch
            )));
        };
        doc.tree
            .add_edit(Some(&back.tombstone), back.rev.clone(), false)
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "reinstatement of {} does not extend a leaf",
                    doc.id
                ))
            })?;
        let revision = NewRevision {
            rev: &back.rev,
            parent: Some(&back.tombstone),
            deleted: false,
            body,
            kind: "reinstated",
        };
        doc.add(pending, state, &revision, &Origin::Resolver, Some(detail))?;
    }
    let resolution = match settled.resolution {
        Ok(Some(resolution)) => resolution,
        Ok(None) => return Ok(()),
        Err(why) => {
            // Another replica, one that holds what this one lacks, resolves it; or, when replicas
            // disagree, a person does.
            tracing::debug!(doc = %doc.id, reason = why.as_str(), "conflict left unresolved");
            metrics::counter!("outpost_conflicts_unresolved_total", "policy" => state.policy.name(), "reason" => why.as_str())
                .increment(1);
            return Ok(());
        }
    };
    if resolution.superseded().iter().any(at_generation_limit) {
        // Its revisions would pass the highest generation: the conflict stays for a client.
        tracing::warn!(doc = %doc.id, "conflict at the highest generation left unresolved");
        return Ok(());
    }
    let detail = serde_json::json!({
        "policy": state.policy.name(),
        "superseded": resolution.superseded().iter().map(Rev::to_string).collect::<Vec<_>>(),
    })
    .to_string();
    let kept = match &resolution.merged {
        Some((rev, Value::Object(body))) => Some((rev, body)),
        Some(_) => {
            return Err(StoreError::Corrupt(format!(
                "merged body of {} is not an object",
                doc.id
            )));
        }
        None => None,
    };
    let tombstone = state.policy.tombstone_body();
    let written = Resolved {
        winner: &resolution.winner,
        kept,
        tombstones: &resolution.tombstones,
        tombstone: &tombstone,
        origin: &Origin::Resolver,
        detail: &detail,
    };
    commit_resolution(pending, state, doc, &written)
}

/// `_resolve`: the client's body becomes a child of the winner and the other leaves it names are
/// tombstoned. The leaves named must be exactly the live ones, so a resolution made from a
/// stale read is refused as a conflict. Answers the result and the database's sequence.
pub fn apply_manual_resolution(
    tx: &dyn DocTx,
    db: &str,
    id: &str,
    leaves: &[Rev],
    update: &DocUpdate,
    now: i64,
) -> Result<(Result<Rev, DocError>, u64), StoreError> {
    let mut state = load_state(tx, db)?;
    let seq = state.seq;
    let row = tx.doc_rows(state.id, &[id])?.remove(id);
    let mut doc = DocWrite::new(id, row)?;
    let mut pending = Pending::default();
    if doc.tree.is_empty() {
        return Ok((Err(DocError::Conflict), seq));
    }
    let mut live: Vec<Rev> = doc
        .tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect();
    let mut named = leaves.to_vec();
    live.sort();
    named.sort();
    named.dedup();
    let Some(winner) = doc.tree.winner().filter(|w| !w.deleted).map(|w| w.rev) else {
        return Ok((Err(DocError::Conflict), seq));
    };
    if live != named {
        return Ok((Err(DocError::Conflict), seq));
    }
    if let Some(top) = live.iter().find(|r| at_generation_limit(r)) {
        return Ok((Err(generation_limit_error(top)), seq));
    }
    let mut body = update.body.clone();
    match resolve_attachments(
        tx,
        &pending,
        state.id,
        id,
        &mut body,
        &live,
        winner.generation + 1,
        false,
    ) {
        Ok(()) => {}
        Err(ApplyError::Doc(e)) => return Ok((Err(e), seq)),
        Err(ApplyError::Store(e)) => return Err(e),
    }
    for att in &update.new_attachments {
        pending.put_attachment(att.clone());
    }
    let rev = hash::next_rev_of_fields(Some(&winner), false, &body);
    if doc.tree.contains(&rev) {
        return Ok((Err(DocError::Conflict), seq));
    }
    let detail = serde_json::json!({
        "policy": "manual",
        "superseded": live.iter().map(Rev::to_string).collect::<Vec<_>>(),
    })
    .to_string();
    let tombstones: Vec<(Rev, Rev)> = live
        .iter()
        .filter(|r| **r != winner)
        .map(|loser| {
            (
                loser.clone(),
                hash::next_rev_of_fields(Some(loser), true, &Map::new()),
            )
        })
        .collect();
    let written = Resolved {
        winner: &winner,
        kept: Some((&rev, &body)),
        tombstones: &tombstones,
        tombstone: &Map::new(),
        origin: &update.origin,
        detail: &detail,
    };
    commit_resolution(&mut pending, &mut state, &mut doc, &written)?;
    doc.store(&mut pending, &mut state, now)?;
    pending.flush(tx, state.id)?;
    tx.save_state(&state)?;
    Ok((Ok(rev), state.seq))
}

/// The revisions one resolution writes.
struct Resolved<'a> {
    winner: &'a Rev,
    /// The body kept, written as a child of `winner` (absent when the winner stays as it is).
    kept: Option<(&'a Rev, &'a Map<String, Value>)>,
    /// (losing leaf, its tombstone).
    tombstones: &'a [(Rev, Rev)],
    /// The tombstones' body: a policy's fingerprint, or `{}` for a person's resolution.
    tombstone: &'a Map<String, Value>,
    origin: &'a Origin,
    /// The event detail: policy and superseded leaves.
    detail: &'a str,
}

/// Adds a resolution's revisions to the document as `resolved` events.
fn commit_resolution(
    pending: &mut Pending,
    state: &mut DbState,
    doc: &mut DocWrite,
    resolved: &Resolved<'_>,
) -> Result<(), StoreError> {
    let kept = resolved
        .kept
        .map(|(rev, body)| (rev, resolved.winner, false, body));
    let tombstones = resolved
        .tombstones
        .iter()
        .map(|(loser, tomb)| (tomb, loser, true, resolved.tombstone));
    for (rev, parent, deleted, body) in kept.into_iter().chain(tombstones) {
        doc.tree
            .add_edit(Some(parent), rev.clone(), deleted)
            .map_err(|_| {
                StoreError::Corrupt(format!("resolution of {} does not extend a leaf", doc.id))
            })?;
        let revision = NewRevision {
            rev,
            parent: Some(parent),
            deleted,
            body,
            kind: "resolved",
        };
        doc.add(
            pending,
            state,
            &revision,
            resolved.origin,
            Some(resolved.detail.to_owned()),
        )?;
    }
    Ok(())
}

fn apply_doc(
    tx: &dyn DocTx,
    pending: &mut Pending,
    state: &mut DbState,
    doc: &mut DocWrite,
    update: &mut DocUpdate,
) -> Result<Rev, ApplyError> {
    let tree = &mut doc.tree;
    // What the event log needs to know about the document before this revision.
    let was_empty = tree.is_empty();
    let was_deleted_doc = tree.is_deleted();
    // Taken, not cloned: a write is applied once, and its body is not needed afterwards.
    let mut body = std::mem::take(&mut update.body);

    let (rev, parent, detail, extends_leaf) = match &update.mode {
        UpdateMode::Edit { base } => {
            let parent = match base {
                Some(b) if tree.is_leaf(b) => Some(b.clone()),
                Some(_) => return Err(DocError::Conflict.into()),
                None if tree.is_empty() => None,
                // CouchDB lets a deleted document be written again without a revision: the new
                // revision continues the deleted winner's branch.
                None if tree.is_deleted() => tree.winner().map(|w| w.rev),
                None => return Err(DocError::Conflict.into()),
            };
            if let Some(p) = parent.as_ref().filter(|p| at_generation_limit(p)) {
                return Err(generation_limit_error(p).into());
            }
            let generation = parent.as_ref().map_or(1, |p| p.generation + 1);
            let sources: Vec<Rev> = parent.iter().cloned().collect();
            resolve_attachments(
                tx, pending, state.id, &doc.id, &mut body, &sources, generation, false,
            )?;
            let rev = hash::next_rev_of_fields(parent.as_ref(), update.deleted, &body);
            tree.add_edit(parent.as_ref(), rev.clone(), update.deleted)
                .map_err(|_| DocError::Conflict)?;
            // An interactive edit always continues a leaf (or starts the document).
            let extends_leaf = parent.is_some();
            (rev, parent, None, extends_leaf)
        }
        UpdateMode::Replicate { path } => {
            let leaf = path.first().ok_or(DocError::InvalidPath)?.clone();
            if tree.contains(&leaf) {
                // Already known: receiving a revision twice changes nothing and takes no sequence.
                return Ok(leaf);
            }
            if leaf.generation > MAX_GENERATION {
                return Err(DocError::InvalidPath.into());
            }
            // Stubs take their metadata from the path, then from the current leaves; the leaves
            // are only listed when there is an attachment to resolve.
            if body.contains_key("_attachments") {
                let mut sources: Vec<Rev> = path.iter().skip(1).cloned().collect();
                sources.extend(tree.leaves().into_iter().map(|l| l.rev));
                resolve_attachments(
                    tx,
                    pending,
                    state.id,
                    &doc.id,
                    &mut body,
                    &sources,
                    leaf.generation,
                    true,
                )?;
            }
            let extends_leaf = path.get(1).is_some_and(|p| tree.is_leaf(p));
            let added = tree
                .merge_path(path, update.deleted)
                .map_err(|_| DocError::InvalidPath)?;
            doc.arrived.extend(added.iter().cloned());
            let parent = tree.parent(&leaf).cloned();
            // The path is kept with the event so that replaying the log rebuilds the same tree.
            let detail = serde_json::json!({ "path": path.iter().map(Rev::to_string).collect::<Vec<_>>(), "added": added.len() });
            (leaf, parent, Some(detail.to_string()), extends_leaf)
        }
    };
    // Taken like the body: the bytes are written once, with the step.
    for att in std::mem::take(&mut update.new_attachments) {
        pending.put_attachment(att);
    }
    let kind = event_kind(was_empty, was_deleted_doc, extends_leaf, update.deleted);
    let revision = NewRevision {
        rev: &rev,
        parent: parent.as_ref(),
        deleted: update.deleted,
        body: &body,
        kind,
    };
    doc.add(pending, state, &revision, &update.origin, detail)?;
    Ok(rev)
}

/// A revision already added to the tree, to be stored.
struct NewRevision<'a> {
    rev: &'a Rev,
    parent: Option<&'a Rev>,
    deleted: bool,
    body: &'a Map<String, Value>,
    kind: &'static str,
}

/// What an accepted revision did to its document, for the event log, from what the document
/// was before it (`was_empty`, `was_deleted`) and whether the revision continues a leaf.
fn event_kind(
    was_empty: bool,
    was_deleted: bool,
    extends_leaf: bool,
    deleted: bool,
) -> &'static str {
    if was_empty {
        return if deleted { "deleted" } else { "created" };
    }
    if deleted {
        return "deleted";
    }
    // A new live branch: the revision does not extend an existing leaf, so the document now has
    // a second live leaf (or revives a deleted one on another branch).
    if !extends_leaf && !was_deleted {
        "conflict"
    } else {
        "updated"
    }
}

/// Gives every attachment of `body` its stored form: stubs take their metadata from the first of
/// `sources` (revisions, newest first) that has an attachment of that name; new attachments get
/// `revpos` (kept from the sender when replicating) and become stubs.
#[allow(clippy::too_many_arguments)]
fn resolve_attachments(
    tx: &dyn DocTx,
    pending: &Pending,
    db: i64,
    doc: &str,
    body: &mut Map<String, Value>,
    sources: &[Rev],
    generation: u64,
    replicated: bool,
) -> Result<(), ApplyError> {
    let Some(atts) = body.get_mut("_attachments") else {
        return Ok(());
    };
    let Some(atts) = atts.as_object_mut() else {
        return Err(DocError::Invalid("_attachments must be an object".into()).into());
    };
    let mut source_atts: Option<Vec<Map<String, Value>>> = None;
    for (name, att) in atts.iter_mut() {
        let Some(obj) = att.as_object_mut() else {
            return Err(DocError::Invalid(format!("attachment {name} must be an object")).into());
        };
        if obj.get("stub").and_then(Value::as_bool) == Some(true) {
            if source_atts.is_none() {
                source_atts = Some(load_attachment_maps(tx, pending, db, doc, sources)?);
            }
            let found = source_atts
                .as_ref()
                .into_iter()
                .flatten()
                .find_map(|m| m.get(name).and_then(Value::as_object))
                .filter(|prev| match obj.get("digest") {
                    Some(d) => prev.get("digest") == Some(d),
                    None => true,
                })
                .cloned();
            match found {
                Some(prev) => *obj = prev,
                None => {
                    return Err(DocError::MissingStub {
                        doc: doc.to_owned(),
                        name: name.clone(),
                    }
                    .into());
                }
            }
        } else {
            check_encoding(name, obj)?;
            if !(replicated && obj.get("revpos").and_then(Value::as_u64).is_some()) {
                obj.insert("revpos".into(), Value::from(generation));
            }
            obj.insert("stub".into(), Value::Bool(true));
        }
    }
    Ok(())
}

/// Refuses a new attachment whose stored coding is not one the server can serve: identity (no
/// `encoding`), or gzip with the size stored in `encoded_length`. The stub keeps both, so every
/// revision that takes the attachment over (an edit's stub, a resolution) knows how its bytes
/// are stored.
fn check_encoding(name: &str, entry: &Map<String, Value>) -> Result<(), DocError> {
    use outpost_core::attachment::{ENCODED_LENGTH, ENCODING, GZIP};
    let encoding = entry.get(ENCODING);
    let encoded_length = entry.get(ENCODED_LENGTH);
    let valid = match encoding {
        None => encoded_length.is_none(),
        Some(Value::String(e)) if e == GZIP => encoded_length.and_then(Value::as_u64).is_some(),
        Some(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(DocError::Invalid(format!(
            "attachment {name}: encoding must be absent, or \"gzip\" with an encoded_length"
        )))
    }
}

fn load_attachment_maps(
    tx: &dyn DocTx,
    pending: &Pending,
    db: i64,
    doc: &str,
    sources: &[Rev],
) -> Result<Vec<Map<String, Value>>, ApplyError> {
    let mut out = Vec::new();
    for rev in sources {
        if let Some(body) = pending.rev_body(tx, db, doc, &rev.to_string())? {
            let value: Value =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(Value::Object(atts)) = value.get("_attachments") {
                out.push(atts.clone());
            }
        }
    }
    Ok(out)
}
