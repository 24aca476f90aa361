//! Metrics (Prometheus text at `/metrics`, drawn by `/dashboard`). Handles are resolved once
//! and cloned, so the hot path increments an atomic rather than looking a name up.

use crate::journal::LogStats;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use walcast_replication::Lsn;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several gateways in one process share it).
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// Renders every metric in the Prometheus text exposition format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub(crate) struct Telemetry(Arc<Handles>);

#[derive(Debug)]
struct Handles {
    connections: Gauge,
    channels: Gauge,
    messages_in: Counter,
    events_in: Counter,
    transactions_in: Counter,
    deliveries: Counter,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    confirmed_lsn: Gauge,
    slot_retained_bytes: Gauge,
    window_bytes: Gauge,
    window_oldest_lsn: Gauge,
    log_bytes: Gauge,
    log_segments: Gauge,
    log_oldest_lsn: Gauge,
    log_durable_lsn: Gauge,
}

/// The replication figures of one report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LagFigures {
    /// Server WAL past the last dispatched transaction (0 while the stream is idle).
    pub lag_bytes: u64,
    /// Age of the last dispatched commit while there is lag; 0 otherwise.
    pub lag_seconds: f64,
    /// What the slot was last told (its `confirmed_flush_lsn`).
    pub confirmed: Lsn,
    /// WAL the server keeps for the slot: server end − confirmed.
    pub slot_retained_bytes: u64,
    /// The in-memory resume window.
    pub window_bytes: u64,
    pub window_oldest: Option<Lsn>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        handle();
        Telemetry(Arc::new(Handles {
            connections: metrics::gauge!("walcast_connections"),
            channels: metrics::gauge!("walcast_channels"),
            messages_in: metrics::counter!("walcast_messages_in_total"),
            events_in: metrics::counter!("walcast_events_in_total"),
            transactions_in: metrics::counter!("walcast_transactions_in_total"),
            deliveries: metrics::counter!("walcast_deliveries_total"),
            lag_bytes: metrics::gauge!("walcast_replication_lag_bytes"),
            lag_seconds: metrics::gauge!("walcast_replication_lag_seconds"),
            confirmed_lsn: metrics::gauge!("walcast_confirmed_lsn"),
            slot_retained_bytes: metrics::gauge!("walcast_slot_retained_bytes"),
            window_bytes: metrics::gauge!("walcast_resume_window_bytes"),
            window_oldest_lsn: metrics::gauge!("walcast_resume_window_oldest_lsn"),
            log_bytes: metrics::gauge!("walcast_resume_log_bytes"),
            log_segments: metrics::gauge!("walcast_resume_log_segments"),
            log_oldest_lsn: metrics::gauge!("walcast_resume_log_oldest_lsn"),
            log_durable_lsn: metrics::gauge!("walcast_resume_log_durable_lsn"),
        }))
    }

    pub fn connection_opened(&self) {
        self.0.connections.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.0.connections.decrement(1.0);
    }

    pub fn channels(&self, n: usize) {
        self.0.channels.set(n as f64);
    }

    pub fn messages_in(&self, count: usize) {
        self.0.messages_in.increment(count as u64);
    }

    pub fn transaction_in(&self, events: usize) {
        self.0.transactions_in.increment(1);
        self.0.events_in.increment(events as u64);
    }

    pub fn delivered(&self, n: usize) {
        if n > 0 {
            self.0.deliveries.increment(n as u64);
        }
    }

    /// Something not delivered, by reason (slow_consumer, fail_closed, rate_limited, …).
    pub fn drop_reason(&self, reason: &'static str, n: usize) {
        if n > 0 {
            metrics::counter!("walcast_drops_total", "reason" => reason).increment(n as u64);
        }
    }

    pub fn replication(&self, f: LagFigures) {
        let h = &self.0;
        h.lag_bytes.set(f.lag_bytes as f64);
        h.lag_seconds.set(f.lag_seconds);
        h.confirmed_lsn.set(f.confirmed.0 as f64);
        h.slot_retained_bytes.set(f.slot_retained_bytes as f64);
        h.window_bytes.set(f.window_bytes as f64);
        h.window_oldest_lsn
            .set(f.window_oldest.map_or(0.0, |l| l.0 as f64));
    }

    /// The window log: size, segments, oldest and durable positions, and (as a label of an
    /// info gauge) where it lives.
    pub fn window_log(&self, stats: &LogStats) {
        let h = &self.0;
        h.log_bytes.set(stats.bytes as f64);
        h.log_segments.set(stats.segments as f64);
        h.log_oldest_lsn
            .set(stats.oldest.map_or(0.0, |l| l.0 as f64));
        h.log_durable_lsn.set(stats.durable.0 as f64);
        metrics::gauge!("walcast_resume_log_info", "dir" => stats.location.clone()).set(1.0);
    }
}
