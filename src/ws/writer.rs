//! The socket's write side: drains the connection's outbox into the socket, sends pings, closes
//! idle connections and, at shutdown or any close, the close frame.

use super::deflate::{self, Deflate};
use super::WsContext;
use crate::hub::Outbox;
use crate::protocol::{frame, CloseReason, Outgoing};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

/// Last inbound traffic, as milliseconds since the connection started: written by the reader,
/// read by the writer's idle check.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One connection's writer task.
pub(super) struct Writer<W> {
    ctx: Arc<WsContext>,
    outbox: Arc<Outbox>,
    out: WriteHalf<W>,
    activity: Arc<Activity>,
    /// What the handshake agreed for permessage-deflate.
    deflate: Option<Deflate>,
    batch: Vec<Outgoing>,
    buffer: BytesMut,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(
        ctx: Arc<WsContext>,
        outbox: Arc<Outbox>,
        out: WriteHalf<W>,
        activity: Arc<Activity>,
        deflate: Option<Deflate>,
    ) -> Self {
        Writer {
            ctx,
            outbox,
            out,
            activity,
            deflate,
            batch: Vec::new(),
            buffer: BytesMut::new(),
        }
    }

    /// Runs until the connection closes; the reader learns of the end through the outbox.
    pub(super) async fn run(mut self) {
        if let Some(closing) = self.drain().await {
            if closing == CloseReason::SlowConsumer {
                self.ctx.telemetry.drop_reason("slow_consumer_close", 1);
            }
            let _ = self.out.write_all(&closing.frame()).await;
            let _ = self.out.flush().await;
        }
        let _ = self.out.shutdown().await;
        self.outbox.close(CloseReason::Normal);
    }

    /// Writes what is queued until closing is asked for (its reason returned) or the socket
    /// fails (`None`).
    async fn drain(&mut self) -> Option<CloseReason> {
        let mut ping = tokio::time::interval(self.ctx.config.ping_interval);
        ping.tick().await;
        let idle_limit = self.ctx.config.idle_timeout.as_millis() as u64;
        let mut shutting_down = false;
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    self.outbox.close(CloseReason::ShuttingDown);
                }
                _ = ping.tick() => {
                    if self.activity.idle_ms() > idle_limit {
                        self.outbox.close(CloseReason::IdleTimeout);
                    } else {
                        self.outbox.push_control(frame::ping(b""));
                    }
                }
                closing = self.outbox.next_batch(&mut self.batch) => {
                    if closing.is_some() {
                        return closing;
                    }
                    // A client that accepts nothing for a whole idle period is gone or stalled:
                    // drop it rather than hold its buffers forever.
                    let written =
                        tokio::time::timeout(self.ctx.config.idle_timeout, self.write_batch());
                    if !matches!(written.await, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// All queued frames in one write: the syscall per message, not the copy, is what limits
    /// fanout throughput.
    async fn write_batch(&mut self) -> std::io::Result<()> {
        let result = match (self.deflate, self.batch.len()) {
            (None, 1) => self.out.write_all(self.batch[0].frame()).await,
            (None, _) => {
                self.buffer.clear();
                for frame in &self.batch {
                    self.buffer.extend_from_slice(frame.frame());
                }
                self.out.write_all(&self.buffer).await
            }
            (Some(deflate), _) => {
                self.buffer.clear();
                for frame in &self.batch {
                    let frame = frame.for_connection(
                        |len| deflate.compresses(len),
                        deflate::compressed_text_frame,
                    );
                    self.buffer.extend_from_slice(&frame);
                }
                self.out.write_all(&self.buffer).await
            }
        };
        self.batch.clear();
        if self.buffer.capacity() > 1 << 20 {
            self.buffer = BytesMut::new();
        }
        result
    }
}
