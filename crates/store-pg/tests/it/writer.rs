//! The writer's group commit on PostgreSQL: a huge request is applied in chunks, and a small
//! write queued behind it commits between two of them; a late-locking batch of several requests
//! commits what they commit one per transaction, in a number of round trips that does not grow
//! with its requests.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use outpost_core::Rev;
use outpost_store::conformance::compaction::with_attachment;
use outpost_store::conformance::edit;
use outpost_store::{ChangesQuery, DocError, DocUpdate, Store, StoreError};
use outpost_store_pg::{PgStore, quote_ident};
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Polls a future once: whether it is already done.
async fn is_ready<F: Future>(f: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_ready())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_lets_other_writes_commit_between_its_chunks() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let store = schema.open().await;
    store.create_db("big").await.unwrap();
    store.create_db("small").await.unwrap();
    // Another session holds both databases' rows, so that both requests are queued before the
    // writer can apply anything.
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (u, name) = (url.clone(), schema.name.clone());
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.query(
            &format!(
                "SELECT id FROM {}.dbs ORDER BY name FOR UPDATE",
                outpost_store_pg::quote_ident(&name)
            ),
            &[],
        )
        .unwrap();
        locked_tx.send(()).unwrap();
        released.recv().unwrap();
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    let updates: Vec<DocUpdate> = (0..6_000)
        .map(|i| edit(&format!("doc{i}"), None, json!({ "i": i })))
        .collect();
    let mut big = Box::pin(store.write_docs("big", updates));
    let mut small = Box::pin(store.write_docs("small", vec![edit("one", None, json!({}))]));
    assert!(!is_ready(&mut big).await);
    assert!(!is_ready(&mut small).await);
    release.send(()).unwrap();
    holder.join().unwrap();
    assert!(small.as_mut().await.unwrap()[0].is_ok());
    assert!(
        !is_ready(&mut big).await,
        "the small write waited for the whole of the big request"
    );
    let results = big.await.unwrap();
    assert_eq!(results.len(), 6_000);
    assert!(results.iter().all(Result::is_ok));
    let info = store.db_info("big").await.unwrap();
    assert_eq!((info.doc_count, info.update_seq), (6_000, 6_000));
}

/// A request: documents for a database.
type Request = (&'static str, Vec<DocUpdate>);

/// What a request answered, comparable between stores.
fn answer(r: Result<Vec<Result<Rev, DocError>>, StoreError>) -> String {
    format!("{r:?}")
}

/// Everything database `db` holds: its counters, its changes with each winner's body, every
/// leaf's body, and the bytes of the attachments under `digests`.
async fn snapshot(store: &PgStore, db: &str, digests: &[&str]) -> String {
    let info = store.db_info(db).await.unwrap();
    let changes = store
        .changes(
            db,
            &ChangesQuery {
                limit: u64::MAX,
                include_docs: true,
                ..ChangesQuery::default()
            },
        )
        .await
        .unwrap();
    let mut out = format!(
        "{} {} {} {}\n",
        info.doc_count, info.doc_del_count, info.update_seq, info.active_size
    );
    for row in changes {
        let leaves: Vec<(String, Rev)> = row
            .tree
            .leaves()
            .into_iter()
            .map(|l| (row.id.clone(), l.rev))
            .collect();
        let bodies: Vec<Option<String>> = store
            .bodies(db, &leaves)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.map(|b| b.json))
            .collect();
        out += &format!(
            "{} {} {:?} {:?} {:?}\n",
            row.id, row.seq, row.tree, row.body, bodies
        );
    }
    for digest in digests {
        out += &format!("{digest}: {:?}\n", store.attachment(digest).await.unwrap());
    }
    out
}

/// Holds database `db`'s row (`FOR UPDATE`) on a connection of its own, from before this
/// returns until the sender returned is sent to or dropped; join the thread returned to know the
/// row released.
fn hold_row(
    schema: &Schema,
    db: &str,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (url, name, db) = (schema.url.clone(), schema.name.clone(), db.to_owned());
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.query(
            &format!(
                "SELECT id FROM {}.dbs WHERE name = $1 FOR UPDATE",
                quote_ident(&name)
            ),
            &[&db],
        )
        .unwrap();
        held_tx.send(()).unwrap();
        let _ = released.recv();
        tx.commit().unwrap();
    });
    held.recv().unwrap();
    (release, holder)
}

/// Runs `requests` as one transaction of the writer: a write to database `hold` begins a
/// transaction that waits for that database's row, held meanwhile, so that the requests queue
/// behind it and are taken together. Answers each request's answer, and the transactions and
/// round trips the writer took for both (checking that the requests took one transaction).
async fn in_one_batch(
    schema: &Schema,
    store: &PgStore,
    hold: DocUpdate,
    requests: Vec<Request>,
) -> (Vec<String>, u64) {
    let (release, holder) = hold_row(schema, "hold");
    let (transactions, trips) = store.writer_counts();
    let mut first = Box::pin(store.write_docs("hold", vec![hold]));
    assert!(!is_ready(&mut first).await);
    let start = Instant::now();
    while store.writer_counts().0 == transactions {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the writer took nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut pending = Vec::new();
    for (db, updates) in requests {
        let mut f = Box::pin(store.write_docs(db, updates));
        assert!(!is_ready(&mut f).await);
        pending.push(f);
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    first.await.unwrap();
    let mut answers = Vec::new();
    for f in pending {
        answers.push(answer(f.await));
    }
    let (transactions_after, trips_after) = store.writer_counts();
    assert_eq!(
        transactions_after - transactions,
        2,
        "the requests were not taken in one transaction"
    );
    (answers, trips_after - trips)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_locking_batch_commits_what_its_requests_commit_one_at_a_time() {
    let Some(url) = postgres_url() else { return };
    let (one, batched) = (Schema::new(&url), Schema::new(&url));
    let stores = [one.open().await, batched.open().await];
    let mut old_revs = Vec::new();
    for store in &stores {
        for db in ["a", "hold"] {
            store.create_db(db).await.unwrap();
        }
        let old = store
            .write_docs("a", vec![edit("old", None, json!({"v": 1}))])
            .await
            .unwrap();
        old_revs.push(old[0].clone().unwrap());
    }
    assert_eq!(old_revs[0], old_revs[1]);
    let old = &old_revs[0];
    let (with_file, digest) = with_attachment("x", None, b"hello");
    let requests = |x1: &Rev| -> Vec<Request> {
        vec![
            ("a", vec![with_file.clone()]),
            // The attachment's stub refers to the revision the request before wrote.
            (
                "a",
                vec![edit(
                    "x",
                    Some(x1),
                    json!({"v": 2, "_attachments": {"f": {"stub": true}}}),
                )],
            ),
            // Refused: the document exists.
            ("a", vec![edit("old", None, json!({}))]),
            (
                "a",
                vec![
                    edit("y", None, json!({"i": 1})),
                    edit("old", Some(old), json!({"v": 2})),
                    // Refused: no longer a leaf once the second request is applied.
                    edit("x", Some(x1), json!({"v": "branch"})),
                ],
            ),
            // Refused: created by the request before.
            ("a", vec![edit("y", None, json!({"again": true}))]),
            // Refused as a whole: no such database.
            ("missing", vec![edit("z", None, json!({}))]),
            ("a", vec![edit("z", None, json!({"z": true}))]),
            // Both revisions of one document in one request.
            (
                "a",
                vec![
                    edit("w", None, json!({"w": 1})),
                    edit("w", None, json!({"w": 2})),
                ],
            ),
        ]
    };
    // One request per transaction.
    let x1 = stores[0]
        .write_docs("a", vec![with_file.clone()])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    stores[0].delete_db("a").await.unwrap();
    stores[0].create_db("a").await.unwrap();
    stores[0]
        .write_docs("a", vec![edit("old", None, json!({"v": 1}))])
        .await
        .unwrap();
    let mut expected = Vec::new();
    for (db, updates) in requests(&x1) {
        expected.push(answer(stores[0].write_docs(db, updates).await));
    }
    // All of them in one.
    let hold = edit("h", None, json!({}));
    let (answers, _) = in_one_batch(&batched, &stores[1], hold, requests(&x1)).await;
    assert_eq!(answers, expected);
    assert!(expected[1].contains("Ok("), "{expected:?}");
    assert!(expected[2].contains("Conflict"), "{expected:?}");
    assert_eq!(
        snapshot(&stores[1], "a", &[&digest]).await,
        snapshot(&stores[0], "a", &[&digest]).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_locking_batch_takes_as_many_round_trips_for_one_request_as_for_many() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let store = schema.open().await;
    for db in ["a", "hold"] {
        store.create_db(db).await.unwrap();
    }
    let mut round = 0;
    let mut batch = |n: usize| {
        round += 1;
        let hold = edit(&format!("h{round}"), None, json!({}));
        let requests: Vec<Request> = (0..n)
            .map(|i| {
                (
                    "a",
                    vec![edit(&format!("d{round}-{i}"), None, json!({"i": i}))],
                )
            })
            .collect();
        (hold, requests)
    };
    // Statements are prepared on first use: once for each shape of batch.
    let mut trips = Vec::new();
    for n in [1, 20, 1, 20] {
        let (hold, requests) = batch(n);
        let (answers, taken) = in_one_batch(&schema, &store, hold, requests).await;
        assert!(
            answers.iter().all(|a| a.starts_with("Ok([Ok(")),
            "{answers:?}"
        );
        trips.push(taken);
    }
    assert_eq!(
        trips[2], trips[3],
        "round trips of 1 and 20 requests: {trips:?}"
    );
}
