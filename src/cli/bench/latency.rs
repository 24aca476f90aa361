//! Send timestamps carried in payloads, and the latency histogram the receivers fill.
//!
//! A payload carries `wcb:<µs since the Unix epoch>:<sequence>:` anywhere in its text, so the
//! same marker works in a `chan_out` data string and inside a document's escaped JSON.

use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const MARKER: &[u8] = b"wcb:";
/// Highest latency tracked: anything slower is clamped to it (and shows as the max).
const MAX_US: u64 = 120_000_000;
/// Samples a receiver keeps before taking a shard's lock.
const LOCAL_BATCH: usize = 512;
const SHARDS: usize = 16;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Appends the marker and pads `out` with prose-like filler to at least `min_len` bytes. Each
/// message starts at a different place in the filler, so that, like real messages, they are not
/// copies of each other.
pub fn stamp(out: &mut String, sent_us: u64, seq: u64, min_len: usize) {
    use std::fmt::Write;
    let _ = write!(out, "wcb:{sent_us}:{seq}:");
    let filler = filler();
    let mut at = (seq as usize).wrapping_mul(97) % filler.len();
    while out.len() < min_len {
        let take = (min_len - out.len()).min(filler.len() - at);
        out.push_str(&filler[at..at + take]);
        at = (at + take) % filler.len();
    }
}

/// 4 KiB of words from a small vocabulary in pseudo-random order: it compresses about as well as
/// chat text (roughly 2:1 with deflate at 600 bytes), where a run of one letter would compress
/// 50:1 and flatter permessage-deflate. ASCII, so any byte offset is a char boundary.
fn filler() -> &'static str {
    static FILLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| {
        const WORDS: &[&str] = &[
            "the", "of", "to", "and", "in", "is", "it", "for", "on", "that", "with", "as", "at",
            "from", "this", "are", "was", "not", "have", "but", "they", "you", "will", "all",
            "their", "which", "more", "when", "there", "about", "time", "into", "only", "other",
            "new", "also", "these", "first", "than", "over", "most", "after", "very", "through",
            "where", "much", "before", "should", "each", "like", "between", "under", "while",
            "same", "another", "because", "state", "during", "without", "place", "never", "number",
            "point", "order", "group", "work", "city", "home", "water", "system", "question",
            "world", "house", "life", "day", "little", "great", "money", "story", "early", "level",
            "team", "event", "data", "field", "record", "public", "market",
        ];
        // xorshift64: deterministic, so every run sends the same bytes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut text = String::with_capacity(4200);
        while text.len() < 4096 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = WORDS[(state % WORDS.len() as u64) as usize];
            if state % 19 == 0 {
                text.push_str(&(state % 100_000).to_string());
            } else {
                text.push_str(word);
            }
            text.push(' ');
        }
        text.truncate(4096);
        text
    })
}

/// (send time µs, sequence) from a payload, when it carries a marker.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    // The load generator runs this once per delivery on the machine it measures: a vectorised
    // substring search, built once, instead of comparing a window at every byte.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARKER));
    let at = FINDER.find(payload)? + MARKER.len();
    let mut rest = &payload[at..];
    let mut number = || -> Option<u64> {
        let end = rest.iter().position(|b| !b.is_ascii_digit())?;
        if end == 0 || rest.get(end) != Some(&b':') {
            return None;
        }
        let value = rest[..end].iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        rest = &rest[end + 1..];
        Some(value)
    };
    let sent = number()?;
    let seq = number()?;
    Some((sent, seq))
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits over 1 µs .. MAX_US: bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Latency samples from every receiver: each keeps a small local batch and merges it into one of
/// a few shared shards, so neither 10,000 full histograms nor a lock per sample are needed.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }
}

impl Recorder {
    pub fn local(self: &Arc<Self>, id: usize) -> LocalSamples {
        LocalSamples {
            recorder: Arc::clone(self),
            shard: id % SHARDS,
            samples: Vec::with_capacity(LOCAL_BATCH),
        }
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

pub struct LocalSamples {
    recorder: Arc<Recorder>,
    shard: usize,
    samples: Vec<u32>,
}

impl LocalSamples {
    pub fn record(&mut self, latency_us: u64) {
        self.samples
            .push(latency_us.clamp(1, MAX_US.min(u64::from(u32::MAX))) as u32);
        if self.samples.len() == LOCAL_BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut shard = self.recorder.shards[self.shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for &s in &self.samples {
            shard.saturating_record(u64::from(s));
        }
        drop(shard);
        self.samples.clear();
    }
}

impl Drop for LocalSamples {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_plain_and_escaped() {
        let mut s = String::new();
        stamp(&mut s, 1_700_000_000_123_456, 42, 100);
        assert_eq!(s.len(), 100);
        assert_eq!(read_stamp(s.as_bytes()), Some((1_700_000_000_123_456, 42)));
        let escaped = format!(r#"{{"data":"{{\"b\":\"{s}\",\"id\":\"x\"}}"}}"#);
        assert_eq!(
            read_stamp(escaped.as_bytes()),
            Some((1_700_000_000_123_456, 42))
        );
        assert_eq!(read_stamp(b"wcb:12"), None);
        assert_eq!(read_stamp(b"nothing"), None);
    }

    #[test]
    fn recorder_merges_shards() {
        let recorder = Arc::new(Recorder::default());
        for id in 0..40 {
            let mut local = recorder.local(id);
            local.record(100);
            local.record(300);
        }
        let h = recorder.merged();
        assert_eq!(h.len(), 80);
        assert_eq!(h.max(), 300);
    }
}
