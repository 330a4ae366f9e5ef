//! The schema's versions: a store made by an older build is brought forward when a node of
//! this build opens it.

use outpost_store::conformance::edit;
use outpost_store::{ChangesQuery, DbOptions, Store};
use outpost_store_pg::{PgStore, SCHEMA_VERSION, quote_ident};
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Runs SQL on the test schema through a blocking client of its own (on its own thread, as the
/// blocking client runs its own runtime); returns the first column of the last row, if any.
fn sql(schema: &Schema, statements: &str) -> Option<String> {
    let (url, name) = (schema.url.clone(), schema.name.clone());
    let statements = statements.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("SET search_path = {}", quote_ident(&name)))
            .unwrap();
        let mut last = None;
        for statement in statements.split(';').filter(|s| !s.trim().is_empty()) {
            last = client
                .query(statement, &[])
                .unwrap()
                .last()
                .map(|r| r.get(0));
        }
        last
    })
    .join()
    .unwrap()
}

/// Turns the test schema back into what an older build left (`downgrade`, which ends by setting
/// `schema_version`), opens it with this build, and checks that the opening brought it to this
/// build's version.
async fn reopen_after(schema: &Schema, downgrade: &str) -> PgStore {
    sql(schema, downgrade);
    let store = schema.open().await;
    assert_eq!(
        sql(
            schema,
            "SELECT value FROM meta WHERE key = 'schema_version'"
        )
        .as_deref(),
        Some(SCHEMA_VERSION.to_string().as_str())
    );
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_gains_per_document_access_and_purge_counters() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    {
        let store = schema.open().await;
        store.create_db("old").await.unwrap();
        store
            .write_docs("old", vec![edit("a", None, json!({"_access": ["alice"]}))])
            .await
            .unwrap();
        store.close();
    }
    // The store as version 1 left it: no access tables, no purge counters.
    let store = reopen_after(
        &schema,
        "DROP TABLE access_rows; DROP TABLE access_dbs;
         ALTER TABLE dbs DROP COLUMN purge_seq; ALTER TABLE dbs DROP COLUMN purged_infos_limit;
         UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )
    .await;
    let old = store.db_info("old").await.unwrap();
    assert!(!old.access);
    assert_eq!((old.purge_seq, old.purged_infos_limit), (0, 1000));
    assert_eq!(store.doc("old", "a").await.unwrap().unwrap().seq, 1);
    store
        .create_db_with("shared", &DbOptions { access: true })
        .await
        .unwrap();
    assert!(store.db_info("shared").await.unwrap().access);
    store
        .write_docs(
            "shared",
            vec![edit("s", None, json!({"_access": ["alice"]}))],
        )
        .await
        .unwrap();
    let feed = store
        .access_changes(
            "shared",
            &["alice".to_owned()],
            &ChangesQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].id, "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_store_gains_the_shared_configuration() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    {
        let store = schema.open().await;
        store.create_db("old").await.unwrap();
        store.close();
    }
    // The store as version 5 left it: no configuration table, no version counter.
    let store = reopen_after(
        &schema,
        "DROP TABLE config; DELETE FROM counters WHERE name = 'config';
         UPDATE meta SET value = '5' WHERE key = 'schema_version'",
    )
    .await;
    assert!(store.db_info("old").await.is_ok());
    let shared = store.shared_config().unwrap();
    assert!(shared.config_section("admins").await.unwrap().1.is_empty());
    assert!(
        !shared
            .set_config("admins", "ann", Some("hash".into()))
            .await
            .unwrap()
    );
    let (version, found) = shared.config_section("admins").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(found.get("ann").map(String::as_str), Some("hash"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_store_keeps_its_attachments_as_they_were_stored() {
    use outpost_store::conformance::compaction::{assert_kept_as_stored, with_attachment, write};
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let bytes = b"plain text stored before attachments could be encoded".repeat(50);
    let (update, digest) = with_attachment("d", None, &bytes);
    let rev;
    {
        let store = schema.open().await;
        store.create_db("db").await.unwrap();
        rev = write(&store, "db", update).await;
        store.close();
    }
    // Version 4 stored every attachment as it came, its stub without `encoding`.
    let store = reopen_after(
        &schema,
        "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
    )
    .await;
    assert_kept_as_stored(&store, "db", rev, &digest, &bytes).await;
    store.close();
    // A store of a later version than this build's is refused rather than misread.
    let later = format!(
        "UPDATE meta SET value = '{}' WHERE key = 'schema_version'",
        SCHEMA_VERSION + 1
    );
    sql(&schema, &later);
    assert!(PgStore::open(&url, Some(&schema.name)).await.is_err());
}
