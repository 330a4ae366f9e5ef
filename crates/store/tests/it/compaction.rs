//! Compaction: superseded and stemmed bodies, attachment bytes no revision refers to, and the
//! event log still replaying into the live tables afterwards; on a plain and on an encrypted
//! file.

use outpost_core::Rev;
use outpost_store::sqlite::{SqliteStore, StoreKey, replay};
use outpost_store::{DocUpdate, NewAttachment, Store};
use serde_json::json;

use crate::conformance::{edit, keys, test_key};

/// An edit of `id` whose one attachment `f` holds `bytes`.
fn with_attachment(id: &str, base: Option<&Rev>, bytes: &[u8]) -> (DocUpdate, String) {
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

async fn write(store: &SqliteStore, db: &str, update: DocUpdate) -> Rev {
    store
        .write_docs(db, vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn compaction_collects_attachments_no_stored_revision_refers_to() {
    for key in keys() {
        compaction_collects_attachments_no_stored_revision_refers_to_on(key).await;
    }
}

async fn compaction_collects_attachments_no_stored_revision_refers_to_on(key: Option<StoreKey>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), key).unwrap();
    for db in ["a", "b", "c"] {
        store.create_db(db).await.unwrap();
    }
    // Replaced: the first bytes are referenced only by a superseded revision.
    let (first, replaced) = with_attachment("x", None, &[1; 100]);
    let rev = write(&store, "a", first).await;
    let (second, current) = with_attachment("x", Some(&rev), &[2; 200]);
    write(&store, "a", second).await;
    // Deleted document whose bytes another database shares.
    let (y, shared) = with_attachment("y", None, &[3; 300]);
    let rev = write(&store, "a", y).await;
    let mut tombstone = edit("y", Some(&rev), json!({}));
    tombstone.deleted = true;
    write(&store, "a", tombstone).await;
    let (z, same) = with_attachment("z", None, &[3; 300]);
    assert_eq!(same, shared);
    write(&store, "b", z).await;
    // Deleted database.
    let (w, dropped_with_db) = with_attachment("w", None, &[4; 400]);
    write(&store, "c", w).await;
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

#[tokio::test]
async fn compaction_drops_superseded_and_stemmed_bodies_and_keeps_leaves() {
    for key in keys() {
        compaction_drops_superseded_and_stemmed_bodies_and_keeps_leaves_on(key).await;
    }
}

async fn compaction_drops_superseded_and_stemmed_bodies_and_keeps_leaves_on(key: Option<StoreKey>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), key).unwrap();
    store.create_db("db").await.unwrap();
    store.set_revs_limit("db", 2).await.unwrap();
    let mut revs = vec![write(&store, "db", edit("d", None, json!({"n": 0}))).await];
    for n in 1..5 {
        let base = revs.last().unwrap().clone();
        revs.push(write(&store, "db", edit("d", Some(&base), json!({"n": n}))).await);
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
    let query = outpost_store::EventsQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.events("db", &query).await.unwrap().len(), 5);
}

#[tokio::test]
async fn compact_running_is_reported_while_a_compaction_is_marked() {
    for key in keys() {
        compact_running_is_reported_while_a_compaction_is_marked_on(key).await;
    }
}

async fn compact_running_is_reported_while_a_compaction_is_marked_on(key: Option<StoreKey>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), key).unwrap();
    store.create_db("db").await.unwrap();
    store.create_db("other").await.unwrap();
    assert!(!store.db_info("db").await.unwrap().compact_running);

    let mark = store.mark_compacting("db").unwrap();
    assert!(store.db_info("db").await.unwrap().compact_running);
    assert!(!store.db_info("other").await.unwrap().compact_running);
    // A second request while one runs starts nothing.
    assert!(store.mark_compacting("db").is_none());
    store.compact("db").await.unwrap();
    assert!(store.db_info("db").await.unwrap().compact_running);
    drop(mark);
    assert!(!store.db_info("db").await.unwrap().compact_running);
}

#[tokio::test]
async fn replay_rebuilds_the_tables_after_compaction_dropped_bodies() {
    for seed in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        // Odd seeds on an encrypted file.
        let key = (seed % 2 == 1).then(test_key);
        let store = SqliteStore::open_with_key(dir.path(), key.clone()).unwrap();
        store.create_db("db").await.unwrap();
        store.set_revs_limit("db", 3).await.unwrap();
        crate::replay::workload(&store, seed).await;
        store.compact("db").await.unwrap();
        crate::replay::workload(&store, seed + 50).await;
        store.compact("db").await.unwrap();
        let report = replay::rebuild_with_key(dir.path(), "db", key.as_ref()).unwrap();
        assert!(report.matches(), "seed {seed}: {:#?}", report.differences);
        // Only leaves kept their bodies.
        for i in 0..8 {
            let Some(doc) = store.doc("db", &format!("doc{i}")).await.unwrap() else {
                continue;
            };
            let all: Vec<Rev> = doc.tree.revs().cloned().collect();
            let stored = store.rev_bodies("db", &doc.id, &all).await.unwrap();
            let leaves: Vec<Rev> = doc.tree.leaves().into_iter().map(|l| l.rev).collect();
            assert!(
                stored.iter().all(|(r, _)| leaves.contains(r)),
                "seed {seed}"
            );
        }
    }
}

#[tokio::test]
async fn a_version_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(outpost_store::sqlite::FILE_NAME);
    let first;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_db("db").await.unwrap();
        first = write(&store, "db", edit("d", None, json!({"n": 1}))).await;
        write(&store, "db", edit("d", Some(&first), json!({"n": 2}))).await;
        store.close();
    }
    {
        // What version 1 wrote: no deletion flag in events, no live index, no auto-vacuum.
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch(
            "PRAGMA busy_timeout = 10000;
             ALTER TABLE events DROP COLUMN deleted;
             DROP INDEX docs_live;
             UPDATE meta SET value = '1' WHERE key = 'schema_version';
             PRAGMA auto_vacuum = NONE;
             VACUUM;",
        )
        .unwrap();
        let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, 0);
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    {
        let c = rusqlite::Connection::open(&file).unwrap();
        let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, 2, "incremental");
        let version: String = c
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // Brought forward through every later version too.
        assert_eq!(version, "5");
    }
    store.compact("db").await.unwrap();
    assert!(
        store
            .rev_bodies("db", "d", &[first])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(replay::rebuild(dir.path(), "db").unwrap().matches());
}
