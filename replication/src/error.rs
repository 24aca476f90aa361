//! Errors of the replication stream.

use crate::pgoutput::DecodeError;

/// Why connecting or streaming failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The connection string could not be parsed.
    #[error("invalid connection string")]
    ConnInfo(#[source] tokio_postgres::Error),
    /// The configuration cannot work (no host, TLS required, bad name…).
    #[error("invalid replication configuration: {0}")]
    Config(String),
    /// Socket error.
    #[error("I/O error on the replication connection")]
    Io(#[from] std::io::Error),
    /// An `ErrorResponse` from PostgreSQL.
    #[error("PostgreSQL error {code}: {message}")]
    Server {
        /// SQLSTATE, e.g. `42704`.
        code: String,
        message: String,
    },
    /// The server asked for an authentication method we cannot satisfy, or the exchange failed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// SCRAM exchange rejected by the client side (bad server proof, malformed message).
    #[error("SCRAM-SHA-256 authentication failed")]
    Scram(#[source] std::io::Error),
    /// The server sent something out of protocol.
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    /// A pgoutput message could not be decoded.
    #[error("could not decode a pgoutput message")]
    Decode(#[from] DecodeError),
    /// The server ended the connection or the stream.
    #[error("replication connection closed")]
    Closed,
    /// The reader task died without reporting (panic or runtime shutdown).
    #[error("replication reader task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl ReplicationError {
    /// SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}
