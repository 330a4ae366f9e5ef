//! The event log on PostgreSQL: `verify` finds the tables equal to what the log rebuilds after
//! a `_revs_limit` change and a policy's resolutions, tells a damaged table, and `rebuild`
//! brings the tables back from the log alone.

use outpost_core::{Policy, Rev};
use outpost_store::conformance::edit;
use outpost_store::replay::ReplayReport;
use outpost_store::{DocUpdate, Origin, Store, UpdateMode};
use outpost_store_pg::{PgStore, quote_ident};
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Edits `id` `times` times in a row.
async fn history(store: &PgStore, id: &str, times: u32) {
    let mut rev: Option<Rev> = None;
    for n in 0..times {
        let written = store
            .write_docs("db", vec![edit(id, rev.as_ref(), json!({ "n": n }))])
            .await
            .unwrap();
        rev = Some(written[0].clone().unwrap());
    }
}

/// Runs `f` on a thread of its own: the blocking PostgreSQL client runs its own runtime.
fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

fn verify(schema: &Schema) -> ReplayReport {
    let (url, name) = (schema.url.clone(), schema.name.clone());
    blocking(move || outpost_store_pg::replay::verify(&url, Some(&name), "db").unwrap())
}

/// Every document's (id, sequence, tree) and the database's counters and settings.
async fn snapshot(store: &PgStore) -> (Vec<(String, u64, String)>, String) {
    let mut docs = Vec::new();
    for id in ["early", "late", "c"] {
        let doc = store.doc("db", id).await.unwrap().unwrap();
        docs.push((
            id.to_owned(),
            doc.seq,
            serde_json::to_string(&doc.tree).unwrap(),
        ));
    }
    let info = store.db_info("db").await.unwrap();
    let db = format!(
        "{} {} {} {} {:?}",
        info.update_seq, info.doc_count, info.doc_del_count, info.revs_limit, info.policy
    );
    (docs, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_alone_rebuilds_the_tables_across_setting_changes() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let store = schema.open().await;
    store.create_db("db").await.unwrap();
    // Issue 17, defect 11: `_revs_limit` was not in the log, so a replay stemmed `early` (written
    // under the default limit) with the later one.
    history(&store, "early", 6).await;
    store.set_revs_limit("db", 2).await.unwrap();
    history(&store, "late", 6).await;
    store
        .set_policy(
            "db",
            Policy::Lww {
                field: Some("at".into()),
            },
        )
        .await
        .unwrap();
    // Two branches replicated in: the policy resolves them with a tombstone.
    let branch = |hash: &str, at: u32| DocUpdate {
        id: "c".into(),
        mode: UpdateMode::Replicate {
            path: vec![format!("1-{hash}").parse().unwrap()],
        },
        deleted: false,
        body: json!({ "at": at }).as_object().unwrap().clone(),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    };
    store
        .write_docs("db", vec![branch("aaa", 1), branch("bbb", 2)])
        .await
        .unwrap();
    assert_eq!(
        store.doc("db", "early").await.unwrap().unwrap().tree.len(),
        6
    );
    assert_eq!(
        store.doc("db", "late").await.unwrap().unwrap().tree.len(),
        2
    );
    let report = verify(&schema);
    assert!(report.matches(), "{:?}", report.differences);
    let before = snapshot(&store).await;

    // Damage the tables: a document row gone, another's tree cut, the counters wrong.
    let (u, n) = (schema.url.clone(), schema.name.clone());
    blocking(move || {
        let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        c.batch_execute(&format!(
            "SET search_path = {};
             DELETE FROM docs WHERE id = 'late';
             UPDATE docs SET tree = (SELECT tree FROM docs WHERE id = 'c') WHERE id = 'early';
             UPDATE dbs SET doc_count = 7, revs_limit = 1000",
            quote_ident(&n)
        ))
        .unwrap();
    });
    let report = verify(&schema);
    for expected in [
        "late:",
        "early: revision tree",
        "database: doc_count",
        "database: revs_limit",
    ] {
        assert!(
            report.differences.iter().any(|d| d.starts_with(expected)),
            "{expected}: {:?}",
            report.differences
        );
    }

    let (u, n) = (schema.url.clone(), schema.name.clone());
    let rebuilt = blocking(move || outpost_store_pg::replay::rebuild(&u, Some(&n), "db").unwrap());
    assert_eq!(rebuilt.docs, 3);
    assert!(verify(&schema).matches());
    assert_eq!(snapshot(&store).await, before);
    // The node goes on writing on the rebuilt tables, stemming with the limit from the log.
    history(&store, "late2", 4).await;
    assert_eq!(
        store.doc("db", "late2").await.unwrap().unwrap().tree.len(),
        2
    );
    assert!(verify(&schema).matches());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rebuilds_the_tables_after_purges() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let store = schema.open().await;
    store.create_db("db").await.unwrap();
    history(&store, "whole", 3).await;
    history(&store, "kept", 2).await;
    // A second branch of `kept`, replicated in, then purged; `whole` purged entirely, last.
    let branch = DocUpdate {
        id: "kept".into(),
        mode: UpdateMode::Replicate {
            path: vec!["2-bbbb".parse().unwrap(), "1-aaaa".parse().unwrap()],
        },
        deleted: false,
        body: json!({}).as_object().unwrap().clone(),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    };
    store.write_docs("db", vec![branch]).await.unwrap();
    let whole = store.doc("db", "whole").await.unwrap().unwrap();
    let requests = vec![
        outpost_store::PurgeRequest {
            id: "kept".into(),
            revs: vec!["2-bbbb".parse().unwrap()],
        },
        outpost_store::PurgeRequest {
            id: "whole".into(),
            revs: vec![whole.tree.winner().unwrap().rev],
        },
    ];
    store.purge("db", requests).await.unwrap();
    assert!(store.doc("db", "whole").await.unwrap().is_none());
    let report = verify(&schema);
    assert!(report.matches(), "{:?}", report.differences);
    let kept = store.doc("db", "kept").await.unwrap().unwrap();
    let info = store.db_info("db").await.unwrap();

    let (u, n) = (schema.url.clone(), schema.name.clone());
    let rebuilt = blocking(move || outpost_store_pg::replay::rebuild(&u, Some(&n), "db").unwrap());
    assert_eq!((rebuilt.docs, rebuilt.update_seq), (1, info.update_seq));
    assert!(verify(&schema).matches());
    let again = store.doc("db", "kept").await.unwrap().unwrap();
    assert_eq!((again.seq, again.tree), (kept.seq, kept.tree));
    assert!(store.doc("db", "whole").await.unwrap().is_none());
}
