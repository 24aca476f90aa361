//! The `walcast bench` command line: flags → [`Options`](super::Options), report printed.

use super::{Options, Scenario};
use anyhow::{Context, Result};
use std::time::Duration;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScenarioArg {
    /// Permission-filtered db events: N subscribers over M accounts, rows inserted by writers.
    Db,
    /// Custom-channel fanout: N subscribers on one channel, one publisher.
    Channel,
    /// Idle connections: server RSS per authenticated, joined connection.
    Idle,
    /// A `join` snapshot of --rows rows: time and server memory, beside psql reading the same
    /// rows as JSON.
    Snapshot,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "channel")]
    pub scenario: ScenarioArg,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// db/idle: accounts the subscribers are spread over.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// Changes (db) or messages (channel) per second; omit for flat out.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Longest wait for outstanding deliveries after sending stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// channel: bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// db: rows per INSERT (one transaction).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// db: writer connections.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Flat out: messages per subscriber in flight at most.
    #[arg(long, default_value_t = 100)]
    pub window: u64,
    /// db: distinct subscription filters over the subscribers (0 = none). Every row passes
    /// every filter, so deliveries stay the same and only the filters' cost shows.
    #[arg(long, default_value_t = 0)]
    pub filters: usize,
    /// snapshot: rows the snapshot holds.
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// Target an existing server (ws://host:port/path) instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the server's pid, to report its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// PostgreSQL for users and rows (with --url), or for the child gateway instead of a private one.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// JWT secret the server verifies session tokens with.
    #[arg(
        long,
        env = "JWT_SECRET",
        default_value = "walcast-bench-secret",
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Loopback source addresses (127.0.0.1..=127.0.0.N) the connections are spread over.
    #[arg(long, default_value_t = 8)]
    pub source_addrs: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    pub setup_concurrency: usize,
    /// Child gateway's per-connection outbound queue bound, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_outbound_bytes: usize,
    /// idle: seconds to wait before reading the server's memory (default 2); channel: seconds
    /// the connections sit idle after the run before the server's memory is read again
    /// (default 10).
    #[arg(long)]
    pub settle: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Offer permessage-deflate; the child gateway runs with `--compression on` (else `off`).
    #[arg(long)]
    pub compression: bool,
    /// Serve the child gateway over TLS with this PEM certificate (trusted by the clients, which
    /// connect to it as `localhost`); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Start N gateways in cluster mode (`--cluster`) over a private `nats-server -js`
    /// ($WALCAST_NATS_SERVER, else /usr/sbin/nats-server) instead of one; subscribers are
    /// spread over the nodes round robin, server CPU and memory summed over them.
    #[arg(long, default_value_t = 0, conflicts_with = "url")]
    pub cluster_nodes: usize,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid {what}"))
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let options = Options {
        scenario: match args.scenario {
            ScenarioArg::Db => Scenario::Db,
            ScenarioArg::Channel => Scenario::Channel,
            ScenarioArg::Idle => Scenario::Idle,
            ScenarioArg::Snapshot => Scenario::Snapshot,
        },
        filters: args.filters,
        rows: args.rows,
        cluster_nodes: args.cluster_nodes,
        connections: args.connections,
        accounts: args.accounts,
        rate: args.rate.filter(|r| *r > 0),
        duration: seconds(args.duration, "--duration")?,
        drain: seconds(args.drain, "--drain")?,
        payload_bytes: args.payload_bytes,
        batch: args.batch,
        writers: args.writers,
        window: args.window.max(1),
        url: args.url,
        server_pid: args.server_pid,
        database_url: args.database_url,
        jwt_secret: args.jwt_secret,
        source_addrs: args.source_addrs,
        setup_concurrency: args.setup_concurrency,
        max_outbound_bytes: args.max_outbound_bytes,
        gateway_exe: None,
        settle: seconds(
            args.settle.unwrap_or(match args.scenario {
                ScenarioArg::Channel => 10.0,
                _ => 2.0,
            }),
            "--settle",
        )?,
        compression: args.compression,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| walcast::tls::TlsFiles { cert, key }),
    };
    if !args.json {
        eprintln!(
            "walcast bench: scenario {}, {} connections …",
            options.scenario.name(),
            options.connections
        );
    }
    let report = super::run(options).await.context("benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(hint) = report.rate_limit_hint() {
        eprintln!("warning: {hint}");
    }
    Ok(())
}
