//! Server-Sent Events transport (PROTOCOL.md §1b), what the published `@staticbackend/js`
//! `connect()` speaks: `GET /sse/connect` opens a `text/event-stream` carrying every server
//! message as one unnamed `data:` event; `POST /sse/msg` carries one client envelope whose `sid`
//! names the stream. Each stream drives the same [`Session`] as a WebSocket, so auth,
//! permissions, limits, channels, resume and metrics are the WebSocket ones.
//!
//! Invariants: a stream's session is registered under its sid for exactly as long as its writer
//! runs; when the writer ends (client gone, slow consumer, shutdown) the sid is unregistered and
//! every membership is left. Producers never wait on a stream: they push into its bounded
//! [`Outbox`] like any other connection.

mod stream;

use crate::hub::{new_conn_id, Outbox};
use crate::protocol::{self, ClientMessage, ParseError};
use crate::ws::{Next, Session, Transport, WsContext};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

/// One open stream: its protocol session (POSTs are handled one at a time, in arrival order)
/// and its outbound queue.
struct Stream {
    session: tokio::sync::Mutex<Session>,
    outbox: Arc<Outbox>,
}

/// What happened to a `POST /sse/msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Handed to the stream's session; replies went out on the stream.
    Handled,
    /// No open stream has this sid: nothing happened.
    UnknownSid,
    /// The body is not a JSON object with a string `sid`.
    Unreadable,
}

/// Every open stream, by sid.
pub struct SseStreams {
    ctx: Arc<WsContext>,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Stream writers, awaited at shutdown.
    tasks: TaskTracker,
}

impl SseStreams {
    pub(crate) fn new(ctx: Arc<WsContext>, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(SseStreams {
            ctx,
            streams: Mutex::new(HashMap::new()),
            tasks,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open streams (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a stream for the app named by `app_key` (if any). The returned body yields the
    /// event stream's bytes: `init` first.
    pub fn open(self: &Arc<Self>, app_key: Option<String>) -> stream::EventBody {
        let Some(slot) = self.ctx.limits.acquire_global() else {
            self.ctx.telemetry.drop_reason("connection_limit", 1);
            return stream::refused("connection limit reached");
        };
        let conn = new_conn_id();
        let outbox = Arc::new(Outbox::new(self.ctx.config.max_outbound_bytes));
        let session = Session::new(
            Arc::clone(&self.ctx),
            conn,
            Arc::clone(&outbox),
            app_key,
            Transport::EventStream,
        );
        session.send_init();
        let sid = session.sid().to_owned();
        let entry = Arc::new(Stream {
            session: tokio::sync::Mutex::new(session),
            outbox,
        });
        self.lock().insert(sid.clone(), Arc::clone(&entry));
        let (body, sender) = stream::channel();
        let streams = Arc::clone(self);
        let span = tracing::debug_span!("sse", conn, sid = %sid);
        self.tasks.spawn(tracing::Instrument::instrument(
            async move {
                streams.ctx.telemetry.connection_opened();
                tracing::debug!("connected");
                stream::write(&streams.ctx, &entry.outbox, sender).await;
                streams.lock().remove(&sid);
                entry.session.lock().await.leave_all();
                drop(slot);
                streams.ctx.telemetry.connection_closed();
                tracing::debug!("disconnected");
            },
            span,
        ));
        body
    }

    /// Handles one `POST /sse/msg` body.
    pub async fn post(&self, body: &[u8]) -> Posted {
        let parsed = protocol::parse_client(body);
        let sid = match &parsed {
            Ok(msg) => Some(msg.sid.clone()),
            // Still routed when the sid is readable: the stream gets `invalid message`.
            Err(_) => sid_of(body),
        };
        let Some(sid) = sid else {
            return Posted::Unreadable;
        };
        let Some(stream) = self.lock().get(&sid).cloned() else {
            return Posted::UnknownSid;
        };
        self.ctx.telemetry.messages_in(1);
        let mut session = stream.session.lock().await;
        let parsed: Result<ClientMessage, ParseError> = parsed;
        if let Next::Close(reason) = session.handle_parsed(parsed).await {
            stream.outbox.close(reason);
        }
        Posted::Handled
    }
}

/// The `sid` of a body that is a JSON object but not a valid client message.
fn sid_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("sid")?.as_str().map(str::to_owned)
}
