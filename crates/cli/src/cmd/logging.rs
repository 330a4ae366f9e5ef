//! Logging setup: the binary is the only place that installs a `tracing` subscriber.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, with its spans' fields.
    Pretty,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields at the top
    /// level, and the innermost span (for a request: `request_id`, `method`, `route`) in `span`.
    Json,
}

/// Installs a subscriber that writes to stderr, filtered by `OUTPOST_LOG` (or `RUST_LOG`),
/// `info` by default.
pub fn init(format: LogFormat) {
    let filter = std::env::var("OUTPOST_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
