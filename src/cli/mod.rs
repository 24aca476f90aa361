//! Subcommands of the `walcast` binary.

mod bench;
mod publish;
mod tail;
mod up;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use walcast::config::ServeArgs;
use walcast::gateway::Gateway;

#[derive(Debug, Parser)]
#[command(
    name = "walcast",
    version,
    about = "PostgreSQL changes → permission-filtered WebSocket events (StaticBackend realtime protocol)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing `serve`'s flags would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway against an existing PostgreSQL (wal_level=logical).
    Serve {
        /// TOML file with the same keys as the flags (snake_case); flags and env win.
        #[arg(long, env = "WALCAST_CONFIG")]
        config: Option<PathBuf>,
        // Boxed: every serve setting is here, and the enum should not be as big as all of them.
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// Start a private PostgreSQL with a demo app, and the gateway with its demo page.
    Up(up::UpArgs),
    /// Apply the StaticBackend layout and walcast's preparation to a database (idempotent).
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Also create the demo app (accounts, users, `tasks_760_`).
        #[arg(long)]
        demo: bool,
    },
    /// Print every document change as one JSON object per line.
    Tail(tail::TailArgs),
    /// Publish one message to a custom channel through a gateway's `POST /publish`.
    Publish(publish::PublishArgs),
    /// Measure throughput and latency against a gateway.
    Bench(bench::command::BenchArgs),
    /// Print a StaticBackend session JWT for a user.
    Token {
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        /// The user's id (`sb_tokens.id`).
        #[arg(long)]
        user_id: uuid::Uuid,
        /// The user's token (`sb_tokens.token`).
        #[arg(long)]
        user_token: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, args } => {
            let args = match config {
                Some(path) => args.or(ServeArgs::from_file(&path)?),
                None => *args,
            };
            let settings = args.resolve()?;
            let mut gateway = Gateway::start(settings)
                .await
                .context("starting the gateway")?;
            let signal = shutdown_signal()?;
            tokio::select! {
                _ = signal => {
                    gateway.shutdown().await;
                    Ok(())
                }
                failure = gateway.failure() => {
                    gateway.shutdown().await;
                    Err(anyhow::Error::new(failure))
                }
            }
        }
        Command::Up(args) => up::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Bench(args) => bench::command::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Migrate { database_url, demo } => {
            walcast::schema::migrate_url(&database_url, demo)
                .await
                .context("applying schema")?;
            println!("schema applied");
            Ok(())
        }
        Command::Token {
            jwt_secret,
            user_id,
            user_token,
            ttl,
        } => {
            println!(
                "{}",
                walcast::auth::issue_token(jwt_secret.as_bytes(), user_id, &user_token, ttl)
            );
            Ok(())
        }
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is called (not from the first poll), so a
/// signal sent right after a "ready" line is not lost; completes on the first one.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("signal received, shutting down");
    })
}
