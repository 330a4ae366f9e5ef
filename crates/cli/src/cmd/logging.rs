//! Logging setup: the binary is the only place that installs a `tracing` subscriber.

use tracing_subscriber::EnvFilter;

/// Installs a subscriber that writes to stderr, filtered by `OUTPOST_LOG` (or `RUST_LOG`),
/// `info` by default.
pub fn init() {
    let filter = std::env::var("OUTPOST_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
