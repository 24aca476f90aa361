//! `walcast up`: a private PostgreSQL (reused across runs), the demo app, the gateway.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use walcast::config::{ServeArgs, DEFAULT_LISTEN};
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the embedded PostgreSQL keeps its data (reused on the next run).
    #[arg(long, env = "WALCAST_DATA_DIR", default_value = "walcast-data")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL instead of starting one.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "WALCAST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Session JWT secret of the demo app.
    #[arg(
        long,
        env = "JWT_SECRET",
        default_value = "walcast-demo-secret",
        hide_env_values = true
    )]
    pub jwt_secret: String,
}

pub async fn run(args: UpArgs) -> Result<()> {
    let mut postgres = None;
    let database_url = match args.database_url.clone() {
        Some(url) => url,
        None => {
            let data_dir = std::path::absolute(&args.data_dir).context("resolving --data-dir")?;
            let fresh = !data_dir.join("PG_VERSION").exists();
            eprint!(
                "{} PostgreSQL in {} ",
                if fresh { "Initialising" } else { "Starting" },
                data_dir.display()
            );
            let started = with_progress(EmbeddedPostgres::start(EmbeddedOptions {
                data_dir: Some(data_dir),
                ..EmbeddedOptions::default()
            }))
            .await
            .inspect_err(|_| eprintln!(" failed"))
            .context("starting the embedded PostgreSQL")?;
            eprintln!(" ready on port {}", started.port());
            let url = started.url("postgres");
            postgres = Some(started);
            url
        }
    };
    eprint!("Applying schema and demo app … ");
    walcast::schema::migrate_url(&database_url, true)
        .await
        .context("applying schema")?;
    eprintln!("done");

    let mut settings = ServeArgs {
        database_url: Some(database_url),
        listen: Some(args.listen.clone()),
        jwt_secret: Some(args.jwt_secret.clone()),
        ..ServeArgs::default()
    }
    .resolve()?;
    settings.demo = true;
    let gateway = Gateway::start(settings)
        .await
        .context("starting the gateway")?;
    let addr = gateway.local_addr();
    // Listening before the banner: a Ctrl-C right after it must not be lost.
    let signal = super::shutdown_signal()?;
    println!("walcast is up.");
    println!("  demo page:  http://{addr}/");
    println!("  dashboard:  http://{addr}/dashboard");
    println!("  websocket:  ws://{addr}/ws");
    println!("  session tokens (JWT secret {:?}):", args.jwt_secret);
    for (name, email, account, user_id, _, token) in walcast::schema::DEMO_USERS {
        let user = uuid::Uuid::parse_str(user_id)?;
        let jwt =
            walcast::auth::issue_token(args.jwt_secret.as_bytes(), user, token, 7 * 24 * 3600);
        println!("    {name:<6} {email:<16} {account}: {jwt}");
    }
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    signal.await;
    gateway.shutdown().await;
    if let Some(postgres) = postgres {
        eprint!("Stopping PostgreSQL … ");
        postgres.stop().await.context("stopping PostgreSQL")?;
        eprintln!("stopped");
    }
    Ok(())
}

/// Prints a dot every half second until `work` is done: initdb and the first start take a few
/// seconds, and a silent terminal looks hung.
async fn with_progress<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                eprint!(".");
                let _ = std::io::stderr().flush();
            }
        }
    }
}
