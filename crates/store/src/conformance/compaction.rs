//! Compaction: superseded and stemmed bodies dropped, leaves kept, and attachment bytes no
//! stored revision refers to collected.

use std::sync::Arc;

use outpost_core::Rev;
use serde_json::json;

use super::edit;
use crate::{DocUpdate, NewAttachment, Store};

/// An edit of `id` whose one attachment `f` holds `bytes`.
pub fn with_attachment(id: &str, base: Option<&Rev>, bytes: &[u8]) -> (DocUpdate, String) {
    let digest = format!("md5-{}", bytes.len() + bytes[0] as usize);
    let mut update = edit(
        id,
        base,
        json!({"_attachments": {"f": {
            "content_type": "application/octet-stream",
            "digest": digest,
            "length": bytes.len(),
        }}}),
    );
    update.new_attachments = vec![NewAttachment {
        digest: digest.clone(),
        data: bytes.to_vec(),
    }];
    (update, digest)
}

/// Checks that revision `rev` of `d` holds attachment `f` (written by [`with_attachment`] with
/// `bytes`) as it was stored before attachments could be encoded: the same digest and length, no
/// `encoding`, the bytes unchanged. For the schema-upgrade tests of both engines.
pub async fn assert_kept_as_stored(
    store: &dyn Store,
    db: &str,
    rev: Rev,
    digest: &str,
    bytes: &[u8],
) {
    let body = store.rev_bodies(db, "d", &[rev]).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&body[0].1.json).unwrap();
    let stub = &body["_attachments"]["f"];
    assert_eq!(stub["digest"], json!(digest));
    assert_eq!(stub["length"], json!(bytes.len()));
    assert_eq!(outpost_core::attachment::encoded_length(stub), None);
    assert_eq!(
        store.attachment(digest).await.unwrap().as_deref(),
        Some(bytes)
    );
}

pub async fn write(store: &dyn Store, db: &str, update: DocUpdate) -> Rev {
    store
        .write_docs(db, vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

pub async fn compaction_collects_attachments_no_stored_revision_refers_to(store: Arc<dyn Store>) {
    for db in ["a", "b", "c"] {
        store.create_db(db).await.unwrap();
    }
    // Replaced: the first bytes are referenced only by a superseded revision.
    let (first, replaced) = with_attachment("x", None, &[1; 100]);
    let rev = write(&*store, "a", first).await;
    let (second, current) = with_attachment("x", Some(&rev), &[2; 200]);
    write(&*store, "a", second).await;
    // Deleted document whose bytes another database shares.
    let (y, shared) = with_attachment("y", None, &[3; 300]);
    let rev = write(&*store, "a", y).await;
    let mut tombstone = edit("y", Some(&rev), json!({}));
    tombstone.deleted = true;
    write(&*store, "a", tombstone).await;
    let (z, same) = with_attachment("z", None, &[3; 300]);
    assert_eq!(same, shared);
    write(&*store, "b", z).await;
    // Deleted database.
    let (w, dropped_with_db) = with_attachment("w", None, &[4; 400]);
    write(&*store, "c", w).await;
    store.delete_db("c").await.unwrap();
    for digest in [&replaced, &current, &shared, &dropped_with_db] {
        assert!(
            store.attachment(digest).await.unwrap().is_some(),
            "{digest}"
        );
    }

    store.compact("a").await.unwrap();

    assert!(store.attachment(&replaced).await.unwrap().is_none());
    assert!(store.attachment(&dropped_with_db).await.unwrap().is_none());
    assert_eq!(store.attachment(&current).await.unwrap().unwrap(), [2; 200]);
    assert_eq!(store.attachment(&shared).await.unwrap().unwrap(), [3; 300]);
}

pub async fn compaction_drops_superseded_and_stemmed_bodies_and_keeps_leaves(
    store: Arc<dyn Store>,
) {
    store.create_db("db").await.unwrap();
    store.set_revs_limit("db", 2).await.unwrap();
    let mut revs = vec![write(&*store, "db", edit("d", None, json!({"n": 0}))).await];
    for n in 1..5 {
        let base = revs.last().unwrap().clone();
        revs.push(write(&*store, "db", edit("d", Some(&base), json!({"n": n}))).await);
    }
    // Stemmed out of the tree, but its body is still stored until compaction.
    assert_eq!(
        store.rev_bodies("db", "d", &revs[..1]).await.unwrap().len(),
        1
    );
    let before = store.db_info("db").await.unwrap().active_size;

    store.compact("db").await.unwrap();

    assert!(
        store
            .rev_bodies("db", "d", &revs[..4])
            .await
            .unwrap()
            .is_empty()
    );
    let kept = store.rev_bodies("db", "d", &revs[4..]).await.unwrap();
    assert_eq!(kept[0].1.json, r#"{"n":4}"#);
    let after = store.db_info("db").await.unwrap().active_size;
    assert_eq!(after, kept[0].1.json.len() as u64, "was {before}");
    // The history stays in the log.
    let query = crate::EventsQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.events("db", &query).await.unwrap().len(), 5);
}
