//! `walcast bench`: end-to-end throughput and latency against a gateway (started here as a child
//! process with a private PostgreSQL, or any server at a `ws://` URL).
//!
//! Scenarios:
//! - `db`: N subscribers over M accounts on an account-readable repo (`_760_`); writer
//!   connections insert rows carrying their send time; deliveries are permission-filtered.
//! - `channel`: N subscribers on one custom channel; one publisher sends `chan_in` messages.
//! - `idle`: N authenticated, joined connections; the server's RSS growth per connection.
//! - `snapshot`: one `join` with a snapshot of `--rows` rows, beside `psql` reading the same rows.
//!
//! Latency is receive time − send time embedded in the payload (same clock: one machine), so for
//! `db` it spans the INSERT round trip, the commit, WAL decoding, fanout and the socket.
//! Flat-out runs are paced by a window of undelivered messages per subscriber, so they measure
//! a sustainable rate rather than how fast queues fill.

mod channel;
mod client;
mod cluster;
pub mod command;
mod db;
mod idle;
mod latency;
mod process;
mod report;
mod snapshot;
mod subscriber;
mod target;
mod tenants;
mod transport;

use report::{Latency, Report, Server};
use target::GatewayLaunch;
use transport::Transport;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid websocket url `{0}` (expected ws://host:port/path)")]
    Url(String),
    #[error("cannot start the private PostgreSQL")]
    EmbeddedPostgres(#[source] walcast_replication::embedded::EmbeddedError),
    #[error("PostgreSQL error")]
    Database(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Db(walcast::db::DbError),
    #[error(
        "the database has no walcast helpers (sb.walcast_create_app): run `walcast migrate --database-url <url>` on it first"
    )]
    NotMigrated,
    #[error("applying the schema failed")]
    Schema(#[source] walcast::db::DbError),
    #[error("cannot start the gateway process")]
    Spawn(#[source] std::io::Error),
    #[error("the gateway process exited: {0}")]
    GatewayExited(String),
    #[error("the gateway did not become ready")]
    NotReady,
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("I/O error")]
    Io(#[source] std::io::Error),
    #[error("websocket upgrade refused: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("the server closed the connection with code {0}")]
    Closed(u16),
    #[error("the server answered with an error: {0}")]
    Rejected(String),
    #[error("{0} needs --database-url (to create users and write rows) when --url is given")]
    NeedsDatabase(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Db,
    Channel,
    Idle,
    Snapshot,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Db => "db",
            Scenario::Channel => "channel",
            Scenario::Idle => "idle",
            Scenario::Snapshot => "snapshot",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub connections: usize,
    /// db: accounts the subscribers are spread over (round robin).
    pub accounts: usize,
    /// Changes (db) or messages (channel) per second; `None` = flat out.
    pub rate: Option<u64>,
    pub duration: Duration,
    /// Longest wait for outstanding deliveries after sending stops.
    pub drain: Duration,
    /// channel: bytes of each message's `data`.
    pub payload_bytes: usize,
    /// db: rows per INSERT statement (one transaction).
    pub batch: usize,
    /// db: concurrent writer connections (accounts are split between them, so each account's
    /// rows stay in order).
    pub writers: usize,
    /// Flat out: most messages per subscriber sent but not yet delivered.
    pub window: u64,
    pub url: Option<String>,
    pub server_pid: Option<u32>,
    pub database_url: Option<String>,
    pub jwt_secret: String,
    /// Loopback source addresses to spread client connections over.
    pub source_addrs: usize,
    /// Handshakes in progress at once.
    pub setup_concurrency: usize,
    /// Child gateway: `--max-outbound-bytes`.
    pub max_outbound_bytes: usize,
    /// Child gateway binary; `None` = the running executable.
    pub gateway_exe: Option<PathBuf>,
    /// idle: wait before reading the server's RSS after the last join; channel: idle time after
    /// the run (connections still open) before reading it again.
    pub settle: Duration,
    /// Offer permessage-deflate (and start the child gateway with `--compression on`).
    pub compression: bool,
    /// Child gateway: serve TLS with these files; the clients trust the certificate.
    pub tls: Option<walcast::tls::TlsFiles>,
    /// db: distinct subscription filters over the subscribers (0 = none).
    pub filters: usize,
    /// snapshot: rows in the snapshot.
    pub rows: usize,
    /// Child gateways in cluster mode over a private nats-server (0 = one plain gateway).
    pub cluster_nodes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: Scenario::Channel,
            connections: 1000,
            accounts: 1000,
            rate: None,
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            payload_bytes: 100,
            batch: 10,
            writers: 4,
            window: 100,
            url: None,
            server_pid: None,
            database_url: None,
            jwt_secret: "walcast-bench-secret".into(),
            source_addrs: 8,
            setup_concurrency: 128,
            max_outbound_bytes: 16 << 20,
            gateway_exe: None,
            settle: Duration::from_secs(2),
            compression: false,
            tls: None,
            filters: 0,
            rows: 10_000,
            cluster_nodes: 0,
        }
    }
}

/// Runs one scenario and stops whatever it started.
pub async fn run(options: Options) -> Result<Report, BenchError> {
    let fd_limit = process::raise_fd_limit();
    let transport = match &options.tls {
        Some(files) => Transport::trusting(&files.cert, options.compression)?,
        None => Transport {
            tls: None,
            deflate: options.compression,
        },
    };
    let target = match &options.url {
        Some(_) if options.cluster_nodes > 0 => {
            return Err(BenchError::Protocol(
                "--cluster-nodes starts its own gateways (no --url)",
            ))
        }
        Some(_) if options.tls.is_some() => {
            return Err(BenchError::Protocol(
                "TLS is measured against the child gateway only (no --url)",
            ))
        }
        Some(url) => Target::external(
            url,
            options.server_pid,
            options.database_url.clone(),
            transport,
        )?,
        None => {
            let exe = match &options.gateway_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().map_err(BenchError::Spawn)?,
            };
            let launch = GatewayLaunch {
                exe,
                jwt_secret: options.jwt_secret.clone(),
                max_outbound_bytes: options.max_outbound_bytes,
                compression: options.compression,
                tls: options.tls.clone(),
                cluster_nodes: options.cluster_nodes,
            };
            Target::child_gateway(&launch, options.database_url.clone(), transport).await?
        }
    };
    let result = match options.scenario {
        Scenario::Db => db::run(&options, &target).await,
        Scenario::Channel => channel::run(&options, &target).await,
        Scenario::Idle => idle::run(&options, &target).await,
        Scenario::Snapshot => snapshot::run(&options, &target).await,
    };
    target.stop().await;
    let mut report = result?;
    report.load_generator.fd_limit = fd_limit;
    Ok(report)
}

/// A report with the fields every scenario fills the same way.
fn base_report(options: &Options, target: &Target) -> Report {
    Report {
        scenario: options.scenario.name().into(),
        target: target.description.clone(),
        transport: format!(
            "{}{}",
            if options.tls.is_some() { "wss" } else { "ws" },
            if options.compression {
                " + permessage-deflate"
            } else {
                ""
            }
        ),
        connections_requested: options.connections,
        rate: options.rate,
        server: Server {
            pid: target.server_pid,
            ..Server::default()
        },
        ..Report::default()
    }
}

/// Counters a load phase shares between senders, receivers and the measuring loop.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    /// Deliveries the sent messages should produce.
    expected: AtomicU64,
    /// Sent messages the server refused with `rate limit exceeded` (never published).
    rate_limited: AtomicU64,
}

/// Whether a flat-out sender must wait: more than `window` messages per subscriber outstanding.
fn over_window(load: &Load, delivered: &AtomicU64, window_deliveries: u64) -> bool {
    let expected = load.expected.load(Ordering::Relaxed);
    expected.saturating_sub(delivered.load(Ordering::Relaxed)) >= window_deliveries
}

/// Times of one load phase.
struct Window {
    send_secs: f64,
    measured_secs: f64,
    cpu: Option<(process::Sample, process::Sample)>,
    nats_cpu: Option<(process::Sample, process::Sample)>,
    own_cpu: Option<(process::Sample, process::Sample)>,
}

/// Lets the senders run for `duration` (they stop on `stop_sending`), then waits up to `drain`
/// for every expected delivery; reads the server's CPU over the same window.
async fn measure(
    options: &Options,
    target: &Target,
    load: &Load,
    shared: &subscriber::Shared,
    stop_sending: &tokio_util::sync::CancellationToken,
    senders: Vec<tokio::task::JoinHandle<()>>,
) -> Window {
    let delivered = &shared.delivered;
    for pid in &target.server_pids {
        process::reset_peak(*pid);
    }
    let before = target.sample();
    let nats_before = target.nats_pid().and_then(process::sample);
    let own_before = process::sample(std::process::id());
    let start = Instant::now();
    tokio::time::sleep(options.duration).await;
    stop_sending.cancel();
    for sender in senders {
        let _ = sender.await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + options.drain;
    let mut last_count = delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now_delivered = delivered.load(Ordering::Relaxed);
        if now_delivered != last_count {
            last_count = now_delivered;
            last_change = Instant::now();
        }
        if now_delivered >= load.expected.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The window ends at the last delivery seen, not when the drain limit ran out.
    let end = if last_count >= load.expected.load(Ordering::Relaxed) {
        Instant::now()
    } else {
        last_change
    };
    let after = target.sample();
    let nats_after = target.nats_pid().and_then(process::sample);
    let own_after = process::sample(std::process::id());
    Window {
        send_secs,
        measured_secs: end.duration_since(start).as_secs_f64().max(1e-9),
        cpu: before.zip(after),
        nats_cpu: nats_before.zip(nats_after),
        own_cpu: own_before.zip(own_after),
    }
}

/// The delivery figures both sending scenarios report, and the server's.
fn fill_deliveries(
    report: &mut Report,
    load: &Load,
    totals: &subscriber::Totals,
    shared: &subscriber::Shared,
    window: &Window,
) {
    report.send_seconds = window.send_secs;
    report.measured_seconds = window.measured_secs;
    report.sent = load.sent.load(Ordering::Relaxed);
    report.sent_per_sec = report.sent as f64 / window.send_secs;
    report.expected_deliveries = load.expected.load(Ordering::Relaxed);
    report.deliveries = totals.delivered;
    report.deliveries_per_sec = totals.delivered as f64 / window.measured_secs;
    report.latency = Latency::from_histogram(&shared.recorder.merged());
    report.missed = totals.missed;
    report.undelivered = report.expected_deliveries.saturating_sub(totals.delivered);
    report.slow_consumer_closes = totals.slow_consumer_closes;
    report.lost_connections = totals.lost;
    if totals.delivered > 0 {
        report.wire_bytes_per_delivery = Some(totals.wire_bytes as f64 / totals.delivered as f64);
    }
    fill_server(report, window);
}

fn fill_server(report: &mut Report, window: &Window) {
    if let Some((before, after)) = &window.own_cpu {
        report.load_generator.cpu_percent = Some(process::cpu_percent(before, after));
    }
    if let Some((before, after)) = &window.cpu {
        report.server.cpu_percent = Some(process::cpu_percent(before, after));
        report.server.cpu_seconds = Some(after.cpu_secs - before.cpu_secs);
        report.server.rss_before_kib = Some(before.rss_kib);
        report.server.rss_after_kib = Some(after.rss_kib);
        report.server.rss_peak_kib = Some(after.peak_kib.max(after.rss_kib));
        let cpu = after.cpu_secs - before.cpu_secs;
        if cpu > 0.0 {
            report.server.deliveries_per_cpu_sec = Some(report.deliveries as f64 / cpu);
        }
    }
    if let Some((before, after)) = &window.nats_cpu {
        report.server.nats_cpu_seconds = Some(after.cpu_secs - before.cpu_secs);
    }
}
