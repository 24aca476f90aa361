use super::deflate::{self, Deflate};
use super::inbound::{Inbound, InboundReader};
use super::session::{Next, Session, Transport};
use super::WsContext;
use crate::hub::Outbox;
use crate::protocol::{encode, frame, CloseReason, Envelope, Outgoing};
use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tracing::Instrument;

/// Serves one upgraded socket until either side ends it. `app_key` is the `sbpk` named at
/// connect; `deflate` what the handshake agreed for permessage-deflate. The socket has exactly
/// one reader and one writer.
pub async fn serve_socket(
    ctx: Arc<WsContext>,
    io: TokioIo<Upgraded>,
    app_key: Option<String>,
    deflate: Option<Deflate>,
) {
    let conn = crate::hub::new_conn_id();
    let span = tracing::debug_span!("ws", conn, deflate = deflate.is_some());
    run(ctx, io, app_key, deflate, conn).instrument(span).await;
}

async fn run(
    ctx: Arc<WsContext>,
    io: TokioIo<Upgraded>,
    app_key: Option<String>,
    deflate: Option<Deflate>,
    conn: u64,
) {
    let (read_half, write_half) = tokio::io::split(io);
    let outbox = Arc::new(Outbox::new(ctx.config.max_outbound_bytes));
    let activity = Arc::new(Activity::new());
    let writer = tokio::spawn(write_loop(
        Arc::clone(&ctx),
        Arc::clone(&outbox),
        write_half,
        Arc::clone(&activity),
        deflate,
    ));

    let Some(_global) = ctx.limits.acquire_global() else {
        ctx.telemetry.drop_reason("connection_limit", 1);
        outbox.push(frame::text(&encode(&Envelope::reply(
            "",
            "error",
            CloseReason::ConnectionLimit.text(),
        ))));
        outbox.close(CloseReason::ConnectionLimit);
        let _ = writer.await;
        return;
    };
    ctx.telemetry.connection_opened();

    let mut session = Session::new(
        Arc::clone(&ctx),
        conn,
        Arc::clone(&outbox),
        app_key,
        Transport::WebSocket,
    );
    session.send_init();
    tracing::debug!(sid = session.sid(), "connected");

    let mut inbound = InboundReader::new(read_half, ctx.config.max_frame_bytes, deflate.is_some());
    let reading = async {
        loop {
            let message = match inbound.next().await {
                Ok(Inbound::Text(message)) => message,
                Ok(Inbound::Fragment) | Ok(Inbound::Pong) => {
                    activity.touch();
                    continue;
                }
                Ok(Inbound::Ping(payload)) => {
                    activity.touch();
                    outbox.push_control(frame::pong(&payload));
                    continue;
                }
                Err(end) => break end,
            };
            activity.touch();
            ctx.telemetry.message_in();
            // Boxed: `handle` (with the auth lookup's database future) is ~2.6 KB, and held inline
            // it would make every idle connection's task that much bigger. One short-lived
            // allocation per inbound message is cheaper than 2.6 KB per connection for its life.
            if let Next::Close(reason) = Box::pin(session.handle(&message)).await {
                break Some(reason);
            }
        }
    };

    let closing = tokio::select! {
        closing = reading => closing,
        // The writer ends first on slow consumer, idle timeout, shutdown or a dead socket.
        _ = outbox.closing() => None,
    };
    if let Some(closing) = closing {
        outbox.close(closing);
    } else {
        outbox.close(CloseReason::Normal);
    }
    session.leave_all();
    drop(session);
    let _ = writer.await;
    ctx.telemetry.connection_closed();
    tracing::debug!("disconnected");
}

/// Last inbound traffic, as milliseconds since the connection started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    ctx: Arc<WsContext>,
    outbox: Arc<Outbox>,
    mut out: WriteHalf<W>,
    activity: Arc<Activity>,
    deflate: Option<Deflate>,
) {
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut buffer = BytesMut::new();
    let mut ping = tokio::time::interval(ctx.config.ping_interval);
    ping.tick().await;
    let idle_limit = ctx.config.idle_timeout.as_millis() as u64;
    let mut shutting_down = false;
    let closing = loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                outbox.close(CloseReason::ShuttingDown);
            }
            _ = ping.tick() => {
                if activity.idle_ms() > idle_limit {
                    outbox.close(CloseReason::IdleTimeout);
                } else {
                    outbox.push_control(frame::ping(b""));
                }
            }
            closing = outbox.next_batch(&mut batch) => {
                if let Some(closing) = closing {
                    break Some(closing);
                }
                // A client that accepts nothing for a whole idle period is gone or stalled: drop
                // it rather than hold its buffers forever.
                let written = tokio::time::timeout(
                    ctx.config.idle_timeout,
                    write_batch(&mut out, &mut batch, &mut buffer, deflate),
                );
                if !matches!(written.await, Ok(Ok(()))) {
                    break None;
                }
            }
        }
    };
    if let Some(closing) = closing {
        if closing == CloseReason::SlowConsumer {
            ctx.telemetry.drop_reason("slow_consumer_close", 1);
        }
        let _ = out.write_all(&closing.frame()).await;
        let _ = out.flush().await;
    }
    let _ = out.shutdown().await;
    // The reader learns of the end through the outbox (slow consumer, shutdown) or the socket.
    outbox.close(CloseReason::Normal);
}

/// All queued frames in one write: the syscall per message, not the copy, is what limits
/// fanout throughput.
async fn write_batch<W: AsyncWrite + Unpin>(
    out: &mut WriteHalf<W>,
    batch: &mut Vec<Outgoing>,
    buffer: &mut BytesMut,
    deflate: Option<Deflate>,
) -> std::io::Result<()> {
    let result = match (deflate, batch.len()) {
        (None, 1) => out.write_all(batch[0].frame()).await,
        (None, _) => {
            buffer.clear();
            for frame in batch.iter() {
                buffer.extend_from_slice(frame.frame());
            }
            out.write_all(buffer).await
        }
        (Some(deflate), _) => {
            buffer.clear();
            for frame in batch.iter() {
                let frame = frame.for_connection(
                    |len| deflate.compresses(len),
                    deflate::compressed_text_frame,
                );
                buffer.extend_from_slice(&frame);
            }
            out.write_all(buffer).await
        }
    };
    batch.clear();
    if buffer.capacity() > 1 << 20 {
        *buffer = BytesMut::new();
    }
    result
}
