//! `_purge`: leaves removed with the ancestors only they kept, documents purged whole gone from
//! every table and index, bodies and attachment bytes gone, the log recording the purge.

use std::sync::Arc;

use outpost_core::Rev;
use serde_json::json;

use super::compaction::{with_attachment, write};
use super::documents::replicated;
use super::edit;
use super::index::{all, rows, step};
use crate::{
    AllDocsQuery, ChangesQuery, DEFAULT_PURGED_INFOS_LIMIT, DbOptions, EventsQuery, PurgeRequest,
    Retention, Store,
};

fn rev(s: &str) -> Rev {
    s.parse().unwrap()
}

fn request(id: &str, revs: &[&Rev]) -> PurgeRequest {
    PurgeRequest {
        id: id.to_owned(),
        revs: revs.iter().map(|r| (*r).clone()).collect(),
    }
}

async fn all_ids(store: &dyn Store, db: &str) -> Vec<String> {
    let query = AllDocsQuery {
        limit: u64::MAX,
        start_inclusive: true,
        end_inclusive: true,
        ..Default::default()
    };
    let rows = store.all_docs(db, &query).await.unwrap();
    rows.into_iter().map(|r| r.id).collect()
}

async fn changed_ids(store: &dyn Store, db: &str) -> Vec<(String, u64)> {
    let query = ChangesQuery {
        limit: u64::MAX,
        ..Default::default()
    };
    let rows = store.changes(db, &query).await.unwrap();
    rows.into_iter().map(|r| (r.id, r.seq)).collect()
}

async fn events_of(store: &dyn Store, db: &str, id: &str) -> Vec<(String, String)> {
    let query = EventsQuery {
        limit: u64::MAX,
        doc_id: Some(id.to_owned()),
        ..Default::default()
    };
    let events = store.events(db, &query).await.unwrap();
    events
        .into_iter()
        .map(|e| (e.kind, e.rev.to_string()))
        .collect()
}

pub async fn purging_every_leaf_removes_the_document(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let first = write(&*store, "db", edit("a", None, json!({"v": 1}))).await;
    let second = write(&*store, "db", edit("a", Some(&first), json!({"v": 2}))).await;
    write(&*store, "db", edit("b", None, json!({"v": 1}))).await;
    // An index holding rows of both documents.
    let docs = vec![rows("a", &[json!(1)]), rows("b", &[json!(2)])];
    assert!(store.update_index("db", step(0, 3, docs)).await.unwrap());
    let before = store.db_info("db").await.unwrap();
    assert_eq!(before.purge_seq, 0);
    assert_eq!(before.purged_infos_limit, DEFAULT_PURGED_INFOS_LIMIT);

    // The first revision is not a leaf, and `nope` does not exist: both are ignored.
    let outcome = store
        .purge(
            "db",
            vec![request("a", &[&first, &second]), request("nope", &[&first])],
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.purged,
        vec![
            ("a".to_owned(), vec![second.clone()]),
            ("nope".to_owned(), vec![])
        ]
    );
    assert_eq!(outcome.purge_seq, 2);
    assert!(!outcome.attachments);

    assert!(store.doc("db", "a").await.unwrap().is_none());
    assert!(
        store
            .rev_bodies("db", "a", &[first.clone(), second.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(all_ids(&*store, "db").await, ["b"]);
    assert_eq!(changed_ids(&*store, "db").await, [("b".to_owned(), 3)]);
    let info = store.db_info("db").await.unwrap();
    assert_eq!((info.doc_count, info.doc_del_count), (1, 0));
    assert_eq!(info.purge_seq, 2);
    assert!(
        info.update_seq > before.update_seq,
        "a purge takes a sequence"
    );
    assert!(info.active_size < before.active_size);
    let ix = store.index_state("db", "ix").await.unwrap().unwrap();
    assert_eq!(ix.rows, 1);
    let left = store.scan_index("db", "ix", &all()).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.doc_id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    // The history is gone; the log says the document was purged, at the new sequence.
    assert_eq!(
        events_of(&*store, "db", "a").await,
        [("purged".to_owned(), second.to_string())]
    );
    let purge_event = store
        .events(
            "db",
            &EventsQuery {
                limit: 10,
                doc_id: Some("a".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(purge_event[0].seq, info.update_seq);

    // The document can be written again, as a new document.
    let again = write(&*store, "db", edit("a", None, json!({"v": 3}))).await;
    assert_eq!(again.generation, 1);
    // Purging again what is gone changes nothing but the purge sequence.
    let outcome = store
        .purge("db", vec![request("a", &[&second])])
        .await
        .unwrap();
    assert_eq!(outcome.purged, vec![("a".to_owned(), vec![])]);
    assert_eq!(outcome.purge_seq, 3);
}

pub async fn purging_some_leaves_keeps_the_rest_with_a_new_winner(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    // 1-a -> 2-a -> {3-b, 3-c}, and 1-a -> 2-x: three leaves, 3-c the winner.
    let updates = vec![
        replicated(
            "d",
            vec![rev("3-b"), rev("2-a"), rev("1-a")],
            json!({"n": "b"}),
        ),
        replicated(
            "d",
            vec![rev("3-c"), rev("2-a"), rev("1-a")],
            json!({"n": "c"}),
        ),
        replicated("d", vec![rev("2-x"), rev("1-a")], json!({"n": "x"})),
    ];
    for result in store.write_docs("db", updates).await.unwrap() {
        result.unwrap();
    }
    write(&*store, "db", edit("other", None, json!({}))).await;
    let before = store.doc("db", "d").await.unwrap().unwrap();
    assert_eq!(before.tree.winner().unwrap().rev, rev("3-c"));
    assert_eq!(store.conflicts("db", None, 10).await.unwrap().len(), 1);

    let outcome = store
        .purge("db", vec![request("d", &[&rev("3-c"), &rev("2-x")])])
        .await
        .unwrap();
    assert_eq!(
        outcome.purged,
        vec![("d".to_owned(), vec![rev("3-c"), rev("2-x")])]
    );
    let after = store.doc("db", "d").await.unwrap().unwrap();
    assert_eq!(after.tree.winner().unwrap().rev, rev("3-b"));
    // 2-a and 1-a stay: 3-b descends from them.
    assert_eq!(
        after.tree.revs().cloned().collect::<Vec<_>>(),
        [rev("1-a"), rev("2-a"), rev("3-b")]
    );
    assert!(
        after.seq > before.seq,
        "the document moves to a new sequence"
    );
    assert_eq!(
        changed_ids(&*store, "db").await.last().unwrap(),
        &("d".to_owned(), after.seq)
    );
    assert!(store.conflicts("db", None, 10).await.unwrap().is_empty());
    let bodies = store
        .rev_bodies("db", "d", &[rev("3-b"), rev("3-c"), rev("2-x")])
        .await
        .unwrap();
    assert_eq!(
        bodies.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
        [rev("3-b")]
    );
    let info = store.db_info("db").await.unwrap();
    assert_eq!(
        (info.doc_count, info.doc_del_count, info.purge_seq),
        (2, 0, 1)
    );
    let kinds = events_of(&*store, "db", "d").await;
    assert_eq!(
        &kinds[kinds.len() - 2..],
        [
            ("purged".to_owned(), "3-c".to_owned()),
            ("purged".to_owned(), "2-x".to_owned())
        ]
    );

    // A live leaf purged, a deleted one left: the document is deleted.
    let tomb = {
        let mut t = edit("d", Some(&rev("3-b")), json!({}));
        t.deleted = true;
        t
    };
    let tomb = write(&*store, "db", tomb).await;
    write(
        &*store,
        "db",
        replicated("d", vec![rev("2-y"), rev("1-a")], json!({})),
    )
    .await;
    store
        .purge("db", vec![request("d", &[&rev("2-y")])])
        .await
        .unwrap();
    let doc = store.doc("db", "d").await.unwrap().unwrap();
    assert!(doc.tree.is_deleted());
    assert_eq!(doc.tree.winner().unwrap().rev, tomb);
    let info = store.db_info("db").await.unwrap();
    assert_eq!((info.doc_count, info.doc_del_count), (1, 1));
    assert_eq!(all_ids(&*store, "db").await, ["other"]);

    // Retention folding the purge events into a baseline keeps the document as it is.
    store
        .set_retention(
            "db",
            Retention {
                max_events_per_doc: Some(1),
                max_age_seconds: None,
            },
        )
        .await
        .unwrap();
    store.compact("db").await.unwrap();
    let compacted = store.doc("db", "d").await.unwrap().unwrap();
    assert_eq!(compacted.tree, doc.tree);
}

pub async fn purged_attachment_bytes_are_collected(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let (only, gone) = with_attachment("x", None, &[7; 300]);
    let x = write(&*store, "db", only).await;
    let (shared_a, shared) = with_attachment("y", None, &[8; 300]);
    let y = write(&*store, "db", shared_a).await;
    let (shared_b, same) = with_attachment("z", None, &[8; 300]);
    write(&*store, "db", shared_b).await;
    assert_eq!(shared, same);

    let outcome = store
        .purge("db", vec![request("x", &[&x]), request("y", &[&y])])
        .await
        .unwrap();
    assert!(outcome.attachments);
    store.reclaim().await.unwrap();
    assert!(store.attachment(&gone).await.unwrap().is_none());
    assert_eq!(store.attachment(&shared).await.unwrap().unwrap(), [8; 300]);
}

pub async fn an_index_step_from_before_a_purge_writes_no_rows_for_it(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let a = write(&*store, "db", edit("a", None, json!({}))).await;
    write(&*store, "db", edit("b", None, json!({}))).await;
    // An indexer read the changes up to 2, then the purge committed, then its step arrives.
    store.purge("db", vec![request("a", &[&a])]).await.unwrap();
    let docs = vec![rows("a", &[json!(1)]), rows("b", &[json!(2)])];
    assert!(store.update_index("db", step(0, 2, docs)).await.unwrap());
    let left = store.scan_index("db", "ix", &all()).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.doc_id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(
        store.index_state("db", "ix").await.unwrap().unwrap().rows,
        1
    );
    // Written again after the purge, the document is indexed by a later step as usual, and by
    // an index built from scratch.
    write(&*store, "db", edit("a", None, json!({"again": true}))).await;
    let seq = store.db_info("db").await.unwrap().update_seq;
    let docs = vec![rows("a", &[json!(3)])];
    assert!(store.update_index("db", step(2, seq, docs)).await.unwrap());
    let keyed = |rows: Vec<crate::IndexRow>| -> Vec<(String, String)> {
        rows.into_iter().map(|r| (r.key, r.doc_id)).collect()
    };
    let expected = [
        ("2".to_owned(), "b".to_owned()),
        ("3".to_owned(), "a".to_owned()),
    ];
    assert_eq!(
        keyed(store.scan_index("db", "ix", &all()).await.unwrap()),
        expected
    );
    assert!(store.drop_index("db", "ix").await.unwrap());
    let docs = vec![rows("b", &[json!(2)]), rows("a", &[json!(3)])];
    assert!(store.update_index("db", step(0, seq, docs)).await.unwrap());
    assert_eq!(
        keyed(store.scan_index("db", "ix", &all()).await.unwrap()),
        expected
    );
}

pub async fn a_purged_document_leaves_the_access_index(store: Arc<dyn Store>) {
    store
        .create_db_with("db", &DbOptions { access: true })
        .await
        .unwrap();
    let reader = vec!["alice".to_owned()];
    let a = write(
        &*store,
        "db",
        edit("a", None, json!({"_access": ["alice"]})),
    )
    .await;
    write(
        &*store,
        "db",
        edit("b", None, json!({"_access": ["alice"]})),
    )
    .await;
    let query = ChangesQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        store
            .access_changes("db", &reader, &query)
            .await
            .unwrap()
            .len(),
        2
    );
    store.purge("db", vec![request("a", &[&a])]).await.unwrap();
    let feed = store.access_changes("db", &reader, &query).await.unwrap();
    assert_eq!(
        feed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let page = AllDocsQuery {
        limit: 100,
        ..Default::default()
    };
    let docs = store.access_all_docs("db", &reader, &page).await.unwrap();
    assert_eq!(docs.len(), 1);
    let counts = store.access_counts("db", &reader).await.unwrap();
    assert_eq!((counts.doc_count, counts.doc_del_count), (1, 0));
}

pub async fn the_purged_infos_limit_is_kept_per_database(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    store.set_purged_infos_limit("db", 7).await.unwrap();
    assert_eq!(store.db_info("db").await.unwrap().purged_infos_limit, 7);
    assert!(matches!(
        store.set_purged_infos_limit("missing", 7).await,
        Err(crate::StoreError::NoDb)
    ));
    assert!(matches!(
        store.purge("missing", vec![]).await,
        Err(crate::StoreError::NoDb)
    ));
}
