//! `outpost queue`.

/// Arguments of `outpost queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {}

pub async fn run(_args: QueueArgs) -> anyhow::Result<()> {
    anyhow::bail!("`outpost queue` is not available in this build")
}
