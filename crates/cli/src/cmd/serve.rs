//! `outpost serve`.

/// Arguments of `outpost serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub async fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`outpost serve` is not available in this build")
}
