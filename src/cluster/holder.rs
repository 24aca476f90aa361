//! The slot holder: takes the lease, streams the slot, publishes each committed transaction to
//! the stream and confirms its end LSN only after JetStream acknowledged it.
//!
//! Invariants:
//! - Publishing is sequential and fenced: each message carries the stream's last sequence as
//!   this holder knows it, so after any other append (a stale holder, or a new one) the next
//!   publish is refused and this holder starts over from the stream's tail.
//! - On every start it reads the stream's last stamp and skips what the stream already has, so
//!   transactions PostgreSQL streams again (published, not yet confirmed) are not appended twice;
//!   the `<commit LSN>#<part>` message id lets JetStream drop a re-send that raced with the read.
//! - Losing the lease (CAS refused, or no renewal for a TTL) drops the replication connection at
//!   once, before the next transaction is handled.

use super::lease::Lease;
use super::node::{stream_state, Metrics, Readiness};
use super::wire::{decode_message, encode_transaction, Part, Stamp};
use super::{ClusterError, ClusterSettings};
use crate::config::Settings;
use crate::event::Assembler;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use walcast_replication::ReplicationStream;

pub struct Holder {
    pub settings: Settings,
    pub cluster: ClusterSettings,
    pub js: Context,
    pub lease: Lease,
    pub readiness: Arc<Readiness>,
    pub metrics: Metrics,
    pub max_payload: usize,
}

/// How a holding period ended.
enum Ended {
    Stopped,
    Failed(ClusterError),
}

impl Holder {
    pub async fn run(mut self, stop: CancellationToken) {
        let poll = (self.lease.ttl() / 6).max(Duration::from_millis(100));
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.max(poll)) => {}
            }
            if !self.lease.held() {
                match self.lease.try_acquire().await {
                    Ok(true) => tracing::info!(node = %self.cluster.node_id, "took the slot lease"),
                    Ok(false) => continue,
                    Err(error) => {
                        tracing::debug!(
                            error = &error as &dyn std::error::Error,
                            "lease check failed"
                        );
                        continue;
                    }
                }
            } else if let Err(error) = self.lease.renew().await {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "lease renewal failed"
                );
                continue;
            }
            self.readiness.set_holder(true);
            self.metrics.holder(true);
            let ended = self.hold(&stop).await;
            self.readiness.set_slot_streaming(false);
            match ended {
                Ended::Stopped => {
                    self.lease.release().await;
                    break;
                }
                Ended::Failed(error @ (ClusterError::LeaseLost | ClusterError::Fenced)) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "stopped reading the slot"
                    );
                    self.lease.forget();
                    backoff = Duration::ZERO;
                }
                Ended::Failed(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "slot holding interrupted; retrying"
                    );
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
                }
            }
            if !self.lease.held() {
                self.readiness.set_holder(false);
                self.metrics.holder(false);
            }
        }
        self.readiness.set_holder(false);
        self.metrics.holder(false);
    }

    /// The stream's last sequence (the fencing base) and the stamp of its last message.
    async fn tail(&self) -> Result<(u64, Option<Stamp>), ClusterError> {
        let (stream, state) = stream_state(&self.js, &self.cluster.stream).await?;
        let last = state.last_sequence;
        if state.messages == 0 || last == 0 {
            return Ok((last, None));
        }
        let message = stream
            .get_raw_message(last)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok((last, Some(decode_message(&message.payload)?.stamp())))
    }

    async fn hold(&mut self, stop: &CancellationToken) -> Ended {
        let (mut last_seq, stamp) = match self.tail().await {
            Ok(tail) => tail,
            Err(error) => return Ended::Failed(error),
        };
        let config = crate::gateway::replication_config(&self.settings);
        let mut stream = match ReplicationStream::start(config).await {
            Ok(stream) => stream,
            Err(error) => return Ended::Failed(ClusterError::Replication(error)),
        };
        tracing::info!(
            start = %stream.start_lsn(),
            stream_last_sequence = last_seq,
            stamp = ?stamp.map(|s| s.end_lsn.to_string()),
            "streaming the slot as holder"
        );
        self.readiness.set_slot_streaming(true);
        let confirmer = stream.confirmer();
        let mut assembler = Assembler::new();
        let mut renew = tokio::time::interval(self.lease.ttl() / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if let Err(error) = stream.stop().await {
                        tracing::warn!(error = &error as &dyn std::error::Error, "replication stop failed");
                    }
                    return Ended::Stopped;
                }
                _ = renew.tick() => {
                    match self.lease.renew().await {
                        Err(ClusterError::LeaseLost) => return Ended::Failed(ClusterError::LeaseLost),
                        Err(_) if !self.lease.held() => return Ended::Failed(ClusterError::LeaseLost),
                        _ => continue,
                    }
                }
                next = stream.recv() => next,
            };
            let tx = match next {
                Some(Ok(tx)) => tx,
                Some(Err(error)) => return Ended::Failed(ClusterError::Replication(error)),
                None => {
                    return Ended::Failed(ClusterError::JetStream(
                        "replication stream ended".into(),
                    ))
                }
            };
            if !self.lease.held() {
                return Ended::Failed(ClusterError::LeaseLost);
            }
            let events = assembler.assemble(&tx);
            if !events.events.is_empty() {
                let parts = match encode_transaction(&events, self.max_payload) {
                    Ok(parts) => parts,
                    Err(error) => return Ended::Failed(error.into()),
                };
                for part in parts {
                    if stamp.is_some_and(|s| part.stamp <= s) {
                        continue;
                    }
                    match self.publish(part, last_seq).await {
                        Ok(seq) => last_seq = seq,
                        Err(error) => return Ended::Failed(error),
                    }
                }
            }
            confirmer.confirm(tx.end_lsn);
            self.metrics.confirmed(tx.end_lsn);
        }
    }

    /// Appends one message if the stream's last sequence is still `expected`; returns the new
    /// last sequence.
    async fn publish(&self, part: Part, expected: u64) -> Result<u64, ClusterError> {
        let started = Instant::now();
        let message = PublishMessage::build()
            .payload(part.payload)
            .message_id(&part.msg_id)
            .expected_last_sequence(expected);
        let ack = self
            .js
            .send_publish(self.cluster.tx_subject(), message)
            .await
            .map_err(|e| self.publish_failed(e))?
            .await
            .map_err(|e| self.publish_failed(e))?;
        self.metrics.published(started.elapsed());
        if ack.duplicate {
            tracing::debug!(msg_id = %part.msg_id, seq = ack.sequence, "already in the stream");
            return Ok(expected.max(ack.sequence));
        }
        Ok(ack.sequence)
    }

    fn publish_failed(&self, error: jetstream::context::PublishError) -> ClusterError {
        self.metrics.publish_error();
        match error.kind() {
            PublishErrorKind::WrongLastSequence => ClusterError::Fenced,
            _ => ClusterError::jetstream(error),
        }
    }
}
