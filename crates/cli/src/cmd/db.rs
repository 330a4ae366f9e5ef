//! `outpost db`: offline checks and maintenance of a sync server's data directory.

use std::path::PathBuf;

use anyhow::{Context, bail};
use outpost_store::sqlite::{FILE_NAME, key, replay};

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
    /// Rebuild a database's document tables from its event log alone and check that they match
    /// the live ones. Exits 0 when they match, 1 (listing every difference) when they do not.
    /// Opens the store read-only, so it can run beside a live server.
    Rebuild {
        /// The data directory of the server.
        #[arg(long, default_value = "./outpost-data")]
        data: PathBuf,
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
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Rebuild { data, key_file, db } => {
            let key = store_key::load(key_file.as_deref(), store_key::KEY_VAR)?;
            let report = tokio::task::spawn_blocking(move || {
                replay::rebuild_with_key(&data, &db, key.as_ref())
            })
            .await
            .context("the replay task failed")?
            .context("cannot replay the event log")?;
            if report.matches() {
                println!(
                    "ok: {} events replayed into {} documents; the document tables match the event log",
                    report.events, report.docs
                );
                Ok(())
            } else {
                for line in &report.differences {
                    println!("{line}");
                }
                anyhow::bail!(
                    "{} differences between the event log ({} events, {} documents) and the document tables",
                    report.differences.len(),
                    report.events,
                    report.docs
                )
            }
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
