//! Client frames → whole text messages (RFC 6455 §5.1–5.6, RFC 7692 §6): masking,
//! fragmentation, permessage-deflate, size and UTF-8 rules, each violation mapped to its close
//! code.

use super::deflate::{self, InflateError};
use super::wire::{ClientFrame, FrameReader, OpCode, WireError};
use crate::protocol::CloseReason;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete text message, valid UTF-8, at most the configured size (inflated, when it
    /// came compressed).
    Text(Bytes),
    /// A non-final fragment was buffered: traffic, but nothing to handle yet.
    Fragment,
    Ping(Bytes),
    Pong,
}

/// Why reading ended: `Some` is answered with a close frame, `None` means the socket is gone.
pub type End = Option<CloseReason>;

/// A fragmented message being assembled.
struct Partial {
    bytes: BytesMut,
    /// RSV1 was set on its first frame.
    compressed: bool,
}

/// The server side of one socket's inbound direction. `next` is cancel-safe (see
/// `FrameReader`), but is meant for a single reader.
pub struct InboundReader<R> {
    reader: FrameReader<R>,
    partial: Option<Partial>,
    max_message_bytes: usize,
    /// permessage-deflate was agreed in the handshake.
    deflate: bool,
}

impl<R: AsyncRead + Unpin> InboundReader<R> {
    pub fn new(read: R, max_message_bytes: usize, deflate: bool) -> Self {
        InboundReader {
            reader: FrameReader::new(read, max_message_bytes),
            partial: None,
            max_message_bytes,
            deflate,
        }
    }

    pub async fn next(&mut self) -> Result<Inbound, End> {
        let frame = self.reader.next().await.map_err(wire_end)?;
        self.take(frame)
    }

    /// What the next frame already read gives, if one is whole: never reads the socket.
    pub fn buffered(&mut self) -> Option<Result<Inbound, End>> {
        match self.reader.buffered() {
            Ok(frame) => frame.map(|frame| self.take(frame)),
            Err(error) => Some(Err(wire_end(error))),
        }
    }

    fn take(&mut self, frame: ClientFrame) -> Result<Inbound, End> {
        // §5.1: a server must close on an unmasked client frame.
        if !frame.masked {
            return Err(Some(CloseReason::Unmasked));
        }
        // RFC 7692 §6.1: RSV1 only where negotiated, and only on a message's first frame.
        if frame.rsv1 && (!self.deflate || frame.opcode == OpCode::Continuation) {
            return Err(Some(CloseReason::ProtocolError));
        }
        accept(&mut self.partial, self.max_message_bytes, frame)
    }
}

fn wire_end(error: WireError) -> End {
    match error {
        WireError::TooBig => Some(CloseReason::TooBig),
        WireError::Protocol => Some(CloseReason::ProtocolError),
        WireError::Gone => None,
    }
}

/// §5.4–5.6 on one unmasked frame; `partial` is the fragmented message pending, if any.
fn accept(
    partial: &mut Option<Partial>,
    max_message_bytes: usize,
    frame: ClientFrame,
) -> Result<Inbound, End> {
    let ClientFrame {
        fin,
        rsv1,
        opcode,
        payload,
        ..
    } = frame;
    match opcode {
        // A new data frame while a fragmented message is pending is a protocol error,
        // final or not: it may neither interleave with nor replace the pending one.
        OpCode::Text | OpCode::Binary if partial.is_some() => {
            Err(Some(CloseReason::ExpectedContinuation))
        }
        OpCode::Binary => Err(Some(CloseReason::Binary)),
        OpCode::Text if fin => whole(payload, rsv1, max_message_bytes),
        OpCode::Text => {
            *partial = Some(Partial {
                bytes: BytesMut::from(&payload[..]),
                compressed: rsv1,
            });
            Ok(Inbound::Fragment)
        }
        OpCode::Continuation => {
            let Some(pending) = partial.as_mut() else {
                return Err(Some(CloseReason::ProtocolError));
            };
            if pending.bytes.len() + payload.len() > max_message_bytes {
                return Err(Some(CloseReason::TooBig));
            }
            pending.bytes.extend_from_slice(&payload);
            if !fin {
                return Ok(Inbound::Fragment);
            }
            match partial.take() {
                Some(done) => whole(done.bytes.freeze(), done.compressed, max_message_bytes),
                None => Err(Some(CloseReason::ProtocolError)),
            }
        }
        OpCode::Ping => Ok(Inbound::Ping(payload)),
        OpCode::Pong => Ok(Inbound::Pong),
        OpCode::Close => Err(Some(CloseReason::Normal)),
    }
}

/// A complete message: inflated within the limit when compressed (a bomb stops at
/// `max_message_bytes`), then checked for UTF-8.
fn whole(raw: Bytes, compressed: bool, max_message_bytes: usize) -> Result<Inbound, End> {
    let message = if compressed {
        deflate::inflate(&raw, max_message_bytes).map_err(|error| {
            Some(match error {
                InflateError::TooBig => CloseReason::TooBig,
                InflateError::Corrupt => CloseReason::InvalidCompressedData,
            })
        })?
    } else {
        raw
    };
    if std::str::from_utf8(&message).is_err() {
        return Err(Some(CloseReason::InvalidUtf8));
    }
    Ok(Inbound::Text(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::wire::tests::client_frame_masked;

    /// A client frame: FIN bit, opcode (with RSV1 when given), masked unless `mask` is false.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        client_frame_masked((u8::from(fin) << 7) | opcode, payload, mask)
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> (Vec<Inbound>, End) {
        let mut reader = InboundReader::new(std::io::Cursor::new(bytes), max, true);
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

    /// A client's compressed message: raw deflate, sync flush, trailer removed.
    fn client_deflate(text: &[u8]) -> Vec<u8> {
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[tokio::test]
    async fn compressed_messages_whole_and_fragmented() {
        let packed = client_deflate(b"{\"type\":\"echo\"}");
        let mut bytes = frame(true, 0x40 | 1, &packed, true);
        let (first, rest) = packed.split_at(3);
        bytes.extend(frame(false, 0x40 | 1, first, true));
        bytes.extend(frame(true, 0, rest, true));
        bytes.extend(frame(true, 1, b"plain", true));
        let (got, end) = read_all(bytes, 100).await;
        let echo = text("{\"type\":\"echo\"}");
        assert_eq!(
            got,
            vec![
                echo,
                Inbound::Fragment,
                text("{\"type\":\"echo\"}"),
                text("plain")
            ]
        );
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn rsv1_rules_and_inflated_limits() {
        let packed = client_deflate(b"hello");
        // RSV1 on a continuation frame.
        let mut bytes = frame(false, 1, b"he", true);
        bytes.extend(frame(true, 0x40, b"llo", true));
        let (_, end) = read_all(bytes, 100).await;
        assert_eq!(end, Some(CloseReason::ProtocolError));
        // RSV1 without the extension.
        let mut reader = InboundReader::new(
            std::io::Cursor::new(frame(true, 0x40 | 1, &packed, true)),
            100,
            false,
        );
        assert_eq!(reader.next().await, Err(Some(CloseReason::ProtocolError)));
        // The limit applies to the inflated size.
        let bomb = client_deflate(&[b' '; 5000]);
        assert!(bomb.len() < 100);
        let (_, end) = read_all(frame(true, 0x40 | 1, &bomb, true), 100).await;
        assert_eq!(end, Some(CloseReason::TooBig));
        let (_, end) = read_all(frame(true, 0x40 | 1, &[0xff; 8], true), 100).await;
        assert_eq!(end, Some(CloseReason::InvalidCompressedData));
    }
}
