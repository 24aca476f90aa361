//! `walcast tail` (work in progress).

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct TailArgs {}

pub async fn run(_args: TailArgs) -> Result<()> {
    anyhow::bail!("walcast tail is not implemented yet")
}
