//! The replicator under injected faults: a proxy in front of a real pouchdb-server answers
//! 503 on one batch, 413 above a size, refuses one document, cuts answers mid-body, answers
//! slowly, or refuses checkpoints. Each test checks the attempts made, the pauses between them,
//! the counters and the final state.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use outpost_replicator::{Backoff, Replication, ReplicationConfig, ReplicationError, State};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::proxy::{FaultProxy, Faults};
use crate::support::{Db, db_name, endpoint, pouchdb_server};

/// A source of `n` small documents `doc-000`, `doc-001`, ...
async fn source_with(n: usize) -> Db {
    let src = Db::create(&pouchdb_server().url, &db_name("src")).await;
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("doc-{i:03}"), "n": i}))
        .collect();
    src.bulk(Value::Array(docs)).await;
    src
}

/// `n` documents to be replicated into an empty database through a proxy with `faults` in
/// front of it: the target database, the proxy, and the replication.
async fn to_faulty_target(
    n: usize,
    faults: Faults,
    config: ReplicationConfig,
) -> (Db, FaultProxy, Replication) {
    let server = &pouchdb_server().url;
    let src = source_with(n).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let proxy = FaultProxy::start(server, faults).await;
    let replication = Replication::new(endpoint(&src.url), proxy.endpoint(&dst), config);
    (dst, proxy, replication)
}

/// Replicates with a deadline far beyond what the test needs, so a replication that never
/// gives up fails the test instead of hanging it.
async fn run(
    replication: &Replication,
) -> Result<outpost_replicator::ReplicationResult, ReplicationError> {
    tokio::time::timeout(
        Duration::from_secs(60),
        replication.run(CancellationToken::new()),
    )
    .await
    .expect("the replication neither finished nor gave up")
}

fn config(batch_size: usize, max_attempts: u32) -> ReplicationConfig {
    ReplicationConfig {
        batch_size,
        max_attempts: Some(max_attempts),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        // One checkpoint at the end only: a retry re-reads the batches before the failing one.
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// A target that keeps answering 503 to one batch: the batches before it are re-read on each
/// retry, and finding them already written is not progress, so the attempt budget runs out
/// after exactly `max_attempts` tries of that batch, with growing pauses in between.
#[tokio::test]
async fn a_batch_failing_for_good_spends_the_attempt_budget_with_back_off() {
    let (_dst, proxy, replication) = to_faulty_target(
        30,
        Faults {
            unavailable_with: Some("doc-015".into()),
            ..Default::default()
        },
        config(10, 3),
    )
    .await;
    let err = run(&replication).await.unwrap_err();
    assert!(
        matches!(err, ReplicationError::Http { status: 503, .. }),
        "{err}"
    );
    let writes = proxy.seen_at("POST", "/_bulk_docs");
    let failing: Vec<_> = writes.iter().filter(|w| w.status == 503).collect();
    assert_eq!(failing.len(), 3, "one try per attempt: {writes:?}");
    // The first batch is written once; retries find it on the target and skip it.
    assert_eq!(writes.len(), 4, "{writes:?}");
    // Pauses: at least half of each back-off step (100 ms, then 200 ms).
    let gaps: Vec<Duration> = failing.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(50), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(100), "{gaps:?}");
    let status = replication.subscribe().borrow().clone();
    assert_eq!(status.state, State::Failed);
    assert_eq!(status.consecutive_failures, 3);
    assert_eq!(status.stats.docs_written, 10);
}

/// A target with a body limit answers 413 to a whole batch: the batch is halved until its
/// parts fit, and a document too large on its own is counted as a write failure and skipped,
/// whether it travels in `_bulk_docs` (a large body) or alone with its attachment bytes.
#[tokio::test]
async fn a_batch_too_large_is_halved_down_to_one_document() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    for i in 0..10 {
        src.put(&format!("doc-{i:03}"), json!({"text": "x".repeat(40_000)}))
            .await;
    }
    src.put("huge", json!({"text": "y".repeat(300_000)})).await;
    src.put_attachment("photo", None, "a.bin", &vec![b'z'; 300_000])
        .await;
    let dst = Db::create(server, &db_name("dst")).await;
    let proxy = FaultProxy::start(
        server,
        Faults {
            max_body: Some(200_000),
            ..Default::default()
        },
    )
    .await;
    let replication = Replication::new(endpoint(&src.url), proxy.endpoint(&dst), config(100, 3));
    let result = run(&replication).await.unwrap();
    assert_eq!(result.stats.docs_written, 10);
    assert_eq!(result.stats.doc_write_failures, 2);
    let (_, info) = dst.get("").await;
    assert_eq!(info["doc_count"], 10);
    for id in ["huge", "photo"] {
        let (status, _) = dst.get(id).await;
        assert_eq!(status, 404, "{id}");
    }
    let writes = proxy.seen_at("POST", "/_bulk_docs");
    assert!(
        writes
            .iter()
            .any(|w| w.status == 413 && w.doc_ids.len() == 11),
        "{writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|w| w.status != 413 || w.doc_ids.len() > 1 || w.doc_ids == ["huge"]),
        "{writes:?}"
    );
    let puts = proxy.seen_at("PUT", "/photo");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].status, 413);
}

/// One document the target refuses (an error entry in `_bulk_docs`) is counted in
/// `doc_write_failures` and skipped; it does not fail or retry the batch.
#[tokio::test]
async fn a_refused_document_is_counted_and_skipped() {
    let (dst, proxy, replication) = to_faulty_target(
        30,
        Faults {
            refuse: Some("doc-007".into()),
            ..Default::default()
        },
        config(10, 3),
    )
    .await;
    let result = run(&replication).await.unwrap();
    assert_eq!(result.stats.docs_written, 29);
    assert_eq!(result.stats.doc_write_failures, 1);
    assert_eq!(
        proxy.seen_at("POST", "/_bulk_docs").len(),
        3,
        "one write per batch"
    );
    let (status, _) = dst.get("doc-007").await;
    assert_eq!(status, 404);
    let (_, info) = dst.get("").await;
    assert_eq!(info["doc_count"], 29);
}

/// Answers cut off mid-body are transient: the replication retries and completes.
#[tokio::test]
async fn answers_cut_mid_body_are_retried() {
    let server = &pouchdb_server().url;
    let src = source_with(30).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let proxy = FaultProxy::start(
        server,
        Faults {
            cut_bulk_get: AtomicUsize::new(2),
            ..Default::default()
        },
    )
    .await;
    let replication = Replication::new(
        proxy.endpoint(&src),
        endpoint(&dst.url),
        ReplicationConfig {
            fetch_parallelism: 1,
            ..config(10, 5)
        },
    );
    let result = run(&replication).await.unwrap();
    assert_eq!(result.stats.docs_written, 30);
    let (_, info) = dst.get("").await;
    assert_eq!(info["doc_count"], 30);
    // Three batches, and two of the answers were cut before a retry got them through.
    assert_eq!(proxy.seen_at("POST", "/_bulk_get").len(), 5);
}

/// Slow answers (well within the request timeout) are waited for, not counted as failures.
#[tokio::test]
async fn slow_answers_are_waited_for() {
    let (_dst, proxy, replication) = to_faulty_target(
        20,
        Faults {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
        config(10, 1),
    )
    .await;
    let result = run(&replication).await.unwrap();
    assert_eq!(result.stats.docs_written, 20);
    // Every answer arrived (a missing checkpoint is a 404, as without the proxy).
    let seen = proxy.seen();
    assert!(
        seen.iter().all(|s| matches!(s.status, 200 | 201 | 404)),
        "{seen:?}"
    );
    assert_eq!(replication.subscribe().borrow().consecutive_failures, 0);
}

/// A read-only source never holds a checkpoint. As PouchDB does, the replicator then trusts the
/// target's log, so a second run starts where the first ended rather than from 0.
#[tokio::test]
async fn a_read_only_source_resumes_from_the_targets_log() {
    let server = &pouchdb_server().url;
    let src = source_with(20).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let proxy = FaultProxy::start(
        server,
        Faults {
            read_only_local: true,
            ..Default::default()
        },
    )
    .await;
    let replicate = || async {
        let replication =
            Replication::new(proxy.endpoint(&src), endpoint(&dst.url), config(100, 1));
        run(&replication).await.unwrap()
    };
    let first = replicate().await;
    assert_eq!(first.stats.docs_written, 20);
    let reads_of_first = proxy.seen_at("GET", "/_changes").len();
    src.put("late", json!({})).await;
    let second = replicate().await;
    assert_eq!(second.stats.docs_written, 1);
    let reads = proxy.seen_at("GET", "/_changes");
    let resumed_at = reads[reads_of_first].target.clone();
    let since = first.source_last_seq.to_query();
    assert!(
        resumed_at.contains(&format!("since={since}")),
        "{resumed_at}"
    );
    assert_ne!(since, "0");
}

/// A document with a 1 MB attachment edited ten times: only the first replication moves the
/// attachment. Later revisions send it as a stub, because the target holds an ancestor with it
/// (`possible_ancestors` of `_revs_diff`), and the replicator does not fetch it either. Over the
/// eleven replications, each link (replicator to source, replicator to target, as an edge
/// device's one link to the cloud would be) carries at most 1.1 MB in all, request and answer
/// bodies counted: the megabyte once (as binary, not base64) and a little JSON per edit.
#[tokio::test]
async fn unchanged_attachments_never_travel_again() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let dst = Db::create(server, &db_name("dst")).await;
    let photo: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    src.put_attachment("photo", None, "a.bin", &photo).await;
    let proxy = FaultProxy::start(server, Faults::default()).await;
    let replicate = || async {
        let replication =
            Replication::new(proxy.endpoint(&src), proxy.endpoint(&dst), config(100, 1));
        run(&replication).await.unwrap()
    };
    // Bytes exchanged with one database so far.
    let bytes_with = |db: &Db| {
        let path = format!("/{}", db.url.rsplit('/').next().unwrap());
        proxy
            .seen()
            .iter()
            .filter(|s| {
                s.target == path
                    || s.target.starts_with(&format!("{path}/"))
                    || s.target.starts_with(&format!("{path}?"))
            })
            .map(|s| s.bytes)
            .sum::<usize>()
    };
    replicate().await;
    let (first_src, first_dst) = (bytes_with(&src), bytes_with(&dst));
    assert!(
        first_src > 1_000_000 && first_dst > 1_000_000,
        "the first copy carries the attachment both ways: {first_src} / {first_dst}"
    );
    for i in 0..10 {
        let (_, mut doc) = src.get("photo").await;
        doc["edit"] = json!(i);
        src.put("photo", doc).await;
        assert_eq!(replicate().await.stats.docs_written, 1);
    }
    let (total_src, total_dst) = (bytes_with(&src), bytes_with(&dst));
    let later = total_src + total_dst - first_src - first_dst;
    assert!(later < 100_000, "ten JSON edits moved {later} bytes");
    for (link, total) in [("source", total_src), ("target", total_dst)] {
        assert!(
            total <= 1_100_000,
            "the link to the {link} carried {total} bytes over eleven replications"
        );
    }
    crate::support::assert_same(&src.dump().await, &dst.dump().await);
}
