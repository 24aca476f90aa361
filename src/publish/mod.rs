//! Custom-channel publishing, one path for every source: `chan_in` on either transport and the
//! server publish API (`POST /publish`, `walcast publish`, server-side features). Checks the
//! channel, the data size and the idempotency key, then hands one encoded `chan_out` to the
//! channel transport.
//!
//! Both seams are traits: [`ChannelSink`] (this process's [`Hub`], or in cluster mode the NATS
//! bridge reaching every node's hub) and [`IdempotencyStore`] (in memory, or in cluster mode a
//! KV bucket every node shares).

mod idempotency;

pub use idempotency::{
    Claim, IdempotencyConfig, IdempotencyStore, MemoryIdempotency, Scope, StoreError, MAX_KEY_BYTES,
};

use crate::hub::{Actor, Answer, Delivery, Hub, RoomError};
use crate::protocol::{Channel, ChannelError};
use crate::rules::Denied;
use crate::telemetry::Telemetry;
use bytes::Bytes;
use std::sync::Arc;

/// The custom channels' transport: applies the channel rules, gives each message its offset in
/// the channel's history and delivers its `chan_out` to the members. Never waits on a
/// subscriber: a slow one is closed, not waited for.
pub trait ChannelSink: Send + Sync + std::fmt::Debug {
    /// Whether the channel rules let the sender publish here; asked before the idempotency key
    /// is claimed, so a refused message does not use up its key.
    fn admit(&self, msg: Outgoing<'_>) -> Result<(), Denied>;
    fn send(&self, msg: Outgoing<'_>) -> Result<Delivery, SinkError>;
    /// Several messages of `msg`'s sender to `msg`'s channel, in order (`msg.data` is not
    /// used), with the sending connection's `answers` (see [`Hub::publish_burst`]). `None`:
    /// this sink takes messages one by one (the caller then sends them with [`ChannelSink::send`]).
    fn send_burst(
        &self,
        msg: Outgoing<'_>,
        data: &[&str],
        answers: &[Answer],
    ) -> Option<Result<Delivery, SinkError>> {
        let _ = (msg, data, answers);
        None
    }
    /// Ends a custom channel: members get `destroyed` and are removed; presence, metadata and
    /// history are dropped. Returns how many members it had.
    fn destroy(&self, app: &str, channel: &Channel) -> Result<usize, SinkError>;

    /// Whether a message can be handed over now; checked before the sender is answered `ok`,
    /// so a transport that is down (cluster mode: NATS) answers an error instead.
    fn available(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The channel transport refused the message (retryable).
    #[error("channel transport refused the message")]
    Refused,
    /// The channel rules refused it (membership changed since it was admitted).
    #[error("channel rules refused the message")]
    Denied(Denied),
}

impl ChannelSink for Hub {
    fn admit(&self, msg: Outgoing<'_>) -> Result<(), Denied> {
        self.may_publish(msg.app, msg.channel.name(), msg.sender)
    }

    fn send(&self, msg: Outgoing<'_>) -> Result<Delivery, SinkError> {
        self.publish(msg.app, msg.channel.name(), msg.sender, msg.data)
            .map_err(room_error)
    }

    fn send_burst(
        &self,
        msg: Outgoing<'_>,
        data: &[&str],
        answers: &[Answer],
    ) -> Option<Result<Delivery, SinkError>> {
        Some(
            self.publish_burst(msg.app, msg.channel.name(), msg.sender, data, answers)
                .map_err(room_error),
        )
    }

    fn destroy(&self, app: &str, channel: &Channel) -> Result<usize, SinkError> {
        Hub::destroy(self, app, channel.name(), Actor::Server).map_err(|_| SinkError::Refused)
    }
}

/// Why a message was not published; [`PublishError::message`] is the exact client-facing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// Missing, malformed, reserved or a database channel.
    Channel(ChannelError),
    /// `data` is over `--max-message-bytes`.
    TooLarge,
    InvalidKey,
    /// The channel's rule refused the sender.
    Denied(Denied),
    /// The channel transport or the idempotency store failed (retryable).
    Unavailable,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PublishError {}

impl PublishError {
    pub fn message(self) -> &'static str {
        match self {
            PublishError::Channel(refused) => refused.message(),
            PublishError::TooLarge => "message too large",
            PublishError::InvalidKey => "invalid idempotency key",
            PublishError::Denied(denied) => denied.message(),
            PublishError::Unavailable => "unable to send your message",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(self) -> bool {
        self == PublishError::Unavailable
    }
}

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub app: &'a str,
    /// Already checked writable ([`Channel::parse_writable`]).
    pub channel: &'a Channel,
    pub data: &'a str,
    /// The sending connection, or the server (sid `""`).
    pub sender: Actor<'a>,
    /// Empty or absent: no idempotency.
    pub idempotency_key: Option<&'a str>,
}

/// What a successful publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Delivered(Delivery),
    /// The idempotency key was seen within the window: nothing was delivered this time.
    Duplicate,
}

#[derive(Debug)]
pub struct Publisher {
    sink: Arc<dyn ChannelSink>,
    keys: Arc<dyn IdempotencyStore>,
    max_message_bytes: usize,
    telemetry: Telemetry,
}

impl Publisher {
    pub(crate) fn new(
        sink: Arc<dyn ChannelSink>,
        keys: Arc<dyn IdempotencyStore>,
        max_message_bytes: usize,
        telemetry: Telemetry,
    ) -> Self {
        Publisher {
            sink,
            keys,
            max_message_bytes,
            telemetry,
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Checks the data size and key. `accepted` runs once the message will be answered `ok` (also for
    /// a repeated key) and before any delivery, so a sender's `ok` precedes its own copy.
    pub async fn publish(
        &self,
        msg: Outgoing<'_>,
        accepted: impl FnOnce(),
    ) -> Result<Published, PublishError> {
        self.fits(msg.data)?;
        // Before the key is claimed: a refused message must stay retryable with the same key.
        self.admitted(msg)?;
        let key = msg.idempotency_key.filter(|k| !k.is_empty());
        if let Some(key) = key {
            if key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
                return Err(PublishError::InvalidKey);
            }
            let scope = Scope {
                app: msg.app,
                channel: msg.channel.name(),
            };
            match self.keys.claim(scope, key).await {
                Ok(Claim::First) => {}
                Ok(Claim::Repeat) => {
                    self.telemetry.drop_reason("idempotent_repeat", 1);
                    accepted();
                    return Ok(Published::Duplicate);
                }
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "idempotency store failed"
                    );
                    return Err(PublishError::Unavailable);
                }
            }
        }
        accepted();
        let delivery = self.sink.send(msg).map_err(sink_error)?;
        self.delivered(delivery);
        Ok(Published::Delivered(delivery))
    }

    /// Several messages of one connection to one channel, none with an idempotency key (so
    /// nothing here waits; `msg.data` and `msg.idempotency_key` are not used). Each is checked
    /// as [`Publisher::publish`] checks it and answered with the frame `reply` makes of its
    /// outcome (`Ok`: `ok`), and the sender sees exactly what it would have seen had they come
    /// one by one: each reply before its own copy, a refusal in its place. A sink that takes
    /// bursts (the hub) gets the accepted ones together, with the replies; any other gets them
    /// one by one.
    pub fn publish_burst(
        &self,
        msg: Outgoing<'_>,
        data: &[&str],
        reply: impl Fn(Result<(), PublishError>) -> Bytes,
    ) -> Delivery {
        let Actor::Connection { subscriber, .. } = msg.sender else {
            return Delivery::default();
        };
        // The same for every message of the burst: one sender, one channel.
        let admitted = self.admitted(msg);
        let verdicts: Vec<Result<(), PublishError>> = data
            .iter()
            .map(|data| self.fits(data).and(admitted))
            .collect();
        let accepted: Vec<&str> = data
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(data, _)| *data)
            .collect();
        let answers: Vec<Answer> = verdicts
            .iter()
            .map(|verdict| Answer {
                reply: reply(*verdict),
                published: verdict.is_ok(),
            })
            .collect();
        let burst = if accepted.is_empty() {
            None
        } else {
            self.sink.send_burst(msg, &accepted, &answers)
        };
        let mut delivery = Delivery::default();
        match burst {
            Some(Ok(sent)) => delivery = sent,
            // Nothing was pushed: answered as one by one would have been (`ok`, then the error).
            Some(Err(error)) => {
                let error = reply(Err(sink_error(error)));
                for answer in &answers {
                    subscriber.outbox.push(answer.reply.clone());
                    if answer.published {
                        subscriber.outbox.push(error.clone());
                    }
                }
            }
            None => {
                let mut accepted = accepted.iter();
                for answer in &answers {
                    subscriber.outbox.push(answer.reply.clone());
                    let Some(data) = answer.published.then(|| accepted.next()).flatten() else {
                        continue;
                    };
                    match self.sink.send(Outgoing { data, ..msg }) {
                        Ok(sent) => {
                            delivery.delivered += sent.delivered;
                            delivery.slow_consumers += sent.slow_consumers;
                        }
                        Err(error) => {
                            subscriber.outbox.push(reply(Err(sink_error(error))));
                        }
                    }
                }
            }
        }
        self.delivered(delivery);
        delivery
    }

    /// The data size check, first for every message.
    fn fits(&self, data: &str) -> Result<(), PublishError> {
        if data.len() > self.max_message_bytes {
            self.telemetry.drop_reason("message_too_large", 1);
            return Err(PublishError::TooLarge);
        }
        Ok(())
    }

    /// Whether the transport can take the message now and the channel rules let its sender
    /// publish there.
    fn admitted(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        if !self.sink.available() {
            return Err(PublishError::Unavailable);
        }
        self.sink.admit(msg).map_err(PublishError::Denied)
    }

    fn delivered(&self, delivery: Delivery) {
        self.telemetry.delivered(delivery.delivered);
        self.telemetry
            .drop_reason("slow_consumer", delivery.slow_consumers);
    }

    /// The server's own publish (no sender connection, sid `""`): `POST /publish`, and server
    /// features that write to channels clients may not write to (`readonly-*`: the channel
    /// rules never refuse the server). The name checks of `chan_in` (no channel, `db-` in any
    /// case, malformed, reserved), the size and the key rules apply; the message is kept in the
    /// channel's history like any other.
    pub async fn server_publish(
        &self,
        app: &str,
        channel: &str,
        data: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Published, PublishError> {
        let channel = Channel::parse_writable(channel).map_err(PublishError::Channel)?;
        self.publish(
            Outgoing {
                app,
                channel: &channel,
                data,
                sender: Actor::Server,
                idempotency_key,
            },
            || {},
        )
        .await
    }

    /// `POST /destroy`: the server ends a custom channel (the name checks of `chan_in` apply).
    pub fn server_destroy(&self, app: &str, channel: &str) -> Result<usize, PublishError> {
        let channel = Channel::parse_writable(channel).map_err(PublishError::Channel)?;
        self.sink.destroy(app, &channel).map_err(|error| {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "channel destroy failed"
            );
            PublishError::Unavailable
        })
    }
}

fn room_error(refused: RoomError) -> SinkError {
    match refused {
        RoomError::Denied(denied) => SinkError::Denied(denied),
        _ => SinkError::Refused,
    }
}

fn sink_error(error: SinkError) -> PublishError {
    match error {
        SinkError::Denied(denied) => PublishError::Denied(denied),
        SinkError::Refused => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "channel publish failed"
            );
            PublishError::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Outbox, Subscriber};
    use crate::permission::Reader;
    use crate::protocol::frame;
    use bytes::Bytes;

    fn publisher(hub: &Arc<Hub>) -> Publisher {
        Publisher::new(
            Arc::clone(hub) as Arc<dyn ChannelSink>,
            Arc::new(MemoryIdempotency::new(IdempotencyConfig::default())),
            8,
            Telemetry::new(),
        )
    }

    fn member(hub: &Hub, channel: &str) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let subscriber = Arc::new(Subscriber {
            conn: crate::hub::new_conn_id(),
            reader: Arc::new(Reader {
                app: "app".into(),
                user_id: uuid::Uuid::nil(),
                account_id: None,
                role: 0,
            }),
            outbox: Arc::clone(&outbox),
            guest: false,
        });
        let channel = Channel::parse(channel).unwrap();
        hub.join(&subscriber, &channel, None, None, |_| {
            Bytes::from_static(b"j")
        })
        .unwrap();
        outbox
    }

    async fn drain(outbox: &Outbox) -> Vec<Bytes> {
        let mut batch = Vec::new();
        outbox.next_batch(&mut batch).await;
        batch.iter().map(|f| f.frame().clone()).collect()
    }

    #[tokio::test]
    async fn checks_in_order_and_delivers_once_per_key() {
        let hub = Arc::new(Hub::default());
        let publisher = publisher(&hub);
        let outbox = member(&hub, "room");
        assert_eq!(drain(&outbox).await.len(), 1);

        let send = |channel, data, key| publisher.server_publish("app", channel, data, key);
        assert_eq!(
            send("", "x", None).await,
            Err(PublishError::Channel(ChannelError::Missing))
        );
        assert_eq!(
            send("DB-x", "x", None).await,
            Err(PublishError::Channel(ChannelError::NotWritable))
        );
        assert_eq!(
            send("sbsys", "x", None).await,
            Err(PublishError::Channel(ChannelError::Reserved))
        );
        assert_eq!(
            send("room", "123456789", None).await,
            Err(PublishError::TooLarge)
        );
        let long_key = "k".repeat(257);
        assert_eq!(
            send("room", "x", Some(&long_key)).await,
            Err(PublishError::InvalidKey)
        );
        let first = send("room", "hi", Some("k1")).await;
        assert!(matches!(first, Ok(Published::Delivered(d)) if d.delivered == 1));
        assert_eq!(
            send("room", "hi", Some("k1")).await,
            Ok(Published::Duplicate)
        );
        assert!(matches!(
            send("room", "hi", Some("")).await,
            Ok(Published::Delivered(_))
        ));
        let frames = drain(&outbox).await;
        assert_eq!(frames.len(), 2, "one copy per key, one unkeyed");
        let text = frame::text_payload(&frames[0]).unwrap();
        let text = std::str::from_utf8(&text).unwrap();
        assert!(
            text.starts_with(
                r#"{"sid":"","type":"chan_out","data":"hi","channel":"room","token":"","offset":"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn accepted_runs_before_delivery_and_for_repeats() {
        let hub = Arc::new(Hub::default());
        let publisher = publisher(&hub);
        let outbox = member(&hub, "room");
        drain(&outbox).await;
        let room = Channel::parse("room").unwrap();
        let msg = Outgoing {
            app: "app",
            channel: &room,
            data: "d",
            sender: Actor::Server,
            idempotency_key: Some("k"),
        };
        let ok = || {
            outbox.push(Bytes::from_static(b"ok"));
        };
        publisher.publish(msg, ok).await.unwrap();
        publisher.publish(msg, ok).await.unwrap();
        let frames = drain(&outbox).await;
        assert_eq!(frames[0], Bytes::from_static(b"ok"));
        assert!(frame::text_payload(&frames[1]).is_some());
        assert_eq!(frames[2], Bytes::from_static(b"ok"));
        assert_eq!(frames.len(), 3);
    }
}
