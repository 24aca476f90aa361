//! Client frames → whole text messages (RFC 6455 §5.1–5.6): masking, fragmentation, size and
//! UTF-8 rules, each violation mapped to its close code.

use crate::protocol::CloseReason;
use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Role, WebSocketError, WebSocketRead};
use tokio::io::AsyncRead;

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete text message, valid UTF-8, at most the configured size.
    Text(Bytes),
    /// A non-final fragment was buffered: traffic, but nothing to handle yet.
    Fragment,
    Ping(Bytes),
    Pong,
}

/// Why reading ended: `Some` is answered with a close frame, `None` means the socket is gone.
pub type End = Option<CloseReason>;

/// The server side of one socket's inbound direction. `next` is not cancel-safe (the
/// underlying `read_frame` is not): call it from a single reader, never inside `select!`.
pub struct InboundReader<R> {
    reader: WebSocketRead<R>,
    partial: Option<BytesMut>,
    max_message_bytes: usize,
}

impl<R: AsyncRead + Unpin> InboundReader<R> {
    pub fn new(read: R, max_message_bytes: usize) -> Self {
        let (mut reader, _) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        reader.set_auto_close(false);
        reader.set_auto_pong(false);
        // fastwebsockets refuses payloads >= this, before allocating them.
        reader.set_max_message_size(max_message_bytes.saturating_add(1));
        InboundReader {
            reader,
            partial: None,
            max_message_bytes,
        }
    }

    pub async fn next(&mut self) -> Result<Inbound, End> {
        let mut frame = self
            .reader
            .read_frame::<_, WebSocketError>(&mut |_: Frame<'_>| async { Ok(()) })
            .await
            .map_err(read_error)?;
        // §5.1: a server must close on an unmasked client frame.
        if !is_masked(&mut frame) {
            return Err(Some(CloseReason::Unmasked));
        }
        let max = self.max_message_bytes;
        accept(
            &mut self.partial,
            max,
            frame.fin,
            frame.opcode,
            &frame.payload,
        )
    }
}

/// §5.4–5.6 on one unmasked frame; `partial` is the fragmented message pending, if any.
fn accept(
    partial: &mut Option<BytesMut>,
    max_message_bytes: usize,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
) -> Result<Inbound, End> {
    match opcode {
        // A new data frame while a fragmented message is pending is a protocol error,
        // final or not: it may neither interleave with nor replace the pending one.
        OpCode::Text | OpCode::Binary if partial.is_some() => {
            Err(Some(CloseReason::ExpectedContinuation))
        }
        OpCode::Binary => Err(Some(CloseReason::Binary)),
        OpCode::Text if fin => Ok(Inbound::Text(Bytes::copy_from_slice(payload))),
        OpCode::Text => {
            *partial = Some(BytesMut::from(payload));
            Ok(Inbound::Fragment)
        }
        OpCode::Continuation => {
            let Some(buf) = partial.as_mut() else {
                return Err(Some(CloseReason::ProtocolError));
            };
            if buf.len() + payload.len() > max_message_bytes {
                return Err(Some(CloseReason::TooBig));
            }
            buf.extend_from_slice(payload);
            if !fin {
                return Ok(Inbound::Fragment);
            }
            let whole = partial.take().unwrap_or_default().freeze();
            if std::str::from_utf8(&whole).is_err() {
                return Err(Some(CloseReason::InvalidUtf8));
            }
            Ok(Inbound::Text(whole))
        }
        OpCode::Ping => Ok(Inbound::Ping(Bytes::copy_from_slice(payload))),
        OpCode::Pong => Ok(Inbound::Pong),
        OpCode::Close => Err(Some(CloseReason::Normal)),
    }
}

/// fastwebsockets unmasks in place but keeps the key, and does not itself refuse unmasked
/// frames on the server side; the header it would write back carries the mask bit.
fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 16];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

fn read_error(error: WebSocketError) -> End {
    match error {
        WebSocketError::FrameTooLarge => Some(CloseReason::TooBig),
        WebSocketError::InvalidUTF8 => Some(CloseReason::InvalidUtf8),
        WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => None,
        _ => Some(CloseReason::ProtocolError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN bit, opcode, masked with a fixed key unless `mask` is false.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let bit = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let key = [0x11, 0x22, 0x33, 0x44];
        if mask {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> (Vec<Inbound>, End) {
        let mut reader = InboundReader::new(std::io::Cursor::new(bytes), max);
        let mut got = Vec::new();
        loop {
            match reader.next().await {
                Ok(item) => got.push(item),
                Err(end) => return (got, end),
            }
        }
    }

    fn text(s: &str) -> Inbound {
        Inbound::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[tokio::test]
    async fn whole_and_fragmented_messages() {
        let mut bytes = frame(true, 1, b"one", true);
        bytes.extend(frame(false, 1, b"tw", true));
        bytes.extend(frame(true, 9, b"p", true)); // control frames may interleave (§5.4)
        bytes.extend(frame(false, 0, b"o", true));
        bytes.extend(frame(true, 0, b"!", true));
        let (got, end) = read_all(bytes, 100).await;
        assert_eq!(
            got,
            vec![
                text("one"),
                Inbound::Fragment,
                Inbound::Ping(Bytes::from_static(b"p")),
                Inbound::Fragment,
                text("two!")
            ]
        );
        assert_eq!(end, None, "end of input is a vanished socket");
    }

    #[tokio::test]
    async fn final_text_inside_a_fragmented_message_is_a_protocol_error() {
        let mut bytes = frame(false, 1, b"first", true);
        bytes.extend(frame(true, 1, b"intruder", true));
        let (got, end) = read_all(bytes, 100).await;
        assert_eq!(got, vec![Inbound::Fragment]);
        assert_eq!(end.map(|c| c.code()), Some(1002));
    }

    #[tokio::test]
    async fn new_non_final_text_while_one_is_pending_is_a_protocol_error() {
        let mut bytes = frame(false, 1, b"first", true);
        bytes.extend(frame(false, 1, b"second", true));
        bytes.extend(frame(true, 0, b"end", true));
        let (got, end) = read_all(bytes, 100).await;
        assert_eq!(got, vec![Inbound::Fragment]);
        assert_eq!(end, Some(CloseReason::ExpectedContinuation));
    }

    #[tokio::test]
    async fn continuation_without_start_and_unmasked_frames_are_protocol_errors() {
        let (_, end) = read_all(frame(true, 0, b"x", true), 100).await;
        assert_eq!(end, Some(CloseReason::ProtocolError));
        let (got, end) = read_all(frame(true, 1, b"{}", false), 100).await;
        assert!(got.is_empty());
        assert_eq!(end, Some(CloseReason::Unmasked));
        let (_, end) = read_all(frame(true, 9, b"", false), 100).await;
        assert_eq!(end, Some(CloseReason::Unmasked), "control frames too");
    }

    #[tokio::test]
    async fn size_utf8_binary_and_close() {
        let (_, end) = read_all(frame(true, 1, &[b'a'; 101], true), 100).await;
        assert_eq!(end, Some(CloseReason::TooBig));
        let mut bytes = frame(false, 1, &[b'a'; 60], true);
        bytes.extend(frame(true, 0, &[b'a'; 41], true));
        let (_, end) = read_all(bytes, 100).await;
        assert_eq!(
            end,
            Some(CloseReason::TooBig),
            "the limit applies to the whole message"
        );
        let mut bytes = frame(false, 1, &[0xC3], true);
        bytes.extend(frame(true, 0, &[0x28], true));
        let (_, end) = read_all(bytes, 100).await;
        assert_eq!(end, Some(CloseReason::InvalidUtf8));
        let (_, end) = read_all(frame(true, 1, &[0xFF], true), 100).await;
        assert_eq!(end, Some(CloseReason::InvalidUtf8));
        let (_, end) = read_all(frame(true, 2, b"b", true), 100).await;
        assert_eq!(end, Some(CloseReason::Binary));
        let (_, end) = read_all(frame(true, 8, &[3, 232], true), 100).await;
        assert_eq!(end, Some(CloseReason::Normal));
    }
}
