//! The durable resume window measured against no window, in one run on one private PostgreSQL:
//! CDC catch-up (a backlog written while the gateways were down, then read through the whole
//! pipeline: decode, document events, dispatch, and with the window: append + fsync to the log)
//! and the WAL PostgreSQL retains for the slot under steady writes.
//!
//! ```sh
//! cargo run --release --example window -- --rows 200000 --per-tx 100 --steady-secs 20
//! ```

use std::time::{Duration, Instant};
use walcast::config::Settings;
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events_in() -> f64 {
    walcast::telemetry::render()
        .lines()
        .find_map(|l| {
            l.strip_prefix("walcast_events_in_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn settings(url: &str, slot: &str, window: bool, data: &std::path::Path) -> Settings {
    let mut s = Settings::new(url, "secret");
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.slot = slot.into();
    s.data_dir = data.to_owned();
    if !window {
        s.resume_window = walcast::hub::WindowConfig::DISABLED;
    }
    s
}

async fn lsn(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::main]
async fn main() {
    let rows = arg("--rows", 200_000);
    let per_tx = arg("--per-tx", 100).max(1);
    let steady = arg("--steady-secs", 20);
    let pg = EmbeddedPostgres::start(EmbeddedOptions::default())
        .await
        .expect("PostgreSQL");
    let url = pg.create_database().await.expect("database");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    walcast::schema::migrate(&db, false).await.unwrap();
    db.batch_execute(
        "SELECT sb.walcast_create_app('bench'); SELECT sb.walcast_create_repo('bench', 'rows_760_');",
    )
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let modes = [("window_on", true), ("window_off", false)];
    // Both slots exist before the backlog.
    for (slot, window) in modes {
        Gateway::start(settings(&url, slot, window, data.path()))
            .await
            .unwrap()
            .shutdown()
            .await;
    }

    println!("catch-up: {rows} rows in transactions of {per_tx}");
    for round in 0..2 {
        let insert = format!(
            "INSERT INTO bench.rows_760_ (account_id, data, created) \
             SELECT NULL::uuid, jsonb_build_object('n', g, 'text', repeat('x', 180)), now() \
             FROM generate_series(1, {per_tx}) g"
        );
        for _ in 0..rows / per_tx {
            db.batch_execute(&insert).await.unwrap();
        }
        let order: Vec<_> = if round == 0 {
            modes.to_vec()
        } else {
            modes.iter().rev().copied().collect()
        };
        for (slot, window) in order {
            let before = events_in();
            let began = Instant::now();
            let gateway = Gateway::start(settings(&url, slot, window, data.path()))
                .await
                .unwrap();
            while events_in() - before < (rows / per_tx * per_tx) as f64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = began.elapsed().as_secs_f64();
            gateway.shutdown().await;
            println!(
                "  round {round} {slot:<10} {:>9.0} rows/s ({secs:.2} s, connect included)",
                rows as f64 / secs
            );
        }
    }

    println!("WAL retained for the slot under steady writes ({steady} s, one row per transaction, window on):");
    let gateway = Gateway::start(settings(&url, "window_on", true, data.path()))
        .await
        .unwrap();
    let start = lsn(&db, "SELECT (pg_current_wal_lsn() - '0/0')::bigint").await;
    let began = Instant::now();
    let mut worst = 0i64;
    let mut samples = Vec::new();
    let mut written = 0u64;
    while began.elapsed() < Duration::from_secs(steady) {
        db.batch_execute(
            "INSERT INTO bench.rows_760_ (account_id, data, created) \
             VALUES (NULL, '{\"n\": 1}', now())",
        )
        .await
        .unwrap();
        written += 1;
        if written % 200 == 0 {
            let held = lsn(
                &db,
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = 'window_on'",
            )
            .await;
            worst = worst.max(held);
            samples.push(held);
        }
    }
    let end = lsn(&db, "SELECT (pg_current_wal_lsn() - '0/0')::bigint").await;
    gateway.shutdown().await;
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    println!(
        "  {written} transactions, {} KiB of WAL written; retained now: median {} KiB, max {} KiB",
        (end - start) / 1024,
        median / 1024,
        worst / 1024
    );
    println!(
        "  before (slot held at the 5-minute window's start): every byte written in the window, \
         i.e. {} KiB after {steady} s",
        (end - start) / 1024
    );
}
