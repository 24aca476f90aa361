//! One cluster node: the NATS connection, the stream, lease and idempotency set-up, where this node starts
//! reading, its readiness and metrics, and the tasks it runs (holder, consumer, channels).

use super::channels::{BridgeQueue, ChannelBridge};
use super::consumer::{Consumer, StartAt};
use super::holder::Holder;
use super::idempotency::NatsIdempotency;
use super::lease::Lease;
use super::wire::decode_message;
use super::{ClusterError, ClusterSettings};
use crate::config::Settings;
use crate::db::Database;
use crate::hub::Hub;
use crate::pipeline::Status;
use crate::telemetry::Telemetry;
use async_nats::jetstream::{self, stream, Context};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walcast_replication::Lsn;

/// `/readyz` in cluster mode: consuming the stream, and streaming the slot when holding it.
#[derive(Debug)]
pub struct Readiness {
    consuming: AtomicBool,
    holder: AtomicBool,
    slot_streaming: AtomicBool,
    ready: Arc<Status>,
}

impl Readiness {
    pub fn new(ready: Arc<Status>) -> Readiness {
        ready.streaming.store(false, Ordering::Release);
        Readiness {
            consuming: AtomicBool::new(false),
            holder: AtomicBool::new(false),
            slot_streaming: AtomicBool::new(false),
            ready,
        }
    }

    fn update(&self) {
        let consuming = self.consuming.load(Ordering::Acquire);
        let holder = self.holder.load(Ordering::Acquire);
        let streaming = self.slot_streaming.load(Ordering::Acquire);
        self.ready
            .streaming
            .store(consuming && (!holder || streaming), Ordering::Release);
    }

    pub fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Release);
        self.update();
    }

    pub fn set_holder(&self, on: bool) {
        self.holder.store(on, Ordering::Release);
        self.update();
    }

    pub fn set_slot_streaming(&self, on: bool) {
        self.slot_streaming.store(on, Ordering::Release);
        self.update();
    }
}

/// Cluster metrics (names in docs/OPERATIONS.md).
#[derive(Clone)]
pub struct Metrics {
    holder: metrics::Gauge,
    lag: metrics::Gauge,
    consumed: metrics::Gauge,
    confirmed: metrics::Gauge,
    ack: metrics::Histogram,
    publish_errors: metrics::Counter,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            holder: metrics::gauge!("walcast_cluster_holder"),
            lag: metrics::gauge!("walcast_cluster_stream_lag_messages"),
            consumed: metrics::gauge!("walcast_cluster_consumed_sequence"),
            confirmed: metrics::gauge!("walcast_cluster_confirmed_lsn"),
            ack: metrics::histogram!("walcast_cluster_publish_ack_seconds"),
            publish_errors: metrics::counter!("walcast_cluster_publish_errors_total"),
        }
    }

    pub fn holder(&self, on: bool) {
        self.holder.set(if on { 1.0 } else { 0.0 });
    }

    pub fn consumed(&self, seq: u64, pending: u64) {
        self.consumed.set(seq as f64);
        self.lag.set(pending as f64);
    }

    pub fn confirmed(&self, lsn: Lsn) {
        self.confirmed.set(lsn.0 as f64);
    }

    pub fn published(&self, ack_after: Duration) {
        self.ack.record(ack_after.as_secs_f64());
    }

    pub fn publish_error(&self) {
        self.publish_errors.increment(1);
    }
}

/// A connected node, before its tasks run.
pub struct ClusterNode {
    settings: Settings,
    cluster: ClusterSettings,
    js: Context,
    lease: Lease,
    start: StartAt,
    window_start: Lsn,
    readiness: Arc<Readiness>,
    bridge: Arc<ChannelBridge>,
    bridge_queue: BridgeQueue,
    idempotency: Arc<NatsIdempotency>,
    max_payload: usize,
}

impl ClusterNode {
    /// Connects, creates or updates the stream (retention from the resume window flags) and the
    /// lease bucket, and finds where this node starts reading.
    pub async fn connect(
        settings: &Settings,
        cluster: &ClusterSettings,
        db: &Database,
        ready: Arc<Status>,
    ) -> Result<ClusterNode, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("walcast {}", cluster.node_id))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(10) as u64)
            })
            .connect(cluster.url.as_str())
            .await
            .map_err(|source| ClusterError::Connect {
                url: cluster.url.clone(),
                source,
            })?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        let window = settings.resume_window;
        // The stream is the resume window; without one it still carries transactions to every
        // node, so it keeps at least a minute (failover and reconnects replay from it).
        let max_age = if window.max_age.is_zero() {
            Duration::from_secs(60)
        } else {
            window.max_age
        };
        let max_bytes = if window.max_bytes == 0 {
            64 << 20
        } else {
            window.max_bytes
        };
        js.create_or_update_stream(stream::Config {
            name: cluster.stream.clone(),
            subjects: vec![cluster.tx_subject()],
            max_age,
            max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            duplicate_window: max_age.min(Duration::from_secs(120)),
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            ..stream::Config::default()
        })
        .await
        .map_err(ClusterError::jetstream)?;
        let lease = Lease::open(
            &js,
            &cluster.lease_bucket(),
            &settings.slot,
            &cluster.node_id,
            cluster.lease_ttl,
        )
        .await?;
        let idempotency = NatsIdempotency::open(
            &js,
            &cluster.idempotency_bucket(),
            settings.publish.idempotency,
        )
        .await?;
        let (start, window_start) = start_point(&js, cluster, settings, db).await?;
        let (bridge, bridge_queue) = ChannelBridge::new(client, cluster.channel_prefix());
        tracing::info!(
            node = %cluster.node_id,
            next = start.next,
            window_start = %window_start,
            "joined the cluster"
        );
        Ok(ClusterNode {
            settings: settings.clone(),
            cluster: cluster.clone(),
            js,
            lease,
            start,
            window_start,
            readiness: Arc::new(Readiness::new(ready)),
            bridge: Arc::new(bridge),
            bridge_queue,
            idempotency: Arc::new(idempotency),
            max_payload,
        })
    }

    /// Where this node's resume window begins (a `since` before it is not recoverable here).
    pub fn window_start(&self) -> Lsn {
        self.window_start
    }

    pub fn bridge(&self) -> Arc<ChannelBridge> {
        Arc::clone(&self.bridge)
    }

    /// The largest custom-channel message NATS carries (its max payload less the relay's
    /// overhead): a larger one is refused as too large before it is accepted.
    pub fn max_message_bytes(&self) -> usize {
        super::channels::max_data_bytes(self.max_payload)
    }

    /// The idempotency keys every node shares.
    pub fn idempotency(&self) -> Arc<NatsIdempotency> {
        Arc::clone(&self.idempotency)
    }

    /// Runs the holder, the consumer and the channel bridge until `stop`; the holder releases
    /// the lease and confirms the last acknowledged transaction on the way out.
    pub fn spawn(
        self,
        hub: Arc<Hub>,
        telemetry: Telemetry,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let metrics = Metrics::new();
        metrics.holder(false);
        let holder = Holder {
            settings: self.settings,
            cluster: self.cluster.clone(),
            js: self.js.clone(),
            lease: self.lease,
            readiness: Arc::clone(&self.readiness),
            metrics: metrics.clone(),
            max_payload: self.max_payload,
        };
        let consumer = Consumer {
            js: self.js,
            cluster: self.cluster,
            hub: Arc::clone(&hub),
            telemetry: telemetry.clone(),
            readiness: self.readiness,
            metrics,
        };
        let bridge = self
            .bridge
            .run(self.bridge_queue, hub, telemetry, stop.clone());
        let start = self.start;
        tokio::spawn(async move {
            tokio::join!(
                holder.run(stop.clone()),
                consumer.run(start, stop.clone()),
                bridge
            );
        })
    }
}

/// The stream's content at start: messages up to its last sequence fill the resume window only.
/// The window starts at the first held transaction, or, when the stream holds none, at the
/// slot's confirmed position (everything before it was published and has expired).
async fn start_point(
    js: &Context,
    cluster: &ClusterSettings,
    settings: &Settings,
    db: &Database,
) -> Result<(StartAt, Lsn), ClusterError> {
    let (stream, state) = stream_state(js, &cluster.stream).await?;
    if state.messages == 0 {
        let start = StartAt {
            next: state.last_sequence + 1,
            recovery_until: state.last_sequence,
        };
        return Ok((start, slot_confirmed(db, &settings.slot).await));
    }
    let start = StartAt {
        next: state.first_sequence,
        recovery_until: state.last_sequence,
    };
    let first = stream
        .get_raw_message(state.first_sequence)
        .await
        .map_err(ClusterError::jetstream)?;
    // A first message that is not a transaction's first part: that transaction is incomplete
    // here, so a `since` at it cannot be honoured.
    let window_start = match decode_message(&first.payload)?.commit() {
        (commit, true) => commit,
        (commit, false) => Lsn(commit.0 + 1),
    };
    Ok((start, window_start))
}

async fn slot_confirmed(db: &Database, slot: &str) -> Lsn {
    let query = "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1";
    let Ok(client) = db.client().await else {
        return Lsn::ZERO;
    };
    match client.query_opt(query, &[&slot]).await {
        Ok(Some(row)) => row
            .get::<_, Option<String>>(0)
            .and_then(|text| text.parse().ok())
            .unwrap_or(Lsn::ZERO),
        _ => Lsn::ZERO,
    }
}

/// The stream by name and its current state (message count, first and last sequence).
pub(super) async fn stream_state(
    js: &Context,
    name: &str,
) -> Result<(stream::Stream, stream::State), ClusterError> {
    let mut stream = js.get_stream(name).await.map_err(ClusterError::jetstream)?;
    let state = stream
        .info()
        .await
        .map_err(ClusterError::jetstream)?
        .state
        .clone();
    Ok((stream, state))
}
