//! Model-based test: random sequences of HTTP operations against Outpost (the router over
//! SQLite in a temporary directory) and against a small in-memory model of CouchDB's semantics
//! (revision trees, the winner rule, counts, the changes feed), compared after every step.
//! proptest shrinks a failing sequence and prints it.
//!
//! Revision hashes are Outpost's own (any deterministic hash will do, see `core::hash`), so the
//! model takes the rev of each accepted edit from the answer and checks everything else: the
//! status, the generation, where the revision sits in the tree, and what every read shows.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::json;

use crate::support::{TestServer, seq_n};

const IDS: &[&str] = &["a", "b", "c"];

/// Which revision an edit names as its base, resolved against the model when it runs.
#[derive(Debug, Clone)]
enum Base {
    None,
    Winner,
    /// The n-th leaf (modulo their number), deleted ones included.
    Leaf(usize),
    /// The n-th revision of the tree (modulo its size), leaves or not.
    Known(usize),
    /// A revision the document never had.
    Bogus,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        doc: usize,
        base: Base,
        v: u8,
    },
    Delete {
        doc: usize,
        base: Base,
    },
    /// `_bulk_docs` with `new_edits=false`: a full path of `choices.len()` revisions, each
    /// revision's id spelling out the choices that lead to it, so paths share their prefixes.
    Replicate {
        doc: usize,
        choices: Vec<u8>,
        deleted: bool,
        v: u8,
    },
    PutLocal {
        v: u8,
        stale: bool,
    },
}

fn base() -> impl Strategy<Value = Base> {
    prop_oneof![
        1 => Just(Base::None),
        3 => Just(Base::Winner),
        2 => any::<usize>().prop_map(Base::Leaf),
        1 => any::<usize>().prop_map(Base::Known),
        1 => Just(Base::Bogus),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let doc = 0..IDS.len();
    prop_oneof![
        4 => (doc.clone(), base(), any::<u8>()).prop_map(|(doc, base, v)| Op::Put { doc, base, v }),
        2 => (doc.clone(), base()).prop_map(|(doc, base)| Op::Delete { doc, base }),
        3 => (doc, prop::collection::vec(0u8..3, 1..5), any::<bool>(), any::<u8>())
            .prop_map(|(doc, choices, deleted, v)| Op::Replicate { doc, choices, deleted, v }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(v, stale)| Op::PutLocal { v, stale }),
    ]
}

#[derive(Debug, Clone)]
struct Node {
    parent: Option<String>,
    generation: u64,
    hash: String,
    deleted: bool,
    /// `v` of the body, for revisions that were written with one.
    v: Option<u8>,
}

#[derive(Debug, Default)]
struct Doc {
    nodes: BTreeMap<String, Node>,
    /// The database sequence of the document's latest change.
    seq: u64,
}

impl Doc {
    fn leaves(&self) -> Vec<&Node> {
        let parents: BTreeSet<&str> = self
            .nodes
            .values()
            .filter_map(|n| n.parent.as_deref())
            .collect();
        self.nodes
            .iter()
            .filter(|(rev, _)| !parents.contains(rev.as_str()))
            .map(|(_, n)| n)
            .collect()
    }

    /// CouchDB's winner: the greatest leaf by (not deleted, generation, hash).
    fn winner(&self) -> &Node {
        self.leaves()
            .into_iter()
            .max_by(|a, b| {
                (!a.deleted, a.generation, &a.hash).cmp(&(!b.deleted, b.generation, &b.hash))
            })
            .expect("a document has a leaf")
    }

    fn ancestry(&self, rev: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = Some(rev.to_owned());
        while let Some(r) = at {
            let node = &self.nodes[&r];
            out.push(node.hash.clone());
            at = node.parent.clone();
        }
        out
    }
}

fn rev(node: &Node) -> String {
    format!("{}-{}", node.generation, node.hash)
}

#[derive(Debug, Default)]
struct Model {
    docs: BTreeMap<String, Doc>,
    seq: u64,
    /// The `_local` document's revision number and `v`.
    local: Option<(u64, u8)>,
}

impl Model {
    fn resolve(&self, id: &str, base: &Base) -> Option<String> {
        let doc = self.docs.get(id);
        match (base, doc) {
            (Base::None, _) => None,
            (Base::Bogus, _) | (_, None) => Some("1-0000bogus".to_owned()),
            (Base::Winner, Some(d)) => Some(rev(d.winner())),
            (Base::Leaf(n), Some(d)) => {
                let leaves = d.leaves();
                Some(rev(leaves[n % leaves.len()]))
            }
            (Base::Known(n), Some(d)) => d.nodes.keys().nth(n % d.nodes.len()).cloned(),
        }
    }

    /// The parent an edit on `base` gets, or `None` when CouchDB answers 409: a base must be a
    /// leaf (deleted or not); without a base, the document must not exist or be deleted, and
    /// the edit then extends the deleted winner.
    fn edit_parent(&self, id: &str, base: Option<&str>) -> Option<Option<String>> {
        let doc = self.docs.get(id);
        match (base, doc) {
            (None, None) => Some(None),
            (None, Some(d)) => {
                let winner = d.winner();
                winner.deleted.then(|| Some(rev(winner)))
            }
            (Some(_), None) => None,
            (Some(b), Some(d)) => d
                .leaves()
                .iter()
                .any(|l| rev(l) == b)
                .then(|| Some(b.to_owned())),
        }
    }

    fn record_edit(
        &mut self,
        id: &str,
        parent: Option<String>,
        new_rev: &str,
        deleted: bool,
        v: Option<u8>,
    ) -> Result<(), TestCaseError> {
        let (generation, hash) = new_rev.split_once('-').unwrap();
        let generation: u64 = generation.parse().unwrap();
        let expected_generation = parent.as_deref().map_or(1, |p| {
            p.split_once('-').unwrap().0.parse::<u64>().unwrap() + 1
        });
        prop_assert_eq!(
            generation,
            expected_generation,
            "rev {} on {:?}",
            new_rev,
            parent
        );
        self.seq += 1;
        let doc = self.docs.entry(id.to_owned()).or_default();
        prop_assert!(
            !doc.nodes.contains_key(new_rev),
            "{} already existed",
            new_rev
        );
        doc.nodes.insert(
            new_rev.to_owned(),
            Node {
                parent,
                generation,
                hash: hash.to_owned(),
                deleted,
                v,
            },
        );
        doc.seq = self.seq;
        Ok(())
    }
}

fn path_hashes(choices: &[u8]) -> Vec<String> {
    (1..=choices.len())
        .map(|k| {
            let digits: String = choices[..k].iter().map(|c| char::from(b'0' + c)).collect();
            format!("t{digits}")
        })
        .collect()
}

async fn apply(s: &TestServer, db: &str, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Put { doc, base, v } => {
            let id = IDS[*doc];
            let base = model.resolve(id, base);
            let mut body = json!({"v": v});
            if let Some(b) = &base {
                body["_rev"] = json!(b);
            }
            let (status, answer) = s.call("PUT", &format!("/{db}/{id}"), Some(body)).await;
            match model.edit_parent(id, base.as_deref()) {
                Some(parent) => {
                    prop_assert_eq!(status.as_u16(), 201, "PUT {} on {:?}: {}", id, base, answer);
                    let new_rev = answer["rev"].as_str().unwrap();
                    model.record_edit(id, parent, new_rev, false, Some(*v))?;
                }
                None => {
                    prop_assert_eq!(status.as_u16(), 409, "PUT {} on {:?}: {}", id, base, answer)
                }
            }
        }
        Op::Delete { doc, base } => {
            let id = IDS[*doc];
            let base = model
                .resolve(id, base)
                .unwrap_or_else(|| "1-0000bogus".to_owned());
            let (status, answer) = s
                .call("DELETE", &format!("/{db}/{id}?rev={base}"), None)
                .await;
            match model.edit_parent(id, Some(&base)) {
                Some(parent) => {
                    prop_assert_eq!(status.as_u16(), 200, "DELETE {} {}: {}", id, base, answer);
                    let new_rev = answer["rev"].as_str().unwrap();
                    model.record_edit(id, parent, new_rev, true, None)?;
                }
                None => prop_assert_eq!(status.as_u16(), 409, "DELETE {} {}: {}", id, base, answer),
            }
        }
        Op::Replicate {
            doc,
            choices,
            deleted,
            v,
        } => {
            let id = IDS[*doc];
            let hashes = path_hashes(choices);
            let n = hashes.len();
            let ids: Vec<&String> = hashes.iter().rev().collect();
            let body = json!({"new_edits": false, "docs": [{
                "_id": id,
                "_rev": format!("{n}-{}", hashes[n - 1]),
                "_revisions": {"start": n, "ids": ids},
                "_deleted": deleted,
                "v": v,
            }]});
            let (status, answer) = s
                .call("POST", &format!("/{db}/_bulk_docs"), Some(body))
                .await;
            prop_assert_eq!(status.as_u16(), 201, "{}", answer);
            prop_assert_eq!(&answer, &json!([]));
            let doc = model.docs.entry(id.to_owned()).or_default();
            let mut added = false;
            for (k, hash) in hashes.iter().enumerate() {
                let generation = k as u64 + 1;
                let key = format!("{generation}-{hash}");
                if doc.nodes.contains_key(&key) {
                    continue;
                }
                let leaf = k + 1 == n;
                doc.nodes.insert(
                    key,
                    Node {
                        parent: (k > 0).then(|| format!("{k}-{}", hashes[k - 1])),
                        generation,
                        hash: hash.clone(),
                        deleted: leaf && *deleted,
                        v: (leaf && !*deleted).then_some(*v),
                    },
                );
                added = true;
            }
            if added {
                model.seq += 1;
                doc.seq = model.seq;
            }
        }
        Op::PutLocal { v, stale } => {
            let current = model.local.map_or(0, |(r, _)| r);
            let mut body = json!({"v": v});
            let conflict = *stale && current > 0;
            if conflict {
                body["_rev"] = json!(format!("0-{}", current + 5));
            } else if current > 0 {
                body["_rev"] = json!(format!("0-{current}"));
            }
            let (status, answer) = s.call("PUT", &format!("/{db}/_local/l"), Some(body)).await;
            if conflict {
                prop_assert_eq!(status.as_u16(), 409, "{}", answer);
            } else {
                prop_assert_eq!(status.as_u16(), 201, "{}", answer);
                prop_assert_eq!(&answer["rev"], &json!(format!("0-{}", current + 1)));
                model.local = Some((current + 1, *v));
            }
        }
    }
    Ok(())
}

async fn compare(s: &TestServer, db: &str, model: &Model) -> Result<(), TestCaseError> {
    let live = |d: &Doc| !d.winner().deleted;
    let (_, info) = s.call("GET", &format!("/{db}"), None).await;
    prop_assert_eq!(seq_n(&info["update_seq"]), model.seq, "{}", info);
    prop_assert_eq!(
        &info["doc_count"],
        &json!(model.docs.values().filter(|d| live(d)).count()),
        "{}",
        info
    );
    prop_assert_eq!(
        &info["doc_del_count"],
        &json!(model.docs.values().filter(|d| !live(d)).count()),
        "{}",
        info
    );

    let (_, all) = s.call("GET", &format!("/{db}/_all_docs"), None).await;
    let rows: Vec<(String, String)> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["value"]["rev"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = model
        .docs
        .iter()
        .filter(|(_, d)| live(d))
        .map(|(id, d)| (id.clone(), rev(d.winner())))
        .collect();
    prop_assert_eq!(rows, expected, "_all_docs");

    let (_, changes) = s
        .call("GET", &format!("/{db}/_changes?style=all_docs"), None)
        .await;
    type Row = (String, u64, BTreeSet<String>, bool);
    let rows: Vec<Row> = changes["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let revs = r["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["rev"].as_str().unwrap().to_owned())
                .collect();
            (
                r["id"].as_str().unwrap().to_owned(),
                seq_n(&r["seq"]),
                revs,
                r["deleted"] == json!(true),
            )
        })
        .collect();
    let mut expected: Vec<Row> = model
        .docs
        .iter()
        .map(|(id, d)| {
            (
                id.clone(),
                d.seq,
                d.leaves().into_iter().map(rev).collect(),
                !live(d),
            )
        })
        .collect();
    expected.sort_by_key(|r| r.1);
    prop_assert_eq!(rows, expected, "_changes: {}", changes);

    for id in IDS {
        let path = format!("/{db}/{id}?conflicts=true&deleted_conflicts=true&revs=true");
        let (status, got) = s.call("GET", &path, None).await;
        let Some(doc) = model.docs.get(*id) else {
            prop_assert_eq!(status.as_u16(), 404, "{}", got);
            prop_assert_eq!(&got["reason"], "missing");
            continue;
        };
        let winner = doc.winner();
        if winner.deleted {
            prop_assert_eq!(status.as_u16(), 404, "{}", got);
            prop_assert_eq!(&got["reason"], "deleted");
        } else {
            prop_assert_eq!(status.as_u16(), 200, "{}", got);
            prop_assert_eq!(&got["_rev"], &json!(rev(winner)), "{}", got);
            prop_assert_eq!(&got["v"], &json!(winner.v), "{}", got);
            let others: Vec<&Node> = doc
                .leaves()
                .into_iter()
                .filter(|l| rev(l) != rev(winner))
                .collect();
            for (field, deleted) in [("_conflicts", false), ("_deleted_conflicts", true)] {
                let want: BTreeSet<String> = others
                    .iter()
                    .filter(|l| l.deleted == deleted)
                    .map(|l| rev(l))
                    .collect();
                let have: BTreeSet<String> = got[field]
                    .as_array()
                    .map(|a| a.iter().map(|r| r.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                prop_assert_eq!(have, want, "{} of {}", field, got);
            }
            prop_assert_eq!(
                &got["_revisions"],
                &json!({"start": winner.generation, "ids": doc.ancestry(&rev(winner))}),
                "{}",
                got
            );
        }
        let (status, open) = s
            .call("GET", &format!("/{db}/{id}?open_revs=all"), None)
            .await;
        prop_assert_eq!(status.as_u16(), 200, "{}", open);
        let have: BTreeSet<(String, bool)> = open
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["ok"]["_rev"].as_str().unwrap().to_owned(),
                    e["ok"]["_deleted"] == json!(true),
                )
            })
            .collect();
        let want: BTreeSet<(String, bool)> = doc
            .leaves()
            .into_iter()
            .map(|l| (rev(l), l.deleted))
            .collect();
        prop_assert_eq!(have, want, "open_revs=all: {}", open);
    }

    let (status, local) = s.call("GET", &format!("/{db}/_local/l"), None).await;
    match model.local {
        None => prop_assert_eq!(status.as_u16(), 404, "{}", local),
        Some((r, v)) => {
            prop_assert_eq!(status.as_u16(), 200, "{}", local);
            prop_assert_eq!(
                &local,
                &json!({"_id": "_local/l", "_rev": format!("0-{r}"), "v": v})
            );
        }
    }
    Ok(())
}

#[test]
fn outpost_behaves_like_the_model_of_couchdb_after_every_step() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s = TestServer::new();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 32,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    // Every case (shrinking included) runs in a new database.
    let n = std::sync::atomic::AtomicU32::new(0);
    let outcome = runner.run(&prop::collection::vec(op(), 1..30), |ops| {
        let db = format!("m{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        runtime.block_on(async {
            s.expect("PUT", &format!("/{db}"), None, 201).await;
            let mut model = Model::default();
            for op in &ops {
                apply(&s, &db, &mut model, op).await?;
                compare(&s, &db, &model).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
