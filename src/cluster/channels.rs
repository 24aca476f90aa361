//! Custom channels across nodes: a `chan_in` on any node is published on the core NATS subject
//! `<prefix>.chan.<app>.<channel>` (each name escaped into one subject token) and every node,
//! the sender's too, delivers what it receives to its local members. Nothing is delivered
//! locally before NATS has it, so every member on every node sees one copy.
//!
//! Order: one sender's messages go through one bounded queue and one NATS connection, so every
//! member receives them in the order sent.

use crate::hub::{Actor, Delivery, Hub};
use crate::protocol::Channel;
use crate::publish::{ChannelSink, Outgoing, SinkError};
use crate::rules::Denied;
use crate::telemetry::Telemetry;
use async_nats::connection::State;
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Hands messages to NATS as `<sid>\n<data>` (the data as it is, so its size on NATS is known
/// before it is accepted); every node's receiver delivers them (the sender's node too) through
/// its hub, which gives the offset and keeps the history there.
impl ChannelSink for ChannelBridge {
    fn available(&self) -> bool {
        self.client.connection_state() == State::Connected && self.queue.capacity() > 0
    }

    /// The rules are asked on the sender's node, which knows the sender's memberships.
    fn admit(&self, msg: Outgoing<'_>) -> Result<(), Denied> {
        match self.hub.get() {
            Some(hub) => hub.admit(msg),
            None => Ok(()),
        }
    }

    /// `Ok` with nothing delivered yet: delivery happens when NATS hands the message back.
    fn send(&self, msg: Outgoing<'_>) -> Result<Delivery, SinkError> {
        if self.client.connection_state() != State::Connected {
            return Err(SinkError::Refused);
        }
        let subject = subject(&self.prefix, msg.app, msg.channel.name());
        let sid = msg.sender.sid();
        let mut payload = Vec::with_capacity(sid.len() + 1 + msg.data.len());
        payload.extend_from_slice(sid.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(msg.data.as_bytes());
        self.queue
            .try_send(Relay {
                subject,
                frame: Bytes::from(payload),
            })
            .map_err(|_| SinkError::Refused)?;
        Ok(Delivery::default())
    }

    /// Only this node's members: destroy is not yet carried across nodes.
    fn destroy(&self, app: &str, channel: &Channel) -> Result<usize, SinkError> {
        let hub = self.hub.get().ok_or(SinkError::Refused)?;
        hub.destroy(app, channel.name(), Actor::Server)
            .map_err(|_| SinkError::Refused)
    }
}

/// Bound of the queue between sessions and the NATS publisher.
const QUEUE: usize = 4096;

struct Relay {
    subject: String,
    frame: Bytes,
}

#[derive(Debug)]
pub struct ChannelBridge {
    client: Client,
    prefix: String,
    queue: mpsc::Sender<Relay>,
    /// This node's hub, set when [`ChannelBridge::run`] starts.
    hub: std::sync::OnceLock<Arc<Hub>>,
}

/// The outbound half's receiver, consumed by [`ChannelBridge::run`].
pub struct BridgeQueue(mpsc::Receiver<Relay>);

impl ChannelBridge {
    pub fn new(client: Client, prefix: String) -> (ChannelBridge, BridgeQueue) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (
            ChannelBridge {
                client,
                prefix,
                queue,
                hub: std::sync::OnceLock::new(),
            },
            BridgeQueue(rx),
        )
    }

    /// Publishes queued frames and delivers received ones until `stop`.
    pub async fn run(
        self: Arc<Self>,
        queue: BridgeQueue,
        hub: Arc<Hub>,
        telemetry: Telemetry,
        stop: CancellationToken,
    ) {
        let _ = self.hub.set(Arc::clone(&hub));
        let publisher = {
            let client = self.client.clone();
            let mut rx = queue.0;
            let stop = stop.clone();
            async move {
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => break,
                        next = rx.recv() => next,
                    };
                    let Some(out) = next else { break };
                    if let Err(error) = client.publish(out.subject, out.frame).await {
                        telemetry_publish_error(&error);
                    }
                }
            }
        };
        let receiver = async {
            let filter = format!("{}.>", self.prefix);
            let mut subscription = match self.client.subscribe(filter).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::error!(%error, "cannot subscribe to the cluster's channels");
                    return;
                }
            };
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = subscription.next() => message,
                };
                let Some(message) = message else { break };
                let Some((app, name)) = parse_subject(&self.prefix, &message.subject) else {
                    continue;
                };
                // Refused names never reach NATS from a node; anything else is not ours.
                let Ok(channel) = Channel::parse_writable(&name) else {
                    continue;
                };
                let Some((sid, data)) = relayed(&message.payload) else {
                    continue;
                };
                // Admitted on the sender's node; here it is only delivered.
                let actor = Actor::Relayed { sid };
                let Ok(delivery) = hub.publish(&app, channel.name(), actor, data) else {
                    continue;
                };
                telemetry.delivered(delivery.delivered);
                telemetry.drop_reason("slow_consumer", delivery.slow_consumers);
            }
        };
        tokio::join!(publisher, receiver);
    }
}

/// Bytes a relayed message adds to its data on NATS besides the sid: the separator, the subject
/// and headers the server counts against max_payload are well below this.
const RELAY_OVERHEAD: usize = 1024;

/// The largest `data` a channel message may have so that its relay fits NATS's max payload.
pub fn max_data_bytes(max_payload: usize) -> usize {
    max_payload.saturating_sub(RELAY_OVERHEAD)
}

/// `<sid>\n<data>` → (sid, data); `None` for anything else.
fn relayed(payload: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    text.split_once('\n')
}

fn telemetry_publish_error(error: &async_nats::PublishError) {
    tracing::warn!(%error, "channel message not published to NATS");
    metrics::counter!("walcast_cluster_channel_publish_errors_total").increment(1);
}

/// `<prefix>.<app token>.<channel token>`.
pub fn subject(prefix: &str, app: &str, channel: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + app.len() + channel.len() + 2);
    subject.push_str(prefix);
    subject.push('.');
    escape_into(&mut subject, app, '~');
    subject.push('.');
    escape_into(&mut subject, channel, '~');
    subject
}

/// Letters, digits, `-` and `_` stay; every other byte becomes `<marker>XX` (hex), so a name
/// can hold dots, spaces and wildcards and still be exactly one subject token.
pub(super) fn escape_into(out: &mut String, name: &str, marker: char) {
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push(marker);
            out.push_str(&format!("{b:02X}"));
        }
    }
}

fn unescape(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The app and channel of a subject built by [`subject`]; `None` for anything else.
pub fn parse_subject(prefix: &str, subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (app, channel) = rest.split_once('.')?;
    if channel.contains('.') || app.is_empty() || channel.is_empty() {
        return None;
    }
    Some((unescape(app)?, unescape(channel)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_any_name() {
        for (app, channel) in [("app", "room"), ("my_app", "a.b c*>~é"), ("x", "~41")] {
            let s = subject("walcast.chan", app, channel);
            assert_eq!(s.matches('.').count(), 3, "{s}");
            assert!(!s.contains(' ') && !s.contains('*') && !s.contains('>'));
            assert_eq!(
                parse_subject("walcast.chan", &s),
                Some((app.to_owned(), channel.to_owned()))
            );
        }
    }

    #[test]
    fn relay_payload_splits_at_the_first_newline() {
        assert_eq!(relayed(b"s1\na\nb"), Some(("s1", "a\nb")));
        assert_eq!(relayed(b"\n"), Some(("", "")));
        assert_eq!(relayed(b"no separator"), None);
        assert_eq!(relayed(b"s\n\xff"), None);
    }

    #[test]
    fn refuses_foreign_subjects() {
        assert_eq!(parse_subject("walcast.chan", "walcast.tx"), None);
        assert_eq!(parse_subject("walcast.chan", "walcast.chan.a.b.c"), None);
        assert_eq!(parse_subject("walcast.chan", "walcast.chan.a.~4"), None);
        assert_eq!(parse_subject("walcast.chan", "walcast.chan.a.~FF"), None);
    }
}
