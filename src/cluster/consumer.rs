//! Every node's consumption of the transaction stream: an ordered consumer from the next
//! sequence this node has not dispatched, each message decoded and handed to the hub with the
//! single-node decision rule.
//!
//! Invariants: sequences are dispatched strictly increasing, each once (a re-created consumer
//! starts after the last dispatched one, and anything at or below it is skipped); the chunks of
//! an event too large for one message are dispatched as one event with the last; messages that
//! were in the stream when the node started fill the resume window only (`recovery`), like the
//! WAL replayed at a single node's start.

use super::node::{Metrics, Readiness};
use super::wire::{decode_message, Reassembly, WireMessage};
use super::ClusterSettings;
use crate::hub::Hub;
use crate::telemetry::Telemetry;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Where a node starts reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartAt {
    /// First sequence to dispatch.
    pub next: u64,
    /// Sequences up to this one were in the stream before the node started.
    pub recovery_until: u64,
}

pub struct Consumer {
    pub js: Context,
    pub cluster: ClusterSettings,
    pub hub: Arc<Hub>,
    pub telemetry: Telemetry,
    pub readiness: Arc<Readiness>,
    pub metrics: Metrics,
}

enum Interrupted {
    Stopped,
    Failed(String),
}

impl Consumer {
    pub async fn run(self, start: StartAt, stop: CancellationToken) {
        let mut next = start.next;
        // Kept across re-created consumers: `next` may sit inside a chunked event, whose
        // chunks so far stay here until the rest arrives.
        let mut chunks = Reassembly::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .consume(&mut next, &mut chunks, start.recovery_until, &stop)
                .await
            {
                Interrupted::Stopped => break,
                Interrupted::Failed(error) => {
                    tracing::warn!(%error, next, "stream consumption interrupted; resuming")
                }
            }
            self.readiness.set_consuming(false);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.readiness.set_consuming(false);
    }

    async fn consume(
        &self,
        next: &mut u64,
        chunks: &mut Reassembly,
        recovery_until: u64,
        stop: &CancellationToken,
    ) -> Interrupted {
        let stream = match self.js.get_stream(&self.cluster.stream).await {
            Ok(stream) => stream,
            Err(error) => return Interrupted::Failed(error.to_string()),
        };
        let config = pull::OrderedConfig {
            filter_subject: self.cluster.tx_subject(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *next,
            },
            ..pull::OrderedConfig::default()
        };
        let consumer = match stream.create_consumer(config).await {
            Ok(consumer) => consumer,
            Err(error) => return Interrupted::Failed(error.to_string()),
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => return Interrupted::Failed(error.to_string()),
        };
        self.readiness.set_consuming(true);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            let message = tokio::select! {
                biased;
                _ = stop.cancelled() => return Interrupted::Stopped,
                _ = ticker.tick() => {
                    self.hub.expire_history(SystemTime::now());
                    self.telemetry.channels(self.hub.channel_count());
                    continue;
                }
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Interrupted::Failed(error.to_string()),
                None => return Interrupted::Failed("consumer ended".into()),
            };
            let (seq, pending, appended) = match message.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.pending,
                    SystemTime::from(info.published),
                ),
                Err(error) => return Interrupted::Failed(error.to_string()),
            };
            if seq < *next {
                continue;
            }
            if seq > *next {
                // Only when this node was away longer than the stream keeps messages.
                tracing::warn!(
                    expected = *next,
                    got = seq,
                    "stream messages expired before this node read them"
                );
                self.telemetry
                    .drop_reason("stream_expired", usize::try_from(seq - *next).unwrap_or(0));
            }
            *next = seq + 1;
            self.metrics.consumed(seq, pending);
            let decoded = decode_message(&message.payload).and_then(|message| match message {
                WireMessage::Events(tx) => Ok(Some(tx)),
                WireMessage::Chunk(chunk) => chunks.push(chunk),
            });
            let tx = match decoded {
                Ok(Some(tx)) => tx,
                Ok(None) => continue,
                Err(error) => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        seq,
                        "undecodable or incomplete stream message skipped"
                    );
                    self.telemetry.drop_reason("invalid_message", 1);
                    continue;
                }
            };
            let stats =
                self.hub
                    .dispatch(Arc::new(tx.into_events()), seq <= recovery_until, appended);
            self.telemetry.transaction_in(stats.events);
            self.telemetry.delivered(stats.delivered);
            self.telemetry
                .drop_reason("slow_consumer", stats.slow_consumers);
            self.telemetry.drop_reason("fail_closed", stats.fail_closed);
        }
    }
}
