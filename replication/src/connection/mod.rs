//! A replication-mode connection built on `postgres-protocol`'s message codecs: transport,
//! startup and authentication ([`auth`]), simple queries, and framing of backend messages —
//! including `CopyBothResponse` (`W`), which `postgres-protocol` does not parse.

mod auth;
mod socket;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, SslMode};

use crate::ReplicationError;
use auth::Credentials;
use socket::Socket;

/// Read buffer growth step. Large reads amortise syscalls during catch-up; values decoded from
/// a chunk keep that chunk alive until the consumer drops them, so this also bounds the memory a
/// small retained transaction can pin.
const READ_CHUNK: usize = 128 * 1024;

/// Largest backend message accepted: PostgreSQL's MaxAllocSize plus framing slack.
const MAX_MESSAGE_LEN: u32 = (1 << 30) + 64 * 1024;

/// One backend message, or the `W` message `postgres-protocol` does not know.
pub(crate) enum Frame {
    Message(Message),
    CopyBothResponse,
}

pub(crate) struct Connection {
    socket: Socket,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    /// `server_version_num` reported at startup (e.g. 150004), 0 when unknown.
    pub(crate) server_version: u32,
}

/// One row of a simple query result, text format.
pub(crate) type Row = Vec<Option<String>>;

impl Connection {
    /// Connects to the first reachable host of `config` and authenticates. With `replication`
    /// the session is a walsender in database mode (`replication=database`), which accepts
    /// both replication commands and SQL.
    pub(crate) async fn connect(
        config: &tokio_postgres::Config,
        replication: bool,
        application_name: &str,
    ) -> Result<Connection, ReplicationError> {
        if config.get_ssl_mode() == SslMode::Require {
            return Err(ReplicationError::Config(
                "sslmode=require is not supported by the replication connection".into(),
            ));
        }
        let user = config
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| ReplicationError::Config("no user in the connection string".into()))?;
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let socket = open_socket(config).await?;
        let mut conn = Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(1024),
            server_version: 0,
        };
        let app = config.get_application_name().unwrap_or(application_name);
        let mut params = vec![
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("application_name", app),
            ("client_encoding", "UTF8"),
        ];
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        if replication {
            params.push(("replication", "database"));
        }
        let creds = Credentials {
            user: &user,
            password: config.get_password(),
        };
        // A server that accepts the socket but never answers must not hang startup forever.
        let handshake = async {
            conn.authenticate(&params, &creds).await?;
            conn.await_ready().await
        };
        match tokio::time::timeout(connect_timeout(config), handshake).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ReplicationError::Connect {
                    address: crate::error::describe_target(config),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no reply to startup within the connect timeout",
                    ),
                })
            }
        }
        Ok(conn)
    }

    /// After authentication: collects parameters until `ReadyForQuery`.
    async fn await_ready(&mut self) -> Result<(), ReplicationError> {
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(p) => {
                    if p.name()? == "server_version" {
                        self.server_version = parse_server_version(p.value()?);
                    }
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message before ReadyForQuery".into(),
                    ))
                }
            }
        }
    }

    /// Runs `sql` with the simple query protocol; returns the rows of the last result set.
    /// A server error is returned after the server is ready again, so the connection stays
    /// usable.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ReplicationError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next()? {
                        values.push(match range {
                            Some(r) => Some(
                                String::from_utf8_lossy(buf.get(r).ok_or_else(|| {
                                    ReplicationError::Protocol("DataRow range out of bounds".into())
                                })?)
                                .into_owned(),
                            ),
                            None => None,
                        });
                    }
                    rows.push(values);
                }
                Message::RowDescription(_) => rows.clear(),
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends `START_REPLICATION …` and waits for `CopyBothResponse`.
    pub(crate) async fn start_copy_both(&mut self, sql: &str) -> Result<(), ReplicationError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        loop {
            match self.read_frame().await? {
                Frame::CopyBothResponse => return Ok(()),
                Frame::Message(Message::ErrorResponse(body)) => {
                    let err = server_error(&body);
                    // Drain to ReadyForQuery; the error is what matters.
                    while !matches!(
                        self.read_frame().await,
                        Ok(Frame::Message(Message::ReadyForQuery(_))) | Err(_)
                    ) {}
                    return Err(err);
                }
                Frame::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Frame::Message(_) => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message in reply to START_REPLICATION".into(),
                    ))
                }
            }
        }
    }

    pub(crate) async fn read_message(&mut self) -> Result<Message, ReplicationError> {
        match self.read_frame().await? {
            Frame::Message(m) => Ok(m),
            Frame::CopyBothResponse => Err(ReplicationError::Protocol(
                "unexpected CopyBothResponse".into(),
            )),
        }
    }

    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// The next complete frame already buffered, if any.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        // PostgreSQL never sends a message above 1 GiB (MaxAllocSize); refusing larger lengths
        // keeps a corrupt or hostile peer from making us reserve gigabytes.
        if let Some(h) = self.read_buf.get(1..5) {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if len > MAX_MESSAGE_LEN {
                return Err(ReplicationError::Protocol(format!(
                    "backend message of {len} bytes exceeds the 1 GiB protocol limit"
                )));
            }
        }
        if self.read_buf.first() == Some(&b'W') {
            // CopyBothResponse: format (Int8), column count (Int16), formats; none matter for
            // logical replication, so the body is skipped once it is complete.
            let Some(header) = self.read_buf.get(1..5) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len < 4 {
                return Err(ReplicationError::Protocol(
                    "invalid CopyBothResponse length".into(),
                ));
            }
            let total = len.saturating_add(1);
            if self.read_buf.len() < total {
                return Ok(None);
            }
            self.read_buf.advance(total);
            return Ok(Some(Frame::CopyBothResponse));
        }
        Ok(Message::parse(&mut self.read_buf)?.map(Frame::Message))
    }

    /// Reads more bytes from the socket. Cancel-safe. End of stream is [`ReplicationError::Closed`].
    pub(crate) async fn read_more(&mut self) -> Result<(), ReplicationError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self.socket.read_buf(&mut self.read_buf).await?;
        if n == 0 {
            return Err(ReplicationError::Closed);
        }
        Ok(())
    }

    /// Sends everything in `write_buf`.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        let buf = self.write_buf.split().freeze();
        self.write(buf).await
    }

    async fn write(&mut self, buf: Bytes) -> Result<(), ReplicationError> {
        self.socket.write_all(&buf).await?;
        Ok(())
    }

    /// Sends Terminate and waits (bounded) for the server to close its end; errors are
    /// irrelevant at this point. The backend closes its socket only after its exit callbacks
    /// ran, so once this returns a temporary slot is dropped and a permanent one is free for
    /// the next session: no caller races the backend's exit.
    pub(crate) async fn terminate(&mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let mut discard = [0u8; 4096];
        let _ = tokio::time::timeout(SESSION_END_WAIT, async {
            while matches!(self.socket.read(&mut discard).await, Ok(n) if n > 0) {}
        })
        .await;
        let _ = self.socket.shutdown().await;
    }
}

/// Longest wait for the server to end a terminated session.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);

/// `connect_timeout` of the connection string, 30 s when unset.
fn connect_timeout(config: &tokio_postgres::Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(30))
}

async fn open_socket(config: &tokio_postgres::Config) -> Result<Socket, ReplicationError> {
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return Err(ReplicationError::Config(
            "no host in the connection string".into(),
        ));
    }
    let ports = config.get_ports();
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(30));
    let mut last_err = None;
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let attempt = async {
            match host {
                Host::Tcp(name) => {
                    let s = TcpStream::connect((name.as_str(), port)).await?;
                    s.set_nodelay(true)?;
                    Ok::<_, io::Error>(Socket::Tcp(s))
                }
                Host::Unix(dir) => {
                    let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                    Ok(Socket::Unix(UnixStream::connect(path).await?))
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(ReplicationError::Connect {
        address: crate::error::describe_target(config),
        source: last_err.unwrap_or_else(|| io::Error::other("no host")),
    })
}

/// "15.4 (Debian 15.4-1)" → 150004; "9.6.24" → 90624; unknown → 0.
fn parse_server_version(v: &str) -> u32 {
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major * 10_000 + minor
    } else {
        major * 10_000 + minor * 100 + parts.next().unwrap_or(0)
    }
}

/// Turns an `ErrorResponse` into [`ReplicationError::Server`] with its SQLSTATE and message.
pub(crate) fn server_error(body: &ErrorResponseBody) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    ReplicationError::Server { code, message }
}

/// Quotes an SQL identifier: `a"b` → `"a""b"`.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `it's` → `'it''s'` (standard_conforming_strings is on in
/// every supported PostgreSQL, so backslashes need no escaping).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"),
            150004
        );
        assert_eq!(parse_server_version("16devel"), 160000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
        assert_eq!(parse_server_version("garbage"), 0);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
