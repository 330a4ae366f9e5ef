//! `outpost gateway`.

/// Arguments of `outpost gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {}

pub async fn run(_args: GatewayArgs) -> anyhow::Result<()> {
    anyhow::bail!("`outpost gateway` is not available in this build")
}
