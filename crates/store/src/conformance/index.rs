//! Secondary indexes: rows in collation order, ranges, incremental steps that only apply where
//! the indexer found the index, rebuilds and drops.

use std::sync::Arc;

use outpost_core::collate::array_prefix_key;
use serde_json::{Value, json};

use super::edit;
use crate::{
    ChangesQuery, IndexDocRows, IndexEntry, IndexQuery, IndexUpdate, KeyBound, Store, StoreError,
};

pub fn rows(doc_id: &str, keys: &[Value]) -> IndexDocRows {
    IndexDocRows {
        doc_id: doc_id.to_owned(),
        rows: keys
            .iter()
            .map(|k| IndexEntry {
                key: k.clone(),
                value: "null".to_owned(),
            })
            .collect(),
    }
}

pub fn step(since: u64, upto: u64, docs: Vec<IndexDocRows>) -> IndexUpdate {
    IndexUpdate {
        name: "ix".to_owned(),
        signature: "sig".to_owned(),
        since,
        upto,
        docs,
    }
}

pub fn all() -> IndexQuery {
    IndexQuery {
        limit: u64::MAX,
        ..Default::default()
    }
}

/// The rows of a scan as `(key, doc id)` pairs.
pub async fn scan(store: &dyn Store, q: &IndexQuery) -> Vec<(Value, String)> {
    store
        .scan_index("db", "ix", q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (serde_json::from_str(&r.key).unwrap(), r.doc_id))
        .collect()
}

pub async fn rows_come_back_in_collation_order_then_doc_id(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let docs = vec![
        rows("d1", &[json!("b")]),
        rows("d2", &[json!("B")]),
        rows("d3", &[json!(2)]),
        rows("d4", &[json!(null)]),
        rows("d5", &[json!(["a", 1])]),
        rows("d6", &[json!("a")]),
        rows("d0", &[json!("a")]),
        rows("d7", &[json!({})]),
        rows("d8", &[json!(10)]),
        // A document may emit several rows, even the same key twice.
        rows("d9", &[json!(true), json!(true)]),
    ];
    assert!(store.update_index("db", step(0, 9, docs)).await.unwrap());
    let got = scan(&*store, &all()).await;
    let expected = [
        (json!(null), "d4"),
        (json!(true), "d9"),
        (json!(true), "d9"),
        (json!(2), "d3"),
        (json!(10), "d8"),
        (json!("a"), "d0"),
        (json!("a"), "d6"),
        (json!("b"), "d1"),
        (json!("B"), "d2"),
        (json!(["a", 1]), "d5"),
        (json!({}), "d7"),
    ];
    let expected: Vec<(Value, String)> = expected
        .iter()
        .map(|(k, d)| (k.clone(), d.to_string()))
        .collect();
    assert_eq!(got, expected);
    let state = store.index_state("db", "ix").await.unwrap().unwrap();
    assert_eq!((state.seq, state.rows), (9, 11));

    let mut desc = all();
    desc.descending = true;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(scan(&*store, &desc).await, reversed);
}

pub async fn counts_stop_at_the_cap_and_ignore_paging(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    assert!(matches!(
        store.count_index("db", "ix", &all(), 10).await,
        Err(StoreError::NotFound)
    ));
    let docs = (0..10)
        .map(|i| rows(&format!("d{i}"), &[json!(i)]))
        .collect();
    assert!(store.update_index("db", step(0, 10, docs)).await.unwrap());
    let count = |q: IndexQuery, cap: u64| {
        let store = Arc::clone(&store);
        async move { store.count_index("db", "ix", &q, cap).await.unwrap() }
    };
    assert_eq!(count(all(), 100).await, Some(10));
    assert_eq!(count(all(), 10).await, Some(10));
    assert_eq!(count(all(), 9).await, None);
    // Below 4 exclusive: 0..=3; `skip`, `limit` and order change nothing.
    let below = IndexQuery {
        upper: Some(KeyBound::upper(&json!(4), false)),
        skip: 2,
        limit: 1,
        descending: true,
        ..all()
    };
    assert_eq!(count(below.clone(), 100).await, Some(4));
    assert_eq!(count(below, 3).await, None);
    // From 4 inclusive to 6 inclusive.
    let mid = IndexQuery {
        lower: Some(KeyBound::lower(&json!(4), true)),
        upper: Some(KeyBound::upper(&json!(6), true)),
        ..all()
    };
    assert_eq!(count(mid, 100).await, Some(3));
}

pub async fn ranges_skip_and_limit(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let docs = (0..10)
        .map(|i| rows(&format!("d{i}"), &[json!([i % 3, i])]))
        .collect();
    assert!(store.update_index("db", step(0, 10, docs)).await.unwrap());
    // Keys [1, _]: a prefix range over compound keys.
    let ones = IndexQuery {
        lower: Some(KeyBound::lower_prefix(array_prefix_key(&[json!(1)]), true)),
        upper: Some(KeyBound::upper_prefix(array_prefix_key(&[json!(1)]), true)),
        ..all()
    };
    let ids: Vec<String> = scan(&*store, &ones)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids, ["d1", "d4", "d7"]);
    // Above [1, 4] exclusive, up to [2] exclusive of every [2, _].
    let q = IndexQuery {
        lower: Some(KeyBound::lower(&json!([1, 4]), false)),
        upper: Some(KeyBound::upper_prefix(array_prefix_key(&[json!(2)]), false)),
        ..all()
    };
    let ids: Vec<String> = scan(&*store, &q).await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["d7"]);
    // Whole keys, inclusive and exclusive, with skip and limit, both directions.
    let q = IndexQuery {
        lower: Some(KeyBound::lower(&json!([0, 3]), true)),
        upper: Some(KeyBound::upper(&json!([2, 5]), true)),
        skip: 1,
        limit: 3,
        ..all()
    };
    let ids: Vec<String> = scan(&*store, &q).await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["d6", "d9", "d1"]);
    let q = IndexQuery {
        descending: true,
        ..q
    };
    let ids: Vec<String> = scan(&*store, &q).await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["d2", "d7", "d4"]);
    // Doc-id bounds within one key.
    let docs = vec![
        rows("a", &[json!("k")]),
        rows("b", &[json!("k")]),
        rows("c", &[json!("k")]),
    ];
    assert!(store.update_index("db", step(10, 11, docs)).await.unwrap());
    let q = IndexQuery {
        lower: Some(KeyBound::lower_with_doc(&json!("k"), "a", false)),
        upper: Some(KeyBound::upper_with_doc(&json!("k"), "c", false)),
        ..all()
    };
    let ids: Vec<String> = scan(&*store, &q).await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["b"]);
}

pub async fn a_step_replaces_a_documents_rows_and_applies_only_where_it_started(
    store: Arc<dyn Store>,
) {
    store.create_db("db").await.unwrap();
    assert!(
        store
            .update_index(
                "db",
                step(0, 2, vec![rows("a", &[json!(1)]), rows("b", &[json!(2)])])
            )
            .await
            .unwrap()
    );
    // `a` changed and now emits two rows; `b` was deleted.
    assert!(
        store
            .update_index(
                "db",
                step(2, 4, vec![rows("a", &[json!(5), json!(6)]), rows("b", &[])])
            )
            .await
            .unwrap()
    );
    assert_eq!(
        scan(&*store, &all()).await,
        [(json!(5), "a".to_owned()), (json!(6), "a".to_owned())]
    );
    let state = store.index_state("db", "ix").await.unwrap().unwrap();
    assert_eq!((state.seq, state.rows), (4, 2));
    // A second indexer that also started at 2 is refused and changes nothing.
    assert!(
        !store
            .update_index("db", step(2, 3, vec![rows("a", &[json!(9)])]))
            .await
            .unwrap()
    );
    assert_eq!(store.index_state("db", "ix").await.unwrap().unwrap().seq, 4);
    // And one that started building it from scratch while the first indexer went on.
    assert!(
        !store
            .update_index("db", step(0, 1, vec![rows("a", &[json!(9)])]))
            .await
            .unwrap()
    );
    assert_eq!(scan(&*store, &all()).await.len(), 2);
    // So is a step under another signature, unless it builds from scratch.
    let mut other = step(4, 5, vec![]);
    other.signature = "sig2".to_owned();
    assert!(!store.update_index("db", other.clone()).await.unwrap());
    other.since = 0;
    other.docs = vec![rows("z", &[json!("z")])];
    assert!(store.update_index("db", other).await.unwrap());
    assert_eq!(scan(&*store, &all()).await, [(json!("z"), "z".to_owned())]);
    let state = store.index_state("db", "ix").await.unwrap().unwrap();
    assert_eq!(
        (state.signature.as_str(), state.seq, state.rows),
        ("sig2", 5, 1)
    );
}

pub async fn include_docs_joins_the_current_winner(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let written = store
        .write_docs("db", vec![edit("a", None, json!({"v": 1}))])
        .await
        .unwrap();
    let rev = written[0].clone().unwrap();
    store
        .write_docs("db", vec![edit("a", Some(&rev), json!({"v": 2}))])
        .await
        .unwrap();
    // An indexer reads the changes with their bodies and derives the rows.
    let changes = store
        .changes(
            "db",
            &ChangesQuery {
                since: 0,
                limit: 100,
                include_docs: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let docs = changes
        .iter()
        .map(|c| {
            let body: Value = serde_json::from_str(c.body.as_deref().unwrap()).unwrap();
            rows(&c.id, &[body["v"].clone()])
        })
        .collect();
    assert!(store.update_index("db", step(0, 2, docs)).await.unwrap());
    let q = IndexQuery {
        include_docs: true,
        ..all()
    };
    let got = store.scan_index("db", "ix", &q).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "2");
    let doc = got[0].doc.as_ref().unwrap();
    assert_eq!(
        (doc.seq, doc.body.as_str(), doc.deleted),
        (2, r#"{"v":2}"#, false)
    );
    assert_eq!(doc.tree.winner().unwrap().rev.generation, 2);
}

pub async fn indexes_are_listed_dropped_and_go_with_their_database(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    assert!(
        store
            .update_index("db", step(0, 1, vec![rows("a", &[json!(1)])]))
            .await
            .unwrap()
    );
    let listed = store.indexes("db").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "ix");
    assert!(store.drop_index("db", "ix").await.unwrap());
    assert!(!store.drop_index("db", "ix").await.unwrap());
    assert!(store.index_state("db", "ix").await.unwrap().is_none());
    assert!(matches!(
        store.scan_index("db", "ix", &all()).await,
        Err(StoreError::NotFound)
    ));

    assert!(
        store
            .update_index("db", step(0, 1, vec![rows("a", &[json!(1)])]))
            .await
            .unwrap()
    );
    store.delete_db("db").await.unwrap();
    store.create_db("db").await.unwrap();
    assert!(store.indexes("db").await.unwrap().is_empty());
    // No row of the old database's index is left behind under the new one.
    assert!(store.update_index("db", step(0, 1, vec![])).await.unwrap());
    assert!(scan(&*store, &all()).await.is_empty());
}
