//! A fresh schema per test on the server at `OUTPOST_TEST_POSTGRES_URL`, dropped afterwards.

use std::sync::Arc;

use outpost_store::Store;
use outpost_store::conformance::Engine;
use outpost_store_pg::{PgStore, quote_ident};

/// The variable naming the test server.
pub const URL_VAR: &str = "OUTPOST_TEST_POSTGRES_URL";

/// The test server's URL; `None` (after saying so) when none is configured, which fails the
/// test under `CI=true`.
pub fn postgres_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{URL_VAR} is not set: CI must run the PostgreSQL engine's tests"
            );
            eprintln!("skipped: {URL_VAR} is not set, so there is no PostgreSQL to test against");
            None
        }
    }
}

/// A schema that exists for one test and is dropped (with everything in it) afterwards.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// A new, uniquely named schema (`pgstore_…`); the store creates it on open.
    pub fn new(url: &str) -> Schema {
        Schema {
            url: url.to_owned(),
            name: format!("pgstore_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// A node: a store on this schema.
    pub async fn open(&self) -> PgStore {
        PgStore::open(&self.url, Some(&self.name)).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // The blocking client runs its own runtime, so it gets a thread of its own.
        let dropped = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&name)
            ))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

/// The engines of the conformance suite: one PostgreSQL store in a fresh schema, or none when
/// no server is configured.
pub async fn engines() -> Vec<Engine> {
    let Some(url) = postgres_url() else {
        return Vec::new();
    };
    let schema = Schema::new(&url);
    let store: Arc<dyn Store> = Arc::new(schema.open().await);
    vec![Engine {
        store,
        guard: Box::new(schema),
    }]
}
