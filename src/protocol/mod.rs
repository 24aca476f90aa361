//! The StaticBackend realtime wire format: client frames in, server envelopes and WebSocket
//! frames out. Pure functions, no I/O.

mod channel;
mod client;
mod close;
mod envelope;
pub mod frame;
mod outgoing;
mod request;
mod room;

pub use channel::{Channel, ChannelError, ChannelKind, MAX_CHANNEL_LEN, RESERVED_CHANNEL};
pub use client::{parse_client, ClientMessage, ParseError};
pub use close::CloseReason;
pub use envelope::{encode, Envelope};
pub use outgoing::{Outgoing, SharedText};
pub use request::{JoinRequest, Request, RequestError, Since};
pub use room::{HistoryQuery, InvalidHistoryQuery};
