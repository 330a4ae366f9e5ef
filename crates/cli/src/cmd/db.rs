//! `outpost db`: offline checks and maintenance of a sync server's data directory, and copying
//! a store between SQLite and PostgreSQL.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_store::StoreError;
use outpost_store::sqlite::{FILE_NAME, StoreKey, key, replay};

use super::store::Location;
use super::store_key;

/// Arguments of `outpost db`.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

/// The variable holding the new key of `outpost db rekey`.
const NEW_KEY_VAR: &str = "OUTPOST_STORE_NEW_KEY";

#[derive(Debug, clap::Subcommand)]
enum DbCommand {
    /// Check that a database's tables are what its event log rebuilds (reads only).
    ///
    /// Replays the log alone (document events, and the changes of `_revs_limit` and of the
    /// conflict policy) in memory and compares every document's revision tree, winner, sequence
    /// and deletion, and the database's sequence, counters and settings, with the live tables.
    /// Exits 0 when they match, 1 (listing every difference) when they do not. It only reads,
    /// so it can run beside a live server, on SQLite or PostgreSQL.
    Verify {
        /// The data directory of the server.
        #[arg(long, default_value = "./outpost-data")]
        data: PathBuf,
        /// The store, when not the data directory's SQLite file: a PostgreSQL URL
        /// (`postgres://…`) or another data directory.
        #[arg(long, value_name = "URL|PATH")]
        store: Option<String>,
        /// The key of an encrypted store (or set OUTPOST_STORE_KEY), as for `outpost serve`.
        #[arg(long, env = "OUTPOST_STORE_KEY_FILE", value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// The database to check.
        db: String,
    },
    /// Rebuild a database's tables from its event log alone (SQLite: stop the server first).
    ///
    /// Writes what the log rebuilds in place of its documents' revision trees, winners and
    /// sequences, and its sequence, counters, `_revs_limit` and policy. Revision bodies,
    /// attachments, `_local` documents and `_security` are kept as they are; secondary indexes
    /// are dropped and built again on first use. On SQLite the server must be stopped (the
    /// command takes the data directory's lock, which `outpost serve` holds): the store is
    /// copied into a new file, rebuilt and checked there, then swapped in with one rename, so a
    /// failure leaves the old file untouched. On PostgreSQL the rows are replaced in one
    /// transaction holding the database's row lock, so it may run beside live nodes, whose
    /// writes to that database wait for it.
    Rebuild {
        /// The data directory of the server.
        #[arg(long, default_value = "./outpost-data")]
        data: PathBuf,
        /// The store, when not the data directory's SQLite file: a PostgreSQL URL
        /// (`postgres://…`) or another data directory.
        #[arg(long, value_name = "URL|PATH")]
        store: Option<String>,
        /// The key of an encrypted store (or set OUTPOST_STORE_KEY), as for `outpost serve`.
        #[arg(long, env = "OUTPOST_STORE_KEY_FILE", value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// The database to rebuild.
        db: String,
    },
    /// Change the encryption key of a stopped server's store, encrypt a plain store, or
    /// decrypt an encrypted one, in place. The current key comes from --key-file or
    /// OUTPOST_STORE_KEY (none for a plain store); the new one from --new-key-file or
    /// OUTPOST_STORE_NEW_KEY. Refused while a server has the store open.
    Rekey {
        /// The data directory of the server.
        #[arg(long, default_value = "./outpost-data")]
        data: PathBuf,
        /// The current key (or set OUTPOST_STORE_KEY); not needed for a plain store.
        #[arg(long, env = "OUTPOST_STORE_KEY_FILE", value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// The new key (or set OUTPOST_STORE_NEW_KEY): 64 hex digits or a passphrase.
        #[arg(long, value_name = "FILE", conflicts_with = "decrypt")]
        new_key_file: Option<PathBuf>,
        /// Make the store plain (unencrypted) instead.
        #[arg(long)]
        decrypt: bool,
    },
    /// Copy every database of a stopped store into an empty one: a SQLite data directory into
    /// PostgreSQL (to scale out) or back. Documents, revisions, the event log, `_local`
    /// documents, attachments, `_security`, settings and the server uuid are copied as they
    /// are; indexes are rebuilt on first use. The target is written in one transaction and must
    /// hold no database.
    Migrate {
        /// Where to copy from: a data directory, or a PostgreSQL URL.
        #[arg(long, value_name = "URL|PATH")]
        from: String,
        /// Where to copy to: a PostgreSQL URL, or a data directory.
        #[arg(long, value_name = "URL|PATH")]
        to: String,
        /// The key of the SQLite side when it is encrypted (or set OUTPOST_STORE_KEY).
        #[arg(long, env = "OUTPOST_STORE_KEY_FILE", value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Migrate { from, to, key_file } => {
            let key = store_key::load(key_file.as_deref(), store_key::KEY_VAR)?;
            migrate(&from, &to, key).await
        }
        DbCommand::Verify {
            data,
            store,
            key_file,
            db,
        } => {
            let report = on_store(
                &data,
                store.as_deref(),
                key_file.as_deref(),
                db,
                "cannot replay the event log of",
                replay::verify_with_key,
                |url, db| outpost_store_pg::replay::verify(url, None, db),
            )
            .await?;
            if report.matches() {
                println!(
                    "ok: {} events replayed into {} documents; the tables match the event log",
                    report.events, report.docs
                );
                Ok(())
            } else {
                for line in &report.differences {
                    println!("{line}");
                }
                anyhow::bail!(
                    "{} differences between the event log ({} events, {} documents) and the tables",
                    report.differences.len(),
                    report.events,
                    report.docs
                )
            }
        }
        DbCommand::Rebuild {
            data,
            store,
            key_file,
            db,
        } => {
            let report = on_store(
                &data,
                store.as_deref(),
                key_file.as_deref(),
                db,
                "cannot rebuild from the event log of",
                replay::rebuild,
                |url, db| outpost_store_pg::replay::rebuild(url, None, db),
            )
            .await?;
            println!(
                "ok: {} events replayed into {} documents (update_seq {}); the tables are rebuilt",
                report.events, report.docs, report.update_seq
            );
            Ok(())
        }
        DbCommand::Rekey {
            data,
            key_file,
            new_key_file,
            decrypt,
        } => {
            let current = store_key::load(key_file.as_deref(), store_key::KEY_VAR)?;
            let new = store_key::load(new_key_file.as_deref(), NEW_KEY_VAR)?;
            let path = data.join(FILE_NAME);
            let done = tokio::task::spawn_blocking(move || -> anyhow::Result<&'static str> {
                Ok(match (current, new, decrypt) {
                    (Some(current), Some(new), false) => {
                        key::rekey(&path, &current, &new)?;
                        "the store has its new key"
                    }
                    (None, Some(new), false) => {
                        key::convert(&path, &new, true)?;
                        "the store is encrypted"
                    }
                    (Some(current), None, true) => {
                        key::convert(&path, &current, false)?;
                        "the store is decrypted"
                    }
                    (None, _, true) => bail!(
                        "--decrypt needs the current key (--key-file or {})",
                        store_key::KEY_VAR
                    ),
                    (_, None, false) => {
                        bail!("no new key: give --new-key-file or {NEW_KEY_VAR}, or --decrypt")
                    }
                    (_, Some(_), true) => bail!("--decrypt takes no new key"),
                })
            })
            .await
            .context("the rekey task failed")??;
            println!("ok: {done}");
            Ok(())
        }
    }
}

/// Runs a replay command on the blocking pool against the store a `db` subcommand names: the
/// SQLite file of the data directory (or of `--store PATH`), opened with its key, or the
/// PostgreSQL database of `--store URL`, which takes no key. `failing` starts the error's
/// context, which names the store without any password.
async fn on_store<R: Send + 'static>(
    data: &Path,
    store: Option<&str>,
    key_file: Option<&Path>,
    db: String,
    failing: &'static str,
    sqlite: fn(&Path, &str, Option<&StoreKey>) -> Result<R, StoreError>,
    postgres: fn(&str, &str) -> Result<R, StoreError>,
) -> anyhow::Result<R> {
    let key = store_key::load(key_file, store_key::KEY_VAR)?;
    let location = Location::parse(store, data);
    let described = location.describe();
    tokio::task::spawn_blocking(move || match &location {
        Location::Sqlite(dir) => sqlite(dir, &db, key.as_ref()),
        Location::Postgres(url) => {
            refuse_key(key.as_ref())?;
            postgres(url, &db)
        }
    })
    .await
    .context("the replay task failed")?
    .with_context(|| format!("{failing} {described}"))
}

/// A key encrypts a SQLite file only.
fn refuse_key(key: Option<&StoreKey>) -> Result<(), StoreError> {
    match key {
        Some(_) => Err(StoreError::Key(
            "a store key encrypts a SQLite file; a PostgreSQL store takes none".into(),
        )),
        None => Ok(()),
    }
}

/// `outpost db migrate`: the copy runs on the blocking pool, with a progress bar on a terminal
/// and a line per table otherwise.
async fn migrate(
    from: &str,
    to: &str,
    key: Option<outpost_store::sqlite::StoreKey>,
) -> anyhow::Result<()> {
    use outpost_store_pg::migrate::{Progress, postgres_to_sqlite, sqlite_to_postgres};

    let here = std::path::Path::new(".");
    let (from, to) = (
        Location::parse(Some(from), here),
        Location::parse(Some(to), here),
    );
    let described = format!("{} to {}", from.describe(), to.describe());
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {msg}")
                .expect("static template"),
        );
        bar
    });
    let shown = bar.clone();
    let mut table = "";
    let mut progress = move |p: &Progress| match &shown {
        Some(bar) => {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(p.table);
        }
        None if p.table != table => {
            table = p.table;
            eprintln!("copying {} ({}/{} rows)", p.table, p.done, p.total);
        }
        None => {}
    };
    let report = tokio::task::spawn_blocking(move || match (&from, &to) {
        (Location::Sqlite(dir), Location::Postgres(url)) => {
            sqlite_to_postgres(dir, key.as_ref(), url, None, &mut progress)
        }
        (Location::Postgres(url), Location::Sqlite(dir)) => {
            postgres_to_sqlite(url, None, dir, key.as_ref(), &mut progress)
        }
        _ => Err(outpost_store::StoreError::Corrupt(
            "copy between SQLite and PostgreSQL: one side a directory, the other a postgres:// URL"
                .into(),
        )),
    })
    .await
    .context("the copy task failed")?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match report {
        Err(outpost_store::StoreError::DbExists) => {
            bail!("the target already holds databases; copy only into an empty store")
        }
        other => other.with_context(|| format!("cannot copy {described}"))?,
    };
    for (table, rows) in &report.tables {
        println!("{table}: {rows} rows");
    }
    println!("ok: copied {described}");
    Ok(())
}
