//! Frames as queued for connections: a frame built for one connection, or a text message shared
//! by every recipient of a fanout, whose permessage-deflate form is computed once, by the first
//! writer that needs it, and then shared as well.

use super::frame;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

/// One pointer wide: a connection's queue holds one per frame, so a burst of a hundred queued
/// frames costs 800 bytes per connection, not the 3,200 of a queued `Bytes`.
#[derive(Debug, Clone)]
pub struct Outgoing(Arc<SharedText>);

impl Outgoing {
    /// Wraps a text frame for fanout.
    pub fn shared(frame: Bytes) -> Outgoing {
        Outgoing(Arc::new(SharedText {
            frame,
            deflated: OnceLock::new(),
        }))
    }

    /// The uncompressed frame.
    pub fn frame(&self) -> &Bytes {
        &self.0.frame
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
    /// a message is compressed at most once for all its recipients, and the form written is
    /// kept with it (a partly written frame is resumed in the same form).
    pub fn for_connection(
        &self,
        compresses: impl Fn(usize) -> bool,
        compress: impl FnOnce(&[u8]) -> Bytes,
    ) -> &Bytes {
        let Some(payload) = frame::text_payload(self.frame()) else {
            return self.frame();
        };
        if !compresses(payload.len()) {
            return self.frame();
        }
        self.0.deflated.get_or_init(|| compress(&payload))
    }
}

impl From<Bytes> for Outgoing {
    fn from(frame: Bytes) -> Self {
        Outgoing::shared(frame)
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

/// A text frame (or any frame built for one connection) and, once a compressing recipient
/// needed it, its compressed form.
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
        assert_eq!(*out, frame::ping(b"x"));
    }

    #[test]
    fn a_queued_frame_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Outgoing>(),
            std::mem::size_of::<usize>()
        );
    }
}
