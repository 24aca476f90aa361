//! WebSocket connections: the upgrade at `/ws`, one reader task and one writer task per socket,
//! and the per-connection protocol session (PROTOCOL.md §1–3, §5), which the SSE transport
//! (`crate::sse`) drives too.

pub mod deflate;
pub mod inbound;
mod limits;
mod session;
mod socket;
mod wire;
mod writer;

pub(crate) use limits::ConnectionLimits;
pub(crate) use session::{Next, Session, Transport};
pub(crate) use socket::serve_socket;

use crate::auth::UserLookup;
use crate::hub::Hub;
use crate::livequery::Snapshots;
use crate::publish::Publisher;
use crate::telemetry::Telemetry;
use deflate::CompressionPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Largest accepted inbound message (bytes); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Outbound queue bound per connection (bytes); past it the connection closes with 4008.
    pub max_outbound_bytes: usize,
    /// Inbound messages per second per connection (0 = unlimited) and the burst allowed.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Channels one connection may be in at once.
    pub max_channels: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// A connection whose HTTP request headers (the WebSocket handshake) are not complete
    /// within this is closed: half-open handshakes must not hold sockets forever.
    pub handshake_timeout: Duration,
    /// permessage-deflate: whether it is negotiated and which messages are compressed.
    pub compression: CompressionPolicy,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame_bytes: 64 * 1024,
            max_outbound_bytes: 4 * 1024 * 1024,
            rate_per_sec: 100,
            rate_burst: 200,
            max_channels: 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            compression: CompressionPolicy::default(),
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct WsContext {
    pub hub: Arc<Hub>,
    pub auth: Arc<dyn UserLookup>,
    /// Snapshot reads for `join` with `"snapshot": true`.
    pub snapshots: Arc<Snapshots>,
    pub limits: Arc<ConnectionLimits>,
    /// Custom-channel publishing (`chan_in` and the server publish API).
    pub publisher: Arc<Publisher>,
    pub config: WsConfig,
    pub telemetry: Telemetry,
    /// Cancelled at shutdown: every connection closes with 1001.
    pub shutdown: CancellationToken,
}
