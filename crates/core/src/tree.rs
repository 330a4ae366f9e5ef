//! Revision trees (MVCC): every known revision of a document, its parent, and whether it is a
//! deletion.
//!
//! A tree is a set of nodes keyed by revision id. A node whose parent is unknown is a root: the
//! document's first revision, or the oldest revision kept after stemming (`_revs_limit`), so a
//! tree may be a forest of paths that start above generation 1. Because nodes are keyed by the
//! full revision id, merging a path from a peer aligns on generation for free.
//!
//! The winner is CouchDB's: over all leaves, the greatest by (not deleted, generation, signature);
//! every peer computes the same one from the same tree.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Rev;

/// The longest `_revisions` path accepted in one write.
pub const MAX_PATH_LEN: usize = 10_000;

/// One revision in a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// The revision this one edits; `None` for a root. When set, the parent is in the tree.
    parent: Option<Rev>,
    /// Whether this revision is a deletion (a tombstone). Only meaningful for leaves, but kept
    /// for every node so that history can be shown as it was.
    deleted: bool,
    /// How many revisions edit this one: zero for a leaf. Kept so that "is this a leaf" is a
    /// lookup rather than a scan of the tree.
    children: usize,
}

/// A leaf of a revision tree: a revision nothing edits yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub rev: Rev,
    pub deleted: bool,
}

/// A leaf in CouchDB's winner order: live before deleted, then generation, then signature
/// (the order of `Rev`). The greatest is the winner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LeafKey {
    live: bool,
    rev: Rev,
}

/// What [`RevTree::purge`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// The leaves asked for that were purged, in the order asked.
    pub leaves: Vec<Rev>,
    /// Every revision removed: those leaves and the ancestors only they kept, in tree order.
    pub removed: Vec<Rev>,
}

/// Why an edit or a merge was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The edit's base revision is not a leaf of the tree: somebody edited it first.
    #[error("Document update conflict.")]
    Conflict,
    /// A `_revisions` path whose generations do not step down by one, or that is empty or too
    /// long.
    #[error("invalid revision path")]
    InvalidPath,
}

/// All known revisions of one document.
///
/// Besides the nodes, the tree keeps its leaves in winner order, so that the winner, the leaves
/// and "is this a leaf" cost a lookup instead of a pass over every node: a writer asks them for
/// each revision it adds, and a replicated document may have thousands of conflicting leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevTree {
    nodes: BTreeMap<Rev, Node>,
    /// Exactly the nodes with no children, ordered so that the last is the winner.
    leaves: BTreeSet<LeafKey>,
}

impl RevTree {
    /// An empty tree: a document that does not exist.
    pub fn new() -> RevTree {
        RevTree::default()
    }

    /// Whether the tree has no revision at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many revisions the tree holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds `rev`.
    pub fn contains(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev)
    }

    /// Whether `rev` is in the tree and is a deletion.
    pub fn is_deleted_rev(&self, rev: &Rev) -> Option<bool> {
        self.nodes.get(rev).map(|n| n.deleted)
    }

    /// The parent of `rev`, if both are known.
    pub fn parent(&self, rev: &Rev) -> Option<&Rev> {
        self.nodes.get(rev).and_then(|n| n.parent.as_ref())
    }

    /// Every revision in the tree, in (generation, signature) order.
    pub fn revs(&self) -> impl Iterator<Item = &Rev> {
        self.nodes.keys()
    }

    /// Whether `rev` is in the tree and nothing edits it.
    pub fn is_leaf(&self, rev: &Rev) -> bool {
        self.nodes.get(rev).is_some_and(|n| n.children == 0)
    }

    /// The leaves, winner first, then in CouchDB's winner order.
    pub fn leaves(&self) -> Vec<Leaf> {
        self.leaves
            .iter()
            .rev()
            .map(|k| Leaf {
                rev: k.rev.clone(),
                deleted: !k.live,
            })
            .collect()
    }

    /// CouchDB's winning revision: the greatest leaf by (not deleted, generation, signature).
    pub fn winner(&self) -> Option<Leaf> {
        self.leaves.last().map(|k| Leaf {
            rev: k.rev.clone(),
            deleted: !k.live,
        })
    }

    /// Whether the document has more than one live leaf.
    pub fn is_conflicted(&self) -> bool {
        self.leaves.iter().rev().take(2).filter(|k| k.live).count() > 1
    }

    /// Live leaves other than the winner (`_conflicts`), in winner order.
    pub fn conflicts(&self) -> Vec<Rev> {
        self.leaves()
            .into_iter()
            .skip(1)
            .filter(|l| !l.deleted)
            .map(|l| l.rev)
            .collect()
    }

    /// Deleted leaves other than the winner (`_deleted_conflicts`), in winner order.
    pub fn deleted_conflicts(&self) -> Vec<Rev> {
        self.leaves()
            .into_iter()
            .skip(1)
            .filter(|l| l.deleted)
            .map(|l| l.rev)
            .collect()
    }

    /// `rev` and its known ancestors, newest first (the `_revisions` path).
    pub fn ancestry(&self, rev: &Rev) -> Vec<Rev> {
        self.ancestors(rev).cloned().collect()
    }

    /// `rev` and its known ancestors, newest first, without copying them.
    fn ancestors<'a>(&'a self, rev: &Rev) -> impl Iterator<Item = &'a Rev> + 'a {
        let mut cursor = self.nodes.get_key_value(rev);
        std::iter::from_fn(move || {
            let (r, node) = cursor?;
            cursor = node
                .parent
                .as_ref()
                .and_then(|p| self.nodes.get_key_value(p));
            Some(r)
        })
    }

    /// The leaves that descend from `rev` (itself if it is a leaf), winner order: what
    /// `latest=true` serves for a revision that has since been edited.
    pub fn latest(&self, rev: &Rev) -> Vec<Rev> {
        if !self.contains(rev) {
            return Vec::new();
        }
        self.leaves()
            .into_iter()
            .filter(|leaf| self.ancestors(&leaf.rev).any(|a| a == rev))
            .map(|leaf| leaf.rev)
            .collect()
    }

    /// For `_revs_diff`: the leaves of lower generation than `rev`, which may be its ancestors.
    pub fn possible_ancestors(&self, rev: &Rev) -> Vec<Rev> {
        let mut found: Vec<Rev> = self
            .leaves
            .iter()
            .filter(|k| k.rev.generation < rev.generation)
            .map(|k| k.rev.clone())
            .collect();
        found.sort();
        found
    }

    /// Adds a node that is not in the tree yet. Its parent, when given, is in the tree; nothing
    /// in the tree names the new node as its parent (parents are always known), so it is a leaf.
    fn insert(&mut self, rev: Rev, parent: Option<Rev>, deleted: bool) {
        if let Some(p) = &parent {
            self.adopt(p);
        }
        self.leaves.insert(LeafKey {
            live: !deleted,
            rev: rev.clone(),
        });
        self.nodes.insert(
            rev,
            Node {
                parent,
                deleted,
                children: 0,
            },
        );
    }

    /// Counts one more child of `parent`, which stops being a leaf.
    fn adopt(&mut self, parent: &Rev) {
        if let Some(node) = self.nodes.get_mut(parent) {
            node.children += 1;
            if node.children == 1 {
                self.leaves.remove(&LeafKey {
                    live: !node.deleted,
                    rev: parent.clone(),
                });
            }
        }
    }

    /// Recomputes the child counts and the leaf set from the nodes.
    fn reindex(&mut self) {
        let mut counts: BTreeMap<Rev, usize> = BTreeMap::new();
        for node in self.nodes.values() {
            if let Some(p) = &node.parent {
                *counts.entry(p.clone()).or_default() += 1;
            }
        }
        self.leaves.clear();
        for (rev, node) in self.nodes.iter_mut() {
            node.children = counts.get(rev).copied().unwrap_or(0);
            if node.children == 0 {
                self.leaves.insert(LeafKey {
                    live: !node.deleted,
                    rev: rev.clone(),
                });
            }
        }
    }

    /// Adds an interactive edit: `rev` edits `parent` (or starts the document when `parent` is
    /// `None`). The parent must be a leaf; a new document may only start an empty tree or follow a
    /// deleted winner (CouchDB lets a deleted document be recreated without a rev, and the caller
    /// passes the deleted winner as parent in that case).
    pub fn add_edit(
        &mut self,
        parent: Option<&Rev>,
        rev: Rev,
        deleted: bool,
    ) -> Result<(), MergeError> {
        match parent {
            Some(p) if !self.is_leaf(p) => return Err(MergeError::Conflict),
            None if !self.is_empty() => return Err(MergeError::Conflict),
            _ => {}
        }
        if self.nodes.contains_key(&rev) {
            return Err(MergeError::Conflict);
        }
        self.insert(rev, parent.cloned(), deleted);
        Ok(())
    }

    /// Merges a replicated path (`_revisions`, newest first; the first is the leaf that arrives)
    /// into the tree, as `new_edits=false` does. Returns the revisions that were not there
    /// before, oldest first; an empty result means the tree already had the leaf.
    ///
    /// A node that was a root (its parent stemmed away) gains its parent back when the path
    /// knows it; stemming again trims it.
    pub fn merge_path(&mut self, path: &[Rev], leaf_deleted: bool) -> Result<Vec<Rev>, MergeError> {
        if path.is_empty() || path.len() > MAX_PATH_LEN {
            return Err(MergeError::InvalidPath);
        }
        for pair in path.windows(2) {
            if pair[0].generation != pair[1].generation.saturating_add(1) {
                return Err(MergeError::InvalidPath);
            }
        }
        let mut added = Vec::new();
        // Oldest first, so every parent is in the tree before its child.
        for (i, rev) in path.iter().enumerate().rev() {
            let parent = path.get(i + 1);
            match self.nodes.get_mut(rev) {
                Some(node) => {
                    if node.parent.is_none()
                        && let Some(p) = parent
                    {
                        node.parent = Some(p.clone());
                        self.adopt(p);
                    }
                }
                None => {
                    let deleted = i == 0 && leaf_deleted;
                    self.insert(rev.clone(), parent.cloned(), deleted);
                    added.push(rev.clone());
                }
            }
        }
        Ok(added)
    }

    /// Keeps at most `limit` revisions on every path from a leaf toward its root, as
    /// `_revs_limit` asks. Returns the revisions removed.
    pub fn stem(&mut self, limit: usize) -> Vec<Rev> {
        let limit = limit.max(1);
        let mut keep: BTreeSet<&Rev> = BTreeSet::new();
        for leaf in &self.leaves {
            keep.extend(self.ancestors(&leaf.rev).take(limit));
        }
        if keep.len() == self.nodes.len() {
            return Vec::new();
        }
        let removed = self.nodes_outside(&keep);
        self.remove_nodes(&removed);
        // `removed` is sorted: it was collected from the map's keys.
        for node in self.nodes.values_mut() {
            if node
                .parent
                .as_ref()
                .is_some_and(|p| removed.binary_search(p).is_ok())
            {
                node.parent = None;
            }
        }
        self.reindex();
        removed
    }

    /// Purges leaves, as CouchDB's `_purge` does: each of `revs` that is a leaf goes, with
    /// every ancestor no remaining leaf descends from; revisions that are not leaves (or not in
    /// the tree) are ignored. Returns the leaves purged, each once, in the order asked, and every
    /// revision removed, in tree order. Purging every leaf empties the tree.
    pub fn purge(&mut self, revs: &[Rev]) -> Purged {
        let mut leaves: Vec<Rev> = Vec::new();
        for rev in revs {
            if self.is_leaf(rev) && !leaves.contains(rev) {
                leaves.push(rev.clone());
            }
        }
        if leaves.is_empty() {
            return Purged::default();
        }
        let mut keep: BTreeSet<&Rev> = BTreeSet::new();
        for leaf in self.leaves.iter().filter(|k| !leaves.contains(&k.rev)) {
            keep.extend(self.ancestors(&leaf.rev));
        }
        // Every kept node's ancestors are kept, so no kept node loses its parent.
        let removed = self.nodes_outside(&keep);
        self.remove_nodes(&removed);
        self.reindex();
        Purged { leaves, removed }
    }

    /// The revisions not in `keep`, in tree order.
    fn nodes_outside(&self, keep: &BTreeSet<&Rev>) -> Vec<Rev> {
        self.nodes
            .keys()
            .filter(|r| !keep.contains(*r))
            .cloned()
            .collect()
    }

    /// Removes these nodes; the caller mends parents and reindexes.
    fn remove_nodes(&mut self, revs: &[Rev]) {
        for rev in revs {
            self.nodes.remove(rev);
        }
    }

    /// Whether the document's winner is a deletion (or the tree is empty).
    pub fn is_deleted(&self) -> bool {
        self.leaves.last().is_none_or(|k| !k.live)
    }
}

/// The stored form of a tree: one entry per node, `[rev, parent index or -1, deleted]`, parents
/// referred to by their position so a long history stays compact.
#[derive(Serialize, Deserialize)]
struct StoredNode(#[serde(with = "stored_rev")] Rev, i64, u8);

/// A stored tree is read with [`Rev::parse_stored`], so no tree the store ever wrote fails to
/// read back.
mod stored_rev {
    use crate::Rev;

    pub fn serialize<S: serde::Serializer>(rev: &Rev, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(rev)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Rev, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Rev::parse_stored(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for RevTree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let index: BTreeMap<&Rev, i64> = self
            .nodes
            .keys()
            .enumerate()
            .map(|(i, r)| (r, i as i64))
            .collect();
        let stored: Vec<StoredNode> = self
            .nodes
            .iter()
            .map(|(rev, node)| {
                let parent = node
                    .parent
                    .as_ref()
                    .and_then(|p| index.get(p))
                    .copied()
                    .unwrap_or(-1);
                StoredNode(rev.clone(), parent, node.deleted as u8)
            })
            .collect();
        stored.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RevTree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RevTree, D::Error> {
        let stored = Vec::<StoredNode>::deserialize(d)?;
        let revs: Vec<Rev> = stored.iter().map(|n| n.0.clone()).collect();
        let mut nodes = BTreeMap::new();
        for StoredNode(rev, parent, deleted) in stored {
            let parent = match parent {
                -1 => None,
                i => Some(
                    revs.get(usize::try_from(i).map_err(serde::de::Error::custom)?)
                        .cloned()
                        .ok_or_else(|| serde::de::Error::custom("parent index out of range"))?,
                ),
            };
            nodes.insert(
                rev,
                Node {
                    parent,
                    deleted: deleted != 0,
                    children: 0,
                },
            );
        }
        let mut tree = RevTree {
            nodes,
            leaves: BTreeSet::new(),
        };
        tree.reindex();
        Ok(tree)
    }
}

#[cfg(test)]
mod tests;
