//! Per-document access (`access=true`): each reader's feed, counts and per-document answers,
//! against a model of who could read what.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_core::Rev;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use super::edit;
use crate::{AllDocsQuery, ChangeRow, ChangesQuery, DbOptions, DocAccess, DocUpdate, Store};

const ACCESS: DbOptions = DbOptions { access: true };

/// Cases of [`feeds_follow_the_model_and_page_exactly`], each on a database of its own.
const MODEL_CASES: u32 = 24;

fn reader(principals: &[&str]) -> Vec<String> {
    principals.iter().map(|p| p.to_string()).collect()
}

async fn write(store: &Arc<dyn Store>, db: &str, update: DocUpdate) -> Rev {
    store
        .write_docs(db, vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

/// The whole feed of a reader, read `page` rows at a time.
async fn feed(
    store: &Arc<dyn Store>,
    db: &str,
    principals: &[String],
    page: u64,
) -> Vec<ChangeRow> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let query = ChangesQuery {
            since,
            limit: page,
            ..ChangesQuery::default()
        };
        let rows = store.access_changes(db, principals, &query).await.unwrap();
        let Some(last) = rows.last() else {
            return out;
        };
        since = last.seq;
        out.extend(rows);
    }
}

/// `(id, seq, winner rev, deleted)` of each row.
fn summary(rows: &[ChangeRow]) -> Vec<(String, u64, String, bool)> {
    rows.iter()
        .map(|r| {
            let w = r.tree.winner().unwrap();
            (r.id.clone(), r.seq, w.rev.to_string(), w.deleted)
        })
        .collect()
}

pub async fn a_reader_sees_what_names_them_and_losing_it_as_a_deletion(store: Arc<dyn Store>) {
    store.create_db_with("db", &ACCESS).await.unwrap();
    assert!(store.db_info("db").await.unwrap().access);
    let a1 = write(&store, "db", edit("a", None, json!({"_access": ["alice"]}))).await;
    write(&store, "db", edit("b", None, json!({"_access": ["bob"]}))).await;
    let c1 = write(
        &store,
        "db",
        edit("c", None, json!({"_access": ["alice", "staff"]})),
    )
    .await;
    let alice = reader(&["alice"]);
    let staff = reader(&["bob", "staff"]);
    let ids = |rows: &[ChangeRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&feed(&store, "db", &alice, 10).await), ["a", "c"]);
    assert_eq!(ids(&feed(&store, "db", &staff, 10).await), ["b", "c"]);
    // The bodies come with the rows when asked for.
    let query = ChangesQuery {
        since: 0,
        limit: 10,
        include_docs: true,
        descending: false,
    };
    let rows = store.access_changes("db", &alice, &query).await.unwrap();
    assert!(rows[0].body.as_deref().unwrap().contains("alice"));

    // Alice is dropped from `c`: her feed shows it once more, deleted, at that write.
    let c2 = write(
        &store,
        "db",
        edit("c", Some(&c1), json!({"_access": ["staff"]})),
    )
    .await;
    let seq_c2 = store.db_info("db").await.unwrap().update_seq;
    let rows = feed(&store, "db", &alice, 1).await;
    assert_eq!(
        summary(&rows),
        [
            ("a".to_owned(), 1, a1.to_string(), false),
            ("c".to_owned(), seq_c2, c2.to_string(), true)
        ]
    );
    // The tombstone's path is what she saw, then the revision that took it away.
    assert_eq!(rows[1].tree.ancestry(&c2), vec![c2.clone(), c1.clone()]);
    match &store.doc_access("db", &alice, &["c".into()]).await.unwrap()[0] {
        DocAccess::Revoked(record) => {
            assert_eq!(record.seq, seq_c2);
            assert_eq!(record.tree.leaves().len(), 1);
        }
        other => panic!("expected a revocation, got {other:?}"),
    }
    // Later writes of `c` do not reach her feed.
    let c3 = write(
        &store,
        "db",
        edit("c", Some(&c2), json!({"_access": ["staff"], "n": 3})),
    )
    .await;
    assert_eq!(feed(&store, "db", &alice, 10).await.len(), 2);
    assert!(matches!(
        store
            .doc_access("db", &alice, &["b".into(), "zzz".into()])
            .await
            .unwrap()[..],
        [DocAccess::Hidden, DocAccess::Hidden]
    ));
    // Counted as she sees it.
    let counts = store.access_counts("db", &alice).await.unwrap();
    assert_eq!((counts.doc_count, counts.doc_del_count), (1, 1));
    assert_eq!(store.access_pending("db", &alice, 1).await.unwrap(), 1);
    // Given back: live again, at the new write.
    write(
        &store,
        "db",
        edit("c", Some(&c3), json!({"_access": ["staff", "alice"]})),
    )
    .await;
    let rows = feed(&store, "db", &alice, 10).await;
    assert_eq!(ids(&rows), ["a", "c"]);
    assert!(!rows[1].tree.winner().unwrap().deleted);
    assert!(matches!(
        store.doc_access("db", &alice, &["c".into()]).await.unwrap()[0],
        DocAccess::Readable
    ));
    // A database without per-document access has no index.
    store.create_db("plain").await.unwrap();
    assert!(!store.db_info("plain").await.unwrap().access);
    store
        .write_docs(
            "plain",
            vec![edit("x", None, json!({"_access": ["alice"]}))],
        )
        .await
        .unwrap();
    let none = store
        .access_changes(
            "plain",
            &alice,
            &ChangesQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    // Deleting the database drops its index with it.
    store.delete_db("db").await.unwrap();
    store.create_db("db").await.unwrap();
    assert!(!store.db_info("db").await.unwrap().access);
    assert!(feed(&store, "db", &alice, 10).await.is_empty());
}

/// One write of the model test: a document, the principals its new revision lists, and
/// whether it is a deletion.
#[derive(Debug, Clone)]
struct Op {
    doc: usize,
    access: BTreeSet<String>,
    delete: bool,
}

fn arb_op() -> impl Strategy<Value = Op> {
    (
        0..4usize,
        proptest::collection::btree_set(prop_oneof!["p", "q", "r"].prop_map(String::from), 0..3),
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(doc, access, delete)| Op {
            doc,
            access,
            delete,
        })
}

/// Per document, each write: its sequence, the principals the winner lists, whether deleted.
type History = BTreeMap<String, Vec<(u64, BTreeSet<String>, bool)>>;

/// What the model expects a reader's feed to be: `(id, seq, deleted)` in feed order.
fn expected(history: &History, principals: &[String]) -> Vec<(String, u64, bool)> {
    let mut rows = Vec::new();
    for (id, states) in history {
        let named = |set: &BTreeSet<String>| principals.iter().any(|p| set.contains(p));
        let (seq, set, deleted) = states.last().unwrap();
        if named(set) {
            rows.push((id.clone(), *seq, *deleted));
            continue;
        }
        // Each of the reader's principals that was ever listed was dropped at the first write
        // after its last listing; the latest such write is where the reader lost the document.
        let mut lost = None;
        for p in principals {
            let mut listed = false;
            for (seq, set, _) in states {
                if set.contains(p) {
                    listed = true;
                } else if listed {
                    listed = false;
                    lost = lost.max(Some(*seq));
                }
            }
        }
        if let Some(seq) = lost {
            rows.push((id.clone(), seq, true));
        }
    }
    rows.sort_by_key(|r| r.1);
    rows
}

/// A case of the model check: writes, then every reader's views compared with the model.
async fn model_case(store: &Arc<dyn Store>, db: &str, ops: &[Op], page: u64) {
    store.create_db_with(db, &ACCESS).await.unwrap();
    let mut history = History::new();
    let mut revs: BTreeMap<String, Rev> = BTreeMap::new();
    for op in ops {
        let id = format!("d{}", op.doc);
        let base = revs.get(&id).cloned();
        let mut update = edit(&id, base.as_ref(), json!({"_access": op.access}));
        if op.delete {
            update.deleted = true;
            update.body = serde_json::Map::new();
        }
        let rev = write(store, db, update).await;
        revs.insert(id.clone(), rev);
        let seq = store.db_info(db).await.unwrap().update_seq;
        let listed = if op.delete {
            BTreeSet::new()
        } else {
            op.access.clone()
        };
        history
            .entry(id)
            .or_default()
            .push((seq, listed, op.delete));
    }
    for principals in [vec!["p"], vec!["q", "r"], vec!["p", "q", "r"], vec![]] {
        let principals = reader(&principals);
        let want = expected(&history, &principals);
        let rows = feed(store, db, &principals, page).await;
        let got: Vec<(String, u64, bool)> = rows
            .iter()
            .map(|r| (r.id.clone(), r.seq, r.tree.winner().unwrap().deleted))
            .collect();
        assert_eq!(&got, &want, "reader {principals:?}");
        let counts = store.access_counts(db, &principals).await.unwrap();
        let pending = store.access_pending(db, &principals, 0).await.unwrap();
        assert_eq!(pending, want.len() as u64);
        if let Some(first) = want.first() {
            let after = store
                .access_pending(db, &principals, first.1)
                .await
                .unwrap();
            assert_eq!(after, want.len() as u64 - 1);
        }
        assert_eq!(
            counts.doc_count,
            want.iter().filter(|r| !r.2).count() as u64
        );
        assert_eq!(
            counts.doc_del_count,
            want.iter().filter(|r| r.2).count() as u64
        );
        // `_all_docs`: the live documents the reader can read, in id order, paged.
        let mut live: Vec<String> = want.iter().filter(|r| !r.2).map(|r| r.0.clone()).collect();
        live.sort();
        let mut listed = Vec::new();
        let mut query = AllDocsQuery {
            limit: page,
            start_inclusive: true,
            end_inclusive: true,
            ..AllDocsQuery::default()
        };
        loop {
            let rows = store
                .access_all_docs(db, &principals, &query)
                .await
                .unwrap();
            let Some(last) = rows.last() else { break };
            query.start = Some(last.id.clone());
            query.start_inclusive = false;
            listed.extend(rows.iter().map(|r| r.id.clone()));
        }
        assert_eq!(&listed, &live);
        let query = AllDocsQuery {
            limit: 100,
            skip: 1,
            descending: true,
            start_inclusive: true,
            end_inclusive: true,
            ..AllDocsQuery::default()
        };
        let rows = store
            .access_all_docs(db, &principals, &query)
            .await
            .unwrap();
        let backwards: Vec<String> = live.iter().rev().skip(1).cloned().collect();
        assert_eq!(
            rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            backwards
        );
        // Descending gives the same rows backwards.
        let query = ChangesQuery {
            since: u64::MAX,
            limit: 100,
            descending: true,
            include_docs: false,
        };
        let mut back: Vec<u64> = store
            .access_changes(db, &principals, &query)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        back.reverse();
        assert_eq!(back, want.iter().map(|r| r.1).collect::<Vec<_>>());
        // Each document's answer agrees with the feed.
        let ids: Vec<String> = history.keys().cloned().collect();
        let answers = store.doc_access(db, &principals, &ids).await.unwrap();
        for (id, answer) in ids.iter().zip(answers) {
            let row = want.iter().find(|r| &r.0 == id);
            match (row, answer) {
                (None, DocAccess::Hidden) => {}
                (Some((_, _, false)), DocAccess::Readable) => {}
                (Some((_, seq, true)), DocAccess::Readable) => {
                    // A deleted document still listing the reader is readable as a deletion.
                    assert_eq!(history[id].last().unwrap().0, *seq);
                }
                (Some((_, seq, true)), DocAccess::Revoked(record)) => {
                    assert_eq!(record.seq, *seq);
                }
                (row, answer) => panic!("{id}: feed row {row:?}, answer {answer:?}"),
            }
        }
    }
    store.delete_db(db).await.unwrap();
}

/// Random writes to a few documents with random `_access` lists, then each reader's feed
/// (paged), counts, pending rows, `_all_docs` both ways and per-document answers against a
/// model. Runs on a multi-threaded runtime (the suite's), blocking one of its threads per case
/// so that proptest can shrink a failure.
pub async fn feeds_follow_the_model_and_page_exactly(store: Arc<dyn Store>) {
    let handle = tokio::runtime::Handle::current();
    let next = AtomicU64::new(0);
    let config = Config {
        cases: MODEL_CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let strategy = (proptest::collection::vec(arb_op(), 1..25), 1..4u64);
    tokio::task::block_in_place(|| {
        TestRunner::new(config)
            .run(&strategy, |(ops, page)| {
                let db = format!("model{}", next.fetch_add(1, Ordering::Relaxed));
                handle.block_on(model_case(&store, &db, &ops, page));
                Ok(())
            })
            .unwrap();
    });
}
