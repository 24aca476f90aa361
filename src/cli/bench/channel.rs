//! Custom-channel fanout: N subscribers on one channel, one publisher sending `chan_in`.

use super::client::{FrameReader, OP_CLOSE, OP_TEXT};
use super::latency::{now_us, stamp};
use super::subscriber::{self, message, Fleet, Shared};
use super::target::Target;
use super::{
    base_report, fill_deliveries, measure, over_window, tenants, BenchError, Load, Options,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "bench";
/// Messages written per wake-up at most (one write).
const BURST: u64 = 64;

pub async fn run(options: &Options, target: &Target) -> Result<super::Report, BenchError> {
    // A walcast target needs a real user; a reference server accepts any token.
    let jwt: Arc<str> = match &target.database_url {
        Some(url) => {
            let client = tenants::connect(url).await?;
            let users = tenants::create(&client, 1, &options.jwt_secret).await?;
            users[0].jwt.as_str().into()
        }
        None => "bench".into(),
    };
    let shared = Shared::new(options.setup_concurrency);
    let fleet = Fleet::new(target, options, vec![jwt], CHANNEL);
    let specs = fleet.specs(options.connections);
    let (handles, joined, first_error) = subscriber::start_all(specs, &shared).await;

    let (conn, sid, token) = subscriber::login(&fleet.spec(options.connections)).await?;

    let load = Arc::new(Load::default());
    let stop_sending = CancellationToken::new();
    let (read, write, buf) = conn.into_split();
    let acks = tokio::spawn(read_acks(
        FrameReader::new(read, buf),
        shared.stop.clone(),
        Arc::clone(&load),
        joined as u64,
    ));
    let sender = tokio::spawn(publish(
        write,
        sid,
        token,
        options.clone(),
        joined as u64,
        Arc::clone(&load),
        Arc::clone(&shared),
        stop_sending.clone(),
    ));
    let window = measure(options, target, &load, &shared, &stop_sending, vec![sender]).await;
    // What the burst leaves behind once every connection has sat idle for a while.
    tokio::time::sleep(options.settle).await;
    let idle = target.sample();
    shared.stop.cancel();
    let totals = subscriber::collect(handles).await;
    let _ = acks.await;

    let mut report = base_report(options, target);
    report.connections = joined;
    report.connect_failures = options.connections - joined;
    report.first_connect_error = first_error.map(|e| e.to_string());
    report.rate_limited = load.rate_limited.load(Ordering::Relaxed);
    fill_deliveries(&mut report, &load, &totals, &shared, &window);
    if let Some(idle) = idle {
        report.server.rss_idle_kib = Some(idle.rss_kib);
        report.server.idle_seconds = Some(options.settle.as_secs_f64());
    }
    Ok(report)
}

/// The publisher's replies (`ok` per message) must be read or they would back up into its
/// outbox. A `rate limit exceeded` refusal means that message was never published: it is
/// counted, and its deliveries are no longer expected.
async fn read_acks(
    mut reader: FrameReader,
    stop: CancellationToken,
    load: Arc<Load>,
    subscribers: u64,
) {
    loop {
        let filled = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            filled = reader.fill() => filled,
        };
        if !matches!(filled, Ok(n) if n > 0) {
            return;
        }
        let mut closed = false;
        let mut refused = 0u64;
        if reader
            .drain(|opcode, payload| {
                closed |= opcode == OP_CLOSE;
                refused += u64::from(opcode == OP_TEXT && is_rate_limit_refusal(payload));
            })
            .is_err()
            || closed
        {
            return;
        }
        if refused > 0 {
            load.rate_limited.fetch_add(refused, Ordering::Relaxed);
            let _ = load
                .expected
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                    Some(e.saturating_sub(refused * subscribers))
                });
        }
    }
}

/// The gateway's answer to a `chan_in` over its per-connection rate (PROTOCOL.md §5).
fn is_rate_limit_refusal(payload: &[u8]) -> bool {
    serde_json::from_slice::<super::client::Reply>(payload)
        .is_ok_and(|reply| reply.kind == "error" && reply.data == "rate limit exceeded")
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    mut write: tokio::io::WriteHalf<super::transport::BenchStream>,
    sid: String,
    token: String,
    options: Options,
    subscribers: u64,
    load: Arc<Load>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let window_deliveries = options.window.saturating_mul(subscribers).max(1);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut data = String::with_capacity(options.payload_bytes + 32);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        let due = match options.rate {
            Some(rate) => {
                tick.tick().await;
                let target = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                target.saturating_sub(seq)
            }
            None => {
                if over_window(&load, &shared.delivered, window_deliveries) {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                }
                let outstanding = load
                    .expected
                    .load(Ordering::Relaxed)
                    .saturating_sub(shared.delivered.load(Ordering::Relaxed));
                ((window_deliveries - outstanding) / subscribers.max(1)).clamp(1, BURST)
            }
        };
        if due == 0 {
            continue;
        }
        out.clear();
        let sent_at = now_us();
        for _ in 0..due {
            data.clear();
            stamp(&mut data, sent_at, seq, options.payload_bytes);
            super::client::put_frame(
                &mut out,
                super::client::OP_TEXT,
                &message(&sid, "chan_in", &data, CHANNEL, &token),
            );
            seq += 1;
        }
        load.sent.fetch_add(due, Ordering::Relaxed);
        load.expected
            .fetch_add(due * subscribers, Ordering::Relaxed);
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}
