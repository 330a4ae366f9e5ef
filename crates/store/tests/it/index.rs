//! The upgrade that adds the secondary index tables to an older SQLite file; what every engine
//! does with indexes is in `outpost_store::conformance::index`.

use outpost_store::Store;
use outpost_store::conformance::index::{all, rows, scan, step};
use outpost_store::sqlite::SqliteStore;
use serde_json::json;

#[tokio::test]
async fn a_version_3_file_gets_the_index_tables() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_db("db").await.unwrap();
        store.close();
    }
    let file = dir.path().join(outpost_store::sqlite::FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&file).unwrap();
        conn.execute_batch(
            "DROP TABLE index_rows; DROP TABLE indexes;
             ALTER TABLE dbs DROP COLUMN purge_seq;
             ALTER TABLE dbs DROP COLUMN purged_infos_limit;
             UPDATE meta SET value = '3' WHERE key = 'schema_version';",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(
        store
            .update_index("db", step(0, 1, vec![rows("a", &[json!(1)])]))
            .await
            .unwrap()
    );
    assert_eq!(scan(&store, &all()).await.len(), 1);
    store.close();
    let conn = rusqlite::Connection::open(&file).unwrap();
    let version: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "8");
}
