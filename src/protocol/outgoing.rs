//! Frames as queued for connections: a frame built for one connection, or a text message shared
//! by every recipient of a fanout whose permessage-deflate form is computed once, by the first
//! writer that needs it, and then shared as well.

use super::frame;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Any complete frame (replies, control frames).
    Frame(Bytes),
    /// A complete unfragmented text frame delivered to many connections.
    Shared(Arc<SharedText>),
}

impl Outgoing {
    /// Wraps a text frame for fanout.
    pub fn shared(frame: Bytes) -> Outgoing {
        Outgoing::Shared(Arc::new(SharedText {
            frame,
            deflated: OnceLock::new(),
        }))
    }

    /// The uncompressed frame.
    pub fn frame(&self) -> &Bytes {
        match self {
            Outgoing::Frame(frame) => frame,
            Outgoing::Shared(shared) => &shared.frame,
        }
    }

    /// Bytes counted against a connection's outbound bound (the uncompressed size, so a
    /// connection's bound does not depend on what it negotiated).
    pub fn len(&self) -> usize {
        self.frame().len()
    }

    pub fn is_empty(&self) -> bool {
        self.frame().is_empty()
    }

    /// The frame to write on a connection that compresses text payloads `compresses` accepts:
    /// a shared message is compressed at most once for all of them.
    pub fn for_connection(
        &self,
        compresses: impl Fn(usize) -> bool,
        compress: impl FnOnce(&[u8]) -> Bytes,
    ) -> Bytes {
        let Some(payload) = frame::text_payload(self.frame()) else {
            return self.frame().clone();
        };
        if !compresses(payload.len()) {
            return self.frame().clone();
        }
        match self {
            Outgoing::Frame(_) => compress(&payload),
            Outgoing::Shared(shared) => shared.deflated.get_or_init(|| compress(&payload)).clone(),
        }
    }
}

impl From<Bytes> for Outgoing {
    fn from(frame: Bytes) -> Self {
        Outgoing::Frame(frame)
    }
}

impl AsRef<[u8]> for Outgoing {
    fn as_ref(&self) -> &[u8] {
        self.frame()
    }
}

impl PartialEq<Bytes> for Outgoing {
    fn eq(&self, other: &Bytes) -> bool {
        self.frame() == other
    }
}

/// A fanout text frame and, once a compressing recipient needed it, its compressed form.
#[derive(Debug)]
pub struct SharedText {
    frame: Bytes,
    deflated: OnceLock<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_shared_message_is_compressed_once() {
        let message = Outgoing::shared(frame::text(b"hello hello hello"));
        let copies = [message.clone(), message.clone(), message];
        let calls = AtomicUsize::new(0);
        let compress = |p: &[u8]| {
            calls.fetch_add(1, Ordering::Relaxed);
            Bytes::copy_from_slice(&p[..5])
        };
        for copy in &copies {
            assert_eq!(copy.for_connection(|_| true, compress), &b"hello"[..]);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // A connection without compression, or under its threshold, gets the plain frame.
        assert_eq!(
            copies[0].for_connection(|n| n > 100, compress),
            copies[0].frame()
        );
    }

    #[test]
    fn control_frames_are_never_compressed() {
        let ping = Outgoing::from(frame::ping(b"x"));
        let out = ping.for_connection(|_| true, |_| unreachable!("a ping is not compressed"));
        assert_eq!(out, frame::ping(b"x"));
    }
}
