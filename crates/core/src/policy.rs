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
//!   nearest common ancestor whose body is known. Object fields changed on one side only are
//!   taken from that side (recursively); a field changed on both sides keeps the `lww` winner's
//!   value. The result is written as a child of the winner, and the other leaves get tombstones.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::collate::collate;
use crate::{Rev, RevTree, hash};

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

/// Resolves the document's live conflicts under `policy`, or `None` when there is nothing to do
/// (one live leaf, or `manual`). `bodies` holds what [`needed_bodies`] asked for; a missing body
/// counts as an empty object.
pub fn resolve(
    policy: &Policy,
    tree: &RevTree,
    bodies: &HashMap<Rev, Value>,
) -> Option<Resolution> {
    if *policy == Policy::Manual {
        return None;
    }
    let live: Vec<Rev> = tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect();
    if live.len() < 2 {
        return None;
    }
    let empty = Value::Object(Map::new());
    let body = |rev: &Rev| bodies.get(rev).unwrap_or(&empty);
    // `leaves()` is in CouchDB's winner order, so a stable sort on the lww value keeps that order
    // among equal values: ties go to CouchDB's winner.
    let mut ordered = live.clone();
    let field = policy.lww_field();
    ordered.sort_by(|a, b| match field {
        Some(f) => collate(lww_value(body(b), f), lww_value(body(a), f)),
        None => Ordering::Equal,
    });
    let winner = ordered[0].clone();
    let losers = &ordered[1..];

    let merged = match policy {
        Policy::Merge { .. } => {
            let mut result = body(&winner).clone();
            for loser in losers {
                let base = nearest_common_ancestor(tree, &winner, loser).map(|r| body(&r).clone());
                let base = base.unwrap_or_else(|| empty.clone());
                result = merge3(&base, &result, body(loser));
            }
            (result != *body(&winner)).then(|| {
                let rev = hash::next_rev(Some(&winner), false, &result);
                (rev, result)
            })
        }
        _ => None,
    };
    let tombstones = losers
        .iter()
        .map(|loser| (loser.clone(), hash::next_rev(Some(loser), true, &empty)))
        .collect();
    Some(Resolution {
        winner,
        merged,
        tombstones,
    })
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
/// everything else stays as in `ours`. Objects merge field by field, recursively.
pub fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Value {
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
                {
                    out.insert(key.clone(), merge3(bv, ov, tv));
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
