//! Compaction on SQLite: the event log still replays into the live tables after compaction
//! dropped bodies, and an old file is upgraded in place. What compaction does on every engine
//! is in the conformance suite (`outpost_store::conformance::compaction`).

use outpost_core::Rev;
use outpost_store::Store;
use outpost_store::conformance::compaction::write;
use outpost_store::sqlite::{SqliteStore, replay};
use serde_json::json;

use crate::conformance::{edit, test_key};

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
        let report = replay::verify_with_key(dir.path(), "db", key.as_ref()).unwrap();
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
             ALTER TABLE dbs DROP COLUMN purge_seq;
             ALTER TABLE dbs DROP COLUMN purged_infos_limit;
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
        assert_eq!(version, "8");
    }
    store.compact("db").await.unwrap();
    assert!(
        store
            .rev_bodies("db", "d", &[first])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(replay::verify(dir.path(), "db").unwrap().matches());
}

#[tokio::test]
async fn a_version_7_file_keeps_its_attachments_as_they_were_stored() {
    use outpost_store::conformance::compaction::{assert_kept_as_stored, with_attachment};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(outpost_store::sqlite::FILE_NAME);
    let bytes = b"plain text stored before attachments could be encoded".repeat(50);
    let (update, digest) = with_attachment("d", None, &bytes);
    let rev;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_db("db").await.unwrap();
        rev = write(&store, "db", update).await;
        store.close();
    }
    let version = |c: &rusqlite::Connection| -> String {
        c.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    {
        // Version 7 stored every attachment as it came, its stub without `encoding`.
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(version(&rusqlite::Connection::open(&file).unwrap()), "8");
    assert_kept_as_stored(&store, "db", rev, &digest, &bytes).await;
    store.close();
    // A file of a later version than this build's is refused rather than misread.
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
        .unwrap();
    assert!(SqliteStore::open(dir.path()).is_err());
}

/// The writer leaves WAL checkpoints to a thread of its own (`outpost_sqlite_wal`): the WAL
/// must still reach the database file while writes go on, and `_compact`'s final TRUNCATE
/// checkpoint, which can find that thread holding the checkpoint lock, must still empty it.
#[tokio::test]
async fn the_wal_reaches_the_file_and_compaction_still_truncates_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("db").await.unwrap();
    let file = dir.path().join(outpost_store::sqlite::FILE_NAME);
    let wal = dir
        .path()
        .join(format!("{}-wal", outpost_store::sqlite::FILE_NAME));
    let before = std::fs::metadata(&file).unwrap().len();
    let filler = "x".repeat(4000);
    for batch in 0..30 {
        let updates = (0..100)
            .map(|i| edit(&format!("d{batch}-{i}"), None, json!({ "filler": filler })))
            .collect();
        store.write_docs("db", updates).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&file).unwrap().len() < before + 8 * 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed into {}",
            file.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.compact("db").await.unwrap();
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
}
