//! permessage-deflate (RFC 7692): the handshake negotiation, the compressed form of an outbound
//! text message, and bounded inflation of inbound compressed messages.
//!
//! Invariants: the server never keeps a compression context between messages
//! (`server_no_context_takeover` is always agreed), so one compressed form of a message is valid
//! for every recipient; the client is told `client_no_context_takeover`, so an inbound message
//! inflates on its own, with a scratch inflater reset per message and no per-connection window.

use crate::protocol::frame;
use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's token in `Sec-WebSocket-Extensions`.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// The trailer every sync-flushed message ends with; removed on send, restored on receive
/// (RFC 7692 §7.2.1–7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// When the server compresses, as configured (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionMode {
    /// Never negotiate permessage-deflate.
    Off,
    /// Negotiate when offered; compress every text message.
    On,
    /// Negotiate when offered; compress text messages of at least the threshold size.
    #[default]
    Auto,
}

/// The compression policy of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionPolicy {
    pub mode: CompressionMode,
    /// Smallest payload compressed in `auto` mode: below it the deflate header costs more than
    /// it saves, and the CPU is spent for nothing.
    pub threshold: usize,
}

impl Default for CompressionPolicy {
    fn default() -> Self {
        CompressionPolicy {
            mode: CompressionMode::Auto,
            threshold: 256,
        }
    }
}

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// Payloads shorter than this are sent uncompressed (a per-message choice, §6).
    min_bytes: usize,
    /// The client limited our window to `2^bits` (`server_max_window_bits`). With no context
    /// takeover, a message no longer than the window cannot refer further back than it, so
    /// larger messages are sent uncompressed instead of declining the offer.
    max_bytes: usize,
    /// The response parameter echoing an accepted `server_max_window_bits`.
    window_bits: Option<u8>,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` value accepting the offer.
    pub fn response(&self) -> String {
        let mut value =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        value
    }

    /// Whether a text message of this payload size goes out compressed.
    pub fn compresses(&self, payload_len: usize) -> bool {
        payload_len >= self.min_bytes && payload_len <= self.max_bytes
    }
}

/// Picks the first acceptable `permessage-deflate` offer among the request's
/// `Sec-WebSocket-Extensions` values (§5.1), or none: compression off, no offer, or every offer
/// declined. An offer with an unknown, repeated or invalid parameter is declined (§7.1).
pub(crate) fn negotiate<'a>(
    policy: CompressionPolicy,
    header_values: impl IntoIterator<Item = &'a str>,
) -> Option<Deflate> {
    let min_bytes = match policy.mode {
        CompressionMode::Off => return None,
        CompressionMode::On => 0,
        CompressionMode::Auto => policy.threshold,
    };
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(|offer| accept_offer(offer, min_bytes))
}

fn accept_offer(offer: &str, min_bytes: usize) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut window_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(value)) => {
                window_bits = Some(window_bits_value(value)?)
            }
            // The client's window only bounds what it sends us; our inflater takes any size up
            // to 15 bits, so we neither need nor send a limit.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(value)) => {
                window_bits_value(value)?;
            }
            _ => return None,
        }
    }
    Some(Deflate {
        min_bytes,
        max_bytes: window_bits.map_or(usize::MAX, |bits| 1usize << bits),
        window_bits,
    })
}

/// 8–15, decimal, no leading zero (§7.1.2).
fn window_bits_value(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    // The compressor's tables are large (hundreds of KiB); one per worker thread, reset per
    // message, instead of one per connection or one allocation per message.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(flate2::Compression::fast(), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The complete frame (FIN, RSV1, text) carrying `payload` compressed with no context.
pub fn compressed_text_frame(payload: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(payload.len() / 2 + 64);
    COMPRESSOR.with(|cell| {
        let mut compressor = cell.borrow_mut();
        compressor.reset();
        loop {
            if body.capacity() - body.len() < 64 {
                body.reserve(body.capacity().max(256));
            }
            let consumed = compressor.total_in() as usize;
            // Compressing plain bytes into a Vec has no failure mode (no dictionary, no stream
            // end); the flush is complete once all input is taken and output space is left over.
            let _ = compressor.compress_vec(&payload[consumed..], &mut body, FlushCompress::Sync);
            if compressor.total_in() as usize == payload.len() && body.len() < body.capacity() {
                break;
            }
        }
    });
    body.truncate(body.len() - TAIL.len());
    frame::compressed_text(&body)
}

/// Why an inbound compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message would exceed the limit: closes with 1009.
    #[error("message too big")]
    TooBig,
    /// Not a valid deflate stream: closes with 1007 (invalid payload data).
    #[error("invalid compressed data")]
    Corrupt,
}

/// Inflates one whole compressed message, refusing it as soon as the output passes `limit`
/// bytes: a small bomb never costs more than `limit` bytes of memory.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Bytes, InflateError> {
    let mut input = Vec::with_capacity(compressed.len() + TAIL.len());
    input.extend_from_slice(compressed);
    input.extend_from_slice(&TAIL);
    INFLATER.with(|cell| {
        let mut inflater = cell.borrow_mut();
        inflater.reset(false);
        // Not `clamp`: with a limit under 64 its bounds would cross (and panic).
        let first = (compressed.len() * 4).max(64).min(limit.saturating_add(1));
        let mut out: Vec<u8> = Vec::with_capacity(first);
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                out.reserve(out.capacity().max(64).min(limit + 1 - out.len()));
            }
            let before = (inflater.total_in(), inflater.total_out());
            let consumed = before.0 as usize;
            let status = inflater
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let room_left = out.len() < out.capacity();
            // A final deflate block (BFINAL) may end the message before the appended trailer.
            if status == Status::StreamEnd
                || (inflater.total_in() as usize == input.len() && room_left)
            {
                return Ok(Bytes::from(out));
            }
            if before == (inflater.total_in(), inflater.total_out()) && room_left {
                return Err(InflateError::Corrupt);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_limit_below_the_first_allocation_refuses_without_panicking() {
        // Found by the ws_frames fuzz target: a 13-byte compressed message with a limit of 17.
        let frame = super::compressed_text_frame(&[b'a'; 100]);
        let compressed = &frame[2..]; // a short frame: 2 header bytes
        for limit in [0, 1, 17, 63, 64] {
            assert_eq!(
                super::inflate(compressed, limit),
                Err(super::InflateError::TooBig),
                "limit {limit}"
            );
        }
    }

    use super::*;

    const AUTO: CompressionPolicy = CompressionPolicy {
        mode: CompressionMode::Auto,
        threshold: 100,
    };

    fn agree(offers: &[&str]) -> Option<String> {
        negotiate(AUTO, offers.iter().copied()).map(|d| d.response())
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn accepts_the_common_offers() {
        // Chromium, Firefox, `ws`, Python `websockets`.
        assert_eq!(
            agree(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PLAIN)
        );
        assert_eq!(agree(&["permessage-deflate"]).as_deref(), Some(PLAIN));
        assert_eq!(
            agree(&["permessage-deflate; client_max_window_bits=12; server_no_context_takeover"])
                .as_deref(),
            Some(PLAIN)
        );
        assert_eq!(agree(&["Permessage-Deflate"]).as_deref(), Some(PLAIN));
    }

    #[test]
    fn nothing_without_an_offer_or_with_compression_off() {
        assert_eq!(agree(&[]), None);
        assert_eq!(agree(&["x-webkit-deflate-frame"]), None);
        let off = CompressionPolicy {
            mode: CompressionMode::Off,
            threshold: 0,
        };
        assert_eq!(negotiate(off, ["permessage-deflate"]), None);
    }

    #[test]
    fn declines_invalid_offers_and_takes_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
        ] {
            assert_eq!(agree(&[bad]), None, "{bad}");
        }
        assert_eq!(
            agree(&["permessage-deflate; mystery, permessage-deflate"]).as_deref(),
            Some(PLAIN)
        );
        assert_eq!(
            agree(&["foo", "permessage-deflate; client_max_window_bits=\"10\""]).as_deref(),
            Some(PLAIN),
            "offers spread over several header lines, quoted value"
        );
    }

    #[test]
    fn a_limited_server_window_is_accepted_and_echoed() {
        let deflate = negotiate(AUTO, ["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(
            deflate.response(),
            format!("{PLAIN}; server_max_window_bits=10")
        );
        assert!(deflate.compresses(1024));
        assert!(!deflate.compresses(1025), "longer than the window");
        assert!(!deflate.compresses(99), "under the threshold");
        let on = CompressionPolicy {
            mode: CompressionMode::On,
            threshold: 100,
        };
        assert!(negotiate(on, ["permessage-deflate"]).unwrap().compresses(1));
    }

    fn payload_of(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        match frame[1] {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn compress_then_inflate_round_trips() {
        for text in [
            String::new(),
            "{\"type\":\"chan_out\"}".to_owned(),
            "x".repeat(70_000),
            (0..5000).map(|i| format!("{i},")).collect::<String>(),
        ] {
            let frame = compressed_text_frame(text.as_bytes());
            let payload = payload_of(&frame);
            assert!(!payload.ends_with(&TAIL));
            assert_eq!(
                inflate(payload, 1 << 20).unwrap(),
                text.as_bytes(),
                "{}",
                text.len()
            );
        }
    }

    #[test]
    fn inflation_is_bounded() {
        let bomb = compressed_text_frame(&vec![b'a'; 10 << 20]);
        let payload = payload_of(&bomb);
        assert!(
            payload.len() < 65_536,
            "fits the wire limit: {}",
            payload.len()
        );
        assert_eq!(inflate(payload, 65_536), Err(InflateError::TooBig));
        let exact = compressed_text_frame(&[b'b'; 1000]);
        assert_eq!(inflate(payload_of(&exact), 1000).unwrap().len(), 1000);
        assert_eq!(inflate(payload_of(&exact), 999), Err(InflateError::TooBig));
        // The scratch inflater is reset: a refused message does not poison the next.
        assert_eq!(inflate(payload_of(&exact), 1000).unwrap().len(), 1000);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
    }
}
