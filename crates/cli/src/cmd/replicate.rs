//! `outpost replicate SOURCE TARGET`: one replication between two CouchDB-protocol databases.
//!
//! Progress goes to stderr: a live line on a terminal, plain lines (on every state change and
//! every few seconds while busy) otherwise, so logs of unattended runs stay readable. A one-shot
//! run prints CouchDB's `POST /_replicate` answer as JSON on stdout when it completes.
//!
//! Exit codes: 0 when a one-shot replication completed or a continuous one was stopped by
//! SIGINT/SIGTERM (it stops after checkpointing the batch in flight); 1 on any failure, with the
//! reason on stderr. Credentials in URLs or headers are never printed.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_replicator::{
    Backoff, ChangesFilter, HttpEndpoint, Replication, ReplicationConfig, Seq, State, Status,
    http_client,
};
use tokio::sync::watch;

use crate::cmd::gateway::parse_duration;

/// Arguments of `outpost replicate`.
#[derive(Debug, clap::Args)]
pub struct ReplicateArgs {
    /// Source database URL, such as `http://user:password@127.0.0.1:5984/orders`.
    pub source: String,
    /// Target database URL.
    pub target: String,
    /// Keep following the source's changes until interrupted.
    #[arg(long)]
    pub continuous: bool,
    /// Create the target database when it does not exist.
    #[arg(long)]
    pub create_target: bool,
    /// Replicate only these documents (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', conflicts_with = "selector")]
    pub doc_ids: Vec<String>,
    /// Replicate only documents matching this Mango selector (JSON).
    #[arg(long)]
    pub selector: Option<String>,
    /// Start from this source sequence instead of the checkpoints (JSON, or a plain string).
    #[arg(long)]
    pub since_seq: Option<String>,
    /// A header sent to the source, as `Name: value` (repeatable), e.g. an Authorization token.
    #[arg(long = "source-header", value_name = "HEADER")]
    pub source_headers: Vec<String>,
    /// A header sent to the target, as `Name: value` (repeatable).
    #[arg(long = "target-header", value_name = "HEADER")]
    pub target_headers: Vec<String>,
    /// Changes per batch: one `_revs_diff` and one `_bulk_docs` each.
    #[arg(long, default_value_t = outpost_replicator::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Parts of a batch fetched from the source at once.
    #[arg(long, default_value_t = 4)]
    pub parallelism: usize,
    /// Least time between two checkpoints (one is always written at the end or on a stop);
    /// 0s checkpoints after every batch.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// First delay after a transient failure; it doubles on each further failure.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub retry_initial: Duration,
    /// Longest delay between retries.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Failed attempts in a row before giving up; 0 retries for ever. Only progress (documents
    /// written, or catching up) resets the count. Defaults to 5 for a one-shot replication and
    /// 0 for a continuous one.
    #[arg(long)]
    pub max_attempts: Option<u32>,
}

fn headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            let (name, value) = h.split_once(':').with_context(|| {
                format!(
                    "header `{}` is not `Name: value`",
                    h.split(':').next().unwrap_or("")
                )
            })?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Turns the flags into a validated configuration.
fn config(args: &ReplicateArgs) -> anyhow::Result<ReplicationConfig> {
    let filter = match (&args.selector, args.doc_ids.is_empty()) {
        (Some(selector), _) => ChangesFilter::Selector(
            serde_json::from_str(selector).context("--selector is not valid json")?,
        ),
        (None, false) => ChangesFilter::DocIds(args.doc_ids.clone()),
        (None, true) => ChangesFilter::All,
    };
    let since_seq = args.since_seq.as_ref().map(|s| {
        Seq(serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone())))
    });
    let max_attempts = match args.max_attempts {
        Some(0) => None,
        Some(n) => Some(n),
        None if args.continuous => None,
        None => Some(5),
    };
    let config = ReplicationConfig {
        continuous: args.continuous,
        create_target: args.create_target,
        filter,
        since_seq,
        batch_size: args.batch_size,
        fetch_parallelism: args.parallelism,
        checkpoint_interval: args.checkpoint_interval,
        backoff: Backoff {
            initial: args.retry_initial,
            max: args.retry_max,
        },
        max_attempts,
        ..ReplicationConfig::default()
    };
    config.validate()?;
    Ok(config)
}

pub async fn run(args: ReplicateArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let client = http_client()?;
    let source = HttpEndpoint::new(
        client.clone(),
        &args.source,
        &headers(&args.source_headers)?,
    )
    .context("source")?;
    let target = HttpEndpoint::new(client, &args.target, &headers(&args.target_headers)?)
        .context("target")?;
    let replication = Replication::new(Arc::new(source), Arc::new(target), config);
    let cancel = crate::cmd::shutdown::on_signal();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let report = report(replication.subscribe(), bar.as_ref());
    let result = {
        let run = replication.run(cancel);
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => result,
            // The reporter only ends if the replication dropped its status channel, which it
            // does not while running; finish the replication regardless.
            _ = report => run.await,
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let status = replication.subscribe().borrow().clone();
    let result = result?;
    eprintln!("{}", summary(&status));
    if !args.continuous && !result.stopped {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

/// One line describing where a replication is.
fn summary(s: &Status) -> String {
    let elapsed = s
        .started_at
        .elapsed()
        .unwrap_or_default()
        .as_secs_f64()
        .max(0.001);
    let rate = s.stats.docs_written as f64 / elapsed;
    let state = match s.state {
        State::Starting => "starting",
        State::Running => "running",
        State::Idle => "up to date",
        State::Retrying => "retrying",
        State::Completed => "completed",
        State::Failed => "failed",
        State::Stopped => "stopped",
    };
    let mut line = format!(
        "{state}: {} read, {} written, {} failed, {rate:.0} docs/s",
        s.stats.docs_read, s.stats.docs_written, s.stats.doc_write_failures
    );
    if let Some(pending) = s.pending {
        line.push_str(&format!(", {pending} pending"));
    }
    if let Some(seq) = &s.checkpointed_seq {
        line.push_str(&format!(", checkpoint {}", truncate(&seq.to_string(), 24)));
    }
    if let (State::Retrying | State::Failed, Some(error)) = (s.state, &s.last_error) {
        line.push_str(&format!(" ({error})"));
    }
    line
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Shows progress on `bar` (a terminal) or as plain lines, until the status channel closes.
async fn report(mut status: watch::Receiver<Status>, bar: Option<&ProgressBar>) {
    const PLAIN_EVERY: Duration = Duration::from_secs(5);
    let mut last_state = None;
    let mut last_line = Instant::now();
    while status.changed().await.is_ok() {
        let s = status.borrow_and_update().clone();
        match bar {
            Some(bar) => bar.set_message(summary(&s)),
            None => {
                if last_state != Some(s.state) || last_line.elapsed() >= PLAIN_EVERY {
                    eprintln!("{}", summary(&s));
                    last_state = Some(s.state);
                    last_line = Instant::now();
                }
            }
        }
    }
}
