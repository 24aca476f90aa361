//! Server-side WebSocket frames (RFC 6455 §5.2), unmasked, built once and shared as `Bytes` by
//! every recipient.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// RSV1: set on a message compressed with permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0x40;

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    frame_with(FIN | opcode, payload)
}

fn frame_with(first_byte: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(first_byte);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

pub fn text(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload)
}

/// A text message whose payload is already permessage-deflate compressed (RSV1 set).
pub fn compressed_text(deflated: &[u8]) -> Bytes {
    frame_with(FIN | RSV1 | OP_TEXT, deflated)
}

pub fn ping(payload: &[u8]) -> Bytes {
    frame(OP_PING, &payload[..payload.len().min(125)])
}

pub fn pong(payload: &[u8]) -> Bytes {
    frame(OP_PONG, &payload[..payload.len().min(125)])
}

/// The payload of a text frame built by [`text`], without copying; `None` for control frames.
/// Lets a transport that is not WebSocket (SSE) reuse frames encoded once for every recipient.
pub fn text_payload(frame: &Bytes) -> Option<Bytes> {
    let (&first, rest) = frame.split_first()?;
    if first != FIN | OP_TEXT {
        return None;
    }
    let header = match rest.first()? {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame.len() >= header).then(|| frame.slice(header..))
}

/// Control frames carry at most 125 bytes: the code plus a reason cut to fit.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = text(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text(&vec![b'a'; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn text_payload_round_trips() {
        for len in [0, 1, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            assert_eq!(text_payload(&text(&payload)).as_deref(), Some(&payload[..]));
        }
        assert_eq!(text_payload(&ping(b"p")), None);
        assert_eq!(text_payload(&close(1000, "")), None);
        assert_eq!(text_payload(&Bytes::new()), None);
    }

    #[test]
    fn close_frame() {
        assert_eq!(&close(4008, "slow consumer")[..4], &[0x88, 15, 0x0f, 0xa8]);
        assert!(close(1000, &"é".repeat(200)).len() <= 127);
    }
}
