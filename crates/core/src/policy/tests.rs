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

fn lww(field: &str) -> Policy {
    Policy::Lww {
        field: Some(field.into()),
    }
}

/// Two branches off `1-a` that `lww` on `a` and `lww` on `b` judge the other way round.
fn disputed_branches() -> (RevTree, HashMap<Rev, Value>) {
    branches(&[
        ("2-b", json!({"a": 2, "b": 1})),
        ("2-c", json!({"a": 1, "b": 2})),
    ])
}

/// Applies what `settle` decided to a replica's tree and bodies.
fn apply_settlement(
    policy: &Policy,
    tree: &mut RevTree,
    bodies: &mut HashMap<Rev, Value>,
    settled: &Settlement,
) {
    if let Some(r) = &settled.reinstated {
        tree.add_edit(Some(&r.tombstone), r.rev.clone(), false)
            .unwrap();
        bodies.insert(r.rev.clone(), r.body.clone());
    }
    if let Ok(Some(res)) = &settled.resolution {
        apply(tree, res);
        if let Some((r, body)) = &res.merged {
            bodies.insert(r.clone(), body.clone());
        }
        for (_, tomb) in &res.tombstones {
            bodies.insert(tomb.clone(), Value::Object(policy.tombstone_body()));
        }
    }
}

fn live(tree: &RevTree) -> Vec<Rev> {
    tree.leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| l.rev)
        .collect()
}

#[test]
fn tombstones_carry_the_settings_they_were_written_under() {
    let (tree, bodies) = disputed_branches();
    let by = |policy: &Policy| resolve(policy, &tree, &bodies).unwrap().unwrap();
    let (a, b) = (by(&lww("a")), by(&lww("b")));
    assert_eq!(
        (a.winner.clone(), b.winner.clone()),
        (rev("2-b"), rev("2-c"))
    );
    // Even where two settings agree on the loser, their tombstones are different revisions.
    let (tree, bodies) = branches(&[("2-b", json!({"a": 2})), ("2-c", json!({"a": 1}))]);
    let merge = Policy::Merge {
        field: Some("a".into()),
    };
    let x = resolve(&lww("a"), &tree, &bodies).unwrap().unwrap();
    let y = resolve(&merge, &tree, &bodies).unwrap().unwrap();
    assert_eq!(x.tombstones[0].0, y.tombstones[0].0);
    assert_ne!(x.tombstones[0].1, y.tombstones[0].1);
    let body = Value::Object(lww("a").tombstone_body());
    assert_eq!(
        resolution_mark(&body),
        Some(&json!({"policy": "lww", "lww_field": "a"}))
    );
    assert_eq!(Policy::Manual.tombstone_body(), Map::new());
    assert_eq!(lww("a").fingerprint(), lww("a").fingerprint());
    assert_ne!(lww("a").fingerprint(), lww("b").fingerprint());
    assert_ne!(
        Policy::Lww { field: None }.fingerprint(),
        Policy::Merge { field: None }.fingerprint()
    );
}

#[test]
fn a_replica_brings_back_the_branch_another_setting_deleted() {
    // Issue 17, defect 10: replicas with different `lww_field`s each tombstoned the other's
    // branch and the document ended deleted on both.
    for concurrent in [false, true] {
        let (mut ours, mut bodies) = disputed_branches();
        let (mut theirs, mut their_bodies) = (ours.clone(), bodies.clone());
        let their_res = resolve(&lww("a"), &theirs, &their_bodies).unwrap().unwrap();
        apply_settlement(
            &lww("a"),
            &mut theirs,
            &mut their_bodies,
            &Settlement {
                foreign: vec![],
                reinstated: None,
                resolution: Ok(Some(their_res.clone())),
            },
        );
        if concurrent {
            // This replica resolved too, its own way, before hearing from the other.
            let settled = settle(&lww("b"), &ours, &bodies, &[]);
            apply_settlement(&lww("b"), &mut ours, &mut bodies, &settled);
            assert_eq!(live(&ours), [rev("2-c")]);
        }
        // The other replica's tombstone of 2-c arrives.
        let (loser, tomb) = their_res.tombstones[0].clone();
        assert_eq!(loser, rev("2-c"));
        ours.merge_path(&theirs.ancestry(&tomb), true).unwrap();
        bodies.insert(tomb.clone(), their_bodies[&tomb].clone());
        let needed = settle_bodies(&lww("b"), &ours, std::slice::from_ref(&tomb));
        assert!(
            needed.contains(&tomb) && needed.contains(&loser),
            "{needed:?}"
        );
        let settled = settle(&lww("b"), &ours, &bodies, std::slice::from_ref(&tomb));
        assert_eq!(
            settled.foreign,
            vec![Foreign {
                tombstone: tomb.clone(),
                theirs: json!({"policy": "lww", "lww_field": "a"}),
                verdict: Verdict::Reinstated,
            }]
        );
        let back = settled.reinstated.clone().unwrap();
        assert_eq!((&back.branch, &back.tombstone), (&loser, &tomb));
        assert_eq!(back.body, bodies[&loser]);
        assert_eq!(settled.resolution, Err(Unresolved::PolicyMismatch));
        apply_settlement(&lww("b"), &mut ours, &mut bodies, &settled);
        assert!(!ours.is_deleted());
        // Resolved concurrently, each side deleted the other's winner: this side brings back
        // its own, and the other side will bring back the other.
        assert_eq!(ours.is_conflicted(), !concurrent);
        // Nobody resolves it any more, whatever their settings: it is left to a person.
        for policy in [lww("a"), lww("b"), Policy::Merge { field: None }] {
            if ours.is_conflicted() {
                assert_eq!(
                    resolve(&policy, &ours, &bodies),
                    Err(Unresolved::PolicyMismatch)
                );
                assert_eq!(standing(&policy, &ours, &bodies), Standing::PolicyMismatch);
            }
        }
    }
}

#[test]
fn a_foreign_resolution_this_replica_agrees_with_is_kept() {
    // `lww` on `a` and `merge` on `a` pick the same winner.
    let (mut tree, mut bodies) = branches(&[("2-b", json!({"a": 2})), ("2-c", json!({"a": 1}))]);
    let theirs = resolve(&lww("a"), &tree, &bodies).unwrap().unwrap();
    let (_, tomb) = theirs.tombstones[0].clone();
    tree.add_edit(Some(&rev("2-c")), tomb.clone(), true)
        .unwrap();
    bodies.insert(tomb.clone(), Value::Object(lww("a").tombstone_body()));
    let merge = Policy::Merge {
        field: Some("a".into()),
    };
    let settled = settle(&merge, &tree, &bodies, std::slice::from_ref(&tomb));
    assert_eq!(settled.foreign[0].verdict, Verdict::Agreed);
    assert_eq!(settled.reinstated, None);
    assert_eq!(settled.resolution, Ok(None));
    // A replica that never held the deleted branch's body cannot judge, and keeps it too.
    bodies.remove(&rev("2-c"));
    let settled = settle(&lww("z"), &tree, &bodies, std::slice::from_ref(&tomb));
    assert_eq!(settled.foreign[0].verdict, Verdict::Unjudged);
    assert_eq!(settled.reinstated, None);
    // Its own settings' tombstones, and `manual`, judge nothing.
    assert!(
        settle(&lww("a"), &tree, &bodies, std::slice::from_ref(&tomb))
            .foreign
            .is_empty()
    );
    assert!(
        settle(&Policy::Manual, &tree, &bodies, &[tomb])
            .foreign
            .is_empty()
    );
}

#[test]
fn standing_says_why_a_conflict_is_left() {
    let (tree, bodies) = disputed_branches();
    assert_eq!(standing(&Policy::Manual, &tree, &bodies), Standing::Manual);
    assert_eq!(standing(&lww("a"), &tree, &bodies), Standing::Pending);
    let merge = Policy::Merge { field: None };
    let mut partial = bodies.clone();
    partial.remove(&rev("1-a"));
    assert_eq!(standing(&merge, &tree, &partial), Standing::MissingBase);
    assert!(standing_bodies(&Policy::Manual, &tree).contains(&rev("2-b")));
}

/// One replica in a simulated exchange: its settings, tree and the bodies it holds.
#[derive(Clone, Debug)]
struct Replica {
    policy: Policy,
    tree: RevTree,
    bodies: HashMap<Rev, Value>,
}

impl Replica {
    /// Settles after `arrived` came in, as the store's writer does.
    fn settle(&mut self, arrived: &[Rev]) -> bool {
        let settled = settle(&self.policy, &self.tree, &self.bodies, arrived);
        let wrote = settled.reinstated.is_some() || matches!(settled.resolution, Ok(Some(_)));
        let policy = self.policy.clone();
        apply_settlement(&policy, &mut self.tree, &mut self.bodies, &settled);
        wrote
    }

    /// Receives what `from` has and this replica lacks, as replication sends it: each leaf with
    /// its path, and the leaf's body only.
    fn pull(&mut self, from: &Replica) -> bool {
        let mut arrived = Vec::new();
        for leaf in from.tree.leaves() {
            if self.tree.contains(&leaf.rev) {
                continue;
            }
            arrived.extend(
                self.tree
                    .merge_path(&from.tree.ancestry(&leaf.rev), leaf.deleted)
                    .unwrap(),
            );
            if let Some(body) = from.bodies.get(&leaf.rev) {
                self.bodies.insert(leaf.rev.clone(), body.clone());
            }
        }
        if arrived.is_empty() {
            return false;
        }
        self.settle(&arrived);
        true
    }
}

/// What replicas must agree on: every revision with its parent, and the leaves with their
/// deletion flags. (A revision that reaches a replica only inside a later leaf's path comes
/// without its own flag, as in CouchDB; only leaves' flags mean anything.)
fn shape(tree: &RevTree) -> (Vec<(Rev, Option<Rev>)>, Vec<crate::Leaf>) {
    (
        tree.revs()
            .map(|r| (r.clone(), tree.parent(r).cloned()))
            .collect(),
        tree.leaves(),
    )
}

fn settings() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(lww("at")),
        Just(lww("v")),
        Just(Policy::Lww { field: None }),
        Just(Policy::Merge {
            field: Some("at".into())
        }),
        Just(Policy::Merge {
            field: Some("v".into())
        }),
    ]
}

/// Replicas (each with settings, and some of the conflicting branches written locally) exchange
/// revisions in the order `schedule` gives, then with every link up until nothing moves.
fn exchange(
    leaves: &[(String, u8, u8)],
    policies: &[Policy],
    holders: &[u8],
    schedule: &[(usize, usize)],
) -> Vec<Replica> {
    let (full, bodies) = build(leaves);
    let mut replicas: Vec<Replica> = policies
        .iter()
        .enumerate()
        .map(|(i, policy)| {
            let mut tree = RevTree::new();
            tree.merge_path(&[rev("1-root")], false).unwrap();
            let mut held = HashMap::from([(rev("1-root"), bodies[&rev("1-root")].clone())]);
            let mut arrived = Vec::new();
            for (j, leaf) in full.leaves().iter().enumerate() {
                // Each branch is written on at least one replica.
                if holders[j % holders.len()] as usize % policies.len() == i
                    || holders[j % holders.len()] & (1 << (i % 8)) != 0
                {
                    arrived.extend(tree.merge_path(&full.ancestry(&leaf.rev), false).unwrap());
                    held.insert(leaf.rev.clone(), bodies[&leaf.rev].clone());
                }
            }
            let mut replica = Replica {
                policy: policy.clone(),
                tree,
                bodies: held,
            };
            replica.settle(&arrived);
            replica
        })
        .collect();
    let n = replicas.len();
    for &(a, b) in schedule {
        let (a, b) = (a % n, b % n);
        if a != b {
            let from = replicas[a].clone();
            replicas[b].pull(&from);
        }
    }
    for round in 0.. {
        assert!(round < 20, "no quiescence");
        let mut moved = false;
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let from = replicas[a].clone();
                    moved |= replicas[b].pull(&from);
                }
            }
        }
        if !moved {
            break;
        }
    }
    replicas
}

fn replica_sets() -> impl Strategy<Value = (Vec<Policy>, Vec<u8>, Vec<(usize, usize)>)> {
    (
        prop::collection::vec(settings(), 2..5),
        prop::collection::vec(any::<u8>(), 1..6),
        prop::collection::vec((0usize..5, 0usize..5), 0..12),
    )
}

proptest! {
    /// Replicas with unequal settings never fight: whatever the order of arrival, every replica
    /// ends with the same tree, and the document never ends deleted, since no client deleted it.
    #[test]
    fn unequal_settings_never_delete_the_document(
        leaves in leaf_sets(),
        (policies, holders, schedule) in replica_sets(),
    ) {
        let replicas = exchange(&leaves, &policies, &holders, &schedule);
        for r in &replicas[1..] {
            prop_assert_eq!(shape(&r.tree), shape(&replicas[0].tree));
        }
        prop_assert!(!replicas[0].tree.is_deleted(), "{:?}", replicas[0].tree.leaves());
        // What is left conflicted is left for a reason every replica sees.
        for r in &replicas {
            if r.tree.is_conflicted() {
                let standing = standing(&r.policy, &r.tree, &r.bodies);
                prop_assert!(
                    matches!(standing, Standing::PolicyMismatch | Standing::MissingBase),
                    "{:?} under {:?}", standing, r.policy
                );
            }
        }
    }

    /// Replicas with equal settings converge as before: the same tree, one live leaf, the same
    /// winner body, and nothing brought back.
    #[test]
    fn equal_settings_converge_without_reinstating(
        leaves in leaf_sets(),
        policy in settings(),
        (policies, holders, schedule) in replica_sets(),
    ) {
        let same = vec![policy; policies.len()];
        let replicas = exchange(&leaves, &same, &holders, &schedule);
        let winner = replicas[0].tree.winner().unwrap();
        for r in &replicas {
            prop_assert_eq!(shape(&r.tree), shape(&replicas[0].tree));
            prop_assert_eq!(r.bodies.get(&winner.rev), replicas[0].bodies.get(&winner.rev));
            prop_assert!(!r.tree.is_conflicted());
            for leaf in r.tree.leaves() {
                prop_assert!(!is_reinstatement(&r.tree, &leaf.rev, &r.bodies));
            }
        }
        prop_assert!(!winner.deleted);
    }
}
