//! Several nodes (stores) on one database: sequences in commit order, so that a reader paging
//! the changes feed on one node sees every change written on any other exactly once; live
//! feeds woken across nodes; the server's identity shared; a member of an `access=true` database
//! paging their feed on one node while others write sees each of their documents once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outpost_store::conformance::edit;
use outpost_store::{ChangesQuery, Store};
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Long enough that only a defect (a feed that is never woken) runs into it.
const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_other_nodes_see_every_change_exactly_once() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let mut nodes: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..4 {
        nodes.push(Arc::new(schema.open().await));
    }
    nodes[0].create_db("db").await.unwrap();
    const WRITERS_PER_NODE: usize = 8;
    const DOCS_PER_WRITER: usize = 40;
    let expected = 2 * WRITERS_PER_NODE * DOCS_PER_WRITER;

    // Writers on nodes 0 and 1, many at once, so that their transactions interleave.
    let mut writers = Vec::new();
    for (n, node) in nodes[..2].iter().enumerate() {
        for w in 0..WRITERS_PER_NODE {
            let node = node.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..DOCS_PER_WRITER {
                    let id = format!("n{n}-w{w}-{i:03}");
                    let out = node
                        .write_docs("db", vec![edit(&id, None, json!({"i": i}))])
                        .await
                        .unwrap();
                    assert!(out[0].is_ok(), "{id}: {:?}", out[0]);
                }
            }));
        }
    }
    // Readers on nodes 2 and 3 page the feed while the writes go on, then until they have
    // seen as many documents as were written.
    let mut readers = Vec::new();
    for node in &nodes[2..] {
        let node = node.clone();
        readers.push(tokio::spawn(async move {
            let mut since = 0;
            let mut seen: Vec<String> = Vec::new();
            while seen.len() < expected {
                let page = node
                    .changes(
                        "db",
                        &ChangesQuery {
                            since,
                            limit: 7,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                if page.is_empty() {
                    let mut rx = node.watch("db");
                    rx.borrow_and_update();
                    // Asked again after subscribing, so a change in between is not waited for.
                    let again = node
                        .changes(
                            "db",
                            &ChangesQuery {
                                since,
                                limit: 1,
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap();
                    if again.is_empty() {
                        tokio::time::timeout(GUARD, rx.changed())
                            .await
                            .expect("a write on another node never woke this one")
                            .unwrap();
                    }
                    continue;
                }
                for row in page {
                    assert!(row.seq > since, "sequence {} after {since}", row.seq);
                    since = row.seq;
                    seen.push(row.id);
                }
            }
            seen
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        let seen = tokio::time::timeout(GUARD, r)
            .await
            .expect("a reader missed changes")
            .unwrap();
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), expected, "a change was seen twice");
        assert_eq!(unique.len(), expected);
    }
    let info = nodes[3].db_info("db").await.unwrap();
    assert_eq!(info.doc_count as usize, expected);
    assert_eq!(info.update_seq as usize, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_wakes_the_feeds_of_another() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let a = schema.open().await;
    let b = schema.open().await;
    assert_eq!(a.server_uuid(), b.server_uuid());
    a.create_db("db").await.unwrap();
    let mut updates = b.watch_db_updates();
    let mut feed = b.watch("db");
    feed.borrow_and_update();
    updates.borrow_and_update();
    a.write_docs("db", vec![edit("x", None, json!({}))])
        .await
        .unwrap();
    tokio::time::timeout(GUARD, async {
        while *feed.borrow_and_update() < 1 {
            feed.changed().await.unwrap();
        }
    })
    .await
    .expect("the feed on the other node was not woken");
    tokio::time::timeout(GUARD, updates.changed())
        .await
        .expect("_db_updates on the other node was not woken")
        .unwrap();
    assert_eq!(
        b.changes(
            "db",
            &ChangesQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .len(),
        1
    );

    // A database deleted on one node ends the other's feeds.
    a.delete_db("db").await.unwrap();
    let ended = tokio::time::timeout(GUARD, async {
        loop {
            if feed.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the feed of a deleted database did not end");
}

/// A change whose notification never came (here: a sequence moved by hand, with no NOTIFY)
/// still reaches the feeds, through the listener's fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_made_up_for_by_the_poll() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let node = schema.open().await;
    node.create_db("db").await.unwrap();
    let mut feed = node.watch("db");
    let (url2, name) = (url.clone(), schema.name.clone());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url2, postgres::NoTls).unwrap();
        c.batch_execute(&format!(
            "UPDATE {}.dbs SET update_seq = 5 WHERE name = 'db'",
            outpost_store_pg::quote_ident(&name)
        ))
        .unwrap();
    })
    .join()
    .unwrap();
    tokio::time::timeout(GUARD, async {
        while *feed.borrow_and_update() < 5 {
            feed.changed().await.unwrap();
        }
    })
    .await
    .expect("the poll never noticed the change");
}

/// A `_local` document's revision check holds across nodes: of many writers racing from
/// revision 0 on two nodes, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_document_is_created_once_however_many_nodes_race() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let nodes: Vec<Arc<dyn Store>> =
        vec![Arc::new(schema.open().await), Arc::new(schema.open().await)];
    nodes[0].create_db("db").await.unwrap();
    for round in 0..5 {
        let id = format!("_local/cp{round}");
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let (node, id) = (nodes[i % 2].clone(), id.clone());
                tokio::spawn(async move {
                    node.put_local("db", &id, 0, format!("{{\"by\":{i}}}"))
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for r in racers {
            match r.await.unwrap() {
                Ok(rev) => {
                    assert_eq!(rev, 1);
                    won += 1;
                }
                Err(e) => assert!(matches!(e, outpost_store::StoreError::Conflict), "{e}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_paging_on_another_node_sees_each_of_their_documents_once() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let mut nodes: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(schema.open().await));
    }
    nodes[0]
        .create_db_with("db", &outpost_store::DbOptions { access: true })
        .await
        .unwrap();
    const WRITERS_PER_NODE: usize = 4;
    const DOCS_PER_WRITER: usize = 30;
    // Every other document is the member's.
    let expected = WRITERS_PER_NODE * DOCS_PER_WRITER;

    let mut writers = Vec::new();
    for (n, node) in nodes[..2].iter().enumerate() {
        for w in 0..WRITERS_PER_NODE {
            let node = node.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..DOCS_PER_WRITER {
                    let id = format!("n{n}-w{w}-{i:03}");
                    let who = if i % 2 == 0 { "m" } else { "other" };
                    let out = node
                        .write_docs("db", vec![edit(&id, None, json!({"_access": [who]}))])
                        .await
                        .unwrap();
                    assert!(out[0].is_ok(), "{id}: {:?}", out[0]);
                }
            }));
        }
    }
    // The member pages their feed on the third node while the writes go on.
    let reader = nodes[2].clone();
    let member = vec!["m".to_owned()];
    let paging = tokio::spawn(async move {
        let mut since = 0;
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < expected {
            let page = reader
                .access_changes(
                    "db",
                    &member,
                    &ChangesQuery {
                        since,
                        limit: 5,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            for row in &page {
                assert!(row.seq > since, "sequences go forward");
                since = row.seq;
                seen.push(row.id.clone());
            }
            if page.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        seen
    });
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(GUARD, paging)
        .await
        .expect("the member's feed missed documents")
        .unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a document came twice");
    assert_eq!(seen.len(), expected);
    assert!(
        seen.iter()
            .all(|id| id.ends_with(&['0', '2', '4', '6', '8'][..]))
    );
}
