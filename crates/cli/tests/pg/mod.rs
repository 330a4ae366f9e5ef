//! A PostgreSQL schema of its own for a test, on the server at `OUTPOST_TEST_POSTGRES_URL`;
//! shared by the test binaries that run `outpost serve --store postgres://…`.

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
                "{URL_VAR} is not set: CI must run the PostgreSQL tests"
            );
            eprintln!("skipped: {URL_VAR} is not set, so there is no PostgreSQL to test against");
            None
        }
    }
}

/// A schema of its own for one test, dropped (with everything in it) afterwards.
pub struct Schema {
    admin_url: String,
    name: String,
}

impl Schema {
    pub fn create(url: &str) -> Schema {
        let name = format!("pgstore_{}", uuid::Uuid::new_v4().simple());
        let (u, n) = (url.to_owned(), name.clone());
        blocking(move || {
            let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
            c.batch_execute(&format!("CREATE SCHEMA \"{n}\"")).unwrap();
        });
        Schema {
            admin_url: url.to_owned(),
            name,
        }
    }

    /// The URL a node is given: the server's, with the schema as the search path.
    pub fn url_via(&self, host_port: Option<&str>) -> String {
        let mut url = self.admin_url.clone();
        if let Some(hp) = host_port {
            let start = url
                .find('@')
                .map_or(url.find("://").unwrap() + 3, |i| i + 1);
            let end = url[start..].find('/').map_or(url.len(), |i| start + i);
            url.replace_range(start..end, hp);
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{}", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (u, n) = (self.admin_url.clone(), self.name.clone());
        blocking(move || {
            if let Ok(mut c) = postgres::Client::connect(&u, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{n}\" CASCADE"));
            }
        });
    }
}

/// The blocking PostgreSQL client runs its own runtime: it gets a thread of its own.
pub fn blocking(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().unwrap();
}
