use proptest::prelude::*;

use super::*;

fn rev(s: &str) -> Rev {
    s.parse().expect("test rev")
}

fn path(revs: &[&str]) -> Vec<Rev> {
    revs.iter().map(|r| rev(r)).collect()
}

#[test]
fn winner_prefers_live_then_generation_then_signature() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["2-b", "1-a"]), false).unwrap();
    t.merge_path(&path(&["2-c", "1-a"]), false).unwrap();
    t.merge_path(&path(&["3-a", "2-a", "1-a"]), true).unwrap();
    assert_eq!(t.winner().unwrap().rev, rev("2-c"));
    assert_eq!(t.conflicts(), path(&["2-b"]));
    assert_eq!(t.deleted_conflicts(), path(&["3-a"]));
    assert!(!t.is_deleted());
}

#[test]
fn all_leaves_deleted_means_deleted_document() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["2-b", "1-a"]), true).unwrap();
    t.merge_path(&path(&["3-c", "2-c", "1-a"]), true).unwrap();
    assert!(t.is_deleted());
    assert_eq!(t.winner().unwrap().rev, rev("3-c"));
}

#[test]
fn edits_must_extend_a_leaf() {
    let mut t = RevTree::new();
    t.add_edit(None, rev("1-a"), false).unwrap();
    t.add_edit(Some(&rev("1-a")), rev("2-a"), false).unwrap();
    assert_eq!(
        t.add_edit(Some(&rev("1-a")), rev("2-b"), false),
        Err(MergeError::Conflict)
    );
    assert_eq!(
        t.add_edit(None, rev("1-z"), false),
        Err(MergeError::Conflict)
    );
    assert_eq!(
        t.add_edit(Some(&rev("9-x")), rev("10-x"), false),
        Err(MergeError::Conflict)
    );
    assert_eq!(t.ancestry(&rev("2-a")), path(&["2-a", "1-a"]));
}

#[test]
fn merge_reports_only_new_revisions() {
    let mut t = RevTree::new();
    assert_eq!(
        t.merge_path(&path(&["2-a", "1-a"]), false).unwrap(),
        path(&["1-a", "2-a"])
    );
    assert_eq!(
        t.merge_path(&path(&["2-a", "1-a"]), false).unwrap(),
        Vec::<Rev>::new()
    );
    assert_eq!(
        t.merge_path(&path(&["3-b", "2-a"]), false).unwrap(),
        path(&["3-b"])
    );
    assert_eq!(
        t.merge_path(&path(&["3-b", "1-a"]), false),
        Err(MergeError::InvalidPath)
    );
    assert_eq!(t.merge_path(&[], false), Err(MergeError::InvalidPath));
}

#[test]
fn stemmed_paths_align_on_generation() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["5-e", "4-d"]), false).unwrap();
    // A later path that overlaps at 5-e joins the same branch.
    t.merge_path(&path(&["6-f", "5-e", "4-d", "3-c"]), false)
        .unwrap();
    assert_eq!(t.leaves().len(), 1);
    assert_eq!(t.ancestry(&rev("6-f")), path(&["6-f", "5-e", "4-d", "3-c"]));
}

#[test]
fn stemming_keeps_limit_revisions_per_path() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["4-d", "3-c", "2-b", "1-a"]), false)
        .unwrap();
    t.merge_path(&path(&["2-x", "1-a"]), false).unwrap();
    // As CouchDB does, a revision survives when it is within the limit of any leaf: `1-a` is
    // too far from `4-d` but close enough to `2-x`.
    let removed = t.stem(2);
    assert_eq!(removed, path(&["2-b"]));
    assert_eq!(t.ancestry(&rev("4-d")), path(&["4-d", "3-c"]));
    assert_eq!(t.ancestry(&rev("2-x")), path(&["2-x", "1-a"]));
}

#[test]
fn latest_and_possible_ancestors() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["3-c", "2-b", "1-a"]), false).unwrap();
    t.merge_path(&path(&["2-x", "1-a"]), false).unwrap();
    assert_eq!(t.latest(&rev("1-a")), path(&["3-c", "2-x"]));
    assert_eq!(t.latest(&rev("2-b")), path(&["3-c"]));
    assert_eq!(t.latest(&rev("9-z")), Vec::<Rev>::new());
    assert_eq!(t.possible_ancestors(&rev("4-q")), path(&["2-x", "3-c"]));
}

#[test]
fn stored_form_round_trips() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["3-c", "2-b", "1-a"]), true).unwrap();
    t.merge_path(&path(&["2-x", "1-a"]), false).unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(serde_json::from_str::<RevTree>(&json).unwrap(), t);
}

#[test]
fn purge_removes_a_leaf_and_the_ancestors_only_it_kept() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["3-c", "2-b", "1-a"]), false).unwrap();
    t.merge_path(&path(&["3-x", "2-x", "1-a"]), false).unwrap();
    // Not leaves, or not in the tree: ignored.
    assert_eq!(t.purge(&path(&["2-b", "1-a", "9-z"])), Purged::default());
    let purged = t.purge(&path(&["3-x", "3-x"]));
    assert_eq!(purged.leaves, path(&["3-x"]));
    assert_eq!(purged.removed, path(&["2-x", "3-x"]));
    assert_eq!(t.winner().unwrap().rev, rev("3-c"));
    assert!(!t.is_conflicted());
    assert_eq!(t.len(), 3);
    // The last leaf takes the whole document.
    let purged = t.purge(&path(&["3-c"]));
    assert_eq!(purged.removed, path(&["1-a", "2-b", "3-c"]));
    assert!(t.is_empty());
    assert!(t.winner().is_none());
}

#[test]
fn purging_a_winner_makes_the_next_leaf_win() {
    let mut t = RevTree::new();
    t.merge_path(&path(&["2-b", "1-a"]), false).unwrap();
    t.merge_path(&path(&["2-c", "1-a"]), false).unwrap();
    t.merge_path(&path(&["3-d", "2-d", "1-a"]), true).unwrap();
    assert_eq!(t.winner().unwrap().rev, rev("2-c"));
    t.purge(&path(&["2-c"]));
    assert_eq!(t.winner().unwrap().rev, rev("2-b"));
    t.purge(&path(&["2-b"]));
    // Only a deleted branch is left: the document is deleted.
    assert!(t.is_deleted());
    assert_eq!(t.winner().unwrap().rev, rev("3-d"));
}

/// A random history: a list of paths as peers would send them, each a branch off the growing
/// set of revisions, so that paths overlap, fork and are sometimes deletions.
fn histories() -> impl Strategy<Value = Vec<(Vec<Rev>, bool)>> {
    prop::collection::vec((0usize..64, 1usize..4, any::<bool>(), 0u8..4), 1..12).prop_map(|steps| {
        let mut known: Vec<Vec<Rev>> = Vec::new();
        let mut out = Vec::new();
        for (n, (pick, len, deleted, sig)) in steps.into_iter().enumerate() {
            let mut base = if known.is_empty() || pick % 5 == 0 {
                Vec::new()
            } else {
                known[pick % known.len()].clone()
            };
            for k in 0..len {
                let generation = base.first().map_or(1, |r: &Rev| r.generation + 1);
                base.insert(0, Rev::new(generation, format!("{sig}{n}{k}")));
            }
            known.push(base.clone());
            out.push((base, deleted));
        }
        out
    })
}

/// CouchDB's winner order, written out independently of the tree's leaf index.
fn winner_key(leaf: &Leaf) -> (bool, u64, &str) {
    (!leaf.deleted, leaf.rev.generation, leaf.rev.hash.as_str())
}

/// The leaves found by scanning every node, in winner order: what the tree's index must hold.
fn scanned_leaves(t: &RevTree) -> Vec<Leaf> {
    let parents: std::collections::HashSet<&Rev> =
        t.nodes.values().filter_map(|n| n.parent.as_ref()).collect();
    let mut leaves: Vec<Leaf> = t
        .nodes
        .iter()
        .filter(|(r, _)| !parents.contains(r))
        .map(|(r, n)| Leaf {
            rev: r.clone(),
            deleted: n.deleted,
        })
        .collect();
    leaves.sort_by(|a, b| winner_key(b).cmp(&winner_key(a)));
    leaves
}

fn build(history: &[(Vec<Rev>, bool)]) -> RevTree {
    let mut t = RevTree::new();
    for (p, deleted) in history {
        t.merge_path(p, *deleted).unwrap();
    }
    t
}

proptest! {
    #[test]
    fn merge_is_order_independent(history in histories(), seed in any::<u64>()) {
        let mut shuffled = history.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        // A revision that arrives first as an inner node and later as a deleted leaf keeps the
        // flag of whichever came first; only compare trees whose leaves agree on that.
        let a = build(&history);
        let b = build(&shuffled);
        prop_assert_eq!(a.revs().collect::<Vec<_>>(), b.revs().collect::<Vec<_>>());
        prop_assert_eq!(
            a.leaves().iter().map(|l| l.rev.clone()).collect::<Vec<_>>(),
            b.leaves().iter().map(|l| l.rev.clone()).collect::<Vec<_>>()
        );
        for r in a.revs() {
            prop_assert_eq!(a.ancestry(r), b.ancestry(r));
        }
    }

    #[test]
    fn merge_is_idempotent(history in histories()) {
        let mut t = build(&history);
        let before = t.clone();
        for (p, deleted) in &history {
            prop_assert!(t.merge_path(p, *deleted).unwrap().is_empty());
        }
        prop_assert_eq!(t, before);
    }

    #[test]
    fn winner_is_the_greatest_leaf(history in histories()) {
        let t = build(&history);
        let leaves = t.leaves();
        let winner = t.winner().unwrap();
        prop_assert!(t.is_leaf(&winner.rev));
        for l in &leaves {
            prop_assert!(winner_key(&winner) >= winner_key(l));
        }
        prop_assert_eq!(t.conflicts().len() + t.deleted_conflicts().len() + 1, leaves.len());
    }

    #[test]
    fn stemming_bounds_every_path_and_keeps_leaves(history in histories(), limit in 1usize..5) {
        let full = build(&history);
        let mut t = full.clone();
        let leaves = t.leaves();
        t.stem(limit);
        prop_assert_eq!(t.leaves(), leaves.clone());
        // Every leaf keeps (at least) its newest `limit` ancestors, and every revision kept is
        // within `limit` of some leaf.
        let mut near = std::collections::BTreeSet::new();
        for l in &leaves {
            let before = full.ancestry(&l.rev);
            let after = t.ancestry(&l.rev);
            let kept = before.len().min(limit);
            prop_assert_eq!(&after[..kept.min(after.len())], &before[..kept]);
            near.extend(before.into_iter().take(limit));
        }
        for r in t.revs() {
            prop_assert!(near.contains(r));
        }
        // Stemming twice changes nothing more.
        prop_assert!(t.stem(limit).is_empty());
    }

    #[test]
    fn stored_form_round_trips_any_tree(history in histories()) {
        let t = build(&history);
        let json = serde_json::to_vec(&t).unwrap();
        prop_assert_eq!(serde_json::from_slice::<RevTree>(&json).unwrap(), t);
    }

    #[test]
    fn the_leaf_index_matches_a_scan_of_the_nodes(
        history in histories(),
        limit in 1usize..5,
        edits in prop::collection::vec((0usize..64, any::<bool>()), 0..6),
    ) {
        let mut t = RevTree::new();
        for (p, deleted) in &history {
            t.merge_path(p, *deleted).unwrap();
            prop_assert_eq!(t.leaves(), scanned_leaves(&t));
        }
        for (n, (pick, deleted)) in edits.into_iter().enumerate() {
            let leaves = t.leaves();
            let base = &leaves[pick % leaves.len()].rev;
            let child = Rev::new(base.generation + 1, format!("e{n}"));
            t.add_edit(Some(base), child, deleted).unwrap();
            prop_assert_eq!(t.leaves(), scanned_leaves(&t));
        }
        t.stem(limit);
        prop_assert_eq!(t.leaves(), scanned_leaves(&t));
        for leaf in scanned_leaves(&t) {
            prop_assert!(t.is_leaf(&leaf.rev));
        }
        let json = serde_json::to_vec(&t).unwrap();
        prop_assert_eq!(serde_json::from_slice::<RevTree>(&json).unwrap(), t);
    }

    #[test]
    fn purge_keeps_exactly_the_paths_of_the_other_leaves(
        history in histories(),
        picks in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut t = build(&history);
        let leaves = t.leaves();
        let asked: Vec<Rev> = picks.iter().map(|p| leaves[p % leaves.len()].rev.clone()).collect();
        // What must be left: the path of every leaf not asked for, merged into a fresh tree.
        let mut expected = RevTree::new();
        for leaf in leaves.iter().filter(|l| !asked.contains(&l.rev)) {
            expected.merge_path(&t.ancestry(&leaf.rev), leaf.deleted).unwrap();
        }
        let before = t.len();
        let purged = t.purge(&asked);
        prop_assert_eq!(t.leaves(), scanned_leaves(&t));
        // Interior nodes' deletion flags are history only; the shape and the leaves must match.
        prop_assert_eq!(t.revs().collect::<Vec<_>>(), expected.revs().collect::<Vec<_>>());
        for rev in t.revs() {
            prop_assert_eq!(t.parent(rev), expected.parent(rev));
        }
        prop_assert_eq!(t.leaves(), expected.leaves());
        prop_assert_eq!(before - purged.removed.len(), t.len());
        for rev in &purged.removed {
            prop_assert!(!t.contains(rev));
        }
        // Purging again changes nothing.
        prop_assert_eq!(t.purge(&asked), Purged::default());
    }
}
