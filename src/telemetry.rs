//! Metrics (Prometheus text at `/metrics`, drawn by `/dashboard`). Handles are resolved once
//! and cloned, so the hot path increments an atomic rather than looking a name up.

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

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
pub struct Telemetry(Arc<Handles>);

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

    pub fn message_in(&self) {
        self.0.messages_in.increment(1);
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

    pub fn replication(&self, lag_bytes: u64, lag_seconds: f64, confirmed_lsn: u64) {
        self.0.lag_bytes.set(lag_bytes as f64);
        self.0.lag_seconds.set(lag_seconds);
        self.0.confirmed_lsn.set(confirmed_lsn as f64);
    }
}
