//! Custom-channel publishing, one path for every source: `chan_in` on either transport and the
//! server publish API (`POST /publish`, `walcast publish`, server-side features). Checks the
//! channel, the data size and the idempotency key, then hands one encoded `chan_out` to the
//! channel transport.
//!
//! Both seams are traits so that a cluster implementation can fill them: [`ChannelSink`] (this
//! process's [`Hub`] today; a bus reaching every node's hub later) and [`IdempotencyStore`].

mod idempotency;

pub use idempotency::{
    Claim, IdempotencyConfig, IdempotencyStore, MemoryIdempotency, Scope, StoreError, MAX_KEY_BYTES,
};

use crate::hub::{Delivery, Hub};
use crate::protocol::{encode, frame, Channel, ChannelError, Envelope};
use crate::telemetry::Telemetry;
use bytes::Bytes;
use std::sync::Arc;

/// Delivers an encoded `chan_out` frame to the members of a custom channel. Never waits on a
/// subscriber: a slow one is closed, not waited for.
pub trait ChannelSink: Send + Sync + std::fmt::Debug {
    fn send(&self, app: &str, channel: &Channel, frame: &Bytes) -> Result<Delivery, SinkError>;

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
}

impl ChannelSink for Hub {
    fn send(&self, app: &str, channel: &Channel, frame: &Bytes) -> Result<Delivery, SinkError> {
        Ok(self.publish(app, channel, frame))
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
    /// The sending connection's sid; empty for the server.
    pub sender_sid: &'a str,
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
    pub fn new(
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
        if msg.data.len() > self.max_message_bytes {
            self.telemetry.drop_reason("message_too_large", 1);
            return Err(PublishError::TooLarge);
        }
        // Before the key is claimed: a refused message must stay retryable with the same key.
        if !self.sink.available() {
            return Err(PublishError::Unavailable);
        }
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
        let out = frame::text(&encode(&Envelope {
            sid: msg.sender_sid,
            kind: "chan_out",
            data: msg.data,
            channel: msg.channel.name(),
            ..Envelope::default()
        }));
        let delivery = self
            .sink
            .send(msg.app, msg.channel, &out)
            .map_err(|error| {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "channel publish failed"
                );
                PublishError::Unavailable
            })?;
        self.telemetry.delivered(delivery.delivered);
        self.telemetry
            .drop_reason("slow_consumer", delivery.slow_consumers);
        Ok(Published::Delivered(delivery))
    }

    /// The server's own publish (no sender connection, sid `""`): `POST /publish`, and server
    /// features that write to channels clients may not write to. Client-only rules (who may
    /// send on a channel) are the caller's; the channel rules of `chan_in` (no channel, `db-`
    /// in any case, malformed, reserved), the size and the key rules apply.
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
                sender_sid: "",
                idempotency_key,
            },
            || {},
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Outbox, Subscriber};
    use crate::permission::Reader;

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
        });
        let channel = Channel::parse(channel).unwrap();
        hub.join(&subscriber, &channel, None, None, |_| {
            Bytes::from_static(b"j")
        });
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
        assert_eq!(
            &text[..],
            br#"{"sid":"","type":"chan_out","data":"hi","channel":"room","token":""}"#
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
            sender_sid: "s",
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
