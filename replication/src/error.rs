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
    /// No host of the connection string could be reached (or none answered the startup in
    /// time). `address` is what was tried: `host:port` or a socket path, never credentials.
    #[error("cannot connect to PostgreSQL at {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
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

    /// Whether trying again, unchanged, cannot help: bad configuration, refused credentials,
    /// missing privileges or objects, a server that cannot do logical decoding, WAL we cannot
    /// decode. Everything else (network, restarts, a slot still held by a dying session) is
    /// worth a retry with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReplicationError::ConnInfo(_)
            | ReplicationError::Config(_)
            | ReplicationError::Auth(_)
            | ReplicationError::Scram(_)
            | ReplicationError::Decode(_) => true,
            ReplicationError::Server { code, .. } => sqlstate_is_permanent(code),
            ReplicationError::Connect { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Protocol(_)
            | ReplicationError::Closed
            | ReplicationError::Task(_) => false,
        }
    }
}

/// SQLSTATE classes that mean "this will fail again": 28 (invalid authorization), 3D (no such
/// database), 42 (privileges, undefined objects), 0A (feature not supported) and 55000 (object
/// not in prerequisite state, e.g. `wal_level` below `logical`). Not 55006 (object in use: a
/// slot held by a session that is going away), nor 53/57/58/08 (resources, shutdown, I/O).
pub fn sqlstate_is_permanent(code: &str) -> bool {
    code.starts_with("28")
        || code.starts_with("3D")
        || code.starts_with("42")
        || code.starts_with("0A")
        || code == "55000"
}

/// What a connection string points at, for error messages: `host:port` or the Unix socket
/// path, comma-separated when there are several. Never the user or password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let targets: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]:{port}")
                }
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => {
                    dir.join(format!(".s.PGSQL.{port}")).display().to_string()
                }
            }
        })
        .collect();
    if targets.is_empty() {
        "(no host in the connection string)".to_owned()
    } else {
        targets.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_hosts_and_sockets_never_credentials() {
        let config: tokio_postgres::Config = "postgres://alice:s3cret@db.example:6543/app"
            .parse()
            .unwrap();
        assert_eq!(describe_target(&config), "db.example:6543");
        let config: tokio_postgres::Config = "host=/run/pg,10.0.0.1 port=5433 user=u password=pw"
            .parse()
            .unwrap();
        let text = describe_target(&config);
        assert_eq!(text, "/run/pg/.s.PGSQL.5433, 10.0.0.1:5433");
        assert!(!text.contains("pw"));
        let config: tokio_postgres::Config = "postgres://u@[::1]/db".parse().unwrap();
        assert_eq!(describe_target(&config), "[::1]:5432");
    }

    #[test]
    fn permanence() {
        let server = |code: &str| ReplicationError::Server {
            code: code.into(),
            message: String::new(),
        };
        for code in [
            "28P01", "28000", "3D000", "42501", "42704", "55000", "0A000",
        ] {
            assert!(server(code).is_permanent(), "{code}");
        }
        for code in ["55006", "57P01", "57P03", "53300", "08006", "XX000"] {
            assert!(!server(code).is_permanent(), "{code}");
        }
        assert!(ReplicationError::Auth("x".into()).is_permanent());
        assert!(!ReplicationError::Closed.is_permanent());
        assert!(!ReplicationError::Connect {
            address: "h:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
        .is_permanent());
    }
}
