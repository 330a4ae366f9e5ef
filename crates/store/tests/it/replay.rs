//! Randomized workloads, then the event log replayed: it must rebuild exactly the live tables.

use outpost_core::{Policy, Rev};
use outpost_store::sqlite::{SqliteStore, replay};
use outpost_store::{DocUpdate, Origin, Retention, Store, UpdateMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::conformance::edit;

fn random_hash(rng: &mut StdRng) -> String {
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// A mix of interactive edits, deletions, re-creations and replicated branches (some deep, some
/// deleted) over a few documents, several updates per write.
pub async fn workload(store: &SqliteStore, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..60 {
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..6) {
            let id = format!("doc{}", rng.random_range(0..8));
            let doc = store.doc("db", &id).await.unwrap();
            let winner = doc.as_ref().and_then(|d| d.tree.winner());
            let update = match rng.random_range(0..10) {
                0..=3 => edit(
                    &id,
                    winner.as_ref().map(|w| &w.rev),
                    json!({"n": rng.random_range(0..5), "at": rng.random_range(0..4)}),
                ),
                4 => {
                    let mut u = edit(&id, winner.as_ref().map(|w| &w.rev), json!({}));
                    u.deleted = true;
                    u
                }
                _ => {
                    // A branch from a random known revision (or a new root), as a peer would send.
                    let known: Vec<Rev> = doc
                        .as_ref()
                        .map(|d| d.tree.revs().cloned().collect())
                        .unwrap_or_default();
                    let mut path = Vec::new();
                    let base = (!known.is_empty() && rng.random_bool(0.8))
                        .then(|| known[rng.random_range(0..known.len())].clone());
                    let base_gen = base.as_ref().map_or(0, |b| b.generation);
                    for depth in (1..=rng.random_range(1..4u64)).rev() {
                        path.push(Rev::new(base_gen + depth, random_hash(&mut rng)));
                    }
                    if let Some(base) = &base {
                        path.extend(doc.as_ref().unwrap().tree.ancestry(base));
                    }
                    DocUpdate {
                        id,
                        mode: UpdateMode::Replicate { path },
                        deleted: rng.random_bool(0.15),
                        body: json!({"n": rng.random_range(0..5), "at": rng.random_range(0..4)})
                            .as_object()
                            .unwrap()
                            .clone(),
                        new_attachments: Vec::new(),
                        origin: Origin::Replication { peer: None },
                    }
                }
            };
            batch.push(update);
        }
        store.write_docs("db", batch).await.unwrap();
    }
}

async fn check_replay(policy: Policy, revs_limit: Option<u64>, retention: Option<Retention>) {
    let mut conflicts_seen = 0;
    for seed in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        // Odd seeds run on an encrypted file: replay reads it with the same key.
        let key = (seed % 2 == 1).then(crate::conformance::test_key);
        let store = SqliteStore::open_with_key(dir.path(), key.clone()).unwrap();
        store.create_db("db").await.unwrap();
        store.set_policy("db", policy.clone()).await.unwrap();
        if let Some(limit) = revs_limit {
            store.set_revs_limit("db", limit).await.unwrap();
        }
        workload(&store, seed).await;
        if let Some(retention) = retention {
            // Trim the history half-way, then keep writing: replay starts from the baselines.
            store.set_retention("db", retention).await.unwrap();
            store.compact("db").await.unwrap();
            workload(&store, seed + 100).await;
            store.compact("db").await.unwrap();
        }
        let report = replay::verify_with_key(dir.path(), "db", key.as_ref()).unwrap();
        assert!(
            report.matches(),
            "seed {seed} under {policy:?}: {:#?}",
            report.differences
        );
        assert!(report.events > 0);

        // The counters agree with the documents.
        let info = store.db_info("db").await.unwrap();
        let mut live = 0;
        let mut deleted = 0;
        for i in 0..8 {
            if let Some(doc) = store.doc("db", &format!("doc{i}")).await.unwrap() {
                if doc.tree.is_deleted() {
                    deleted += 1
                } else {
                    live += 1
                }
                conflicts_seen += doc.tree.conflicts().len();
                if !matches!(policy, Policy::Manual) && !doc.tree.conflicts().is_empty() {
                    // Only a merge whose base body this replica never held (the workload's
                    // replicated branches arrive without their ancestors' bodies) is left for
                    // another replica.
                    let needed = outpost_core::policy::needed_bodies(&policy, &doc.tree);
                    let id = format!("doc{i}");
                    let bodies = store
                        .rev_bodies("db", &id, &needed)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|(rev, body)| (rev, serde_json::from_str(&body.json).unwrap()))
                        .collect();
                    assert_eq!(
                        outpost_core::policy::resolve(&policy, &doc.tree, &bodies),
                        Err(outpost_core::policy::Unresolved::MissingBase),
                        "seed {seed}: {policy:?} left a conflict in {id}"
                    );
                }
            }
        }
        assert_eq!(
            (info.doc_count, info.doc_del_count),
            (live, deleted),
            "seed {seed}"
        );
    }
    // The workload does create conflicts; automatic policies must have resolved them all.
    if policy == Policy::Manual {
        assert!(conflicts_seen > 0, "the workload made no conflicts");
    } else {
        let resolved = {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path()).unwrap();
            store.create_db("db").await.unwrap();
            store.set_policy("db", policy.clone()).await.unwrap();
            workload(&store, 0).await;
            let events = store
                .events(
                    "db",
                    &outpost_store::EventsQuery {
                        limit: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            events.iter().filter(|e| e.kind == "resolved").count()
        };
        assert!(resolved > 0, "{policy:?} resolved nothing");
    }
}

#[tokio::test]
async fn replay_rebuilds_the_tables_under_manual() {
    check_replay(Policy::Manual, None, None).await;
}

#[tokio::test]
async fn replay_rebuilds_the_tables_with_stemming() {
    check_replay(Policy::Manual, Some(3), None).await;
}

#[tokio::test]
async fn replay_rebuilds_the_tables_under_lww() {
    check_replay(
        Policy::Lww {
            field: Some("at".into()),
        },
        None,
        None,
    )
    .await;
}

#[tokio::test]
async fn replay_rebuilds_the_tables_under_merge() {
    check_replay(
        Policy::Merge {
            field: Some("at".into()),
        },
        None,
        None,
    )
    .await;
}

#[tokio::test]
async fn replay_rebuilds_the_tables_after_retention_trimmed_the_log() {
    let retention = Retention {
        max_events_per_doc: Some(2),
        max_age_seconds: None,
    };
    check_replay(
        Policy::Merge {
            field: Some("at".into()),
        },
        None,
        Some(retention),
    )
    .await;
    check_replay(Policy::Manual, Some(4), Some(retention)).await;
}

#[tokio::test]
async fn a_tampered_table_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("db").await.unwrap();
    store
        .write_docs("db", vec![edit("a", None, json!({}))])
        .await
        .unwrap();
    store.close();
    // A document row that no event explains.
    let conn =
        rusqlite::Connection::open(dir.path().join(outpost_store::sqlite::FILE_NAME)).unwrap();
    conn.execute(
        "INSERT INTO docs (db, id, seq, deleted, tree) SELECT db, 'ghost', 99, 0, tree FROM docs WHERE id = 'a'",
        [],
    )
    .unwrap();
    let report = replay::verify(dir.path(), "db").unwrap();
    assert!(!report.matches());
    assert!(
        report.differences[0].starts_with("ghost:"),
        "{:?}",
        report.differences
    );
}

/// Edits `id` `times` times in a row.
async fn history(store: &SqliteStore, id: &str, times: u32) {
    let mut rev: Option<Rev> = None;
    for n in 0..times {
        let written = store
            .write_docs("db", vec![edit(id, rev.as_ref(), json!({ "n": n }))])
            .await
            .unwrap();
        rev = Some(written[0].clone().unwrap());
    }
}

#[tokio::test]
async fn settings_are_events_and_the_log_alone_replays() {
    // Issue 17, defect 11: `_revs_limit` was not in the log (a replay stemmed every document
    // with the current limit), and replay read deletion flags from the revision table.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("db").await.unwrap();
    history(&store, "early", 6).await;
    store.set_revs_limit("db", 2).await.unwrap();
    history(&store, "late", 6).await;
    let mut u = edit(
        "late",
        store
            .doc("db", "late")
            .await
            .unwrap()
            .unwrap()
            .tree
            .winner()
            .map(|w| w.rev)
            .as_ref(),
        json!({}),
    );
    u.deleted = true;
    store.write_docs("db", vec![u]).await.unwrap();
    store.set_revs_limit("db", 4).await.unwrap();
    store
        .set_policy(
            "db",
            Policy::Merge {
                field: Some("at".into()),
            },
        )
        .await
        .unwrap();
    history(&store, "later", 6).await;
    let lens: Vec<usize> = {
        let mut out = Vec::new();
        for id in ["early", "late", "later"] {
            out.push(store.doc("db", id).await.unwrap().unwrap().tree.len());
        }
        out
    };
    assert_eq!(lens, [6, 2, 4]);
    store.close();
    let report = replay::verify(dir.path(), "db").unwrap();
    assert!(report.matches(), "{:?}", report.differences);

    // The log, not the tables: with every body gone, the log still rebuilds the same tables.
    let conn =
        rusqlite::Connection::open(dir.path().join(outpost_store::sqlite::FILE_NAME)).unwrap();
    conn.execute("DELETE FROM revs", []).unwrap();
    let report = replay::verify(dir.path(), "db").unwrap();
    assert!(report.matches(), "{:?}", report.differences);
    // A setting the tables hold but the log does not is a difference.
    conn.execute("UPDATE dbs SET revs_limit = 9, policy = 'lww'", [])
        .unwrap();
    let report = replay::verify(dir.path(), "db").unwrap();
    assert_eq!(
        report.differences,
        [
            "database: revs_limit differs (log 4, table 9)",
            "database: conflict policy differs (log {\"conflict_policy\":\"merge\",\"lww_field\":\"at\"}, table {\"conflict_policy\":\"lww\",\"lww_field\":\"at\"})",
        ]
    );
}

#[tokio::test]
async fn rebuild_replaces_damaged_tables_and_refuses_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = Some(crate::conformance::test_key());
    let store = SqliteStore::open_with_key(dir.path(), key.clone()).unwrap();
    store.create_db("db").await.unwrap();
    store.create_db("other").await.unwrap();
    history(&store, "a", 5).await;
    store.set_revs_limit("db", 3).await.unwrap();
    history(&store, "b", 5).await;
    store
        .write_docs("other", vec![edit("x", None, json!({"keep": true}))])
        .await
        .unwrap();
    let before_a = store.doc("db", "a").await.unwrap().unwrap();
    let before_b = store.doc("db", "b").await.unwrap().unwrap();
    let info = store.db_info("db").await.unwrap();
    // The data directory's lock, as a running server holds it.
    let lock = outpost_store::sqlite::DataDirLock::acquire(dir.path()).unwrap();
    assert!(matches!(
        replay::rebuild(dir.path(), "db", key.as_ref()),
        Err(outpost_store::StoreError::InUse(_))
    ));
    drop(lock);
    // Another process with the file open (a server without the lock) is refused too.
    assert!(replay::rebuild(dir.path(), "db", key.as_ref()).is_err());
    store.close();
    drop(store);
    // Give the writer thread a moment to close its connection.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let conn = outpost_store::sqlite::key::open(
        &dir.path().join(outpost_store::sqlite::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        key.as_ref(),
    )
    .unwrap();
    conn.execute_batch(
        "DELETE FROM docs WHERE id = 'a';
         UPDATE docs SET seq = 77, deleted = 1 WHERE id = 'b';
         UPDATE dbs SET update_seq = 1, doc_count = 0 WHERE name = 'db';",
    )
    .unwrap();
    drop(conn);
    assert!(
        !replay::verify_with_key(dir.path(), "db", key.as_ref())
            .unwrap()
            .matches()
    );
    let report = replay::rebuild(dir.path(), "db", key.as_ref()).unwrap();
    assert_eq!((report.docs, report.update_seq), (2, info.update_seq));
    assert!(
        replay::verify_with_key(dir.path(), "db", key.as_ref())
            .unwrap()
            .matches()
    );
    let store = SqliteStore::open_with_key(dir.path(), key).unwrap();
    let after_a = store.doc("db", "a").await.unwrap().unwrap();
    let after_b = store.doc("db", "b").await.unwrap().unwrap();
    assert_eq!((after_a.seq, &after_a.tree), (before_a.seq, &before_a.tree));
    assert_eq!((after_b.seq, &after_b.tree), (before_b.seq, &before_b.tree));
    let rebuilt = store.db_info("db").await.unwrap();
    assert_eq!(
        (rebuilt.update_seq, rebuilt.doc_count, rebuilt.revs_limit),
        (info.update_seq, info.doc_count, info.revs_limit)
    );
    // Bodies and the other database are as they were.
    let body = store
        .rev_bodies("db", "b", &[after_b.tree.winner().unwrap().rev])
        .await
        .unwrap();
    assert_eq!(body.len(), 1);
    assert!(store.doc("other", "x").await.unwrap().is_some());
}

/// Purges random leaves of random documents (some whole), as `_purge` would.
async fn purge_some(store: &SqliteStore, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut purged = 0;
    for _ in 0..6 {
        let mut requests = Vec::new();
        for i in 0..8 {
            let id = format!("doc{i}");
            let Some(doc) = store.doc("db", &id).await.unwrap() else {
                continue;
            };
            if !rng.random_bool(0.4) {
                continue;
            }
            let revs: Vec<Rev> = doc
                .tree
                .leaves()
                .into_iter()
                .filter(|_| rng.random_bool(0.6))
                .map(|l| l.rev)
                .collect();
            requests.push(outpost_store::PurgeRequest { id, revs });
        }
        let outcome = store.purge("db", requests).await.unwrap();
        purged += outcome.purged.iter().map(|(_, r)| r.len()).sum::<usize>();
    }
    purged
}

#[tokio::test]
async fn replay_and_retention_agree_after_purges() {
    let retention = Retention {
        max_events_per_doc: Some(2),
        max_age_seconds: None,
    };
    let mut purged = 0;
    for seed in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_db("db").await.unwrap();
        if seed % 2 == 1 {
            store.set_revs_limit("db", 3).await.unwrap();
        }
        workload(&store, seed).await;
        purged += purge_some(&store, seed).await;
        // Documents purged whole come back as new ones, others grow past their purge.
        workload(&store, seed + 100).await;
        purged += purge_some(&store, seed + 100).await;
        let report = replay::verify(dir.path(), "db").unwrap();
        assert!(report.matches(), "seed {seed}: {:#?}", report.differences);
        // Retention folds purge events into baselines like any other.
        store.set_retention("db", retention).await.unwrap();
        store.compact("db").await.unwrap();
        let report = replay::verify(dir.path(), "db").unwrap();
        assert!(report.matches(), "seed {seed}: {:#?}", report.differences);
        workload(&store, seed + 200).await;
        purged += purge_some(&store, seed + 200).await;
        store.compact("db").await.unwrap();
        let report = replay::verify(dir.path(), "db").unwrap();
        assert!(report.matches(), "seed {seed}: {:#?}", report.differences);
        // The counters agree with the documents.
        let info = store.db_info("db").await.unwrap();
        let (mut live, mut deleted) = (0, 0);
        for i in 0..8 {
            if let Some(doc) = store.doc("db", &format!("doc{i}")).await.unwrap() {
                if doc.tree.is_deleted() {
                    deleted += 1
                } else {
                    live += 1
                }
            }
        }
        assert_eq!((info.doc_count, info.doc_del_count), (live, deleted));
        // Rebuilding from the log alone gives the same database back.
        let before: Vec<_> = {
            let mut docs = Vec::new();
            for i in 0..8 {
                let doc = store.doc("db", &format!("doc{i}")).await.unwrap();
                docs.push(doc.map(|d| (d.seq, d.tree)));
            }
            docs
        };
        store.close();
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let rebuilt = replay::rebuild(dir.path(), "db", None).unwrap();
        assert_eq!(rebuilt.update_seq, info.update_seq);
        let store = SqliteStore::open(dir.path()).unwrap();
        for (i, expected) in before.into_iter().enumerate() {
            let doc = store.doc("db", &format!("doc{i}")).await.unwrap();
            assert_eq!(
                doc.map(|d| (d.seq, d.tree)),
                expected,
                "seed {seed}: doc{i}"
            );
        }
        let again = store.db_info("db").await.unwrap();
        assert_eq!(
            (again.doc_count, again.doc_del_count, again.update_seq),
            (info.doc_count, info.doc_del_count, info.update_seq)
        );
    }
    assert!(purged > 20, "the purges purged little: {purged}");
}
