//! Cluster mode (`walcast serve --cluster nats://…`): several gateway nodes over one replication
//! slot and one NATS JetStream stream.
//!
//! ```text
//! holder (one node, by lease)   slot → assemble → publish (Msg-Id, expected last sequence)
//!                                    → JetStream ack → confirm the slot
//! every node                     stream (ordered consumer) → hub.dispatch → local subscribers
//! chan_in on any node            NATS subject per app and channel → hub.publish on every node
//! ```
//!
//! - [`settings`]: flags → validated names (stream, subjects, lease bucket).
//! - [`wire`]: a committed transaction as stream messages (JSON), split when too large, an
//!   event too large for one message in chunks.
//! - [`bucket`]: a KV bucket opened the way a 2.9 server allows.
//! - [`lease`]: the slot lease, a JetStream KV entry with a TTL, renewed by revision CAS.
//! - [`holder`]: the slot holder's loop (lease, slot, publish, confirm).
//! - [`consumer`]: every node's in-order consumption of the stream into the hub.
//! - [`channels`]: custom channels across nodes.
//! - [`idempotency`]: idempotency keys shared by every node (a JetStream KV bucket).
//! - [`node`]: connection, stream set-up, readiness, the tasks of one node.

mod bucket;
mod channels;
mod consumer;
mod holder;
mod idempotency;
mod lease;
mod node;
mod settings;
mod wire;

pub use node::ClusterNode;
pub use settings::{ClusterSettings, ClusterSettingsError};
pub use wire::WireError;

/// Errors of cluster mode. `retryable` tells the loops whether to back off and try again.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    #[error("the slot lease was lost")]
    LeaseLost,
    #[error("another holder appended to the stream (fenced)")]
    Fenced,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("replication failed")]
    Replication(#[source] walcast_replication::ReplicationError),
}

impl ClusterError {
    pub(crate) fn jetstream(error: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream(error.to_string())
    }
}
