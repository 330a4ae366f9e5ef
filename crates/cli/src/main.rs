//! The `outpost` binary. It holds no logic of its own: it parses the command line, sets up
//! logging, and hands a validated configuration to the library crates.

mod cmd;

use clap::{Parser, Subcommand};

/// Outpost: an offline-first sync backend.
///
/// A CouchDB-compatible document store and replication endpoint on embedded SQLite, and an
/// offline request gateway that queues writes while the backend behind it is down.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `pretty` for people, `json` (one object per line,
    /// with the request's span) for log pipelines.
    #[arg(long, global = true, env = "OUTPOST_LOG_FORMAT", value_enum, default_value_t = cmd::logging::LogFormat::Pretty)]
    log_format: cmd::logging::LogFormat,
    /// A TOML file of settings, one table per command (`[serve]`, `[gateway]`); flags and
    /// environment variables take precedence over it. See docs/configuration.md.
    #[arg(long, global = true, env = "OUTPOST_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CouchDB-compatible sync server.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Run the offline request gateway in front of an HTTP backend.
    Gateway(cmd::gateway::GatewayArgs),
    /// Inspect and operate a gateway's durable request queue.
    Queue(cmd::queue::QueueArgs),
    /// Replicate one CouchDB-protocol database into another, once or continuously.
    Replicate(cmd::replicate::ReplicateArgs),
    /// Check and maintain the databases of a data directory.
    Db(cmd::db::DbArgs),
    /// Check or show the configuration given by --config, the environment and flags.
    Config(cmd::config::ConfigArgs),
}

/// The allocator: the server allocates and frees many small, short-lived values per document
/// (parsed JSON, revision trees, SQL parameters), where glibc's malloc spent a fifth of a bulk
/// write's CPU time in the profile; mimalloc's thread-local free lists cost much less there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: mimalloc asks for them on its regions, and
    // each first touch of a 2 MiB page then zeroes all of it, however little of it is used. A new
    // server's first `_bulk_docs` batches spent 80 % of their time zeroing such pages (45-130 ms
    // a batch instead of about 20), and its peak memory was twice what it is without them.
    // Where the kernel refuses, nothing changes but that.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = match cmd::config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    cmd::logging::init(cli.log_format);
    // A replication is one pipeline of requests whose stages hand each batch to the next: on
    // one thread it runs a fifth faster than on a pool, whose threads spent a third of the
    // process's time waking each other (measured with `outpost replicate`, 100,000 documents).
    let mut builder = if matches!(cli.command, Command::Replicate(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(*args).await,
            Command::Gateway(args) => cmd::gateway::run(args).await,
            Command::Queue(args) => cmd::queue::run(args).await,
            Command::Replicate(args) => cmd::replicate::run(args).await,
            Command::Db(args) => cmd::db::run(args).await,
            Command::Config(args) => cmd::config::run(args, cli.config.as_deref()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
