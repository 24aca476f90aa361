//! The slot holder: takes the lease, streams the slot, publishes each committed transaction to
//! the stream and confirms its end LSN only after JetStream acknowledged it.
//!
//! Invariants:
//! - Publishing is ordered and fenced: each message carries the stream's last sequence it must
//!   follow (the tail read at start, plus one per message published since), so after any other
//!   append (a stale holder, or a new one) the next publish is refused and this holder starts
//!   over from the stream's tail. Publishes are pipelined (up to [`IN_FLIGHT`] messages or
//!   [`IN_FLIGHT_BYTES`] awaiting their acks), acks are taken in order, and a transaction's end
//!   LSN is confirmed only once every message before it and its own are acked.
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
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, Context};
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use walcast_replication::{Lsn, ReplicationStream};

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
        let (last_seq, stamp) = match self.tail().await {
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
        let mut pipeline = Pipeline::new(last_seq);
        loop {
            // Everything before a confirm marker is acked: its transaction is in the stream.
            while let Some(lsn) = pipeline.next_confirm() {
                confirmer.confirm(lsn);
                self.metrics.confirmed(lsn);
            }
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if let Err(error) = stream.stop().await {
                        tracing::warn!(error = &error as &dyn std::error::Error, "replication stop failed");
                    }
                    return Ended::Stopped;
                }
                Some(acked) = pipeline.next_ack(), if pipeline.awaiting() => {
                    if let Err(error) = self.acked(&mut pipeline, acked) {
                        return Ended::Failed(error);
                    }
                    continue;
                }
                _ = renew.tick() => {
                    match self.lease.renew().await {
                        Err(ClusterError::LeaseLost) => return Ended::Failed(ClusterError::LeaseLost),
                        Err(_) if !self.lease.held() => return Ended::Failed(ClusterError::LeaseLost),
                        _ => continue,
                    }
                }
                next = stream.recv(), if pipeline.has_room() => next,
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
                    if let Err(error) = self.publish(&mut pipeline, part).await {
                        return Ended::Failed(error);
                    }
                }
            }
            pipeline.confirm_after(tx.end_lsn);
        }
    }

    /// Sends one message fenced on the sequence it must follow; its ack is awaited later, in
    /// order ([`Holder::acked`]).
    async fn publish(&self, pipeline: &mut Pipeline, part: Part) -> Result<(), ClusterError> {
        let expected = pipeline.tail();
        let bytes = part.payload.len();
        let message = PublishMessage::build()
            .payload(part.payload)
            .message_id(&part.msg_id)
            .expected_last_sequence(expected);
        let ack = self
            .js
            .send_publish(self.cluster.tx_subject(), message)
            .await
            .map_err(|e| self.publish_failed(e))?;
        pipeline.sent(Box::pin(ack.into_future()), part.msg_id, bytes);
        Ok(())
    }

    /// The oldest message's ack: it must have been appended right after the one before it.
    fn acked(&self, pipeline: &mut Pipeline, acked: Acked) -> Result<(), ClusterError> {
        let Acked {
            result,
            sent:
                Sent {
                    msg_id,
                    sequence,
                    started,
                    ..
                },
        } = acked;
        let ack = result.map_err(|e| self.publish_failed(e))?;
        self.metrics.published(started.elapsed());
        if ack.sequence == sequence && !ack.duplicate {
            pipeline.acked_through(sequence);
            return Ok(());
        }
        // Already in the stream (a re-send that raced with the tail read): what follows was
        // fenced on a sequence the stream will not reach, so start over from the tail.
        tracing::debug!(%msg_id, seq = ack.sequence, duplicate = ack.duplicate, "stream moved; resync");
        Err(ClusterError::JetStream(format!(
            "message {msg_id} stored at {} instead of {sequence}",
            ack.sequence
        )))
    }

    fn publish_failed(&self, error: jetstream::context::PublishError) -> ClusterError {
        self.metrics.publish_error();
        match error.kind() {
            PublishErrorKind::WrongLastSequence => ClusterError::Fenced,
            _ => ClusterError::jetstream(error),
        }
    }
}

/// Messages sent and not yet acked at most, and their bytes: a stalled JetStream stops the
/// holder reading the slot instead of buffering without bound.
const IN_FLIGHT: usize = 128;
const IN_FLIGHT_BYTES: usize = 8 << 20;

type AckFuture =
    Pin<Box<dyn Future<Output = Result<PublishAck, jetstream::context::PublishError>> + Send>>;

/// A message sent, as its ack is checked.
struct Sent {
    msg_id: String,
    /// The sequence the message must get: the one before it plus one.
    sequence: u64,
    bytes: usize,
    started: Instant,
}

/// A message sent and not yet acked.
struct InFlight {
    ack: AckFuture,
    sent: Sent,
}

/// What the oldest ack brought.
struct Acked {
    result: Result<PublishAck, jetstream::context::PublishError>,
    sent: Sent,
}

/// The holder's publishes in flight, in order, and the end LSNs waiting for them.
struct Pipeline {
    in_flight: VecDeque<InFlight>,
    /// End LSNs to confirm, each once the stream holds the sequence beside it.
    confirms: VecDeque<(u64, Lsn)>,
    /// The stream's last sequence once everything sent is appended.
    tail: u64,
    /// The last sequence acked in order.
    acked: u64,
    bytes: usize,
}

impl Pipeline {
    fn new(tail: u64) -> Self {
        Pipeline {
            in_flight: VecDeque::new(),
            confirms: VecDeque::new(),
            tail,
            acked: tail,
            bytes: 0,
        }
    }

    fn tail(&self) -> u64 {
        self.tail
    }

    fn sent(&mut self, ack: AckFuture, msg_id: String, bytes: usize) {
        self.tail += 1;
        self.bytes += bytes;
        self.in_flight.push_back(InFlight {
            ack,
            sent: Sent {
                msg_id,
                sequence: self.tail,
                bytes,
                started: Instant::now(),
            },
        });
    }

    /// `lsn` is confirmed once everything sent so far is acked.
    fn confirm_after(&mut self, lsn: Lsn) {
        self.confirms.push_back((self.tail, lsn));
    }

    fn acked_through(&mut self, sequence: u64) {
        self.acked = sequence;
    }

    fn awaiting(&self) -> bool {
        !self.in_flight.is_empty()
    }

    fn has_room(&self) -> bool {
        self.in_flight.len() < IN_FLIGHT && self.bytes < IN_FLIGHT_BYTES
    }

    /// The next end LSN whose transaction (and everything before it) is acked.
    fn next_confirm(&mut self) -> Option<Lsn> {
        let &(sequence, lsn) = self.confirms.front()?;
        if sequence > self.acked {
            return None;
        }
        self.confirms.pop_front();
        Some(lsn)
    }

    /// The oldest ack; `None` (never resolving) while nothing is awaited. Cancel-safe: the
    /// message stays at the front until its ack is in.
    async fn next_ack(&mut self) -> Option<Acked> {
        let result = std::future::poll_fn(|cx| match self.in_flight.front_mut() {
            Some(oldest) => oldest.ack.as_mut().poll(cx),
            None => Poll::Pending,
        })
        .await;
        let InFlight { sent, .. } = self.in_flight.pop_front()?;
        self.bytes -= sent.bytes;
        Some(Acked { result, sent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn acked_at(sequence: u64) -> AckFuture {
        let ack: PublishAck =
            serde_json::from_value(serde_json::json!({"stream": "tx", "seq": sequence}))
                .expect("an ack");
        Box::pin(async move { Ok(ack) })
    }

    /// An end LSN is confirmed only once its messages and every one before them are acked, in
    /// order; a transaction without messages waits for those before it.
    #[test]
    fn confirms_follow_the_acks_in_order() {
        let mut pipeline = Pipeline::new(10);
        assert!(!pipeline.awaiting());
        assert!(pipeline.next_ack().now_or_never().is_none());
        pipeline.sent(acked_at(11), "a".into(), 100);
        pipeline.confirm_after(Lsn(1));
        pipeline.sent(acked_at(12), "b".into(), 100);
        pipeline.confirm_after(Lsn(2));
        pipeline.confirm_after(Lsn(3));
        assert_eq!(pipeline.tail(), 12);
        assert_eq!(pipeline.next_confirm(), None);

        let first = pipeline.next_ack().now_or_never().flatten().expect("acked");
        assert_eq!((first.sent.msg_id.as_str(), first.sent.sequence), ("a", 11));
        assert_eq!(first.result.expect("ok").sequence, 11);
        assert_eq!(
            pipeline.next_confirm(),
            None,
            "not before it is taken as acked"
        );
        pipeline.acked_through(11);
        assert_eq!(pipeline.next_confirm(), Some(Lsn(1)));
        assert_eq!(pipeline.next_confirm(), None);

        let second = pipeline.next_ack().now_or_never().flatten().expect("acked");
        assert_eq!(second.sent.sequence, 12);
        pipeline.acked_through(12);
        assert_eq!(pipeline.next_confirm(), Some(Lsn(2)));
        assert_eq!(pipeline.next_confirm(), Some(Lsn(3)));
        assert!(!pipeline.awaiting());
    }

    /// The oldest ack is taken first even when a later one is in already.
    #[test]
    fn acks_are_taken_oldest_first() {
        let mut pipeline = Pipeline::new(0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow: AckFuture = Box::pin(async move {
            let _ = rx.await;
            acked_at(1).await
        });
        pipeline.sent(slow, "slow".into(), 1);
        pipeline.sent(acked_at(2), "fast".into(), 1);
        assert!(pipeline.next_ack().now_or_never().is_none());
        let _ = tx.send(());
        let first = pipeline.next_ack().now_or_never().flatten().expect("acked");
        assert_eq!(first.sent.msg_id, "slow");
    }

    #[test]
    fn room_is_bounded_by_count_and_bytes() {
        let mut pipeline = Pipeline::new(0);
        for n in 0..IN_FLIGHT {
            assert!(pipeline.has_room());
            pipeline.sent(acked_at(n as u64 + 1), n.to_string(), 1);
        }
        assert!(!pipeline.has_room());
        let mut pipeline = Pipeline::new(0);
        pipeline.sent(acked_at(1), "big".into(), IN_FLIGHT_BYTES);
        assert!(!pipeline.has_room());
        pipeline.next_ack().now_or_never().flatten().expect("acked");
        assert!(pipeline.has_room());
    }
}
