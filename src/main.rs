//! The `walcast` command line. Thin: parsing, logging and process exit codes; the work is in
//! the library.

mod cli;

use anyhow::Result;
use clap::Parser;
use std::io::IsTerminal;

fn main() -> Result<()> {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // PostgreSQL NOTICEs ("already exists, skipping") are logged by tokio_postgres at
            // info; they say nothing to an operator and break `up`'s progress lines.
            tracing_subscriber::EnvFilter::try_from_env("WALCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(args))
}
