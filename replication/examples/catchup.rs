//! Catch-up benchmark: how fast walcast-replication decodes a backlog of committed changes,
//! compared with PostgreSQL's own `pg_recvlogical` streaming the same slot contents to
//! /dev/null, in the same run against the same private cluster.
//!
//! ```sh
//! cargo run --release -p walcast-replication --example catchup -- --rows 1000000
//! ```
//!
//! Options: `--rows N` (default 1,000,000), `--per-tx N` rows per transaction (default 1,000),
//! `--rounds N` (default 2; each round uses a fresh pair of slots created before the inserts, and
//! alternates which reader goes first, so neither always gets the warmer cache).

use std::process::Stdio;
use std::time::{Duration, Instant};

use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};
use walcast_replication::{Lsn, PublicationScope, ReplicationConfig, ReplicationStream};

struct Args {
    rows: u64,
    per_tx: u64,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        per_tx: 1_000,
        rounds: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--rows", Some(v)) => a.rows = v,
            ("--per-tx", Some(v)) => a.per_tx = v.max(1),
            ("--rounds", Some(v)) => a.rounds = v.max(1) as usize,
            _ => {
                eprintln!("usage: catchup [--rows N] [--per-tx N] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    a
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let postgres = EmbeddedPostgres::start(EmbeddedOptions {
        extra_conf: vec![
            ("max_wal_size".into(), "8GB".into()),
            ("shared_buffers".into(), "256MB".into()),
        ],
        ..EmbeddedOptions::default()
    })
    .await?;
    let url = postgres.create_database().await?;
    let client = postgres
        .client(url.rsplit('/').next().unwrap_or("postgres"))
        .await?;
    client
        .batch_execute(
            "CREATE TABLE docs (
                id uuid DEFAULT gen_random_uuid() PRIMARY KEY,
                account_id uuid, owner_id uuid, data jsonb, created timestamp);
             CREATE PUBLICATION bench FOR TABLE docs",
        )
        .await?;
    // Slots exist before the inserts, so all of them must decode the whole backlog.
    for r in 0..args.rounds {
        for kind in ["walcast", "recvlogical"] {
            client
                .batch_execute(&format!(
                    "SELECT pg_create_logical_replication_slot('{kind}_{r}', 'pgoutput')"
                ))
                .await?;
        }
    }
    let t = Instant::now();
    let mut inserted = 0;
    while inserted < args.rows {
        let n = args.per_tx.min(args.rows - inserted);
        // ~200 bytes of JSON per row, as a StaticBackend document.
        client
            .batch_execute(&format!(
                "INSERT INTO docs (account_id, owner_id, data, created)
                 SELECT gen_random_uuid(), gen_random_uuid(),
                   jsonb_build_object('title', 'document ' || g, 'body', md5(g::text) || md5((g + 1)::text),
                     'tags', jsonb_build_array('alpha', 'beta', 'gamma'), 'count', g, 'done', g % 2 = 0,
                     'ref', md5((g * 7)::text)),
                   now()
                 FROM generate_series(1, {n}) g"
            ))
            .await?;
        inserted += n;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end.parse()?;
    let avg: f64 = client
        .query_one("SELECT avg(length(data::text))::float8 FROM docs", &[])
        .await?
        .get(0);
    println!(
        "inserted {} rows in {} transactions of {} rows ({:.1} s), avg data {avg:.0} B, end LSN {end}",
        args.rows,
        args.rows.div_ceil(args.per_tx),
        args.per_tx,
        t.elapsed().as_secs_f64()
    );

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for r in 0..args.rounds {
        let walcast_first = r % 2 == 0;
        for step in 0..2 {
            if (step == 0) == walcast_first {
                let d = walcast(&url, &format!("walcast_{r}"), args.rows).await?;
                println!(
                    "round {r}: walcast-replication {:>8.3} s  {:>10.0} rows/s",
                    d.as_secs_f64(),
                    args.rows as f64 / d.as_secs_f64()
                );
                ours.push(d);
            } else {
                let d = recvlogical(&postgres, &url, &format!("recvlogical_{r}"), end).await?;
                println!(
                    "round {r}: pg_recvlogical      {:>8.3} s  {:>10.0} rows/s",
                    d.as_secs_f64(),
                    args.rows as f64 / d.as_secs_f64()
                );
                theirs.push(d);
            }
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default().as_secs_f64();
    let (a, b) = (
        args.rows as f64 / best(&ours),
        args.rows as f64 / best(&theirs),
    );
    println!(
        "best: walcast-replication {a:.0} rows/s, pg_recvlogical {b:.0} rows/s, ratio {:.2}x",
        a / b
    );
    postgres.stop().await?;
    Ok(())
}

/// Streams the slot until all `rows` inserts have arrived as decoded transactions.
async fn walcast(url: &str, slot: &str, rows: u64) -> Result<Duration, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let cpu = process_cpu();
    let mut stream = ReplicationStream::start(ReplicationConfig {
        conninfo: url.to_owned(),
        slot: slot.to_owned(),
        publication: "bench".into(),
        create_publication: PublicationScope::None,
        ..ReplicationConfig::default()
    })
    .await?;
    let confirmer = stream.confirmer();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < rows {
        let tx = stream.recv().await.ok_or("stream ended")??;
        for change in &tx.changes {
            if let walcast_replication::Change::Insert { new, .. } = change {
                seen += 1;
                bytes += new.0.len();
            }
        }
        confirmer.confirm(tx.end_lsn);
    }
    let elapsed = t.elapsed();
    if let (Some(before), Some(after)) = (cpu, process_cpu()) {
        let used = after.saturating_sub(before);
        println!(
            "  walcast-replication process CPU: {:.2} s ({:.2} us/row)",
            used.as_secs_f64(),
            used.as_secs_f64() * 1e6 / rows as f64
        );
    }
    std::hint::black_box(bytes);
    stream.stop().await?;
    Ok(elapsed)
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, 100 Hz ticks).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `pg_recvlogical` on the same kind of slot, writing to /dev/null, until `end`.
async fn recvlogical(
    postgres: &EmbeddedPostgres,
    url: &str,
    slot: &str,
    end: Lsn,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let status = tokio::process::Command::new(postgres.bin_dir().join("pg_recvlogical"))
        .args([
            "-d",
            url,
            "-S",
            slot,
            "--plugin=pgoutput",
            "--start",
            "--no-loop",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench",
            "-f",
            "/dev/null",
        ])
        .arg(format!("--endpos={end}"))
        .stdin(Stdio::null())
        .status()
        .await?;
    let elapsed = t.elapsed();
    if !status.success() {
        return Err(format!("pg_recvlogical failed: {status}").into());
    }
    Ok(elapsed)
}
