//! The writer's group commit on PostgreSQL: a huge request is applied in chunks, and a small
//! write queued behind it commits between two of them.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use outpost_store::conformance::edit;
use outpost_store::{DocUpdate, Store};
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
