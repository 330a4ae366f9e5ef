//! A PostgreSQL schema of its own for one test, in the database `OUTPOST_TEST_POSTGRES_URL`
//! names, dropped when the test ends. Shared by the queue's unit tests, these integration tests
//! and the command-line tests (each includes this file).
//!
//! Without the variable, or without a database answering at it, a test says on stderr that it
//! is skipped and returns; with `CI=true` (as `.ci/run` sets) it fails instead.

use tokio_postgres::NoTls;

/// Prefix of every schema the tests make, so they are easy to tell from anything else.
const PREFIX: &str = "pggate_";

/// A schema made for one test; `url` selects it through `search_path`.
pub struct TestSchema {
    /// The database URL with this schema first on the search path.
    pub url: String,
    base: String,
    name: String,
}

fn skip(test: &str, why: &str) -> Option<TestSchema> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}, and CI must run the PostgreSQL tests (.ci/run sets OUTPOST_TEST_POSTGRES_URL)"
    );
    eprintln!("SKIPPED: {test}: {why}");
    None
}

impl TestSchema {
    /// Makes a fresh schema for `test`, or says why the test is skipped and returns `None`.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(base) = std::env::var("OUTPOST_TEST_POSTGRES_URL") else {
            return skip(test, "OUTPOST_TEST_POSTGRES_URL is not set");
        };
        let (client, connection) = match tokio_postgres::connect(&base, NoTls).await {
            Ok(c) => c,
            Err(e) => {
                return skip(
                    test,
                    &format!("no PostgreSQL answers at OUTPOST_TEST_POSTGRES_URL ({e})"),
                );
            }
        };
        let driver = tokio::spawn(connection);
        let safe: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!(
            "{PREFIX}{safe}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot create schema {name}: {e}"));
        drop(client);
        let _ = driver.await;
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Self {
            url: format!("{base}{sep}options=-csearch_path%3D{name}"),
            base,
            name,
        })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: the schema is
        // dropped from a thread with a runtime of its own.
        let (base, name) = (self.base.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test schema");
            rt.block_on(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&base, NoTls).await else {
                    return;
                };
                let driver = tokio::spawn(connection);
                // A test that failed may leave processes holding locks in the schema; it is
                // then left behind (its name says whose it is) rather than waited for forever.
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                    ))
                    .await;
                drop(client);
                let _ = driver.await;
            });
        });
        let _ = done.join();
    }
}
