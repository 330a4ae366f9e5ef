use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn rev(s: &str) -> Rev {
    s.parse().unwrap()
}

/// A tree of `1-a` with the given children (each `2-x` with a body).
fn branches(children: &[(&str, Value)]) -> (RevTree, HashMap<Rev, Value>) {
    let mut tree = RevTree::new();
    let mut bodies = HashMap::new();
    tree.merge_path(&[rev("1-a")], false).unwrap();
    bodies.insert(
        rev("1-a"),
        json!({"title": "t", "n": 1, "nested": {"x": 1, "y": 1}}),
    );
    for (r, body) in children {
        tree.merge_path(&[rev(r), rev("1-a")], false).unwrap();
        bodies.insert(rev(r), body.clone());
    }
    (tree, bodies)
}

fn apply(tree: &mut RevTree, res: &Resolution) {
    if let Some((r, _)) = &res.merged {
        tree.add_edit(Some(&res.winner), r.clone(), false).unwrap();
    }
    for (loser, tomb) in &res.tombstones {
        tree.add_edit(Some(loser), tomb.clone(), true).unwrap();
    }
}

#[test]
fn manual_and_single_leaves_resolve_nothing() {
    let (tree, bodies) = branches(&[("2-b", json!({})), ("2-c", json!({}))]);
    assert_eq!(resolve(&Policy::Manual, &tree, &bodies), Ok(None));
    let (tree, bodies) = branches(&[("2-b", json!({}))]);
    assert_eq!(
        resolve(&Policy::Lww { field: None }, &tree, &bodies),
        Ok(None)
    );
}

#[test]
fn lww_takes_the_greatest_timestamp_then_couchdb_order() {
    let lww = Policy::Lww {
        field: Some("updated_at".into()),
    };
    let (tree, bodies) = branches(&[
        ("2-b", json!({"updated_at": "2026-01-02"})),
        ("2-c", json!({"updated_at": "2026-01-01"})),
    ]);
    let res = resolve(&lww, &tree, &bodies).unwrap().unwrap();
    assert_eq!(res.winner, rev("2-b"));
    assert_eq!(res.tombstones.len(), 1);
    assert_eq!(res.tombstones[0].0, rev("2-c"));
    assert!(res.merged.is_none());

    // Equal (or missing) timestamps fall back to CouchDB's winner: the greater hash.
    let (tree, bodies) = branches(&[("2-b", json!({})), ("2-c", json!({}))]);
    assert_eq!(
        resolve(&lww, &tree, &bodies).unwrap().unwrap().winner,
        rev("2-c")
    );
}

#[test]
fn merge_combines_fields_changed_on_one_side() {
    let merge = Policy::Merge {
        field: Some("at".into()),
    };
    let (tree, bodies) = branches(&[
        (
            "2-b",
            json!({"title": "mine", "n": 1, "nested": {"x": 2, "y": 1}, "at": 2}),
        ),
        (
            "2-c",
            json!({"title": "theirs", "n": 5, "nested": {"x": 1, "y": 3}, "at": 1, "new": true}),
        ),
    ]);
    let res = resolve(&merge, &tree, &bodies).unwrap().unwrap();
    assert_eq!(res.winner, rev("2-b"));
    let (merged_rev, body) = res.merged.clone().unwrap();
    // title changed on both sides: the lww winner's value stays.
    assert_eq!(
        body,
        json!({"title": "mine", "n": 5, "nested": {"x": 2, "y": 3}, "at": 2, "new": true})
    );
    assert_eq!(merged_rev.generation, 3);
    assert_eq!(res.superseded(), vec![rev("2-b"), rev("2-c")]);
}

#[test]
fn merge_takes_each_attachment_whole_from_one_side() {
    // Issue 14, defect 8: field-by-field merging inside `_attachments` paired one side's digest
    // with the other side's length.
    let base = json!({"_attachments": {
        "a.txt": {"digest": "md5-base", "length": 1, "revpos": 1, "stub": true},
        "b.txt": {"digest": "md5-b", "length": 4, "revpos": 1, "stub": true}}});
    let ours = json!({"_attachments": {
        "a.txt": {"digest": "md5-ours", "length": 1, "revpos": 2, "stub": true},
        "b.txt": {"digest": "md5-b", "length": 4, "revpos": 1, "stub": true}}});
    let theirs = json!({"_attachments": {
        "a.txt": {"digest": "md5-theirs", "length": 9, "revpos": 2, "stub": true},
        "b.txt": {"digest": "md5-b2", "length": 5, "revpos": 2, "stub": true}}});
    let merged = merge3(&base, &ours, &theirs);
    // Changed on both sides: ours, whole. Changed on their side only: theirs, whole.
    assert_eq!(
        merged["_attachments"]["a.txt"],
        ours["_attachments"]["a.txt"]
    );
    assert_eq!(
        merged["_attachments"]["b.txt"],
        theirs["_attachments"]["b.txt"]
    );
    // Objects elsewhere still merge field by field.
    let merged = merge3(
        &json!({"meta": {"x": {"p": 1, "q": 1}}}),
        &json!({"meta": {"x": {"p": 2, "q": 1}}}),
        &json!({"meta": {"x": {"p": 1, "q": 2}}}),
    );
    assert_eq!(merged, json!({"meta": {"x": {"p": 2, "q": 2}}}));
}

#[test]
fn merge_without_the_base_body_leaves_the_conflict() {
    // Issue 14, defect 9: a replica that never held the base used `{}` and wrote a different
    // resolution from the replicas that did.
    let merge = Policy::Merge {
        field: Some("at".into()),
    };
    let (tree, mut bodies) = branches(&[
        ("2-b", json!({"title": "t", "n": 2, "at": 2})),
        ("2-c", json!({"title": "u", "n": 1, "at": 1})),
    ]);
    assert!(resolve(&merge, &tree, &bodies).unwrap().is_some());
    bodies.remove(&rev("1-a"));
    assert_eq!(
        resolve(&merge, &tree, &bodies),
        Err(Unresolved::MissingBase)
    );
    // `lww` needs no base.
    let lww = Policy::Lww {
        field: Some("at".into()),
    };
    assert!(resolve(&lww, &tree, &bodies).unwrap().is_some());
    // Independent creations (no common ancestor, both from generation 1) merge against `{}`.
    let mut tree = RevTree::new();
    tree.merge_path(&[rev("1-x")], false).unwrap();
    tree.merge_path(&[rev("1-y")], false).unwrap();
    let bodies: HashMap<Rev, Value> = [
        (rev("1-x"), json!({"a": 1, "at": 1})),
        (rev("1-y"), json!({"b": 2, "at": 2})),
    ]
    .into();
    let res = resolve(&merge, &tree, &bodies).unwrap().unwrap();
    assert_eq!(res.merged.unwrap().1, json!({"b": 2, "at": 2, "a": 1}));
    // A history cut by stemming is not an independent creation.
    let mut tree = RevTree::new();
    tree.merge_path(&[rev("5-x"), rev("4-p")], false).unwrap();
    tree.merge_path(&[rev("5-y"), rev("4-q")], false).unwrap();
    let bodies: HashMap<Rev, Value> = [
        (rev("5-x"), json!({"at": 1})),
        (rev("5-y"), json!({"at": 2})),
    ]
    .into();
    assert_eq!(
        resolve(&merge, &tree, &bodies),
        Err(Unresolved::MissingBase)
    );
}

#[test]
fn merge3_removes_fields_removed_on_one_side() {
    let base = json!({"a": 1, "b": 2});
    assert_eq!(
        merge3(&base, &json!({"a": 1, "b": 3}), &json!({"b": 2})),
        json!({"b": 3})
    );
    assert_eq!(merge3(&json!(1), &json!(1), &json!(2)), json!(2));
    assert_eq!(merge3(&json!(1), &json!(3), &json!(2)), json!(3));
}

/// Leaves as (hash, timestamp, value) under one root; bodies built from them.
fn leaf_sets() -> impl Strategy<Value = Vec<(String, u8, u8)>> {
    // Distinct hashes: one revision id has one body.
    prop::collection::btree_map("[a-f]{1,3}", (0u8..4, 0u8..4), 2..6)
        .prop_map(|m| m.into_iter().map(|(h, (at, v))| (h, at, v)).collect())
}

fn build(leaves: &[(String, u8, u8)]) -> (RevTree, HashMap<Rev, Value>) {
    let mut tree = RevTree::new();
    let mut bodies = HashMap::new();
    tree.merge_path(&[rev("1-root")], false).unwrap();
    bodies.insert(rev("1-root"), json!({"v": 0, "w": 0, "at": 0}));
    for (hash, at, v) in leaves {
        let r = rev(&format!("2-{hash}"));
        tree.merge_path(&[r.clone(), rev("1-root")], false).unwrap();
        bodies.insert(r, json!({"v": v, "w": (*v as u32) * 2, "at": at}));
    }
    (tree, bodies)
}

fn policies() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Lww {
            field: Some("at".into())
        }),
        Just(Policy::Lww { field: None }),
        Just(Policy::Merge {
            field: Some("at".into())
        }),
    ]
}

proptest! {
    #[test]
    fn resolution_is_order_independent_and_deterministic(leaves in leaf_sets(), policy in policies()) {
        let (tree, bodies) = build(&leaves);
        let mut reversed = leaves.clone();
        reversed.reverse();
        let (tree2, bodies2) = build(&reversed);
        prop_assert_eq!(&tree, &tree2);
        prop_assert_eq!(resolve(&policy, &tree, &bodies), resolve(&policy, &tree2, &bodies2));
    }

    #[test]
    fn resolution_leaves_one_live_leaf_and_is_idempotent(leaves in leaf_sets(), policy in policies()) {
        let (mut tree, mut bodies) = build(&leaves);
        if let Ok(Some(res)) = resolve(&policy, &tree, &bodies) {
            apply(&mut tree, &res);
            if let Some((r, body)) = &res.merged {
                bodies.insert(r.clone(), body.clone());
            }
            let live = tree.leaves().into_iter().filter(|l| !l.deleted).count();
            prop_assert_eq!(live, 1);
            prop_assert_eq!(resolve(&policy, &tree, &bodies), Ok(None));
        }
    }

    /// Replicas that hold different subsets of the bodies never write different resolutions:
    /// each either writes the one every full replica writes, or writes nothing.
    #[test]
    fn missing_bodies_never_change_a_resolution(
        leaves in leaf_sets(),
        policy in policies(),
        keep_base in any::<bool>(),
    ) {
        let (tree, bodies) = build(&leaves);
        let full = resolve(&policy, &tree, &bodies);
        let mut partial = bodies.clone();
        if !keep_base {
            partial.remove(&rev("1-root"));
        }
        match resolve(&policy, &tree, &partial) {
            Ok(res) => prop_assert_eq!(Ok(res), full),
            Err(why) => {
                prop_assert_eq!(why, Unresolved::MissingBase);
                let is_merge = matches!(policy, Policy::Merge { .. });
                prop_assert!(is_merge);
            }
        }
    }

    #[test]
    fn replicas_resolving_the_same_tree_write_the_same_revisions(leaves in leaf_sets(), policy in policies()) {
        // Two replicas resolve independently, then exchange what they wrote: the trees are equal.
        let (mut a, bodies) = build(&leaves);
        let mut b = a.clone();
        let ra = resolve(&policy, &a, &bodies);
        let rb = resolve(&policy, &b, &bodies);
        if let (Ok(Some(ra)), Ok(Some(rb))) = (&ra, &rb) {
            apply(&mut a, ra);
            apply(&mut b, rb);
        }
        prop_assert_eq!(a, b);
    }
}
