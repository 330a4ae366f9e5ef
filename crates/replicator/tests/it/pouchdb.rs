//! Replication between pouchdb-server databases: the reference implementation on both ends, so
//! any difference between source and target is the replicator's.

use std::time::Duration;

use outpost_replicator::{
    ChangesFilter, Endpoint, Replication, ReplicationConfig, State, replication_id,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Db, assert_same, db_name, endpoint, eventually, pouchdb_server};

/// Documents of every kind the protocol must carry: plain, edited, deleted, conflicting (with
/// a deleted branch too), with attachments (one of them older than the current revision),
/// design documents and ids that need encoding.
async fn fill(db: &Db) {
    let docs: Vec<Value> = (0..120)
        .map(|i| json!({"_id": format!("doc-{i:03}"), "n": i}))
        .collect();
    db.bulk(Value::Array(docs)).await;
    let (_, doc) = db.get("doc-000").await;
    let rev = db
        .put(
            "doc-000",
            json!({"_rev": doc["_rev"], "n": 0, "edited": true}),
        )
        .await;
    db.put("doc-000", json!({"_rev": rev, "n": 0, "edited": 2}))
        .await;
    let (_, doc) = db.get("doc-001").await;
    db.delete("doc-001", doc["_rev"].as_str().unwrap()).await;
    db.force(json!([
        {"_id": "conflicted", "_rev": "1-aaaa", "v": "root"},
        {"_id": "conflicted", "_rev": "2-bbbb", "v": "left",
         "_revisions": {"start": 2, "ids": ["bbbb", "aaaa"]}},
        {"_id": "conflicted", "_rev": "2-cccc", "v": "right",
         "_revisions": {"start": 2, "ids": ["cccc", "aaaa"]}},
        {"_id": "conflicted", "_rev": "3-dddd", "_deleted": true,
         "_revisions": {"start": 3, "ids": ["dddd", "cccc", "aaaa"]}},
        {"_id": "conflicted", "_rev": "2-eeee", "v": "third",
         "_revisions": {"start": 2, "ids": ["eeee", "aaaa"]}},
    ]))
    .await;
    let rev = db
        .put_attachment("with-atts", None, "a.txt", b"first attachment")
        .await;
    let rev = db
        .put_attachment("with-atts", Some(&rev), "b%20c.bin", &[0, 1, 2, 255])
        .await;
    let (_, doc) = db.get("with-atts").await;
    let mut doc = doc;
    doc["note"] = json!("edited after the attachments");
    assert_eq!(doc["_rev"], json!(rev));
    db.put("with-atts", doc).await;
    db.put(
        "_design/app",
        json!({"views": {"all": {"map": "function (doc) { emit(doc._id); }"}}}),
    )
    .await;
    db.put("a%2Fslash", json!({"kind": "slash"})).await;
    db.put("%C3%A9t%C3%A9%20%2B%26", json!({"kind": "unicode"}))
        .await;
}

fn leaves(dump: &std::collections::BTreeMap<String, Vec<Value>>) -> u64 {
    dump.values().map(|l| l.len() as u64).sum()
}

#[tokio::test]
async fn one_shot_copies_conflicts_deletions_and_attachments() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    fill(&src).await;
    let target_name = db_name("dst");
    let config = ReplicationConfig {
        create_target: true,
        batch_size: 50,
        ..Default::default()
    };
    let replication = Replication::new(
        endpoint(&src.url),
        endpoint(&format!("{server}/{target_name}")),
        config,
    );
    let result = replication.run(CancellationToken::new()).await.unwrap();
    assert!(!result.stopped);

    let dst = Db::open(server, &target_name);
    let expected = src.dump().await;
    assert_eq!(
        expected["conflicted"].len(),
        3,
        "the fixture has three leaves: 2-bbbb, 2-eeee and the deleted 3-dddd"
    );
    assert_same(&expected, &dst.dump().await);

    let leaves = leaves(&expected);
    assert_eq!(result.stats.missing_checked, leaves);
    assert_eq!(result.stats.missing_found, leaves);
    assert_eq!(result.stats.docs_read, leaves);
    assert_eq!(result.stats.docs_written, leaves);
    assert_eq!(result.stats.doc_write_failures, 0);
    assert_eq!(result.source_last_seq.0, src.update_seq().await);

    // CouchDB's answer fields, and the same checkpoint on both sides.
    let answer = serde_json::to_value(&result).unwrap();
    for field in [
        "ok",
        "session_id",
        "source_last_seq",
        "history",
        "docs_read",
        "docs_written",
        "doc_write_failures",
        "missing_checked",
        "missing_found",
    ] {
        assert!(answer.get(field).is_some(), "no {field} in {answer}");
    }
    assert_eq!(answer["history"][0]["docs_written"], json!(leaves));
    let local = format!("_local/{}", result.replication_id);
    for db in [&src, &dst] {
        let (status, log) = db.get(&local).await;
        assert_eq!(status, 200, "{log}");
        assert_eq!(log["session_id"], json!(result.session_id));
        assert_eq!(log["source_last_seq"], result.source_last_seq.0);
        assert_eq!(log["history"][0]["recorded_seq"], result.source_last_seq.0);
    }
    assert_eq!(replication.subscribe().borrow().state, State::Completed);
}

#[tokio::test]
async fn a_second_run_resumes_from_the_checkpoint() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let docs: Vec<Value> = (0..30)
        .map(|i| json!({"_id": format!("d{i}"), "n": i}))
        .collect();
    src.bulk(Value::Array(docs)).await;
    let run = || async {
        let config = ReplicationConfig {
            batch_size: 7,
            ..Default::default()
        };
        Replication::new(endpoint(&src.url), endpoint(&dst.url), config)
            .run(CancellationToken::new())
            .await
            .unwrap()
    };
    let first = run().await;
    assert_eq!(first.stats.docs_written, 30);

    let again = run().await;
    assert!(again.no_changes, "{again:?}");
    assert_eq!(again.stats.missing_checked, 0);
    assert_eq!(again.stats.docs_written, 0);
    assert_ne!(again.session_id, first.session_id);

    // Five new documents and one edit: only those travel, and the target's own feed shows
    // that nothing it already had was written again.
    let target_seq = dst.update_seq().await;
    let docs: Vec<Value> = (30..35)
        .map(|i| json!({"_id": format!("d{i}"), "n": i}))
        .collect();
    src.bulk(Value::Array(docs)).await;
    let (_, d3) = src.get("d3").await;
    src.put("d3", json!({"_rev": d3["_rev"], "n": 3, "edited": true}))
        .await;
    let third = run().await;
    assert_eq!(third.stats.missing_checked, 6);
    assert_eq!(third.stats.docs_written, 6);
    let written = dst.changes_since(&target_seq).await;
    let mut ids: Vec<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["d3", "d30", "d31", "d32", "d33", "d34"]);
    assert_eq!(src.dump().await, dst.dump().await);
    // The history keeps the earlier sessions that checkpointed, newest first; the run that
    // found nothing to do wrote nothing.
    let (_, log) = dst.get(&format!("_local/{}", third.replication_id)).await;
    let sessions: Vec<&str> = log["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions, [&third.session_id, &first.session_id]);
}

#[tokio::test]
async fn doc_ids_filter_takes_only_those_documents() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let docs: Vec<Value> = (0..10).map(|i| json!({"_id": format!("d{i}")})).collect();
    src.bulk(Value::Array(docs)).await;
    let filter = ChangesFilter::DocIds(vec!["d7".into(), "d2".into()]);
    let config = ReplicationConfig {
        filter: filter.clone(),
        ..Default::default()
    };
    let (source, target) = (endpoint(&src.url), endpoint(&dst.url));
    let result = Replication::new(source.clone(), target.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(result.stats.docs_written, 2);
    let copied: Vec<String> = dst.dump().await.into_keys().collect();
    assert_eq!(copied, ["d2", "d7"]);
    // The filter is part of the replication id, so it does not share checkpoints with an
    // unfiltered replication of the same databases.
    let (s, t) = (source.id().await.unwrap(), target.id().await.unwrap());
    assert_eq!(result.replication_id, replication_id(&s, &t, &filter));
    assert_ne!(
        result.replication_id,
        replication_id(&s, &t, &ChangesFilter::All)
    );
}

#[tokio::test]
async fn continuous_follows_changes_until_cancelled() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let target_name = db_name("dst");
    let config = ReplicationConfig {
        continuous: true,
        create_target: true,
        batch_size: 10,
        heartbeat: Duration::from_millis(500),
        longpoll_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let replication = std::sync::Arc::new(Replication::new(
        endpoint(&src.url),
        endpoint(&format!("{server}/{target_name}")),
        config,
    ));
    let mut status = replication.subscribe();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (replication, cancel) = (replication.clone(), cancel.clone());
        async move { replication.run(cancel).await }
    });
    let dst = Db::open(server, &target_name);

    // Caught up on an empty source, then writes arrive while it waits.
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.state == State::Idle),
    )
    .await
    .expect("idle")
    .unwrap();
    for i in 0..25 {
        src.put(&format!("live-{i}"), json!({"i": i})).await;
    }
    src.force(json!([
        {"_id": "live-0", "_rev": "9-ffff", "v": "conflict",
         "_revisions": {"start": 9, "ids": ["ffff"]}},
    ]))
    .await;
    eventually(
        Duration::from_secs(30),
        "the target to catch up",
        || async { src.dump().await == dst.dump().await },
    )
    .await;

    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert!(result.stopped);
    assert_eq!(result.stats.docs_written, 26);
    assert_eq!(replication.subscribe().borrow().state, State::Stopped);
    let (_, log) = dst.get(&format!("_local/{}", result.replication_id)).await;
    assert_eq!(log["source_last_seq"], src.update_seq().await);
}
