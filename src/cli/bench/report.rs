//! What a run measured, as a terminal table or JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    pub pid: Option<u32>,
    /// Percent of one core over the measured window (200 = both cores of a 2-core machine).
    pub cpu_percent: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Highest RSS during the load window (VmHWM, reset when the window starts where
    /// `/proc/<pid>/clear_refs` is writable).
    pub rss_peak_kib: Option<u64>,
    /// RSS after the run plus `--settle` seconds with every connection still open and idle:
    /// what a burst leaves behind.
    pub rss_idle_kib: Option<u64>,
    pub idle_seconds: Option<f64>,
    /// Deliveries per second of server CPU time: the figure least disturbed by other load on
    /// the machine.
    pub deliveries_per_cpu_sec: Option<f64>,
    /// Cluster mode: the private nats-server's CPU time over the same window (not in the sum
    /// above, which covers the gateway nodes).
    pub nats_cpu_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadGenerator {
    /// The bench process itself over the same window (percent of one core).
    pub cpu_percent: Option<f64>,
    pub fd_limit: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// `ws` or `wss`, with or without permessage-deflate.
    pub transport: String,
    pub connections_requested: usize,
    pub connections: usize,
    pub connect_failures: usize,
    pub first_connect_error: Option<String>,
    pub accounts: usize,
    /// Target send rate (`None`: flat out, paced by a window of undelivered messages).
    pub rate: Option<u64>,
    pub send_seconds: f64,
    /// Seconds from the first send until the last expected delivery (or the drain limit).
    pub measured_seconds: f64,
    /// Changes committed (db) or messages published (channel).
    pub sent: u64,
    pub sent_per_sec: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// WebSocket bytes the subscribers read after the handshake (frame headers and payloads,
    /// pings; over TLS, the decrypted stream: record overhead is not counted) per delivery.
    pub wire_bytes_per_delivery: Option<f64>,
    pub latency: Latency,
    pub missed: u64,
    pub undelivered: u64,
    /// Messages the server refused with `rate limit exceeded` (channel scenario); they are not
    /// counted in `expected_deliveries`.
    pub rate_limited: u64,
    pub slow_consumer_closes: u64,
    pub lost_connections: u64,
    pub server: Server,
    pub load_generator: LoadGenerator,
    /// Idle scenario: server RSS growth divided by connections.
    pub rss_per_connection_bytes: Option<f64>,
    /// Snapshot scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotFigures>,
}

/// One snapshot join beside `psql` reading the same rows as one JSON array.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotFigures {
    pub rows: usize,
    pub pages: usize,
    /// `join` sent → `snapshot_end` received.
    pub seconds: f64,
    /// Server resident memory before, and its peak (VmHWM) after.
    pub server_rss_before_kib: u64,
    pub server_peak_kib: u64,
    pub server_cpu_seconds: f64,
    /// `psql -c "SELECT json_agg(…)"` of the same rows, output discarded.
    pub psql_seconds: f64,
    pub psql_peak_kib: u64,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

fn thousands(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// What the operator should change when the target throttled the run, if it did.
    pub fn rate_limit_hint(&self) -> Option<String> {
        (self.rate_limited > 0).then(|| {
            format!(
                "the gateway refused {} of {} messages with \"rate limit exceeded\" (its \
                 per-connection limit, 100 messages/s by default): start it with \
                 --rate-limit 0 (or a higher --rate-limit and --rate-burst), or lower --rate",
                self.rate_limited, self.sent
            )
        })
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<24} {v}");
        };
        row("scenario", self.scenario.clone());
        row("target", self.target.clone());
        row("transport", self.transport.clone());
        row(
            "connections",
            format!(
                "{} joined of {} ({} failed{})",
                self.connections,
                self.connections_requested,
                self.connect_failures,
                self.first_connect_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        );
        if let Some(s) = &self.snapshot {
            row("rows", format!("{} in {} pages", s.rows, s.pages));
            row(
                "walcast snapshot",
                format!(
                    "{:.3} s, server CPU {:.3} s, server RSS {} KiB before, peak {} KiB (+{} KiB)",
                    s.seconds,
                    s.server_cpu_seconds,
                    s.server_rss_before_kib,
                    s.server_peak_kib,
                    s.server_peak_kib.saturating_sub(s.server_rss_before_kib)
                ),
            );
            row(
                "psql json_agg",
                format!(
                    "{:.3} s, psql peak RSS {} KiB",
                    s.psql_seconds, s.psql_peak_kib
                ),
            );
            row(
                "ratio",
                format!("{:.2}× psql's time", s.seconds / s.psql_seconds.max(1e-9)),
            );
            return t;
        }
        if self.scenario == "idle" {
            row(
                "RSS per connection",
                self.rss_per_connection_bytes
                    .map(|b| format!("{:.0} B ({:.2} KiB)", b, b / 1024.0))
                    .unwrap_or_else(|| "n/a".into()),
            );
        } else {
            if self.scenario == "db" {
                row("accounts", self.accounts.to_string());
            }
            row(
                "rate",
                self.rate
                    .map(|r| format!("{r}/s target"))
                    .unwrap_or_else(|| "flat out (windowed)".into()),
            );
            row(
                "sent",
                format!(
                    "{} in {:.1} s = {}/s",
                    thousands(self.sent as f64),
                    self.send_seconds,
                    thousands(self.sent_per_sec)
                ),
            );
            row(
                "deliveries",
                format!(
                    "{} of {} in {:.1} s = {}/s",
                    thousands(self.deliveries as f64),
                    thousands(self.expected_deliveries as f64),
                    self.measured_seconds,
                    thousands(self.deliveries_per_sec)
                ),
            );
            let l = &self.latency;
            row(
                "latency (µs)",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
                ),
            );
            row(
                "wire bytes / delivery",
                opt(self.wire_bytes_per_delivery.map(|b| format!("{b:.1}"))),
            );
            row(
                "missed / undelivered",
                format!("{} / {}", self.missed, self.undelivered),
            );
            if self.rate_limited > 0 {
                row("refused (rate limit)", self.rate_limited.to_string());
            }
            row(
                "slow-consumer closes",
                self.slow_consumer_closes.to_string(),
            );
            row("lost connections", self.lost_connections.to_string());
        }
        let s = &self.server;
        row(
            "server CPU",
            format!(
                "{}% of one core ({} s)",
                opt(s.cpu_percent.map(|c| format!("{c:.0}"))),
                opt(s.cpu_seconds.map(|c| format!("{c:.2}")))
            ),
        );
        if let Some(nats) = s.nats_cpu_seconds {
            row("nats-server CPU", format!("{nats:.2} s"));
        }
        if self.scenario != "idle" {
            row(
                "deliveries per CPU-s",
                opt(s.deliveries_per_cpu_sec.map(thousands)),
            );
        }
        row(
            "server RSS",
            match (s.rss_peak_kib, s.rss_idle_kib) {
                (Some(peak), Some(idle)) => format!(
                    "{} KiB before, peak {peak} KiB, {} KiB after, {idle} KiB after {:.0} s idle",
                    opt(s.rss_before_kib),
                    opt(s.rss_after_kib),
                    s.idle_seconds.unwrap_or_default()
                ),
                _ => format!(
                    "{} KiB before, {} KiB after",
                    opt(s.rss_before_kib),
                    opt(s.rss_after_kib)
                ),
            },
        );
        row(
            "load generator CPU",
            format!(
                "{}% of one core (open-file limit {})",
                opt(self.load_generator.cpu_percent.map(|c| format!("{c:.0}"))),
                self.load_generator.fd_limit
            ),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
    }
}
