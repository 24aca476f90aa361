//! One upgraded socket from start to end: the connection slot, the writer task, the session fed
//! with whole inbound messages, and the ordered close.

use super::deflate::Deflate;
use super::inbound::{End, Inbound, InboundReader};
use super::session::{Next, Session, Transport};
use super::writer::{Activity, Writer};
use super::WsContext;
use crate::hub::Outbox;
use crate::protocol::{encode, frame, CloseReason, Envelope};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::AsyncRead;
use tracing::Instrument;

/// Serves one upgraded socket until either side ends it. `app_key` is the `sbpk` named at
/// connect; `deflate` what the handshake agreed for permessage-deflate. The socket has exactly
/// one reader (fastwebsockets' `read_frame` is not cancel-safe, so it is never raced in a
/// `select!`) and one writer.
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
    let writer = Writer::new(
        Arc::clone(&ctx),
        Arc::clone(&outbox),
        write_half,
        Arc::clone(&activity),
        deflate,
    );
    let writer = tokio::spawn(writer.run());

    let Some(_global) = ctx.limits.acquire_global() else {
        ctx.telemetry.drop_reason("connection_limit", 1);
        let refusal = Envelope::reply("", "error", CloseReason::ConnectionLimit.text());
        outbox.push(frame::text(&encode(&refusal)));
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

    let mut reader = ReadSide {
        inbound: InboundReader::new(read_half, ctx.config.max_frame_bytes, deflate.is_some()),
        outbox: Arc::clone(&outbox),
        activity,
    };
    let closing = tokio::select! {
        closing = reader.run(&ctx, &mut session) => closing,
        // The writer ends first on slow consumer, idle timeout, shutdown or a dead socket.
        _ = outbox.closing() => None,
    };
    outbox.close(closing.unwrap_or(CloseReason::Normal));
    session.leave_all();
    drop(session);
    let _ = writer.await;
    ctx.telemetry.connection_closed();
    tracing::debug!("disconnected");
}

/// Messages handed to the session together at most, and their bytes: a burst's `chan_out`
/// frames become one queue entry per member, which stays a modest size.
const MAX_BURST: usize = 64;
const MAX_BURST_BYTES: usize = 64 << 10;

/// The reader task's side of a connection: every inbound frame is activity, pings are
/// answered, whole messages go to the session in order.
struct ReadSide<R> {
    inbound: InboundReader<R>,
    outbox: Arc<Outbox>,
    activity: Arc<Activity>,
}

impl<R: AsyncRead + Unpin> ReadSide<R> {
    /// Until reading ends or the session asks to close. Whole messages that are already read
    /// when one is taken are handed to the session with it, as one burst.
    async fn run(&mut self, ctx: &WsContext, session: &mut Session) -> End {
        // What a burst stopped at (a control frame, a fragment, an error): handled next.
        let mut pending = None;
        loop {
            let inbound = match pending.take() {
                Some(inbound) => inbound,
                None => self.inbound.next().await,
            };
            let inbound = match inbound {
                Ok(inbound) => inbound,
                Err(end) => return end,
            };
            self.activity.touch();
            let first = match inbound {
                Inbound::Text(message) => message,
                Inbound::Fragment | Inbound::Pong => continue,
                Inbound::Ping(payload) => {
                    self.outbox.push_control(frame::pong(&payload));
                    continue;
                }
            };
            let mut bytes = first.len();
            let mut burst = vec![first];
            while burst.len() < MAX_BURST && bytes < MAX_BURST_BYTES {
                match self.inbound.buffered() {
                    Some(Ok(Inbound::Text(message))) => {
                        bytes += message.len();
                        burst.push(message);
                    }
                    other => {
                        pending = other;
                        break;
                    }
                }
            }
            ctx.telemetry.messages_in(burst.len());
            // Boxed: `handle_burst` (with the auth lookup's database future) is ~2.6 KB, and
            // held inline it would make every idle connection's task that much bigger. One
            // short-lived allocation per burst is cheaper than 2.6 KB per connection for its
            // life.
            if let Next::Close(reason) = Box::pin(session.handle_burst(&burst)).await {
                return Some(reason);
            }
        }
    }
}
