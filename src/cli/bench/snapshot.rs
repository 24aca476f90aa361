//! One `join` with `"snapshot": true` of `--rows` readable rows: time from the join to
//! `snapshot_end` and the server's memory, beside `psql` reading the same rows as one JSON array
//! in the same run (each three times; the median time is reported).

use super::report::SnapshotFigures;
use super::subscriber::{login, Fleet};
use super::target::Target;
use super::tenants::{self, APP, REPO};
use super::{base_report, process, BenchError, Options};
use std::sync::Arc;
use std::time::Instant;

const RUNS: usize = 3;

pub async fn run(options: &Options, target: &Target) -> Result<super::Report, BenchError> {
    let url = target
        .database_url
        .clone()
        .ok_or(BenchError::NeedsDatabase("--scenario snapshot"))?;
    let client = tenants::connect(&url).await?;
    let users = tenants::create(&client, 1, &options.jwt_secret).await?;
    let user = &users[0];
    let rows = i64::try_from(options.rows).unwrap_or(i64::MAX);
    client
        .execute(
            &format!(
                "INSERT INTO \"{APP}\".\"{REPO}\" (account_id, owner_id, data) \
                 SELECT $1, $2, jsonb_build_object('n', i, 'title', 'task number ' || i, \
                 'status', CASE WHEN i % 3 = 0 THEN 'open' ELSE 'closed' END, 'priority', i % 5, \
                 'meta', jsonb_build_object('team', 'red')) FROM generate_series(1, $3::bigint) i"
            ),
            &[&user.account, &user.user, &rows],
        )
        .await
        .map_err(BenchError::Database)?;
    let jwts = vec![Arc::<str>::from(user.jwt.as_str())];
    let spec = Fleet::new(target, options, jwts, &format!("db-{REPO}")).spec(0);

    let before = target.server_pid.and_then(process::sample);
    let mut times = Vec::new();
    let mut figures = SnapshotFigures::default();
    for _ in 0..RUNS {
        let (mut conn, sid, token) = login(&spec).await?;
        let join = serde_json::json!({
            "sid": sid, "type": "join", "data": &*spec.channel, "token": token, "snapshot": true,
        });
        let start = Instant::now();
        conn.send_text(&serde_json::to_vec(&join).map_err(|_| BenchError::Protocol("json"))?)
            .await?;
        let (mut pages, mut docs) = (0, 0);
        loop {
            let reply = conn.next_reply().await?;
            match reply.kind.as_str() {
                "snapshot" => {
                    pages += 1;
                    docs += serde_json::from_str::<Vec<serde_json::Value>>(&reply.data)
                        .map_err(|_| BenchError::Protocol("snapshot page is not an array"))?
                        .len();
                }
                "snapshot_end" => break,
                "error" => return Err(BenchError::Rejected(reply.data)),
                _ => {}
            }
        }
        times.push(start.elapsed().as_secs_f64());
        figures.rows = docs;
        figures.pages = pages;
    }
    let after = target.server_pid.and_then(process::sample);
    if let (Some(before), Some(after)) = (before, after) {
        figures.server_rss_before_kib = before.rss_kib;
        figures.server_cpu_seconds = (after.cpu_secs - before.cpu_secs) / RUNS as f64;
    }
    figures.server_peak_kib = target.server_pid.and_then(peak_kib).unwrap_or_default();
    figures.seconds = median(&mut times);

    let query = format!(
        "SELECT json_agg(d) FROM (SELECT data || jsonb_build_object('id', id::text, 'accountId', \
         coalesce(account_id::text, '')) AS d FROM \"{APP}\".\"{REPO}\" WHERE account_id = '{}') s",
        user.account
    );
    let mut psql_times = Vec::new();
    for _ in 0..RUNS {
        let (seconds, peak) = psql(&url, &query).await?;
        psql_times.push(seconds);
        figures.psql_peak_kib = figures.psql_peak_kib.max(peak);
    }
    figures.psql_seconds = median(&mut psql_times);

    let mut report = base_report(options, target);
    report.connections_requested = 1;
    report.connections = 1;
    report.accounts = 1;
    report.snapshot = Some(figures);
    Ok(report)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// The process's peak resident memory (`VmHWM`).
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `psql` with output discarded; its wall time and peak RSS (from `wait4`).
async fn psql(url: &str, query: &str) -> Result<(f64, u64), BenchError> {
    let (url, query) = (url.to_owned(), query.to_owned());
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let child = std::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-o",
                "/dev/null",
                "-d",
                &url,
                "-c",
                &query,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(BenchError::Spawn)?;
        let pid = i32::try_from(child.id()).map_err(|_| BenchError::Protocol("pid"))?;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child, not waited for elsewhere; both pointers are valid.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if waited != pid || status != 0 {
            return Err(BenchError::GatewayExited(format!("psql failed ({status})")));
        }
        Ok((start.elapsed().as_secs_f64(), usage.ru_maxrss as u64))
    })
    .await
    .map_err(|_| BenchError::Protocol("psql task"))?
}
