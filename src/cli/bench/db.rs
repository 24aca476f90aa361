//! Permission-filtered db fanout: N subscribers over M accounts on an account-readable repo;
//! writer connections insert rows whose `data` carries the send time and a per-account sequence.

use super::latency::{now_us, stamp};
use super::subscriber::{self, Fleet, Shared};
use super::target::Target;
use super::tenants::{self, BenchUser};
use super::{base_report, fill_deliveries, measure, over_window, BenchError, Load, Options};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn run(options: &Options, target: &Target) -> Result<super::Report, BenchError> {
    let url = target
        .database_url
        .clone()
        .ok_or(BenchError::NeedsDatabase("--scenario db"))?;
    let setup_client = tenants::connect(&url).await?;
    let accounts = options.accounts.max(1);
    let users = tenants::create(&setup_client, accounts, &options.jwt_secret).await?;
    drop(setup_client);

    let shared = Shared::new(options.setup_concurrency);
    let jwts: Vec<Arc<str>> = users.iter().map(|u| u.jwt.as_str().into()).collect();
    // Distinct filters every row passes: the payload `b` starts with "wcb:", above "wca<k>".
    let filters = (0..options.filters)
        .map(|k| Arc::from(format!(r#"[["b","gt","wca{k}"]]"#)))
        .collect();
    let fleet =
        Fleet::new(target, options, jwts, &format!("db-{}", tenants::REPO)).with_filters(filters);
    let specs = fleet.specs(options.connections);
    let (handles, joined, first_error) = subscriber::start_all(specs, &shared).await;

    // Subscribers per account, as joined (round robin over accounts).
    let mut readers = vec![0u64; accounts];
    for id in 0..options.connections {
        readers[id % accounts] += 1;
    }
    let load = Arc::new(Load::default());
    let stop_sending = CancellationToken::new();
    let writers = options.writers.clamp(1, accounts);
    let window_deliveries = options.window.saturating_mul(joined as u64).max(1);
    let mut senders = Vec::with_capacity(writers);
    for lane in 0..writers {
        let mine: Vec<(BenchUser, u64)> = users
            .iter()
            .zip(&readers)
            .enumerate()
            .filter(|(i, _)| i % writers == lane)
            .map(|(_, (u, r))| (u.clone(), *r))
            .collect();
        let client = tenants::connect(&url).await?;
        let statement = client
            .prepare(&tenants::insert_sql())
            .await
            .map_err(BenchError::Database)?;
        let lane_rate = options.rate.map(|r| r as f64 / writers as f64);
        let (load, shared, stop) = (Arc::clone(&load), Arc::clone(&shared), stop_sending.clone());
        let batch = options.batch.max(1);
        senders.push(tokio::spawn(async move {
            let mut writer = Writer {
                client,
                statement,
                accounts: mine,
                next: 0,
                seqs: Vec::new(),
            };
            writer.seqs = vec![0; writer.accounts.len()];
            let start = Instant::now();
            let mut rows = 0u64;
            while !stop.is_cancelled() {
                match lane_rate {
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64(rows as f64 / rate);
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep_until(due.into()) => {}
                        }
                    }
                    None => {
                        if over_window(&load, &shared.delivered, window_deliveries) {
                            tokio::time::sleep(Duration::from_micros(500)).await;
                            continue;
                        }
                    }
                }
                let n = match lane_rate {
                    // At a set rate, batch only what is due (a whole batch at low rates would
                    // add its own delay).
                    Some(rate) => {
                        let due = (start.elapsed().as_secs_f64() * rate) as u64;
                        (due.saturating_sub(rows) as usize).clamp(1, batch)
                    }
                    None => batch,
                };
                match writer.write(n).await {
                    Ok(expected) => {
                        rows += n as u64;
                        load.sent.fetch_add(n as u64, Ordering::Relaxed);
                        load.expected.fetch_add(expected, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::warn!(error = &error as &dyn std::error::Error, "insert failed");
                        break;
                    }
                }
            }
        }));
    }
    let window = measure(options, target, &load, &shared, &stop_sending, senders).await;
    shared.stop.cancel();
    let totals = subscriber::collect(handles).await;

    let mut report = base_report(options, target);
    report.accounts = accounts;
    report.connections = joined;
    report.connect_failures = options.connections - joined;
    report.first_connect_error = first_error.map(|e| e.to_string());
    fill_deliveries(&mut report, &load, &totals, &shared, &window);
    Ok(report)
}

/// One writer connection and the accounts it owns (so each account's rows commit in order).
struct Writer {
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
    accounts: Vec<(BenchUser, u64)>,
    next: usize,
    seqs: Vec<u64>,
}

impl Writer {
    /// Inserts `n` rows round robin over the accounts in one statement; returns the deliveries
    /// they should produce.
    async fn write(&mut self, n: usize) -> Result<u64, BenchError> {
        let mut account_ids: Vec<Uuid> = Vec::with_capacity(n);
        let mut owners: Vec<Uuid> = Vec::with_capacity(n);
        let mut data: Vec<String> = Vec::with_capacity(n);
        let mut expected = 0;
        let sent_at = now_us();
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % self.accounts.len();
            let (user, readers) = &self.accounts[i];
            let mut marker = String::with_capacity(48);
            stamp(&mut marker, sent_at, self.seqs[i], 0);
            self.seqs[i] += 1;
            account_ids.push(user.account);
            owners.push(user.user);
            data.push(format!("{{\"b\":\"{marker}\"}}"));
            expected += readers;
        }
        self.client
            .execute(&self.statement, &[&account_ids, &owners, &data])
            .await
            .map_err(BenchError::Database)?;
        Ok(expected)
    }
}
