//! Databases, documents, `_db_updates`, security objects, local documents, attachments and
//! batched reads.

use std::sync::Arc;

use outpost_core::Rev;
use serde_json::json;

use super::edit;
use crate::{ChangesQuery, Store, StoreError};

pub async fn databases_are_created_once_and_deleted_with_their_documents(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    assert!(matches!(
        store.create_db("db").await,
        Err(StoreError::DbExists)
    ));
    store
        .write_docs("db", vec![edit("a", None, json!({}))])
        .await
        .unwrap();
    store.delete_db("db").await.unwrap();
    assert!(matches!(store.db_info("db").await, Err(StoreError::NoDb)));
    store.create_db("db").await.unwrap();
    assert!(store.doc("db", "a").await.unwrap().is_none());
    assert!(matches!(
        store.write_docs("nope", vec![]).await,
        Err(StoreError::NoDb)
    ));
}

/// `_db_updates`: each database once, at its latest event, under a server-wide sequence that
/// survives reopening.
pub async fn database_updates_list_each_database_at_its_latest_event(store: Arc<dyn Store>) {
    let mut watch = store.watch_db_updates();
    let start = *watch.borrow_and_update();
    store.create_db("a").await.unwrap();
    store.create_db("b").await.unwrap();
    store
        .write_docs("a", vec![edit("x", None, json!({}))])
        .await
        .unwrap();
    store.delete_db("b").await.unwrap();
    let seen = |updates: Vec<crate::DbUpdate>| {
        updates
            .into_iter()
            .map(|u| (u.db_name, u.kind))
            .collect::<Vec<_>>()
    };
    let all = store.db_updates(start, 100).await.unwrap();
    assert_eq!(
        seen(all.clone()),
        [
            ("a".into(), "updated".into()),
            ("b".into(), "deleted".into())
        ]
    );
    assert!(all[0].seq < all[1].seq);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), all[1].seq);
    let later = store.db_updates(all[0].seq, 100).await.unwrap();
    assert_eq!(seen(later), [("b".into(), "deleted".into())]);
    assert_eq!(store.db_updates(start, 1).await.unwrap().len(), 1);
    store.create_db("b").await.unwrap();
    let again = store.db_updates(all[1].seq, 100).await.unwrap();
    assert_eq!(seen(again), [("b".into(), "created".into())]);
}

pub async fn security_objects_are_kept_per_database_and_go_with_it(store: Arc<dyn Store>) {
    assert!(matches!(store.security("db").await, Err(StoreError::NoDb)));
    assert!(matches!(
        store.set_security("db", "{}".into()).await,
        Err(StoreError::NoDb)
    ));
    store.create_db("db").await.unwrap();
    store.create_db("other").await.unwrap();
    assert_eq!(store.security("db").await.unwrap(), None);
    store.set_security("db", r#"{"a":1}"#.into()).await.unwrap();
    store.set_security("db", r#"{"a":2}"#.into()).await.unwrap();
    assert_eq!(
        store.security("db").await.unwrap().as_deref(),
        Some(r#"{"a":2}"#)
    );
    assert_eq!(store.security("other").await.unwrap(), None);
    // A database created again under the same name starts without one.
    store.delete_db("db").await.unwrap();
    store.create_db("db").await.unwrap();
    assert_eq!(store.security("db").await.unwrap(), None);
}

pub async fn concurrent_writers_all_commit(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_docs("db", vec![edit(&format!("d{i}"), None, json!({"i": i}))])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap()[0].is_ok());
    }
    let info = store.db_info("db").await.unwrap();
    assert_eq!((info.doc_count, info.update_seq), (64, 64));
    let page = store
        .changes(
            "db",
            &ChangesQuery {
                since: 60,
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [61, 62, 63, 64]
    );
}

pub async fn a_conflicting_edit_fails_alone(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let first = store
        .write_docs("db", vec![edit("a", None, json!({}))])
        .await
        .unwrap();
    let rev = first[0].clone().unwrap();
    let out = store
        .write_docs(
            "db",
            vec![
                edit("a", None, json!({"x": 1})),
                edit("a", Some(&rev), json!({"x": 2})),
                edit("b", None, json!({})),
            ],
        )
        .await
        .unwrap();
    assert!(out[0].is_err());
    assert!(out[1].is_ok());
    assert!(out[2].is_ok());
}

pub async fn local_documents_check_their_revision(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    assert_eq!(
        store
            .put_local("db", "_local/x", 0, "{}".into())
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.put_local("db", "_local/x", 0, "{}".into()).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store
            .put_local("db", "_local/x", 1, "{\"a\":1}".into())
            .await
            .unwrap(),
        2
    );
    store.delete_local("db", "_local/x", 2).await.unwrap();
    assert!(store.local_doc("db", "_local/x").await.unwrap().is_none());
    assert_eq!(store.db_info("db").await.unwrap().update_seq, 0);
}

pub async fn attachments_are_read_whole_or_by_range(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let digest = outpost_core::hash::attachment_digest(&data);
    let mut update = edit(
        "a",
        None,
        json!({"_attachments": {"x.bin": {
            "content_type": "application/octet-stream", "digest": digest, "length": 1000
        }}}),
    );
    update.new_attachments = vec![crate::NewAttachment {
        digest: digest.clone(),
        data: data.clone(),
    }];
    assert!(store.write_docs("db", vec![update]).await.unwrap()[0].is_ok());
    assert_eq!(store.attachment(&digest).await.unwrap(), Some(data.clone()));
    for (offset, len) in [(0, 10), (990, 10), (995, 10), (0, 5000), (400, 300)] {
        let end = (offset + len).min(1000) as usize;
        assert_eq!(
            store.attachment_range(&digest, offset, len).await.unwrap(),
            Some(data[offset as usize..end].to_vec()),
            "{offset}+{len}"
        );
    }
    assert_eq!(
        store.attachment_range(&digest, 1000, 10).await.unwrap(),
        Some(Vec::new())
    );
    assert_eq!(
        store.attachment_range("md5-nope", 0, 10).await.unwrap(),
        None
    );
}

pub async fn batched_reads_match_single_reads_in_the_order_asked(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let first = store
        .write_docs(
            "db",
            vec![
                edit("a", None, json!({"v": "a1"})),
                edit("b", None, json!({"v": "b1"})),
            ],
        )
        .await
        .unwrap();
    let a1 = first[0].clone().unwrap();
    let b1 = first[1].clone().unwrap();
    let a2 = store
        .write_docs("db", vec![edit("a", Some(&a1), json!({"v": "a2"}))])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();

    let ids = ["b", "nope", "a", "b"].map(String::from);
    let docs = store.docs("db", &ids).await.unwrap();
    assert_eq!(docs.len(), 4);
    for (id, got) in ids.iter().zip(&docs) {
        let single = store.doc("db", id).await.unwrap();
        assert_eq!(got.as_ref().map(|d| &d.id), single.as_ref().map(|d| &d.id));
        assert_eq!(got.as_ref().map(|d| d.seq), single.as_ref().map(|d| d.seq));
        assert_eq!(
            got.as_ref().and_then(|d| d.tree.winner()).map(|w| w.rev),
            single.as_ref().and_then(|d| d.tree.winner()).map(|w| w.rev),
        );
    }
    assert!(docs[1].is_none());
    assert_eq!(docs[2].as_ref().unwrap().tree.winner().unwrap().rev, a2);

    let unknown: Rev = "1-00000000000000000000000000000000".parse().unwrap();
    let wanted = vec![
        ("a".to_owned(), a2.clone()),
        ("b".to_owned(), unknown.clone()),
        ("a".to_owned(), a1.clone()),
        ("nope".to_owned(), unknown),
        ("b".to_owned(), b1.clone()),
    ];
    let bodies: Vec<Option<String>> = store
        .bodies("db", &wanted)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.map(|b| b.json))
        .collect();
    assert_eq!(
        bodies,
        [
            Some(r#"{"v":"a2"}"#.to_owned()),
            None,
            Some(r#"{"v":"a1"}"#.to_owned()),
            None,
            Some(r#"{"v":"b1"}"#.to_owned()),
        ]
    );
    assert!(matches!(
        store.docs("missing", &ids).await,
        Err(StoreError::NoDb)
    ));
    assert!(store.docs("db", &[]).await.unwrap().is_empty());
}
