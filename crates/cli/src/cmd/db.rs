//! `outpost db`: offline checks of a sync server's data directory.

use std::path::PathBuf;

use anyhow::Context;
use outpost_store::sqlite::replay;

/// Arguments of `outpost db`.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DbCommand {
    /// Rebuild a database's document tables from its event log alone and check that they match
    /// the live ones. Exits 0 when they match, 1 (listing every difference) when they do not.
    /// Opens the store read-only, so it can run beside a live server.
    Rebuild {
        /// The data directory of the server.
        #[arg(long, default_value = "./outpost-data")]
        data: PathBuf,
        /// The database to rebuild.
        db: String,
    },
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Rebuild { data, db } => {
            let report = tokio::task::spawn_blocking(move || replay::rebuild(&data, &db))
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
    }
}
