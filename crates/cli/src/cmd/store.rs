//! Opening the store `--store` names: a PostgreSQL URL (`postgres://user@host/db`) for a node
//! of a scale-out deployment, or a directory for the embedded SQLite engine (the data directory
//! when `--store` is not given).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use outpost_store::Store;
use outpost_store::sqlite::{DataDirLock, SqliteStore, StoreKey};
use outpost_store_pg::PgStore;

/// Where the documents live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The SQLite file in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of nodes.
    Postgres(String),
}

impl Location {
    /// The location a `--store` value names; without one, the data directory's SQLite file.
    pub fn parse(store: Option<&str>, data: &Path) -> Location {
        match store {
            Some(url) if outpost_store_pg::is_postgres_url(url) => {
                Location::Postgres(url.to_owned())
            }
            Some(path) => Location::Sqlite(PathBuf::from(path)),
            None => Location::Sqlite(data.to_path_buf()),
        }
    }

    /// What logs may say about the location: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// An open store of either engine.
pub enum Opened {
    /// A SQLite store, with its data directory's lock, held while the store is open so that
    /// `outpost db rebuild` never replaces the file under it.
    Sqlite {
        store: Arc<SqliteStore>,
        _lock: DataDirLock,
    },
    Postgres(Arc<PgStore>),
}

impl Opened {
    /// Opens the store at `location`; `key` encrypts a SQLite store and is refused for
    /// PostgreSQL (whose encryption at rest is the server's business).
    pub async fn open(location: &Location, key: Option<StoreKey>) -> anyhow::Result<Opened> {
        Ok(match location {
            Location::Sqlite(dir) => {
                let lock = DataDirLock::acquire(dir)
                    .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
                let store = SqliteStore::open_with_key(dir, key)
                    .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
                outpost_telemetry::watch_database("sync", store.path().to_path_buf());
                Opened::Sqlite {
                    store: Arc::new(store),
                    _lock: lock,
                }
            }
            Location::Postgres(url) => {
                anyhow::ensure!(
                    key.is_none(),
                    "a store key encrypts a SQLite file; a PostgreSQL store is encrypted (or not) by \
                     its server"
                );
                let store = PgStore::open(url, None)
                    .await
                    .with_context(|| format!("cannot open the store at {}", redact(url)))?;
                Opened::Postgres(Arc::new(store))
            }
        })
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Opened::Sqlite { store, .. } => store.clone(),
            Opened::Postgres(s) => s.clone(),
        }
    }

    /// Stops accepting writes; what is queued is still committed.
    pub fn close(&self) {
        match self {
            Opened::Sqlite { store, .. } => store.close(),
            Opened::Postgres(s) => s.close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_postgres_and_anything_else_a_directory() {
        let data = Path::new("./outpost-data");
        assert_eq!(Location::parse(None, data), Location::Sqlite(data.into()));
        assert_eq!(
            Location::parse(Some("/srv/outpost"), data),
            Location::Sqlite("/srv/outpost".into())
        );
        for url in ["postgres://u@h/db", "postgresql://u@h/db"] {
            assert_eq!(
                Location::parse(Some(url), data),
                Location::Postgres(url.into())
            );
        }
    }

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
