//! The engine conformance suite (`outpost_store::conformance`) on the SQLite engine, plain and
//! encrypted, and what only a SQLite file does (reopening a data directory).

use std::sync::Arc;

use outpost_store::Store;
use outpost_store::conformance::Engine;
pub use outpost_store::conformance::edit;
use outpost_store::sqlite::{SqliteStore, StoreKey};
use serde_json::json;

/// A raw 256-bit key for the encrypted engine.
pub fn test_key() -> StoreKey {
    StoreKey::new(&"5a".repeat(32)).unwrap()
}

/// The SQLite engine plain, and encrypted with [`test_key`].
pub fn keys() -> [Option<StoreKey>; 2] {
    [None, Some(test_key())]
}

/// The SQLite engine plain and encrypted (SQLCipher), each over a fresh temporary directory.
pub async fn engines() -> Vec<Engine> {
    keys()
        .into_iter()
        .map(|key| {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open_with_key(dir.path(), key).unwrap());
            Engine {
                store,
                guard: Box::new(dir),
            }
        })
        .collect()
}

outpost_store::conformance_suite!(engines);

#[tokio::test]
async fn writes_are_read_back_and_survive_reopening() {
    for key in keys() {
        reopen(key).await;
    }
}

async fn reopen(key: Option<StoreKey>) {
    let dir = tempfile::tempdir().unwrap();
    let uuid;
    {
        let store = SqliteStore::open_with_key(dir.path(), key.clone()).unwrap();
        uuid = store.server_uuid().to_owned();
        store.create_db("db").await.unwrap();
        let out = store
            .write_docs("db", vec![edit("a", None, json!({"v": 1}))])
            .await
            .unwrap();
        assert!(out[0].is_ok());
        store.close();
    }
    let store = SqliteStore::open_with_key(dir.path(), key).unwrap();
    assert_eq!(store.server_uuid(), uuid);
    let doc = store.doc("db", "a").await.unwrap().unwrap();
    assert_eq!(doc.seq, 1);
    let winner = doc.tree.winner().unwrap().rev;
    let bodies = store.rev_bodies("db", "a", &[winner]).await.unwrap();
    assert_eq!(bodies[0].1.json, r#"{"v":1}"#);
}
