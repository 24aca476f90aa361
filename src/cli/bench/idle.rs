//! Idle connections: the server's resident memory growth per authenticated, joined connection.

use super::subscriber::{self, Fleet, Shared};
use super::target::Target;
use super::{base_report, process, tenants, BenchError, Options};
use std::sync::Arc;

pub async fn run(options: &Options, target: &Target) -> Result<super::Report, BenchError> {
    let accounts = options.accounts.max(1);
    let (jwts, channel): (Vec<Arc<str>>, String) = match &target.database_url {
        Some(url) => {
            let client = tenants::connect(url).await?;
            let users = tenants::create(&client, accounts, &options.jwt_secret).await?;
            (
                users.iter().map(|u| u.jwt.as_str().into()).collect(),
                format!("db-{}", tenants::REPO),
            )
        }
        None => (vec!["bench".into()], "bench".into()),
    };
    let accounts = jwts.len();
    let shared = Shared::new(options.setup_concurrency);
    // Warm the server's allocator and lazily built state with one connection first, so the
    // growth measured is per connection, not one-time.
    let fleet = Fleet::new(target, options, jwts, &channel);
    let warm = subscriber::setup(&fleet.spec(options.connections)).await?;
    tokio::time::sleep(options.settle).await;
    let before = target.server_pid.and_then(process::sample);

    let specs = fleet.specs(options.connections);
    let (handles, joined, first_error) = subscriber::start_all(specs, &shared).await;
    tokio::time::sleep(options.settle).await;
    let after = target.server_pid.and_then(process::sample);
    shared.stop.cancel();
    let totals = subscriber::collect(handles).await;
    drop(warm);

    let mut report = base_report(options, target);
    report.accounts = accounts;
    report.connections = joined;
    report.connect_failures = options.connections - joined;
    report.first_connect_error = first_error.map(|e| e.to_string());
    report.lost_connections = totals.lost;
    if let (Some(b), Some(a)) = (before, after) {
        report.server.rss_before_kib = Some(b.rss_kib);
        report.server.rss_after_kib = Some(a.rss_kib);
        report.server.cpu_seconds = Some(a.cpu_secs - b.cpu_secs);
        report.server.cpu_percent = Some(process::cpu_percent(&b, &a));
        if joined > 0 {
            report.rss_per_connection_bytes =
                Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / joined as f64);
        }
    }
    Ok(report)
}
