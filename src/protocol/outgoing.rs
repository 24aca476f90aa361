//! Frames as queued for connections: a frame built for one connection, or a text message (or a
//! burst of them) shared by every recipient of a fanout, whose permessage-deflate form is
//! computed once, by the first writer that needs it, and then shared as well.

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
            ends: Box::default(),
            deflated: OnceLock::new(),
        }))
    }

    /// Several text frames as one queue entry, in order: one push, one queue slot and one
    /// reference count per recipient for the whole burst instead of one per frame.
    pub fn burst(frames: &[Bytes]) -> Outgoing {
        if let [single] = frames {
            return Outgoing::shared(single.clone());
        }
        let mut joined = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
        let mut ends = Vec::with_capacity(frames.len());
        for frame in frames {
            joined.extend_from_slice(frame);
            ends.push(joined.len());
        }
        Outgoing(Arc::new(SharedText {
            frame: joined.into(),
            ends: ends.into(),
            deflated: OnceLock::new(),
        }))
    }

    /// How many frames the entry holds (deliveries, for a fanout).
    pub fn frames(&self) -> usize {
        self.0.ends.len().max(1)
    }

    /// Each frame of the entry, in order.
    pub fn parts(&self) -> impl Iterator<Item = Bytes> + '_ {
        let whole = self.frame();
        let ends = &self.0.ends;
        (0..self.frames()).map(move |i| {
            let start = i.checked_sub(1).map_or(0, |before| ends[before]);
            let end = ends.get(i).copied().unwrap_or(whole.len());
            whole.slice(start..end)
        })
    }

    /// The uncompressed frame (a burst's frames back to back).
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
        compress: impl Fn(&[u8]) -> Bytes,
    ) -> &Bytes {
        if !self.0.ends.is_empty() {
            return self.burst_for_connection(compresses, compress);
        }
        let Some(payload) = frame::text_payload(self.frame()) else {
            return self.frame();
        };
        if !compresses(payload.len()) {
            return self.frame();
        }
        self.0.deflated.get_or_init(|| compress(&payload))
    }

    /// [`Outgoing::for_connection`] for a burst: each frame compressed or not on its own, as
    /// if queued alone (every connection applies the same threshold, so one form serves all).
    fn burst_for_connection(
        &self,
        compresses: impl Fn(usize) -> bool,
        compress: impl Fn(&[u8]) -> Bytes,
    ) -> &Bytes {
        let eligible =
            |part: &Bytes| frame::text_payload(part).filter(|payload| compresses(payload.len()));
        if !self.parts().any(|part| eligible(&part).is_some()) {
            return self.frame();
        }
        self.0.deflated.get_or_init(|| {
            let mut joined = Vec::with_capacity(self.frame().len());
            for part in self.parts() {
                match eligible(&part) {
                    Some(payload) => joined.extend_from_slice(&compress(&payload)),
                    None => joined.extend_from_slice(&part),
                }
            }
            joined.into()
        })
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
    /// A burst: where each of its frames ends in `frame`. Empty for a single frame.
    ends: Box<[usize]>,
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

    #[test]
    fn a_burst_keeps_its_frames_in_order() {
        let frames = [
            frame::text(b"one"),
            frame::text(b"two"),
            frame::text(b"three"),
        ];
        let burst = Outgoing::burst(&frames);
        assert_eq!(burst.frames(), 3);
        assert_eq!(burst.parts().collect::<Vec<_>>(), frames);
        assert_eq!(burst.len(), frames.iter().map(Bytes::len).sum::<usize>());
        assert_eq!(*burst.frame(), frames.concat());
        let single = Outgoing::burst(&frames[..1]);
        assert_eq!(single.frames(), 1);
        assert_eq!(single.parts().collect::<Vec<_>>(), &frames[..1]);
    }

    /// Each frame of a burst is compressed as it would be alone: the eligible ones compressed,
    /// the others kept, in order; the form is computed once for all recipients.
    #[test]
    fn a_burst_compresses_frame_by_frame() {
        let burst = Outgoing::burst(&[
            frame::text(b"long long long"),
            frame::text(b"tiny"),
            frame::text(b"longer longer"),
        ]);
        let calls = AtomicUsize::new(0);
        let compress = |p: &[u8]| {
            calls.fetch_add(1, Ordering::Relaxed);
            Bytes::from(format!("<{}>", p.len()))
        };
        let mut expected = b"<14>".to_vec();
        expected.extend_from_slice(&frame::text(b"tiny"));
        expected.extend_from_slice(b"<13>");
        for _ in 0..3 {
            assert_eq!(*burst.for_connection(|n| n > 8, compress), expected);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // Nothing eligible: the plain frames.
        assert_eq!(
            burst.for_connection(|n| n > 100, |_| unreachable!("nothing eligible")),
            burst.frame()
        );
    }
}
