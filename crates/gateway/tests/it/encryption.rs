//! Encryption at rest of queued requests.

use crate::support::*;

const MARKER: &str = "PERSONAL-DATA-7f3a9c";
const SECRET: &str = "Bearer CREDENTIAL-e41b22";

#[tokio::test]
async fn queued_requests_are_not_stored_in_clear() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    for _ in 0..20 {
        let (status, _, _) = post(
            &gw.url(&format!("/patients/{MARKER}")),
            &format!("{{\"name\":\"{MARKER}\"}}"),
            &[("authorization", SECRET)],
        )
        .await;
        assert_eq!(status, 202);
    }
    gw.stop().await;

    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        files += 1;
        for needle in [MARKER, "CREDENTIAL-e41b22", "patients"] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds `{needle}` in clear",
                path.display()
            );
        }
    }
    assert!(files >= 2, "expected the database and the key file");
    let key = std::fs::read_to_string(dir.path().join("gateway.key")).unwrap();
    assert_eq!(key.trim().len(), 44);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("gateway.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_different_key_cannot_open_the_queue() {
    let upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(test_config(&upstream, dir.path())).await;
    gw.stop().await;
    let mut config = test_config(&upstream, dir.path());
    config.key = outpost_gateway::KeySource::Base64(outpost_gateway::crypto::generate_key_text());
    let err = outpost_gateway::Gateway::bind(config).await.unwrap_err();
    assert!(matches!(err, outpost_gateway::Error::WrongKey), "{err}");
}

#[tokio::test]
async fn a_key_from_the_environment_form_works() {
    let mut upstream = TestUpstream::stopped().await;
    let dir = tempfile::tempdir().unwrap();
    let key = outpost_gateway::crypto::generate_key_text();
    let mut config = test_config(&upstream, dir.path());
    config.key = outpost_gateway::KeySource::Base64(key.clone());
    let gw = TestGateway::start(config.clone()).await;
    let (status, _, _) = post(&gw.url("/k"), "k", &[]).await;
    assert_eq!(status, 202);
    gw.stop().await;
    assert!(!dir.path().join("gateway.key").exists());
    upstream.restart().await;
    let gw = TestGateway::start(config).await;
    gw.wait_drained(1).await;
    assert_eq!(upstream.writes()[0].body, "k");
    gw.stop().await;
}

/// Issue 15, defect 10: with `--order-by path:2` or `header:authorization` the ordering key
/// (a path, a bearer token) was stored in clear, and so was the client's idempotency key; the
/// queue file was created 0644.
#[tokio::test]
async fn ordering_and_idempotency_keys_are_not_stored_in_clear() {
    for ordering in ["path:2", "header:authorization"] {
        let upstream = TestUpstream::stopped().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&upstream, dir.path());
        config.ordering = outpost_gateway::Ordering::parse(ordering).unwrap();
        let gw = TestGateway::start(config).await;
        let (status, _, body) = post(
            &gw.url(&format!("/patients/{MARKER}/x")),
            "{}",
            &[("authorization", SECRET), ("idempotency-key", "KEY-5d1e0a")],
        )
        .await;
        assert_eq!(status, 202);
        // The status URL still shows the key; the ordering key only as a hash.
        let entry = gw.entry(body["id"].as_str().unwrap()).await;
        assert_eq!(entry["idempotency_key"], "KEY-5d1e0a");
        assert!(!entry["ordering_key"].as_str().unwrap().contains("patients"));
        gw.stop().await;
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            for needle in [MARKER, "CREDENTIAL-e41b22", "KEY-5d1e0a"] {
                assert!(
                    !data.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{ordering}: {} holds `{needle}` in clear",
                    path.display()
                );
            }
            #[cfg(unix)]
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("queue.sqlite3")
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
            }
        }
    }
}
