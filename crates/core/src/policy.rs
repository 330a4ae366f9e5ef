//! Conflict policies: how a document with more than one live leaf is resolved.
//!
//! A resolution is a pure function of the revision tree and the bodies of its revisions, and the
//! revisions it writes have ids computed like any edit's (`hash::next_rev`). So two replicas that
//! hold the same tree compute the same resolution and write the *same* revisions: when they
//! replicate, they agree instead of creating new conflicts back and forth.
//!
//! - `manual`: nothing is resolved automatically (CouchDB's semantics).
//! - `lww`: the live leaf with the greatest `lww_field` value wins (compared in CouchDB's
//!   collation; a leaf without the field sorts lowest), ties broken by CouchDB's winner order;
//!   every other live leaf gets a tombstone child.
//! - `merge`: three-way merge of every other live leaf into the `lww` winner against their
//!   nearest common ancestor. Object fields changed on one side only are taken from that side
//!   (recursively); a field changed on both sides keeps the `lww` winner's value. Attachments
//!   are atomic: each named attachment is taken whole from one side, never field by field (a
//!   digest from one side with the length of the other would describe no real attachment). The
//!   result is written as a child of the winner, and the other leaves get tombstones.
//!
//! A merge depends on the common ancestor's body, which replicas do not all hold: replication
//! carries leaves only, and compaction and retention drop ancestors' bodies. Resolving with a
//! guessed base would make a replica without it write a different resolution from one with it.
//! So a replica resolves only with every input at hand: when a base body is missing, it leaves
//! the conflict alone ([`Unresolved::MissingBase`]) and a replica that holds the base resolves
//! it; its revisions then replicate and end the conflict everywhere. Two branches with no common
//! ancestor merge against the empty document only when both histories reach generation 1 (two
//! independent creations); a history cut short by stemming is a missing base.
//!
//! A resolution also depends on the settings it was made under: two replicas with different
//! policies (or different `lww_field`s) pick different winners, and if each tombstoned the
//! other's winner the document would end deleted on both. So a tombstone a policy writes carries
//! the policy's [fingerprint](Policy::fingerprint) in its body (`outpost_resolution`, a plain
//! field: CouchDB and PouchDB refuse unknown `_` fields but keep any other field of a deleted
//! revision), and the tombstone's revision id, computed from that body, differs between settings.
//! A replica that receives a tombstone written under another fingerprint does not take it as its
//! own ([`settle`]): when the branch it deleted is the one this replica's policy would keep, the
//! replica brings the branch back (a [`Reinstatement`]: a live child of the tombstone with the
//! branch's body, its revision hashed with a marker of its own, [`hash::reinstated_rev`]), which
//! leaves the conflict visible. No policy resolves a document one of whose live leaves is a
//! reinstatement ([`Unresolved::PolicyMismatch`]): replicas that disagree leave it to a person.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::collate::collate;
use crate::rev::MAX_GENERATION;
use crate::{Rev, RevTree, hash};

/// The body field of a tombstone written by a conflict policy: the policy's fingerprint.
pub const RESOLUTION_FIELD: &str = "outpost_resolution";

/// A database's conflict policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Manual,
    Lww {
        field: Option<String>,
    },
    Merge {
        field: Option<String>,
    },
}

impl Policy {
    /// The policy's name as the API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Manual => "manual",
            Policy::Lww { .. } => "lww",
            Policy::Merge { .. } => "merge",
        }
    }

    /// The timestamp field compared by `lww` (and by `merge` for fields changed on both sides).
    pub fn lww_field(&self) -> Option<&str> {
        match self {
            Policy::Manual => None,
            Policy::Lww { field } | Policy::Merge { field } => field.as_deref(),
        }
    }

    /// What a resolution under this policy depends on besides the document: the policy's name
    /// and every parameter, as a JSON object (`{"lww_field": …, "policy": …}`). Two fingerprints
    /// are the same settings exactly when the objects are equal. `None` for `manual`, which
    /// never resolves.
    pub fn fingerprint(&self) -> Option<Value> {
        match self {
            Policy::Manual => None,
            Policy::Lww { field } | Policy::Merge { field } => {
                Some(json!({"lww_field": field, "policy": self.name()}))
            }
        }
    }

    /// The body of the tombstones this policy writes: its fingerprint under
    /// [`RESOLUTION_FIELD`] (`{}` for `manual`).
    pub fn tombstone_body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(fingerprint) = self.fingerprint() {
            body.insert(RESOLUTION_FIELD.into(), fingerprint);
        }
        body
    }

    /// Builds a policy from its name and optional field.
    pub fn from_parts(name: &str, field: Option<String>) -> Option<Policy> {
        match name {
            "manual" => Some(Policy::Manual),
            "lww" => Some(Policy::Lww { field }),
            "merge" => Some(Policy::Merge { field }),
            _ => None,
        }
    }
}

/// The revisions a resolution writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The live leaf that wins.
    pub winner: Rev,
    /// A merged body written as a child of `winner`, when the merge changed anything.
    pub merged: Option<(Rev, Value)>,
    /// Tombstones written as children of the losing leaves: (loser, tombstone revision).
    pub tombstones: Vec<(Rev, Rev)>,
}

impl Resolution {
    /// Every leaf the resolution superseded (the losers, and the winner when a merge extends it).
    pub fn superseded(&self) -> Vec<Rev> {
        let mut revs: Vec<Rev> = self.tombstones.iter().map(|(l, _)| l.clone()).collect();
        if self.merged.is_some() {
            revs.push(self.winner.clone());
        }
        revs.sort();
        revs
    }
}

/// The revisions whose bodies [`resolve`] needs: the live leaves and, for `merge`, their
/// common ancestors.
pub fn needed_bodies(policy: &Policy, tree: &RevTree) -> Vec<Rev> {
    let live: Vec<Rev> = tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect();
    if live.len() < 2 || *policy == Policy::Manual {
        return Vec::new();
    }
    let mut needed = live.clone();
    if matches!(policy, Policy::Merge { .. }) {
        for a in &live {
            for b in &live {
                for rev in tree
                    .ancestry(a)
                    .into_iter()
                    .filter(|r| tree.ancestry(b).contains(r))
                {
                    if !needed.contains(&rev) {
                        needed.push(rev);
                    }
                }
            }
        }
    }
    needed
}

/// Why a policy left live conflicts alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// `merge` needs a common ancestor's body this replica does not hold.
    MissingBase,
    /// A live leaf brings back a branch that a resolution made under other settings deleted:
    /// replicas disagree about this document, and none resolves it automatically.
    PolicyMismatch,
}

impl Unresolved {
    /// A short name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unresolved::MissingBase => "missing_base",
            Unresolved::PolicyMismatch => "policy_mismatch",
        }
    }
}

/// Resolves the document's live conflicts under `policy`: `Ok(None)` when there is nothing to
/// do (one live leaf, or `manual`), `Err` when this replica lacks an input the resolution
/// depends on (see the module documentation). `bodies` holds what [`needed_bodies`] asked for,
/// as far as the replica has them; a missing leaf body counts as an empty object.
pub fn resolve(
    policy: &Policy,
    tree: &RevTree,
    bodies: &HashMap<Rev, Value>,
) -> Result<Option<Resolution>, Unresolved> {
    if *policy == Policy::Manual {
        return Ok(None);
    }
    let live: Vec<Rev> = tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect();
    if live.len() < 2 {
        return Ok(None);
    }
    if live.iter().any(|leaf| is_reinstatement(tree, leaf, bodies)) {
        return Err(Unresolved::PolicyMismatch);
    }
    let empty = Value::Object(Map::new());
    let body = |rev: &Rev| bodies.get(rev).unwrap_or(&empty);
    let ordered = lww_order(policy, live, bodies);
    let winner = ordered[0].clone();
    let losers = &ordered[1..];

    let merged = match policy {
        Policy::Merge { .. } => {
            let mut result = body(&winner).clone();
            for loser in losers {
                let base = match nearest_common_ancestor(tree, &winner, loser) {
                    Some(ancestor) => bodies.get(&ancestor).ok_or(Unresolved::MissingBase)?,
                    None if reaches_generation_one(tree, &winner)
                        && reaches_generation_one(tree, loser) =>
                    {
                        &empty
                    }
                    None => return Err(Unresolved::MissingBase),
                };
                result = merge3(base, &result, body(loser));
            }
            (result != *body(&winner)).then(|| {
                let rev = hash::next_rev(Some(&winner), false, &result);
                (rev, result)
            })
        }
        _ => None,
    };
    let tombstone = Value::Object(policy.tombstone_body());
    let tombstones = losers
        .iter()
        .map(|loser| (loser.clone(), hash::next_rev(Some(loser), true, &tombstone)))
        .collect();
    Ok(Some(Resolution {
        winner,
        merged,
        tombstones,
    }))
}

/// `candidates` (live leaves, or branches about to be brought back) in the order a policy
/// prefers them, the winner first: greatest `lww_field` first (a missing body or field sorts
/// lowest), ties in CouchDB's winner order.
fn lww_order(policy: &Policy, mut candidates: Vec<Rev>, bodies: &HashMap<Rev, Value>) -> Vec<Rev> {
    // CouchDB's order among live revisions is by (generation, signature), greatest first; a
    // stable sort on the lww value then keeps it among equal values.
    candidates.sort_by(|a, b| b.cmp(a));
    candidates.dedup();
    if let Some(f) = policy.lww_field() {
        let value = |rev: &Rev| bodies.get(rev).map_or(&NULL, |b| lww_value(b, f));
        candidates.sort_by(|a, b| collate(value(b), value(a)));
    }
    candidates
}

/// The fingerprint a tombstone's body names, when a conflict policy wrote it.
pub fn resolution_mark(body: &Value) -> Option<&Value> {
    body.get(RESOLUTION_FIELD)
        .filter(|mark| mark.get("policy").is_some_and(Value::is_string))
}

/// Whether the leaf `rev` is a [`Reinstatement`]: its id is the one [`hash::reinstated_rev`]
/// gives its parent and its body. Needs only what replicates with a leaf (its body and its
/// `_revisions` path), so every replica that holds the leaf sees it the same way.
pub fn is_reinstatement(tree: &RevTree, rev: &Rev, bodies: &HashMap<Rev, Value>) -> bool {
    match (tree.parent(rev), bodies.get(rev)) {
        (Some(parent), Some(body)) => hash::reinstated_rev(parent, body) == *rev,
        _ => false,
    }
}

/// A branch brought back by this replica: `rev`, a live child of the foreign tombstone
/// `tombstone`, holding `body`, the body of `branch` (the leaf the tombstone deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Reinstatement {
    pub branch: Rev,
    pub tombstone: Rev,
    pub rev: Rev,
    pub body: Value,
}

/// What this replica made of a resolution written under other settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It deleted nothing this replica's policy keeps: the branch lives on in another leaf,
    /// this replica's own resolution deleted it too, or its policy prefers another leaf.
    Agreed,
    /// It deleted the leaf this replica's policy keeps; the branch is brought back.
    Reinstated,
    /// This replica cannot judge it: it never held the deleted branch's body (or cannot write
    /// above the highest generation).
    Unjudged,
}

impl Verdict {
    /// A short name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agreed => "agreed",
            Verdict::Reinstated => "reinstated",
            Verdict::Unjudged => "unjudged",
        }
    }
}

/// A tombstone written under another fingerprint that a write brought in.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreign {
    /// The tombstone.
    pub tombstone: Rev,
    /// The fingerprint it was written under.
    pub theirs: Value,
    pub verdict: Verdict,
}

/// What a replica writes after a request added revisions to a document ([`settle`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// Resolutions written under other settings that arrived, and what became of each.
    pub foreign: Vec<Foreign>,
    /// The branch brought back, if a foreign resolution deleted what this replica keeps.
    pub reinstated: Option<Reinstatement>,
    /// This replica's own resolution ([`resolve`]); `Err(PolicyMismatch)` when a branch was
    /// brought back.
    pub resolution: Result<Option<Resolution>, Unresolved>,
}

/// The bodies [`settle`] needs after a request added the revisions `arrived` by replication:
/// [`needed_bodies`], and for each arrived tombstone its body (the fingerprint), its parent's
/// (the branch it deleted) and every live leaf's (to judge between them).
pub fn settle_bodies(policy: &Policy, tree: &RevTree, arrived: &[Rev]) -> Vec<Rev> {
    let mut needed = needed_bodies(policy, tree);
    if *policy == Policy::Manual {
        return needed;
    }
    let mut tombstones = arrived
        .iter()
        .filter(|r| tree.is_leaf(r) && tree.is_deleted_rev(r) == Some(true))
        .peekable();
    if tombstones.peek().is_none() {
        return needed;
    }
    for tombstone in tombstones {
        needed.push(tombstone.clone());
        needed.extend(tree.parent(tombstone).cloned());
    }
    needed.extend(
        tree.leaves()
            .into_iter()
            .filter(|l| !l.deleted)
            .map(|l| l.rev),
    );
    needed.sort();
    needed.dedup();
    needed
}

/// Settles a document after a request added revisions to it: judges the tombstones among
/// `arrived` (the revisions that came by replication) that a policy wrote under another
/// fingerprint, brings back the branch one of them deleted when it is the one this replica's
/// policy keeps, and otherwise resolves the document under this replica's policy. `bodies`
/// holds what [`settle_bodies`] asked for, as far as the replica has them.
///
/// A foreign tombstone is judged only when it arrives, never again afterwards: changing a
/// database's settings does not bring back branches that older resolutions deleted.
pub fn settle(
    policy: &Policy,
    tree: &RevTree,
    bodies: &HashMap<Rev, Value>,
    arrived: &[Rev],
) -> Settlement {
    let Some(ours) = policy.fingerprint() else {
        return Settlement {
            foreign: Vec::new(),
            reinstated: None,
            resolution: Ok(None),
        };
    };
    let own_tombstone = Value::Object(policy.tombstone_body());
    let mut foreign = Vec::new();
    // (branch deleted, its foreign tombstone), for the branches this replica may want back.
    let mut deleted: Vec<(Rev, Rev)> = Vec::new();
    let mut arrived: Vec<&Rev> = arrived.iter().collect();
    arrived.sort();
    arrived.dedup();
    for tombstone in arrived {
        if !tree.is_leaf(tombstone) || tree.is_deleted_rev(tombstone) != Some(true) {
            continue;
        }
        let Some(theirs) = bodies.get(tombstone).and_then(resolution_mark) else {
            continue;
        };
        if *theirs == ours {
            continue;
        }
        let mut judged = Foreign {
            tombstone: tombstone.clone(),
            theirs: theirs.clone(),
            verdict: Verdict::Agreed,
        };
        match tree.parent(tombstone) {
            None => judged.verdict = Verdict::Unjudged,
            Some(branch) => {
                let lives_on = tree
                    .latest(branch)
                    .iter()
                    .any(|leaf| tree.is_deleted_rev(leaf) == Some(false));
                let deleted_here_too =
                    tree.contains(&hash::next_rev(Some(branch), true, &own_tombstone));
                if lives_on || deleted_here_too {
                    judged.verdict = Verdict::Agreed;
                } else if !bodies.contains_key(branch) || tombstone.generation >= MAX_GENERATION {
                    judged.verdict = Verdict::Unjudged;
                } else {
                    deleted.push((branch.clone(), tombstone.clone()));
                }
            }
        }
        foreign.push(judged);
    }
    let mut reinstated = None;
    if !deleted.is_empty() {
        let mut candidates: Vec<Rev> = tree
            .leaves()
            .into_iter()
            .filter(|l| !l.deleted)
            .map(|l| l.rev)
            .collect();
        candidates.extend(deleted.iter().map(|(branch, _)| branch.clone()));
        let winner = lww_order(policy, candidates, bodies).swap_remove(0);
        // Two foreign tombstones of one branch (from two other settings): the greater one is
        // brought back, so every replica picks the same.
        if let Some((branch, tombstone)) = deleted
            .iter()
            .filter(|(branch, _)| *branch == winner)
            .max_by(|a, b| a.1.cmp(&b.1))
        {
            let body = bodies[branch].clone();
            reinstated = Some(Reinstatement {
                branch: branch.clone(),
                tombstone: tombstone.clone(),
                rev: hash::reinstated_rev(tombstone, &body),
                body,
            });
            for judged in &mut foreign {
                if tree.parent(&judged.tombstone) == Some(branch) {
                    judged.verdict = Verdict::Reinstated;
                }
            }
        }
    }
    let resolution = match reinstated {
        Some(_) => Err(Unresolved::PolicyMismatch),
        None => resolve(policy, tree, bodies),
    };
    Settlement {
        foreign,
        reinstated,
        resolution,
    }
}

/// Why a document with more than one live leaf is still conflicted, as `_conflicts` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A live leaf brings back a branch a resolution under other settings deleted.
    PolicyMismatch,
    /// The database's policy is `manual`: a person resolves.
    Manual,
    /// `merge` lacks a common ancestor's body here; a replica that holds it resolves.
    MissingBase,
    /// Resolving would write above the highest generation.
    GenerationLimit,
    /// The policy resolves it at the document's next write (it was set after the conflict
    /// arose).
    Pending,
}

impl Standing {
    /// A short name, for the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::PolicyMismatch => "policy_mismatch",
            Standing::Manual => "manual",
            Standing::MissingBase => "missing_base",
            Standing::GenerationLimit => "generation_limit",
            Standing::Pending => "pending",
        }
    }
}

/// The bodies [`standing`] needs: every live leaf's, and for `merge` their common ancestors'.
pub fn standing_bodies(policy: &Policy, tree: &RevTree) -> Vec<Rev> {
    let judged = match policy {
        Policy::Manual => &Policy::Lww { field: None },
        other => other,
    };
    needed_bodies(judged, tree)
}

/// Why the document is conflicted here (see [`Standing`]); `bodies` holds what
/// [`standing_bodies`] asked for.
pub fn standing(policy: &Policy, tree: &RevTree, bodies: &HashMap<Rev, Value>) -> Standing {
    let disputed = tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .any(|l| is_reinstatement(tree, &l.rev, bodies));
    if disputed {
        return Standing::PolicyMismatch;
    }
    if *policy == Policy::Manual {
        return Standing::Manual;
    }
    match resolve(policy, tree, bodies) {
        Err(Unresolved::PolicyMismatch) => Standing::PolicyMismatch,
        Err(Unresolved::MissingBase) => Standing::MissingBase,
        Ok(Some(resolution))
            if resolution
                .superseded()
                .iter()
                .any(|r| r.generation >= MAX_GENERATION) =>
        {
            Standing::GenerationLimit
        }
        Ok(_) => Standing::Pending,
    }
}

/// Whether `rev`'s known history goes back to its first generation (nothing stemmed).
fn reaches_generation_one(tree: &RevTree, rev: &Rev) -> bool {
    tree.ancestry(rev).last().is_some_and(|r| r.generation == 1)
}

static NULL: Value = Value::Null;

fn lww_value<'a>(body: &'a Value, field: &str) -> &'a Value {
    let mut cursor = body;
    for part in field.split('.') {
        match cursor.get(part) {
            Some(v) => cursor = v,
            None => return &NULL,
        }
    }
    cursor
}

fn nearest_common_ancestor(tree: &RevTree, a: &Rev, b: &Rev) -> Option<Rev> {
    let theirs = tree.ancestry(b);
    tree.ancestry(a).into_iter().find(|r| theirs.contains(r))
}

/// Three-way merge of `theirs` into `ours` against `base`: what only `theirs` changed is taken,
/// everything else stays as in `ours`. Objects merge field by field, recursively, except each
/// attachment under the document's `_attachments`, which is one value.
pub fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Value {
    merge_value(base, ours, theirs, Level::Document)
}

/// Where in a document a merge is.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// The document's own fields.
    Document,
    /// The members of the document's `_attachments`: each is merged as a whole.
    Attachments,
    /// Anywhere else.
    Nested,
}

fn merge_value(base: &Value, ours: &Value, theirs: &Value, level: Level) -> Value {
    match (base, ours, theirs) {
        (Value::Object(b), Value::Object(o), Value::Object(t)) => {
            let mut out = o.clone();
            let mut keys: Vec<&String> = b.keys().chain(t.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (bv, ov, tv) = (b.get(key), o.get(key), t.get(key));
                if tv == bv {
                    continue;
                }
                if ov == bv {
                    // Changed (or removed) only on their side.
                    match tv {
                        Some(v) => {
                            out.insert(key.clone(), v.clone());
                        }
                        None => {
                            out.shift_remove(key);
                        }
                    }
                } else if let (Some(bv), Some(ov), Some(tv)) = (bv, ov, tv)
                    && bv.is_object()
                    && ov.is_object()
                    && tv.is_object()
                    && level != Level::Attachments
                {
                    let inner = if level == Level::Document && key == "_attachments" {
                        Level::Attachments
                    } else {
                        Level::Nested
                    };
                    out.insert(key.clone(), merge_value(bv, ov, tv, inner));
                }
                // Changed on both sides: ours (the lww winner) stays.
            }
            Value::Object(out)
        }
        _ => {
            if theirs != base && ours == base {
                theirs.clone()
            } else {
                ours.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests;
