//! Encryption at rest: what is on disk, and what a missing, wrong or changed key does. The
//! behaviour of an encrypted store is the conformance suite's (`conformance::engines`).

use std::path::Path;

use outpost_store::sqlite::{FILE_NAME, SqliteStore, StoreKey, key};
use outpost_store::{NewAttachment, Store, StoreError};
use serde_json::json;

use crate::conformance::{edit, test_key};

/// Text that only the written document and attachment hold.
const MARKER: &str = "patient-record-7f3a9c";

/// Writes a document and an attachment holding [`MARKER`].
async fn write_marked(store: &SqliteStore) {
    store.create_db("clinic").await.unwrap();
    let data = format!("{MARKER} attachment").into_bytes();
    let digest = outpost_core::hash::attachment_digest(&data);
    let mut update = edit(
        "visit",
        None,
        json!({"note": MARKER, "_attachments": {"scan.txt": {
            "content_type": "text/plain", "digest": digest, "length": data.len()
        }}}),
    );
    update.new_attachments.push(NewAttachment { digest, data });
    let out = store.write_docs("clinic", vec![update]).await.unwrap();
    assert!(out[0].is_ok());
}

/// Whether any file in `dir` (the database, its WAL, its shared memory) holds [`MARKER`]. A
/// WAL that a closing writer removes while this looks is skipped.
fn plaintext_on_disk(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = match std::fs::read(entry.unwrap().path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => panic!("{e}"),
        };
        bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
    })
}

#[tokio::test]
async fn an_encrypted_file_holds_no_plaintext_of_a_written_document() {
    // The check itself finds the marker in a plain store.
    let plain = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(plain.path()).unwrap();
    write_marked(&store).await;
    assert!(plaintext_on_disk(plain.path()));
    store.close();

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), Some(test_key())).unwrap();
    write_marked(&store).await;
    // While open (the write still in the WAL) and after a checkpoint into the main file.
    assert!(!plaintext_on_disk(dir.path()));
    store.compact("clinic").await.unwrap();
    assert!(!plaintext_on_disk(dir.path()));
    let doc = store.doc("clinic", "visit").await.unwrap().unwrap();
    let winner = doc.tree.winner().unwrap().rev;
    let bodies = store
        .rev_bodies("clinic", "visit", &[winner])
        .await
        .unwrap();
    assert!(bodies[0].1.json.contains(MARKER));
    store.close();
}

/// Runs `f` until the file is no longer in use: a closed store's writer thread lets go of its
/// connection shortly after `close`.
fn once_free(f: impl Fn() -> Result<(), StoreError>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match f() {
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn key_error(result: Result<SqliteStore, StoreError>) -> String {
    match result {
        Err(StoreError::Key(message)) => message,
        Err(other) => panic!("expected a key error, got {other}"),
        Ok(_) => panic!("expected a key error, the store opened"),
    }
}

#[tokio::test]
async fn a_missing_wrong_or_needless_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), Some(test_key())).unwrap();
    write_marked(&store).await;
    store.close();
    drop(store);

    let missing = key_error(SqliteStore::open(dir.path()));
    assert!(missing.contains("is encrypted"), "{missing}");
    let wrong = StoreKey::new(&"a5".repeat(32)).unwrap();
    let wrong = key_error(SqliteStore::open_with_key(dir.path(), Some(wrong)));
    assert!(wrong.contains("wrong key"), "{wrong}");

    let plain = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(plain.path()).unwrap());
    let needless = key_error(SqliteStore::open_with_key(plain.path(), Some(test_key())));
    assert!(needless.contains("not encrypted"), "{needless}");
}

#[test]
fn keys_are_raw_hex_or_passphrases_and_never_shown() {
    let raw = StoreKey::new(&format!("{}\n", "0f".repeat(32))).unwrap();
    assert!(raw.is_raw());
    let phrase = StoreKey::new("correct horse battery staple\n").unwrap();
    assert!(!phrase.is_raw());
    assert!(!format!("{phrase:?}").contains("horse"));
    assert!(matches!(StoreKey::new(" \n"), Err(StoreError::Key(_))));
}

#[tokio::test]
async fn a_passphrase_opens_what_it_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let phrase = || Some(StoreKey::new("correct horse battery staple").unwrap());
    let store = SqliteStore::open_with_key(dir.path(), phrase()).unwrap();
    write_marked(&store).await;
    store.close();
    drop(store);
    assert!(!plaintext_on_disk(dir.path()));
    let store = SqliteStore::open_with_key(dir.path(), phrase()).unwrap();
    assert!(store.doc("clinic", "visit").await.unwrap().is_some());
}

#[tokio::test]
async fn rekey_replaces_the_key_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_key(dir.path(), Some(test_key())).unwrap();
    write_marked(&store).await;
    let path = store.path().to_owned();
    // Refused while the store is open.
    let new = StoreKey::new(&"c3".repeat(32)).unwrap();
    let busy = key::rekey(&path, &test_key(), &new).unwrap_err();
    assert!(busy.to_string().contains("in use"), "{busy}");
    store.close();
    drop(store);

    once_free(|| key::rekey(&path, &test_key(), &new));
    key_error(SqliteStore::open_with_key(dir.path(), Some(test_key())));
    let store = SqliteStore::open_with_key(dir.path(), Some(new)).unwrap();
    assert!(store.doc("clinic", "visit").await.unwrap().is_some());
    assert!(!plaintext_on_disk(dir.path()));
}

#[tokio::test]
async fn a_plain_store_is_encrypted_and_decrypted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let store = SqliteStore::open(dir.path()).unwrap();
    write_marked(&store).await;
    let uuid = store.server_uuid_str().to_owned();
    store.close();
    drop(store);

    once_free(|| key::convert(&path, &test_key(), true));
    assert!(!plaintext_on_disk(dir.path()));
    assert_eq!(key::file_kind(&path).unwrap(), key::FileKind::Encrypted);
    let store = SqliteStore::open_with_key(dir.path(), Some(test_key())).unwrap();
    assert_eq!(store.server_uuid_str(), uuid);
    assert!(store.doc("clinic", "visit").await.unwrap().is_some());
    let digest = outpost_core::hash::attachment_digest(format!("{MARKER} attachment").as_bytes());
    assert!(store.attachment(&digest).await.unwrap().is_some());
    store.close();
    drop(store);

    once_free(|| key::convert(&path, &test_key(), false));
    assert_eq!(key::file_kind(&path).unwrap(), key::FileKind::Plain);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.doc("clinic", "visit").await.unwrap().is_some());
}
