//! `outpost serve` as a process with TLS and an encrypted store: a certificate reloaded on
//! SIGHUP on the same listener, a store that holds no plaintext and refuses a missing or wrong
//! key with a message naming it, and `outpost db rekey`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// Generous deadlines for a loaded machine; only a failure waits this long.
const START_DEADLINE: Duration = Duration::from_secs(60);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        self.signal("TERM");
        let started = Instant::now();
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                started.elapsed() < EXIT_DEADLINE,
                "outpost serve did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            exit.success(),
            "outpost serve exited with {exit}: {}",
            self.log()
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a fresh self-signed certificate for `localhost` and `127.0.0.1`; returns its PEM.
fn write_certificate(cert: &Path, key: &Path) -> String {
    let rcgen::CertifiedKey {
        cert: c,
        signing_key,
    } = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    // Written beside and renamed, as a certificate manager does, so a reload never reads half.
    for (path, text) in [(key, signing_key.serialize_pem()), (cert, c.pem())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    c.pem()
}

fn client_trusting(pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

/// Starts `outpost serve` with `args` and `envs`, and waits until `client` gets an answer on
/// `scheme`.
async fn start(
    dir: &Path,
    scheme: &str,
    client: &reqwest::Client,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Server {
    let port = free_port();
    let log = dir.join(format!("log-{port}"));
    let child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--data"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(envs.iter().copied())
        .env("OUTPOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        base: format!("{scheme}://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + START_DEADLINE;
    while client
        .get(format!("{}/_up", server.base))
        .send()
        .await
        .is_err()
    {
        if let Some(exit) = server.child.try_wait().unwrap() {
            panic!("outpost serve exited with {exit}: {}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "outpost did not start: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Whether `client` completes a request to `base`.
async fn answers(client: &reqwest::Client, base: &str) -> bool {
    client.get(format!("{base}/")).send().await.is_ok()
}

/// Waits until `condition` holds, failing after [`START_DEADLINE`].
async fn until<F: AsyncFn() -> bool>(what: &str, condition: F) {
    let deadline = Instant::now() + START_DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_on_the_same_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first_pem = write_certificate(&cert, &key);
    let first = client_trusting(&first_pem);
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = start(dir.path(), "https", &first, &args, &[]).await;
    // (Which HTTP version the client speaks depends on the features reqwest is built with
    // here; `crates/server/tests/it/tls.rs` checks both.)
    let response = first.get(&server.base).send().await.unwrap();
    assert!(response.status().is_success());
    let plain = reqwest::Client::new();
    let insecure = server.base.replace("https://", "http://");
    assert!(
        !answers(&plain, &insecure).await,
        "plain HTTP answered on the TLS port"
    );

    let second_pem = write_certificate(&cert, &key);
    let second = client_trusting(&second_pem);
    assert!(!answers(&second, &server.base).await);
    server.signal("HUP");
    until("the new certificate is served", || {
        answers(&second, &server.base)
    })
    .await;
    // A fresh client (no pooled connection from before) that trusts only the old certificate.
    assert!(!answers(&client_trusting(&first_pem), &server.base).await);

    // A reload that fails keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal("HUP");
    until("the failed reload is logged", async || {
        server.log().contains("TLS certificate not reloaded")
    })
    .await;
    // A fresh client, so the answer comes over a new handshake.
    assert!(answers(&client_trusting(&second_pem), &server.base).await);
    assert!(server.log().contains("TLS certificate reloaded"));
    server.stop().await;
}

/// Text only the written document holds.
const MARKER: &str = "clinic-note-4b7d1e";

fn outpost(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("OUTPOST_STORE_KEY")
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// Starts `outpost serve` expecting it to fail; returns its stderr.
fn refused(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut all = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = outpost(&all, envs);
    assert!(!out.status.success(), "outpost serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn holds_marker(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
    })
}

#[tokio::test]
async fn an_encrypted_store_keeps_no_plaintext_and_names_a_bad_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("store.key");
    let raw = "3c".repeat(32);
    std::fs::write(&key_file, format!("{raw}\n")).unwrap();
    let client = reqwest::Client::new();
    let server = start(
        dir.path(),
        "http",
        &client,
        &["--key-file", key_file.to_str().unwrap()],
        &[],
    )
    .await;
    let base = server.base.clone();
    assert!(
        client
            .put(format!("{base}/db"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let put = client
        .put(format!("{base}/db/visit"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"note":"{MARKER}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert!(!holds_marker(&data));
    assert!(!server.log().contains(&raw), "the key is in the log");
    server.stop().await;
    assert!(!holds_marker(&data));

    let missing = refused(&data, &[], &[]);
    assert!(missing.contains("is encrypted"), "{missing}");
    let wrong = refused(&data, &[], &[("OUTPOST_STORE_KEY", &"c3".repeat(32))]);
    assert!(wrong.contains("wrong key"), "{wrong}");
    let both = refused(
        &data,
        &["--key-file", key_file.to_str().unwrap()],
        &[("OUTPOST_STORE_KEY", &raw)],
    );
    assert!(both.contains("one way only"), "{both}");

    // A new key, then the store opens with it (from the environment) and not with the old.
    let new_file = dir.path().join("new.key");
    std::fs::write(&new_file, "a passphrase this time\n").unwrap();
    let data_arg = data.to_str().unwrap();
    let rekey = outpost(
        &[
            "db",
            "rekey",
            "--data",
            data_arg,
            "--key-file",
            key_file.to_str().unwrap(),
            "--new-key-file",
            new_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        rekey.status.success(),
        "{}",
        String::from_utf8_lossy(&rekey.stderr)
    );
    let old = refused(&data, &["--key-file", key_file.to_str().unwrap()], &[]);
    assert!(old.contains("wrong key"), "{old}");
    let rebuild = outpost(
        &["db", "verify", "--data", data_arg, "db"],
        &[("OUTPOST_STORE_KEY", "a passphrase this time")],
    );
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    let server = start(
        dir.path(),
        "http",
        &client,
        &[],
        &[("OUTPOST_STORE_KEY", "a passphrase this time")],
    )
    .await;
    let doc: Value = client
        .get(format!("{}/db/visit", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["note"], MARKER);
    server.stop().await;

    // Decrypted in place, it opens without a key and holds the text in the clear.
    let decrypt = outpost(
        &["db", "rekey", "--data", data_arg, "--decrypt"],
        &[("OUTPOST_STORE_KEY", "a passphrase this time")],
    );
    assert!(
        decrypt.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypt.stderr)
    );
    assert!(holds_marker(&data));
    let needless = refused(&data, &["--key-file", key_file.to_str().unwrap()], &[]);
    assert!(needless.contains("not encrypted"), "{needless}");
}
