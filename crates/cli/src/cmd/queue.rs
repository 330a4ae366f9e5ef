//! `outpost queue`: inspect and operate a gateway's queue directly on its data directory, or on
//! the PostgreSQL queue several gateways share (`--store`).
//!
//! Works whether or not the gateway is running (SQLite arbitrates between the two); a running
//! gateway notices changes within a second. Exit code 0 on success, 1 on any failure
//! (including an unknown entry id).

use std::path::{Path, PathBuf};

use anyhow::Context;
use outpost_gateway::config::Limits;
use outpost_gateway::queue::{QueueLimits, now_ms};
use outpost_gateway::{Cipher, KeySource, PostgresStore, Queue, State};

use super::gateway::KeyArgs;

/// Arguments of `outpost queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The gateway's data directory.
    #[arg(long, global = true, default_value = "./gateway-data")]
    pub data: PathBuf,
    /// The gateways' shared PostgreSQL queue (`postgres://…`, as `outpost gateway --store`)
    /// instead of the data directory's; the data directory then only holds the key, unless one
    /// is given.
    #[arg(
        long,
        global = true,
        env = "OUTPOST_GATEWAY_STORE",
        hide_env_values = true
    )]
    pub store: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue operations.
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// List entries in arrival order.
    Ls {
        /// Only entries in this state.
        #[arg(long, value_parser = ["pending", "dead", "done"])]
        state: Option<String>,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one entry as JSON, with its request headers (credentials redacted).
    Show {
        /// The entry id.
        id: String,
        /// Also print the request body.
        #[arg(long)]
        body: bool,
    },
    /// Make a dead (or backing-off) entry pending again, with its attempts reset.
    Retry {
        /// The entry id.
        id: String,
    },
    /// Delete an entry.
    Drop {
        /// The entry id.
        id: String,
    },
    /// Re-seal every entry with a new key (key rotation), all or nothing. The gateway must be
    /// stopped (the data directory's lock is taken). The new key is read from --new-key-file,
    /// or created there (mode 0600) first; start the gateway with that file afterwards. When
    /// the current key is the data directory's gateway.key, that file is replaced by the new
    /// key too.
    Rekey {
        /// File holding (or to receive) the new key as base64.
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

/// Headers whose values `show` never prints.
const REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let data = args.data.clone();
    if let Some(url) = &args.store {
        if matches!(args.command, QueueCommand::Rekey { .. }) {
            anyhow::bail!("rekey works on a data directory's queue only");
        }
        let source = args.key.source();
        let cipher = tokio::task::spawn_blocking(move || Cipher::load(&source, &data))
            .await?
            .context("cannot load the encryption key")?;
        let queue = Queue::open_postgres(&PostgresStore::new(url), cipher, default_limits())
            .await
            .context("cannot open the queue")?;
        return execute(&queue, args.command).await;
    }
    if !data.join(outpost_gateway::queue::DB_FILE).exists() {
        anyhow::bail!("no gateway queue in {}", data.display());
    }
    let source = args.key.source();
    if let QueueCommand::Rekey { new_key_file } = args.command {
        return tokio::task::spawn_blocking(move || rekey(&data, &source, &new_key_file)).await?;
    }
    let queue = tokio::task::spawn_blocking(move || -> anyhow::Result<Queue> {
        let cipher = Cipher::load(&source, &data).context("cannot load the encryption key")?;
        Queue::open(&data, cipher, default_limits()).context("cannot open the queue")
    })
    .await??;
    let result = execute(&queue, args.command).await;
    // Closing the queue joins its writer thread; keep that off the async workers.
    tokio::task::spawn_blocking(move || drop(queue)).await?;
    result
}

/// Limits only bound enqueueing, which these commands never do.
fn default_limits() -> QueueLimits {
    let limits = Limits::default();
    QueueLimits {
        max_entries: limits.max_queue_entries,
        max_bytes: limits.max_queue_bytes,
    }
}

async fn execute(queue: &Queue, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Ls { state, limit } => {
            let state = state.as_deref().map(State::parse).transpose()?;
            let entries = queue.list(state, 0, limit).await?;
            let now = now_ms();
            println!(
                "{:<36}  {:<7}  {:>8}  {:>10}  {:>6}  last error",
                "id", "state", "attempts", "age", "status"
            );
            for e in entries {
                println!(
                    "{:<36}  {:<7}  {:>8}  {:>10}  {:>6}  {}",
                    e.id,
                    e.state.as_str(),
                    e.attempts,
                    format_age(now - e.created_ms),
                    e.response_status.map(|s| s.to_string()).unwrap_or_default(),
                    e.last_error.unwrap_or_default()
                );
            }
        }
        QueueCommand::Show { id, body } => {
            let detail = queue
                .get(&id)
                .await
                .with_context(|| format!("cannot show entry {id}"))?;
            let mut json = outpost_gateway::api::entry_json(&detail, "");
            if let Some(obj) = json.as_object_mut() {
                obj.shift_remove("status_url");
            }
            if let Some(req) = &detail.request {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        let value = if REDACTED.contains(&n.to_ascii_lowercase().as_str()) {
                            "[redacted]".to_owned()
                        } else {
                            String::from_utf8_lossy(v).into_owned()
                        };
                        (n.clone(), serde_json::Value::String(value))
                    })
                    .collect();
                json["request"]["headers"] = serde_json::Value::Object(headers);
                if body {
                    json["request"]["body"] =
                        serde_json::Value::String(String::from_utf8_lossy(&req.body).into_owned());
                }
            }
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        QueueCommand::Retry { id } => {
            queue
                .retry(&id)
                .await
                .with_context(|| format!("cannot retry entry {id}"))?;
            println!("{id} pending");
        }
        QueueCommand::Drop { id } => {
            queue
                .drop_entry(&id)
                .await
                .with_context(|| format!("cannot drop entry {id}"))?;
            println!("{id} dropped");
        }
        QueueCommand::Rekey { .. } => unreachable!("rekey runs without an open queue"),
    }
    Ok(())
}

/// `outpost queue rekey`: blocking file and database work.
fn rekey(data: &Path, source: &KeySource, new_key_file: &Path) -> anyhow::Result<()> {
    let old = Cipher::load(source, data).context("cannot load the current key")?;
    // Made durable before anything is sealed with it.
    let new = Cipher::load(&KeySource::File(new_key_file.to_owned()), data)
        .context("cannot load or create the new key")?;
    if old.key_id_hex() == new.key_id_hex() {
        anyhow::bail!("the new key is the current key");
    }
    let n = Queue::rekey(data, old, &new).context("cannot re-seal the queue")?;
    if matches!(source, KeySource::DataDir) {
        // Replace gateway.key atomically: a crash leaves the old file, and the new key is
        // still in --new-key-file.
        let target = data.join(outpost_gateway::crypto::DEFAULT_KEY_FILE);
        let tmp = data.join("gateway.key.new");
        std::fs::copy(new_key_file, &tmp).context("cannot write the new gateway.key")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &target).context("cannot replace gateway.key")?;
        std::fs::File::open(data)?.sync_all()?;
    }
    println!(
        "re-sealed {n} entries with key {}; start the gateway with this key",
        new.key_id_hex()
    );
    Ok(())
}

fn format_age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}
