//! `walcast tail`: document events as JSON lines on stdout, from the database's own temporary
//! slot (see `walcast::tail`).

use anyhow::{Context, Result};
use walcast::tail::{self, TailEnd, TailFilter};
use walcast_replication::ReplicationStream;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The database to read (its user needs the REPLICATION attribute).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Only events of this app (schema); repeatable.
    #[arg(long = "app", value_name = "SCHEMA")]
    pub apps: Vec<String>,
    /// Only events of this repo (table); repeatable.
    #[arg(long = "repo", value_name = "TABLE")]
    pub repos: Vec<String>,
}

pub async fn run(args: TailArgs) -> Result<()> {
    let slot = tail::temporary_slot_name();
    let stream =
        ReplicationStream::start(tail::replication_config(&args.database_url, slot.clone()))
            .await
            .context("starting replication")?;
    let stop = super::shutdown_signal()?;
    eprintln!(
        "tailing from {} (temporary slot {slot})",
        stream.start_lsn()
    );
    let filter = TailFilter {
        apps: args.apps,
        repos: args.repos,
    };
    let mut out = tail::StdoutWriter::spawn().context("starting the output thread")?;
    let end = tail::run(stream, &mut out, &filter, stop, tail::stdout_closed())
        .await
        .context("tailing")?;
    tracing::debug!(?end, "tail ended");
    if end == TailEnd::StreamEnded {
        anyhow::bail!("PostgreSQL ended the replication stream");
    }
    Ok(())
}
