//! The schema's versions: a store made by an older build is brought forward when a node of
//! this build opens it.

use outpost_store::conformance::edit;
use outpost_store::{ChangesQuery, DbOptions, Store};
use outpost_store_pg::quote_ident;
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Runs SQL on the test schema through a blocking client of its own (on its own thread, as the
/// blocking client runs its own runtime); returns the first column of the last row, if any.
fn sql(schema: &Schema, statements: &'static str) -> Option<String> {
    let (url, name) = (schema.url.clone(), schema.name.clone());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_gains_per_document_access() {
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
    // The store as version 1 left it: no access tables.
    sql(
        &schema,
        "DROP TABLE access_rows; DROP TABLE access_dbs;
         UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    );
    let store = schema.open().await;
    assert_eq!(
        sql(
            &schema,
            "SELECT value FROM meta WHERE key = 'schema_version'"
        )
        .as_deref(),
        Some("3")
    );
    assert!(!store.db_info("old").await.unwrap().access);
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
async fn a_version_2_store_gains_the_shared_configuration() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    {
        let store = schema.open().await;
        store.create_db("old").await.unwrap();
        store.close();
    }
    // The store as version 2 left it: no configuration table, no version counter.
    sql(
        &schema,
        "DROP TABLE config; DELETE FROM counters WHERE name = 'config';
         UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    );
    let store = schema.open().await;
    assert_eq!(
        sql(
            &schema,
            "SELECT value FROM meta WHERE key = 'schema_version'"
        )
        .as_deref(),
        Some("3")
    );
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
