//! Messages that arrived together, handled in order: consecutive `chan_in` of the connection
//! to one channel without idempotency keys are published as one burst (one queue entry per
//! member instead of one per message), the way a corked socket sends a burst in one write.

use super::{Next, Session};
use crate::hub::{Actor, Subscriber};
use crate::protocol::{self, encode, frame, Channel, Envelope, Request};
use crate::publish::{Outgoing, PublishError};
use bytes::Bytes;
use std::sync::Arc;

/// Consecutive `chan_in` being collected: one token, one channel, already authorized.
struct Run {
    token: String,
    subscriber: Arc<Subscriber>,
    channel: Channel,
    data: Vec<String>,
}

impl Session {
    /// Handles `payloads` in order, each as [`Session::handle_parsed`] would (the rate limit
    /// first: a refused message is not even parsed); what every connection sees is the same as
    /// if they had been handled one at a time.
    pub async fn handle_burst(&mut self, payloads: &[Bytes]) -> Next {
        let mut run: Option<Run> = None;
        for payload in payloads {
            if !self.rate.allow() {
                self.publish_run(run.take());
                self.refuse_rate();
                continue;
            }
            let request = self.request(protocol::parse_client(payload));
            match request {
                Ok(Request::ChanIn {
                    token,
                    channel,
                    data,
                    idempotency_key,
                }) if idempotency_key.as_deref().is_none_or(str::is_empty) => {
                    if let Some(current) = run.as_mut() {
                        if current.token == token && channel.as_ref() == Ok(&current.channel) {
                            current.data.push(data);
                            continue;
                        }
                    }
                    self.publish_run(run.take());
                    run = self
                        .authorize(&token, channel)
                        .map(|(subscriber, channel)| Run {
                            token,
                            subscriber,
                            channel,
                            data: vec![data],
                        });
                }
                Ok(request) => {
                    self.publish_run(run.take());
                    if let Next::Close(reason) = self.serve(request).await {
                        return Next::Close(reason);
                    }
                }
                Err(refused) => {
                    self.publish_run(run.take());
                    self.error(&refused);
                }
            }
        }
        self.publish_run(run);
        Next::Continue
    }

    /// Publishes the run's messages together; the sender is answered as if they had come one by
    /// one (see [`crate::publish::Publisher::publish_burst`]).
    fn publish_run(&self, run: Option<Run>) {
        let Some(run) = run else {
            return;
        };
        let data: Vec<&str> = run.data.iter().map(String::as_str).collect();
        let msg = Outgoing {
            app: &run.subscriber.reader.app,
            channel: &run.channel,
            data: "",
            sender: Actor::Connection {
                subscriber: &run.subscriber,
                sid: &self.sid,
            },
            idempotency_key: None,
        };
        let reply = |answer: Result<(), PublishError>| {
            let (kind, data) = match answer {
                Ok(()) => ("ok", ""),
                Err(refused) => ("error", refused.message()),
            };
            frame::text(&encode(&Envelope::reply(&self.sid, kind, data)))
        };
        self.ctx.publisher.publish_burst(msg, &data, reply);
    }
}
