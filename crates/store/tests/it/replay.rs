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
        let report = replay::rebuild_with_key(dir.path(), "db", key.as_ref()).unwrap();
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
    let report = replay::rebuild(dir.path(), "db").unwrap();
    assert!(!report.matches());
    assert!(
        report.differences[0].starts_with("ghost:"),
        "{:?}",
        report.differences
    );
}
