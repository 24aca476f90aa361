//! A deliberately small WebSocket client for load generation: one TCP stream, one growable read
//! buffer, frames parsed in place (no per-frame allocation on the delivery path). It shares the
//! machine with the server under test, so every cycle it saves is a cycle the server gets.

use super::transport::{BenchStream, Transport};
use super::BenchError;
use bytes::{Buf, BytesMut};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpSocket;

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Clients must mask (RFC 6455 §5.3); the key only has to be unpredictable to intermediaries,
/// of which there are none on loopback.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x9e];
const READ_CHUNK: usize = 64 * 1024;

/// A server envelope as the setup steps need it.
#[derive(Debug, Deserialize)]
pub struct Reply {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: String,
}

/// Appends one masked client frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
}

/// One complete server frame at the front of `buf`: (opcode, header length, payload length).
/// The opcode keeps RSV1 ([`RSV1`]): a permessage-deflate compressed message.
fn frame_at(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, BenchError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(BenchError::Protocol("masked frame from the server"));
    }
    let (header, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            let len = usize::try_from(u64::from_be_bytes(len))
                .map_err(|_| BenchError::Protocol("frame length"))?;
            (10, len)
        }
        126 | 127 => return Ok(None),
        n => (2, usize::from(n)),
    };
    if buf.len() - header < len {
        return Ok(None);
    }
    Ok(Some((buf[0] & (RSV1 | 0x0f), header, len)))
}

/// Set in a frame's opcode byte by [`frame_at`] for a compressed message.
const RSV1: u8 = 0x40;

/// Hands one frame to `each`, inflating a compressed text message first (the server compresses
/// without context takeover, so each message inflates on its own).
fn deliver(opcode: u8, payload: &[u8], each: &mut impl FnMut(u8, &[u8])) -> Result<(), BenchError> {
    if opcode & RSV1 == 0 {
        each(opcode, payload);
        return Ok(());
    }
    let inflated = walcast::ws::deflate::inflate(payload, 64 << 20)
        .map_err(|_| BenchError::Protocol("undecodable compressed message"))?;
    each(opcode & 0x0f, &inflated);
    Ok(())
}

pub struct WsConn {
    stream: BenchStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl WsConn {
    /// Connects from `source` (any port) and performs the opening handshake on `path`.
    pub async fn connect(
        server: SocketAddr,
        source: IpAddr,
        path: &str,
        transport: &Transport,
    ) -> Result<WsConn, BenchError> {
        let socket = TcpSocket::new_v4().map_err(BenchError::Connect)?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(BenchError::Connect)?;
        let stream = socket.connect(server).await.map_err(BenchError::Connect)?;
        stream.set_nodelay(true).map_err(BenchError::Connect)?;
        let mut stream = transport.wrap(stream).await?;
        let offer = if transport.deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(BenchError::Connect)?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(BenchError::Protocol("handshake response too long"));
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(BenchError::Connect)?
                == 0
            {
                return Err(BenchError::Protocol("connection closed during handshake"));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return Err(BenchError::Refused(
                String::from_utf8_lossy(&buf[..end.min(200)]).into_owned(),
            ));
        }
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if transport.deflate && !head.contains("permessage-deflate") {
            return Err(BenchError::Protocol(
                "the server declined permessage-deflate",
            ));
        }
        buf.advance(end);
        Ok(WsConn {
            stream,
            buf,
            out: Vec::with_capacity(256),
        })
    }

    /// Queues a text frame; [`WsConn::flush`] sends everything queued in one write.
    pub fn queue_text(&mut self, payload: &[u8]) {
        put_frame(&mut self.out, OP_TEXT, payload);
    }

    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.out)
            .await
            .map_err(BenchError::Io)?;
        self.out.clear();
        Ok(())
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        self.queue_text(payload);
        self.flush().await
    }

    /// Reads more bytes; `Ok(0)` is end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> Result<usize, BenchError> {
        fill(&mut self.stream, &mut self.buf).await
    }

    /// Hands every complete frame in the buffer to `each` (opcode, payload) and drops them.
    /// Pings are answered (the pong is queued; call [`WsConn::flush`]).
    pub fn drain(&mut self, mut each: impl FnMut(u8, &[u8])) -> Result<(), BenchError> {
        let mut at = 0;
        while let Some((opcode, header, len)) = frame_at(&self.buf[at..])? {
            let payload = &self.buf[at + header..at + header + len];
            if opcode == OP_PING {
                put_frame(&mut self.out, OP_PONG, payload);
            }
            deliver(opcode, payload, &mut each)?;
            at += header + len;
        }
        self.buf.advance(at);
        Ok(())
    }

    /// The next text message, for the setup steps (allocates; not for the delivery path).
    pub async fn next_reply(&mut self) -> Result<Reply, BenchError> {
        loop {
            let mut found: Option<Result<Reply, BenchError>> = None;
            let mut at = 0;
            while let Some((opcode, header, len)) = frame_at(&self.buf[at..])? {
                let payload = &self.buf[at + header..at + header + len];
                at += header + len;
                match opcode & 0x0f {
                    OP_TEXT => {
                        let mut parsed = None;
                        deliver(opcode, payload, &mut |_, text| {
                            parsed = Some(serde_json::from_slice(text));
                        })?;
                        found = parsed.map(|p| {
                            p.map_err(|_| BenchError::Protocol("unparsable server message"))
                        });
                        break;
                    }
                    OP_CLOSE => {
                        found = Some(Err(BenchError::Closed(close_code(payload))));
                        break;
                    }
                    OP_PING => put_frame(&mut self.out, OP_PONG, payload),
                    _ => {}
                }
            }
            self.buf.advance(at);
            if let Some(reply) = found {
                return reply;
            }
            self.flush().await?;
            if self.fill().await? == 0 {
                return Err(BenchError::Protocol("connection closed"));
            }
        }
    }

    /// Waits for a reply of `kind`, skipping other messages (e.g. deliveries that arrive early).
    pub async fn expect(&mut self, kind: &str) -> Result<Reply, BenchError> {
        loop {
            let reply = self.next_reply().await?;
            if reply.kind == kind {
                return Ok(reply);
            }
            if reply.kind == "error" {
                return Err(BenchError::Rejected(reply.data));
            }
        }
    }

    pub fn into_split(self) -> (ReadHalf<BenchStream>, WriteHalf<BenchStream>, BytesMut) {
        let (read, write) = tokio::io::split(self.stream);
        (read, write, self.buf)
    }
}

/// Splits the read side of a connection off for a separate reader task.
/// Reads more bytes into `buf`, growing it by a chunk when nearly full. Cancel-safe
/// (`read_buf` either read or did nothing).
async fn fill(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<usize, BenchError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    read.read_buf(buf).await.map_err(BenchError::Io)
}

pub struct FrameReader {
    read: ReadHalf<BenchStream>,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(read: ReadHalf<BenchStream>, buf: BytesMut) -> Self {
        FrameReader { read, buf }
    }

    pub async fn fill(&mut self) -> Result<usize, BenchError> {
        fill(&mut self.read, &mut self.buf).await
    }

    /// Like [`WsConn::drain`], without answering pings (the write half belongs to another task).
    pub fn drain(&mut self, mut each: impl FnMut(u8, &[u8])) -> Result<(), BenchError> {
        let mut at = 0;
        while let Some((opcode, header, len)) = frame_at(&self.buf[at..])? {
            deliver(opcode, &self.buf[at + header..at + header + len], &mut each)?;
            at += header + len;
        }
        self.buf.advance(at);
        Ok(())
    }
}

/// The status code of a close frame's payload (1005 when absent).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames() {
        let mut buf = vec![0x81, 2, b'h', b'i', 0x81, 126, 0, 200];
        buf.extend(std::iter::repeat_n(b'x', 200));
        assert_eq!(frame_at(&buf).unwrap(), Some((OP_TEXT, 2, 2)));
        assert_eq!(frame_at(&buf[4..]).unwrap(), Some((OP_TEXT, 4, 200)));
        assert_eq!(frame_at(&buf[4..100]).unwrap(), None);
        assert!(frame_at(&[0x81, 0x82]).is_err());
    }

    #[test]
    fn masks_client_frames() {
        let mut out = Vec::new();
        put_frame(&mut out, OP_TEXT, b"abcd");
        assert_eq!(out[..2], [0x81, 0x84]);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i & 3])
            .collect();
        assert_eq!(unmasked, b"abcd");
    }
}
