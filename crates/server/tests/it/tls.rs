//! The listener behind TLS: a self-signed certificate made here, HTTP/1.1 and HTTP/2 chosen by
//! ALPN, and the live `_changes` feeds over HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outpost_server::{AppState, Config, serve, serve_tls};
use outpost_store::sqlite::SqliteStore;
use reqwest::Version;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Generous: only a broken feed takes this long.
const DEADLINE: Duration = Duration::from_secs(60);

struct Running {
    base: String,
    /// The certificate clients trust.
    cert: reqwest::Certificate,
    shutdown: CancellationToken,
    /// The server task; it ends once shutdown has let every connection finish.
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server on `127.0.0.1:0` behind TLS with a fresh self-signed certificate, or plain.
async fn start(with_tls: bool) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("data")).unwrap());
    let shutdown = CancellationToken::new();
    let state = AppState::new(store, Config::default(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (base, served) = if with_tls {
        let tls = outpost_tls::Tls::load(&cert_path, &key_path).unwrap();
        let served = tokio::spawn(serve_tls(listener, state, Some(tls)));
        (format!("https://{addr}"), served)
    } else {
        (
            format!("http://{addr}"),
            tokio::spawn(serve(listener, state)),
        )
    };
    Running {
        base,
        cert: reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap(),
        shutdown,
        served: Some(served),
        _dir: dir,
    }
}

impl Running {
    /// A client trusting only the test certificate; `http1` keeps it from offering `h2`.
    fn client(&self, http1: bool) -> reqwest::Client {
        let builder = reqwest::Client::builder().tls_certs_only([self.cert.clone()]);
        let builder = if http1 { builder.http1_only() } else { builder };
        builder.build().unwrap()
    }
}

async fn put(client: &reqwest::Client, url: String, body: &str) -> Version {
    let response = client
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.version()
}

#[tokio::test]
async fn https_speaks_http1_or_http2_as_alpn_chooses() {
    let server = start(true).await;
    for (http1, version) in [(true, Version::HTTP_11), (false, Version::HTTP_2)] {
        let client = server.client(http1);
        let db = if http1 { "one" } else { "two" };
        assert_eq!(
            put(&client, format!("{}/{db}", server.base), "").await,
            version
        );
        let doc = format!("{}/{db}/a", server.base);
        assert_eq!(put(&client, doc.clone(), r#"{"v":1}"#).await, version);
        let response = client.get(&doc).send().await.unwrap();
        assert_eq!(response.version(), version);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["v"], 1);
    }
    // A client that does not trust the certificate is refused at the handshake.
    let stranger = reqwest::Client::new();
    assert!(stranger.get(&server.base).send().await.is_err());
}

#[tokio::test]
async fn plain_http_serves_http2_with_prior_knowledge() {
    let server = start(false).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(&server.base).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

/// Reads `response`'s body until it holds `needle`, failing after [`DEADLINE`].
async fn read_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    tokio::time::timeout(DEADLINE, async {
        while !seen.contains(needle) {
            let chunk = stream.next().await.expect("the feed ended").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle} in the feed: {seen}"));
}

#[tokio::test]
async fn live_changes_feeds_run_over_http2() {
    let mut server = start(true).await;
    let client = server.client(false);
    put(&client, format!("{}/db", server.base), "").await;
    put(&client, format!("{}/db/a", server.base), "{}").await;
    for (feed, id) in [("continuous", "b"), ("eventsource", "c")] {
        let response = client
            .get(format!(
                "{}/db/_changes?feed={feed}&since=0&heartbeat=1000",
                server.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut seen = String::new();
        // The feed is running once it has shown the existing document; a new one follows live.
        read_until(&mut stream, &mut seen, r#""id":"a""#).await;
        put(&client, format!("{}/db/{id}", server.base), "{}").await;
        read_until(&mut stream, &mut seen, &format!(r#""id":"{id}""#)).await;
    }
    // Longpoll from the current sequence answers with the next change.
    let info: Value = client
        .get(format!("{}/db", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let since = info["update_seq"].as_str().unwrap().to_owned();
    let poll = {
        let (client, url) = (
            client.clone(),
            format!("{}/db/_changes?feed=longpoll&since={since}", server.base),
        );
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            response.json::<Value>().await.unwrap()
        })
    };
    put(&client, format!("{}/db/z", server.base), "{}").await;
    let answer = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    assert_eq!(answer["results"][0]["id"], "z", "{answer}");

    // Shutdown with a feed open on an HTTP/2 connection: the feed ends with its last_seq and
    // the server returns.
    let response = client
        .get(format!(
            "{}/db/_changes?feed=continuous&since=0",
            server.base
        ))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, r#""id":"z""#).await;
    server.shutdown.cancel();
    read_until(&mut stream, &mut seen, "last_seq").await;
    let served = server.served.take().unwrap();
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
}
