//! One stream's bytes: the response body hyper reads, and the writer task that fills it from the
//! stream's outbox, with keep-alive comments.

use crate::hub::Outbox;
use crate::protocol::{encode, frame, CloseReason, Envelope, Outgoing};
use crate::ws::WsContext;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Sent at every ping interval: proxies keep the connection open, and a vanished client is
/// noticed when the write fails.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The response body of `GET /sse/connect`. It ends when the writer drops its sender; hyper
/// dropping it (the client went away) is what the writer sees as `closed()`.
pub struct EventBody {
    first: Option<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }
}

/// A body fed by a writer through a one-chunk channel: the writer waits while hyper has not
/// taken the previous chunk, so a stalled client stalls only its own writer.
pub fn channel() -> (EventBody, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(1);
    (
        EventBody {
            first: None,
            rx: Some(rx),
        },
        tx,
    )
}

/// A stream refused before it started: one `error` event, then the end.
pub fn refused(message: &str) -> EventBody {
    EventBody {
        first: Some({
            let mut out = BytesMut::new();
            push_event(&mut out, &encode(&Envelope::reply("", "error", message)));
            out.freeze()
        }),
        rx: None,
    }
}

/// Moves the outbox into the body until the stream ends; returns once it has.
pub async fn write(ctx: &WsContext, outbox: &Outbox, sender: mpsc::Sender<Bytes>) {
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut keep_alive = tokio::time::interval(ctx.config.ping_interval);
    keep_alive.tick().await;
    let mut shutting_down = false;
    // Registered once: see the WebSocket writer.
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    let closing = loop {
        let chunk = tokio::select! {
            biased;
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                outbox.close(CloseReason::ShuttingDown);
                continue;
            }
            _ = sender.closed() => break None,
            _ = keep_alive.tick() => Bytes::from_static(KEEP_ALIVE),
            closing = outbox.next_batch(&mut batch) => {
                if let Some(closing) = closing {
                    break Some(closing);
                }
                events(&mut batch)
            }
        };
        // A client that takes nothing for a whole idle period is gone or stalled; one whose
        // queue overflowed meanwhile is dropped at once (what was queued is gone anyway).
        let sent = tokio::select! {
            sent = tokio::time::timeout(ctx.config.idle_timeout, sender.send(chunk)) => {
                matches!(sent, Ok(Ok(())))
            }
            _ = slow_consumer(outbox) => false,
        };
        if !sent {
            break outbox
                .close_reason()
                .filter(|r| *r == CloseReason::SlowConsumer);
        }
    };
    if let Some(closing) = closing {
        if closing == CloseReason::SlowConsumer {
            ctx.telemetry.drop_reason("slow_consumer_close", 1);
        }
        // Best effort, never waited for: the stream is ending either way.
        let _ = sender.try_send(Bytes::from(format!(
            ": close {} {}\n\n",
            closing.code(),
            closing.text()
        )));
    }
    outbox.close(CloseReason::Normal);
}

/// Resolves once the outbox overflowed; never for any other close (those flush first).
async fn slow_consumer(outbox: &Outbox) {
    outbox.closing().await;
    if outbox.close_reason() != Some(CloseReason::SlowConsumer) {
        std::future::pending::<()>().await;
    }
}

/// Every queued message as one event each, in one chunk (one write for the batch).
fn events(batch: &mut Vec<Outgoing>) -> Bytes {
    let mut out = BytesMut::new();
    for entry in batch.drain(..) {
        for frame in entry.parts() {
            // Only text frames are queued for a stream; control frames are WebSocket-only.
            if let Some(payload) = frame::text_payload(&frame) {
                push_event(&mut out, &payload);
            }
        }
    }
    out.freeze()
}

/// One unnamed event. `payload` is JSON text, which never contains a raw newline, so one
/// `data:` line carries it whole.
fn push_event(out: &mut BytesMut, payload: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_becomes_unnamed_events() {
        let mut batch = vec![
            Outgoing::from(frame::text(br#"{"type":"init"}"#)),
            Outgoing::from(frame::ping(b"")),
            Outgoing::shared(frame::text(br#"{"type":"ok"}"#)),
        ];
        assert_eq!(
            &events(&mut batch)[..],
            b"data: {\"type\":\"init\"}\n\ndata: {\"type\":\"ok\"}\n\n"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_burst_becomes_one_event_per_message() {
        let mut batch = vec![Outgoing::burst(&[
            frame::text(br#"{"n":1}"#),
            frame::text(br#"{"n":2}"#),
        ])];
        assert_eq!(
            &events(&mut batch)[..],
            b"data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"
        );
    }
}
