//! Failures: which ones are retried, how often, and what the messages show.

use std::time::Duration;

use outpost_replicator::{Backoff, Replication, ReplicationConfig, ReplicationError, State};
use tokio_util::sync::CancellationToken;

use crate::support::{Db, FakeServer, db_name, endpoint, free_port, pouchdb_server};

fn quick(max_attempts: u32) -> ReplicationConfig {
    ReplicationConfig {
        max_attempts: Some(max_attempts),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn unauthorized_is_fatal_at_once() {
    let fake = FakeServer::start(
        "401 Unauthorized",
        r#"{"error":"unauthorized","reason":"Name or password is incorrect."}"#,
    )
    .await;
    let server = &pouchdb_server().url;
    let dst = Db::create(server, &db_name("dst")).await;
    let source = endpoint(&format!(
        "{}/db",
        fake.url.replace("http://", "http://admin:hunter2@")
    ));
    let replication = Replication::new(source, endpoint(&dst.url), quick(5));
    let err = replication.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(err, ReplicationError::Unauthorized { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(fake.requests(), 1, "no retry after a 401");
    let status = replication.subscribe().borrow().clone();
    assert_eq!(status.state, State::Failed);
    let shown = status.last_error.unwrap();
    assert!(shown.contains("Name or password is incorrect"), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("admin"),
        "{shown}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_back_off_then_reported() {
    let fake = FakeServer::start(
        "503 Service Unavailable",
        r#"{"error":"unavailable","reason":"maintenance"}"#,
    )
    .await;
    let server = &pouchdb_server().url;
    let dst = Db::create(server, &db_name("dst")).await;
    let replication = Replication::new(
        endpoint(&format!("{}/db", fake.url)),
        endpoint(&dst.url),
        quick(3),
    );
    let err = replication.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(err, ReplicationError::Http { status: 503, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(fake.requests(), 3, "one request per attempt");
    assert_eq!(replication.subscribe().borrow().consecutive_failures, 3);
}

#[tokio::test]
async fn an_unreachable_peer_is_retried_and_its_password_never_shown() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let target = endpoint(&format!(
        "http://bob:s3cret-pw@127.0.0.1:{}/nowhere",
        free_port()
    ));
    assert!(!format!("{target} {target:?}").contains("s3cret"));
    let replication = Replication::new(endpoint(&src.url), target, quick(2));
    let err = replication.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, ReplicationError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert_eq!(replication.subscribe().borrow().consecutive_failures, 2);
}

#[tokio::test]
async fn a_missing_target_is_an_error_unless_created() {
    let server = &pouchdb_server().url;
    let src = Db::create(server, &db_name("src")).await;
    let missing = format!("{server}/{}", db_name("missing"));
    let replication = Replication::new(endpoint(&src.url), endpoint(&missing), quick(3));
    let err = replication.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, ReplicationError::NotFound { .. }), "{err}");
    assert_eq!(
        Db::open(server, missing.rsplit('/').next().unwrap())
            .get("")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn cancelling_during_back_off_stops_cleanly() {
    let fake =
        FakeServer::start("500 Internal Server Error", r#"{"error":"x","reason":"y"}"#).await;
    let server = &pouchdb_server().url;
    let dst = Db::create(server, &db_name("dst")).await;
    let config = ReplicationConfig {
        max_attempts: None,
        backoff: Backoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(60),
        },
        ..Default::default()
    };
    let replication = std::sync::Arc::new(Replication::new(
        endpoint(&format!("{}/db", fake.url)),
        endpoint(&dst.url),
        config,
    ));
    let mut status = replication.subscribe();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (replication, cancel) = (replication.clone(), cancel.clone());
        async move { replication.run(cancel).await }
    });
    status
        .wait_for(|s| s.state == State::Retrying)
        .await
        .unwrap();
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("a 30 s back-off does not delay stopping")
        .unwrap()
        .unwrap();
    assert!(result.stopped);
    assert_eq!(replication.subscribe().borrow().state, State::Stopped);
}
