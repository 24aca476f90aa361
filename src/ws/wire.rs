//! Client frames off the wire (RFC 6455 §5.2): header, length, mask, payload. Unlike
//! fastwebsockets' reader it reports RSV1, which permessage-deflate gives a meaning; RSV2/RSV3,
//! reserved opcodes and malformed control frames are refused here, message-level rules
//! (fragmentation, RSV1 only when negotiated, UTF-8) are the caller's.
//!
//! `next` is cancel-safe: bytes stay in the buffer until a whole frame is there.

use bytes::{Buf, Bytes, BytesMut};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Most bytes one read takes while nothing is buffered (read on the stack, then kept).
const IDLE_READ: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn parse(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    /// RSV1: with permessage-deflate, the first frame of a compressed message.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub masked: bool,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// End of stream or an I/O error: nobody to answer.
    Gone,
    /// The payload length exceeds the limit (checked before reading it).
    TooBig,
    /// RSV2/RSV3, a reserved opcode, a fragmented or oversized control frame.
    Protocol,
}

pub struct FrameReader<R> {
    read: R,
    /// Bytes of frames not yet whole; no allocation at all between messages, so an idle
    /// connection holds no read buffer.
    buffer: BytesMut,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(read: R, max_payload: usize) -> Self {
        FrameReader {
            read,
            buffer: BytesMut::new(),
            max_payload,
        }
    }

    pub async fn next(&mut self) -> Result<ClientFrame, WireError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            let read = if self.buffer.is_empty() {
                self.read_into_empty().await
            } else {
                self.read.read_buf(&mut self.buffer).await
            };
            match read {
                Ok(0) | Err(_) => return Err(WireError::Gone),
                Ok(_) => {}
            }
        }
    }

    /// A whole frame already read, if there is one: never reads the socket.
    pub fn buffered(&mut self) -> Result<Option<ClientFrame>, WireError> {
        self.parse()
    }

    /// Reads into a stack buffer and keeps only what arrived: a connection waiting here for its
    /// next message holds no read buffer of its own.
    async fn read_into_empty(&mut self) -> std::io::Result<usize> {
        let (read, buffer) = (&mut self.read, &mut self.buffer);
        std::future::poll_fn(|cx| {
            let mut stack = [MaybeUninit::<u8>::uninit(); IDLE_READ];
            let mut chunk = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *read).poll_read(cx, &mut chunk))?;
            buffer.extend_from_slice(chunk.filled());
            Poll::Ready(Ok(chunk.filled().len()))
        })
        .await
    }

    /// A whole frame from the buffer, or `None` until more bytes arrive.
    fn parse(&mut self) -> Result<Option<ClientFrame>, WireError> {
        let buf = &self.buffer[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(WireError::Protocol);
        }
        let opcode = OpCode::parse(b0 & 0x0F).ok_or(WireError::Protocol)?;
        let masked = b1 & 0x80 != 0;
        let (len, at) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > 125 || rsv1) {
            return Err(WireError::Protocol);
        }
        let len = usize::try_from(len).map_err(|_| WireError::TooBig)?;
        if len > self.max_payload {
            return Err(WireError::TooBig);
        }
        let key_len = if masked { 4 } else { 0 };
        let total = at + key_len + len;
        if buf.len() < total {
            self.buffer.reserve(total - buf.len());
            return Ok(None);
        }
        let mut key = [0u8; 4];
        if masked {
            key.copy_from_slice(&buf[at..at + 4]);
        }
        self.buffer.advance(at + key_len);
        let mut payload = self.buffer.split_to(len);
        if self.buffer.is_empty() {
            // The payload keeps the allocation until the message is handled; nothing else does.
            self.buffer = BytesMut::new();
        }
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i & 3];
            }
        }
        Ok(Some(ClientFrame {
            fin,
            rsv1,
            opcode,
            masked,
            payload: payload.freeze(),
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client frame as a browser sends it: masked with a fixed key.
    pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        client_frame_masked(first_byte, payload, true)
    }

    /// A client frame, masked with a fixed key unless `masked` is false (which a server must
    /// refuse).
    pub fn client_frame_masked(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first_byte];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x11, 0x22, 0x33, 0x44];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> (Vec<ClientFrame>, WireError) {
        let mut reader = FrameReader::new(std::io::Cursor::new(bytes), max);
        let mut frames = Vec::new();
        loop {
            match reader.next().await {
                Ok(frame) => frames.push(frame),
                Err(end) => return (frames, end),
            }
        }
    }

    #[tokio::test]
    async fn reads_masked_frames_of_every_length_class() {
        let mut bytes = Vec::new();
        for len in [0, 125, 126, 65_535, 65_536] {
            bytes.extend(client_frame(0x81, &vec![b'a'; len]));
        }
        bytes.extend(client_frame(0xC1, b"compressed"));
        bytes.extend(client_frame(0x89, b"ping"));
        let (frames, end) = read_all(bytes, 1 << 20).await;
        assert_eq!(end, WireError::Gone);
        let lens: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(lens, [0, 125, 126, 65_535, 65_536, 10, 4]);
        assert!(frames[..5].iter().all(|f| f.fin && !f.rsv1 && f.masked));
        assert_eq!(&frames[5].payload[..], b"compressed");
        assert!(frames[5].rsv1);
        assert_eq!(frames[6].opcode, OpCode::Ping);
    }

    /// Gives at most `chunk` bytes per read.
    struct Dribble {
        bytes: std::io::Cursor<Vec<u8>>,
        chunk: usize,
    }

    impl AsyncRead for Dribble {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut part = vec![0; self.chunk.min(buf.remaining())];
            let n = std::io::Read::read(&mut self.bytes, &mut part)?;
            buf.put_slice(&part[..n]);
            Poll::Ready(Ok(()))
        }
    }

    /// Frames arriving in pieces and several to a read come out whole and in order; between
    /// messages the reader holds no buffer.
    #[tokio::test]
    async fn pieces_make_frames_and_nothing_is_held_between_them() {
        let mut bytes = Vec::new();
        for payload in [&b"first"[..], &[b'x'; 300][..], b"third"] {
            bytes.extend(client_frame(0x81, payload));
        }
        for chunk in [1, 7, 4096] {
            let mut reader = FrameReader::new(
                Dribble {
                    bytes: std::io::Cursor::new(bytes.clone()),
                    chunk,
                },
                1000,
            );
            let mut lens = Vec::new();
            while let Ok(frame) = reader.next().await {
                lens.push(frame.payload.len());
                if reader.buffer.is_empty() {
                    assert_eq!(reader.buffer.capacity(), 0, "chunk {chunk}");
                }
            }
            assert_eq!(lens, [5, 300, 5], "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn refuses_what_no_extension_allows() {
        for (first, payload) in [
            (0xA1u8, &b"rsv2"[..]),
            (0x91, b"rsv3"),
            (0x83, b"reserved opcode"),
            (0x09, b"fragmented ping"),
            (0xC9, b"compressed ping"),
            (0x89, &[0u8; 126][..]),
        ] {
            let (frames, end) = read_all(client_frame(first, payload), 1000).await;
            assert!(frames.is_empty());
            assert_eq!(end, WireError::Protocol, "{first:#x}");
        }
    }

    #[tokio::test]
    async fn refuses_an_oversized_length_before_reading_it() {
        // Only the header: the claimed 2^62-byte payload is never awaited.
        let header = vec![0x81, 0x80 | 127, 0x40, 0, 0, 0, 0, 0, 0, 0];
        let (_, end) = read_all(header, 1000).await;
        assert_eq!(end, WireError::TooBig);
        let (_, end) = read_all(client_frame(0x81, &[b'a'; 1001]), 1000).await;
        assert_eq!(end, WireError::TooBig);
    }

    #[tokio::test]
    async fn unmasked_frames_are_reported_as_such() {
        let (frames, _) = read_all(vec![0x81, 2, b'h', b'i'], 1000).await;
        assert!(!frames[0].masked);
        assert_eq!(&frames[0].payload[..], b"hi");
    }
}
