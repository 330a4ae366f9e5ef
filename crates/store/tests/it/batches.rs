//! One request with many revisions of a document: applied as one batch it must end exactly as
//! the same updates applied one request at a time, take one sequence per document, and not hold
//! the writer against other databases' writes.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use outpost_core::Rev;
use outpost_store::sqlite::{SqliteStore, replay};
use outpost_store::{DocError, DocUpdate, EventsQuery, Origin, Store, UpdateMode};
use proptest::prelude::*;
use serde_json::json;

use crate::conformance::edit;

fn replicated(id: &str, path: Vec<Rev>, deleted: bool, v: u64) -> DocUpdate {
    DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Replicate { path },
        deleted,
        body: json!({ "v": v }).as_object().unwrap().clone(),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    }
}

/// One step of a random request, resolved against the revisions the request has named so far.
#[derive(Debug, Clone)]
enum Step {
    /// A replicated branch of `len` new revisions on top of the `base`-th known revision (or a
    /// new root), possibly a deletion.
    Branch {
        doc: usize,
        base: Option<usize>,
        len: u64,
        deleted: bool,
    },
    /// A replicated revision sent again.
    Again { pick: usize },
    /// An interactive edit of the `base`-th known revision (or of nothing), possibly a deletion.
    Edit {
        doc: usize,
        base: Option<usize>,
        deleted: bool,
    },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0..3usize, prop::option::of(0..64usize), 1..4u64, prop::bool::weighted(0.2))
            .prop_map(|(doc, base, len, deleted)| Step::Branch { doc, base, len, deleted }),
        1 => (0..64usize).prop_map(|pick| Step::Again { pick }),
        2 => (0..3usize, prop::option::of(0..64usize), prop::bool::weighted(0.2))
            .prop_map(|(doc, base, deleted)| Step::Edit { doc, base, deleted }),
    ];
    prop::collection::vec(step, 1..40)
}

/// Turns steps into updates. Revisions are named up front from the steps alone, so both ways of
/// applying them see the same request, conflicts and refusals included.
fn updates(steps: &[Step]) -> Vec<DocUpdate> {
    // Every replicated path sent so far, per document.
    let mut known: Vec<Vec<Vec<Rev>>> = vec![Vec::new(); 3];
    let mut sent: Vec<DocUpdate> = Vec::new();
    let mut out = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let update = match step {
            Step::Branch {
                doc,
                base,
                len,
                deleted,
            } => {
                let paths = &known[*doc];
                let mut path = match base {
                    Some(b) if !paths.is_empty() => paths[b % paths.len()].clone(),
                    _ => Vec::new(),
                };
                for k in 0..*len {
                    let generation = path.first().map_or(1, |r: &Rev| r.generation + 1);
                    path.insert(0, Rev::new(generation, format!("{n:02}{k}")));
                }
                known[*doc].push(path.clone());
                let update = replicated(&format!("d{doc}"), path, *deleted, n as u64);
                sent.push(update.clone());
                update
            }
            Step::Again { pick } if !sent.is_empty() => sent[pick % sent.len()].clone(),
            Step::Again { .. } => continue,
            Step::Edit { doc, base, deleted } => {
                let paths = &known[*doc];
                let base = match base {
                    Some(b) if !paths.is_empty() => Some(paths[b % paths.len()][0].clone()),
                    _ => None,
                };
                let mut update = edit(&format!("d{doc}"), base.as_ref(), json!({ "v": n }));
                update.deleted = *deleted;
                update
            }
        };
        out.push(update);
    }
    out
}

/// What a store ended with: every document's tree, the counters and each document's events.
async fn outcome(
    store: &SqliteStore,
    dir: &std::path::Path,
) -> (Vec<String>, (u64, u64), Vec<Vec<String>>) {
    let mut trees = Vec::new();
    let mut events = Vec::new();
    for doc in 0..3 {
        let id = format!("d{doc}");
        let record = store.doc("db", &id).await.unwrap();
        trees.push(
            record
                .map(|r| {
                    format!(
                        "{} winner {:?}",
                        serde_json::to_string(&r.tree).unwrap(),
                        r.tree.winner()
                    )
                })
                .unwrap_or_default(),
        );
        let query = EventsQuery {
            limit: 100_000,
            doc_id: Some(id),
            ..Default::default()
        };
        events.push(
            store
                .events("db", &query)
                .await
                .unwrap()
                .into_iter()
                .map(|e| format!("{} {} {:?} {:?}", e.kind, e.rev, e.parent, e.detail))
                .collect(),
        );
    }
    let info = store.db_info("db").await.unwrap();
    let report = replay::verify(dir, "db").unwrap();
    assert!(report.matches(), "{:#?}", report.differences);
    (trees, (info.doc_count, info.doc_del_count), events)
}

async fn apply(
    updates: Vec<DocUpdate>,
    one_at_a_time: bool,
) -> (
    Vec<Result<Rev, DocError>>,
    impl std::fmt::Debug + PartialEq,
    u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("db").await.unwrap();
    let mut results = Vec::new();
    if one_at_a_time {
        for update in updates {
            results.extend(store.write_docs("db", vec![update]).await.unwrap());
        }
    } else {
        results = store.write_docs("db", updates).await.unwrap();
    }
    let seq = store.db_info("db").await.unwrap().update_seq;
    (results, outcome(&store, dir.path()).await, seq)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_request_ends_as_its_updates_applied_one_at_a_time(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let updates = updates(&steps);
        let (batch_results, batch, batch_seq) = runtime.block_on(apply(updates.clone(), false));
        let (single_results, single, _) = runtime.block_on(apply(updates, true));
        prop_assert_eq!(batch_results, single_results);
        prop_assert_eq!(batch, single);
        // One sequence per document written, however many revisions it received.
        prop_assert!(batch_seq <= 3);
    }
}

#[tokio::test]
async fn many_conflicting_revisions_in_one_request_take_one_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("db").await.unwrap();
    let mut updates: Vec<DocUpdate> = (0..300)
        .map(|i| replicated("x", vec![Rev::new(1, format!("{i:04}"))], false, i))
        .collect();
    updates.push(replicated("y", vec![Rev::new(1, "a".to_owned())], false, 0));
    // The same revision twice: accepted, and nothing more.
    updates.push(replicated(
        "x",
        vec![Rev::new(1, "0007".to_owned())],
        false,
        7,
    ));
    let results = store.write_docs("db", updates).await.unwrap();
    assert_eq!(results.len(), 302);
    assert!(results.iter().all(Result::is_ok));
    let info = store.db_info("db").await.unwrap();
    assert_eq!((info.update_seq, info.doc_count), (2, 2));
    let doc = store.doc("db", "x").await.unwrap().unwrap();
    assert_eq!(doc.seq, 1);
    assert_eq!(doc.tree.leaves().len(), 300);
    assert_eq!(doc.tree.winner().unwrap().rev.to_string(), "1-0299");
    let events = store
        .events(
            "db",
            &EventsQuery {
                limit: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 301);
    assert!(events[..300].iter().all(|e| e.seq == 1 && e.id == "x"));
    assert_eq!(events[1].kind, "conflict");
    // A page never ends inside a sequence.
    let page = store
        .events(
            "db",
            &EventsQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 300);
    assert!(replay::verify(dir.path(), "db").unwrap().matches());
}

/// Polls a future once: whether it is already done.
async fn is_ready<F: Future>(f: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_ready())).await
}

#[tokio::test]
async fn a_huge_request_lets_other_databases_write_between_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.create_db("big").await.unwrap();
    store.create_db("small").await.unwrap();
    // Hold the file's write lock so that both requests are queued before the writer starts.
    let lock =
        rusqlite::Connection::open(dir.path().join(outpost_store::sqlite::FILE_NAME)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let updates: Vec<DocUpdate> = (0..6_000)
        .map(|i| edit(&format!("doc{i}"), None, json!({ "i": i })))
        .collect();
    let mut big = Box::pin(store.write_docs("big", updates));
    let mut small = Box::pin(store.write_docs("small", vec![edit("one", None, json!({}))]));
    assert!(!is_ready(&mut big).await);
    assert!(!is_ready(&mut small).await);
    lock.execute_batch("COMMIT").unwrap();
    assert!(small.as_mut().await.unwrap()[0].is_ok());
    assert!(
        !is_ready(&mut big).await,
        "the small write waited for the whole of the big request"
    );
    let results = big.await.unwrap();
    assert_eq!(results.len(), 6_000);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.db_info("big").await.unwrap().doc_count, 6_000);
}

#[tokio::test]
async fn a_version_1_file_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_db("db").await.unwrap();
        let first = store
            .write_docs("db", vec![edit("a", None, json!({"v": 1}))])
            .await
            .unwrap();
        let rev = first[0].clone().unwrap();
        store
            .write_docs("db", vec![edit("a", Some(&rev), json!({"v": 2}))])
            .await
            .unwrap();
        store.close();
    }
    // Turn the file back into version 1: events keyed by (db, seq), no `pos`.
    let conn =
        rusqlite::Connection::open(dir.path().join(outpost_store::sqlite::FILE_NAME)).unwrap();
    conn.execute_batch(
        "CREATE TABLE events_v1 (db INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
             doc TEXT NOT NULL, rev TEXT NOT NULL, parent TEXT, origin TEXT NOT NULL,
             at INTEGER NOT NULL, detail TEXT, PRIMARY KEY (db, seq)) WITHOUT ROWID;
         INSERT INTO events_v1 SELECT db, seq, kind, doc, rev, parent, origin, at, detail FROM events;
         DROP TABLE events;
         ALTER TABLE events_v1 RENAME TO events;
         CREATE INDEX events_by_doc ON events (db, doc, seq);
         ALTER TABLE dbs DROP COLUMN purge_seq;
         ALTER TABLE dbs DROP COLUMN purged_infos_limit;
         UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(dir.path()).unwrap();
    let all = EventsQuery {
        limit: 100,
        ..Default::default()
    };
    let events = store.events("db", &all).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(1, "created"), (2, "updated")]
    );
    // Several revisions of one document in one request now share a sequence.
    let updates = vec![
        replicated("b", vec![Rev::new(1, "x".to_owned())], false, 0),
        replicated("b", vec![Rev::new(1, "y".to_owned())], false, 1),
    ];
    store.write_docs("db", updates).await.unwrap();
    let events = store.events("db", &all).await.unwrap();
    assert_eq!(events.len(), 4);
    assert!(events[2..].iter().all(|e| e.seq == 3));
    assert!(replay::verify(dir.path(), "db").unwrap().matches());
}
