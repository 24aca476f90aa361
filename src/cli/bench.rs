//! `walcast bench` (work in progress).

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("walcast bench is not implemented yet")
}
