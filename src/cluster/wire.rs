//! A committed transaction as stream messages: JSON, one message per transaction, split into
//! parts (same LSNs, `part` counting up, `last` on the final one) when it would exceed the
//! server's maximum payload. The message id is `<commit LSN>#<part>`, so JetStream's
//! de-duplication drops a part sent twice.
//!
//! An event larger than the maximum payload on its own travels as chunks, one part each: a
//! JSON header line (the part without events, `chunk` and `chunks`), a newline, then a slice of
//! the event's JSON. A whole-events part never contains a raw newline (serde_json escapes them
//! in strings), which tells the two apart. Consumers concatenate the chunks of one event
//! ([`Reassembly`]) and dispatch it as a one-event part.

use crate::event::{CommittedEvents, DocumentEvent};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use walcast_replication::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("stream message is not a transaction: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("cannot encode a transaction")]
    Encode(#[source] serde_json::Error),
    #[error("chunk {got} of {lsn}#{part} arrived without chunks 0..{got} before it")]
    ChunkOutOfOrder { lsn: Lsn, part: u32, got: u32 },
}

/// One stream message: all events of a transaction, or one part of a split one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WireTransaction {
    pub commit_lsn: u64,
    pub end_lsn: u64,
    /// PostgreSQL transaction id (for xid-consistent snapshots).
    pub xid: u32,
    pub commit_time: SystemTime,
    pub part: u32,
    pub last: bool,
    pub events: Vec<DocumentEvent>,
}

/// One stream message as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    Events(WireTransaction),
    Chunk(WireChunk),
}

/// One chunk of an event too large for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireChunk {
    pub header: ChunkHeader,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChunkHeader {
    /// The part this chunk is, with no events.
    pub tx: WireTransaction,
    /// This chunk's index among the event's `chunks`.
    pub chunk: u32,
    pub chunks: u32,
}

impl WireMessage {
    pub fn stamp(&self) -> Stamp {
        match self {
            WireMessage::Events(tx) => tx.stamp(),
            WireMessage::Chunk(c) => c.header.tx.stamp(),
        }
    }

    /// The commit LSN, and whether this message begins its transaction.
    pub fn commit(&self) -> (Lsn, bool) {
        match self {
            WireMessage::Events(tx) => (Lsn(tx.commit_lsn), tx.part == 0),
            WireMessage::Chunk(c) => (Lsn(c.header.tx.commit_lsn), c.header.tx.part == 0),
        }
    }
}

/// A consumer's chunks of the event in progress. Chunks of one event are consecutive in the
/// stream (the holder publishes sequentially), so anything else starts over.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// (commit LSN, part of chunk 0, next chunk expected) and the bytes so far.
    current: Option<(u64, u32, u32)>,
    bytes: Vec<u8>,
}

impl Reassembly {
    /// Adds a chunk; the whole event as a one-event part once its last chunk is in. A chunk
    /// that does not continue the event in progress is an error (the earlier chunks expired
    /// from the stream before this node read them); the partial event is dropped.
    pub fn push(&mut self, chunk: WireChunk) -> Result<Option<WireTransaction>, WireError> {
        let WireChunk { header: h, bytes } = chunk;
        let continues = match self.current {
            _ if h.chunk == 0 => true,
            Some((lsn, part, next)) => {
                lsn == h.tx.commit_lsn && part + h.chunk == h.tx.part && next == h.chunk
            }
            None => false,
        };
        if !continues {
            self.current = None;
            self.bytes = Vec::new();
            return Err(WireError::ChunkOutOfOrder {
                lsn: Lsn(h.tx.commit_lsn),
                part: h.tx.part,
                got: h.chunk,
            });
        }
        if h.chunk == 0 {
            self.bytes.clear();
            self.current = Some((h.tx.commit_lsn, h.tx.part, 0));
        }
        self.bytes.extend_from_slice(&bytes);
        if h.chunk + 1 < h.chunks {
            self.current = self.current.map(|(lsn, part, _)| (lsn, part, h.chunk + 1));
            return Ok(None);
        }
        self.current = None;
        let bytes = std::mem::take(&mut self.bytes);
        let event: DocumentEvent = serde_json::from_slice(&bytes).map_err(WireError::Decode)?;
        let mut tx = h.tx;
        tx.events = vec![event];
        Ok(Some(tx))
    }
}

#[derive(Serialize)]
struct Outgoing<'a> {
    commit_lsn: u64,
    end_lsn: u64,
    xid: u32,
    commit_time: SystemTime,
    part: u32,
    last: bool,
    events: &'a [DocumentEvent],
}

/// Where a message sits in the holder's publishing order: transactions by end LSN, parts in
/// order. The stream's last stamp tells a new holder what it must not publish again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub end_lsn: Lsn,
    pub part: u32,
    /// Whether this was the transaction's last part.
    pub last: bool,
}

impl WireTransaction {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            end_lsn: Lsn(self.end_lsn),
            part: self.part,
            last: self.last,
        }
    }

    pub fn into_events(self) -> CommittedEvents {
        CommittedEvents {
            xid: self.xid,
            commit_lsn: Lsn(self.commit_lsn),
            end_lsn: Lsn(self.end_lsn),
            commit_time: self.commit_time,
            events: self.events,
        }
    }
}

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Part {
    pub msg_id: String,
    pub stamp: Stamp,
    pub payload: Bytes,
}

/// Fixed overhead allowance of one message besides its events (LSNs, time, headers).
const ENVELOPE_BYTES: usize = 512;

/// What one part carries: a run of whole events, or one chunk of an event too large alone.
enum Piece<'a> {
    Events(&'a [DocumentEvent]),
    Chunk {
        bytes: &'a [u8],
        chunk: u32,
        chunks: u32,
    },
}

/// The messages of one transaction, each at most `max_payload` bytes (events too large for one
/// message are chunked).
pub fn encode_transaction(
    tx: &CommittedEvents,
    max_payload: usize,
) -> Result<Vec<Part>, WireError> {
    let whole = encode_part(tx, 0, true, &tx.events)?;
    if whole.payload.len() + ENVELOPE_BYTES <= max_payload {
        return Ok(vec![whole]);
    }
    let budget = max_payload.saturating_sub(ENVELOPE_BYTES).max(1);
    let events = &tx.events;
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        let json = serde_json::to_vec(event).map_err(WireError::Encode)?;
        let len = json.len() + 1;
        if len > budget {
            if i > start {
                pieces.push((start..i, None));
            }
            pieces.push((i..i + 1, Some(encoded.len())));
            encoded.push(json);
            (start, size) = (i + 1, 0);
            continue;
        }
        if size + len > budget && i > start {
            pieces.push((start..i, None));
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < events.len() {
        pieces.push((start..events.len(), None));
    }
    let pieces: Vec<Piece<'_>> = pieces
        .into_iter()
        .flat_map(|(range, json)| match json {
            None => vec![Piece::Events(&events[range])],
            Some(k) => {
                let slices: Vec<&[u8]> = encoded[k].chunks(budget).collect();
                let chunks = u32::try_from(slices.len()).unwrap_or(u32::MAX);
                (0..chunks)
                    .zip(slices)
                    .map(|(chunk, bytes)| Piece::Chunk {
                        bytes,
                        chunk,
                        chunks,
                    })
                    .collect()
            }
        })
        .collect();
    let count = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let part = u32::try_from(i).unwrap_or(u32::MAX);
            let last = i + 1 == count;
            match piece {
                Piece::Events(events) => encode_part(tx, part, last, events),
                Piece::Chunk {
                    bytes,
                    chunk,
                    chunks,
                } => encode_chunk(tx, part, last, (chunk, chunks), bytes),
            }
        })
        .collect()
}

fn encode_chunk(
    tx: &CommittedEvents,
    part: u32,
    last: bool,
    (chunk, chunks): (u32, u32),
    bytes: &[u8],
) -> Result<Part, WireError> {
    /// What [`ChunkHeader`] reads.
    #[derive(Serialize)]
    struct Header<'a> {
        tx: Outgoing<'a>,
        chunk: u32,
        chunks: u32,
    }
    let header = Header {
        tx: Outgoing::new(tx, part, last, &[]),
        chunk,
        chunks,
    };
    let mut payload = serde_json::to_vec(&header).map_err(WireError::Encode)?;
    payload.push(b'\n');
    payload.extend_from_slice(bytes);
    Ok(Part::new(tx, part, last, payload))
}

impl<'a> Outgoing<'a> {
    fn new(tx: &CommittedEvents, part: u32, last: bool, events: &'a [DocumentEvent]) -> Self {
        Outgoing {
            commit_lsn: tx.commit_lsn.0,
            end_lsn: tx.end_lsn.0,
            xid: tx.xid,
            commit_time: tx.commit_time,
            part,
            last,
            events,
        }
    }
}

impl Part {
    fn new(tx: &CommittedEvents, part: u32, last: bool, payload: Vec<u8>) -> Part {
        Part {
            msg_id: format!("{}#{part}", tx.commit_lsn),
            stamp: Stamp {
                end_lsn: tx.end_lsn,
                part,
                last,
            },
            payload: Bytes::from(payload),
        }
    }
}

fn encode_part(
    tx: &CommittedEvents,
    part: u32,
    last: bool,
    events: &[DocumentEvent],
) -> Result<Part, WireError> {
    let payload =
        serde_json::to_vec(&Outgoing::new(tx, part, last, events)).map_err(WireError::Encode)?;
    Ok(Part::new(tx, part, last, payload))
}

pub fn decode_message(payload: &Bytes) -> Result<WireMessage, WireError> {
    match payload.iter().position(|b| *b == b'\n') {
        None => serde_json::from_slice(payload)
            .map(WireMessage::Events)
            .map_err(WireError::Decode),
        Some(at) => {
            let header = serde_json::from_slice(&payload[..at]).map_err(WireError::Decode)?;
            Ok(WireMessage::Chunk(WireChunk {
                header,
                bytes: payload.slice(at + 1..),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DocumentChange;
    use crate::permission::RowAccess;
    use std::time::Duration;

    fn tx(events: usize, doc_bytes: usize) -> CommittedEvents {
        CommittedEvents {
            xid: 42,
            commit_lsn: Lsn(0x1_0000_0010),
            end_lsn: Lsn(0x1_0000_0040),
            commit_time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            events: (0..events)
                .map(|i| DocumentEvent {
                    app: "app".into(),
                    repo: "tasks".into(),
                    id: i.to_string(),
                    change: if i % 3 == 2 {
                        DocumentChange::Deleted {
                            previous: None,
                            previous_data: None,
                        }
                    } else {
                        DocumentChange::Updated {
                            row: RowAccess {
                                account_id: Some(uuid::Uuid::new_v4()),
                                owner_id: None,
                            },
                            previous: Some(RowAccess::default()),
                            previous_data: Some("{}".into()),
                            document: "x".repeat(doc_bytes),
                        }
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_one_message() {
        let original = tx(5, 10);
        let parts = encode_transaction(&original, 1 << 20).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].msg_id, "1/10#0");
        let WireMessage::Events(back) = decode_message(&parts[0].payload).unwrap() else {
            panic!("one message")
        };
        assert_eq!((back.xid, back.part, back.last), (original.xid, 0, true));
        assert_eq!(back.commit_time, original.commit_time);
        let events = back.into_events();
        assert_eq!(events.events, original.events);
        assert_eq!(events.end_lsn, original.end_lsn);
    }

    #[test]
    fn splits_large_transactions_in_order_with_distinct_ids() {
        let original = tx(100, 1000);
        let parts = encode_transaction(&original, 10_000).unwrap();
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut events = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.payload.len() <= 10_000);
            assert_eq!(part.msg_id, format!("1/10#{i}"));
            let WireMessage::Events(back) = decode_message(&part.payload).unwrap() else {
                panic!("whole events")
            };
            assert_eq!(back.last, i + 1 == parts.len());
            assert_eq!(back.stamp(), part.stamp);
            events.extend(back.events);
        }
        assert_eq!(events, original.events);
        assert!(parts.windows(2).all(|w| w[0].stamp < w[1].stamp));
    }

    /// Decodes parts in order the way a consumer does: whole-events parts as they are, chunks
    /// reassembled.
    fn consume(parts: &[Part]) -> Vec<DocumentEvent> {
        let mut chunks = Reassembly::default();
        let mut events = Vec::new();
        for part in parts {
            let tx = match decode_message(&part.payload).unwrap() {
                WireMessage::Events(tx) => tx,
                WireMessage::Chunk(chunk) => match chunks.push(chunk).unwrap() {
                    Some(tx) => tx,
                    None => continue,
                },
            };
            events.extend(tx.events);
        }
        events
    }

    #[test]
    fn chunks_an_event_larger_than_a_message() {
        let mut original = tx(6, 100);
        let DocumentChange::Updated { document, .. } = &mut original.events[1].change else {
            panic!("event 1 is an update");
        };
        *document = "é\n\"x".repeat(10_000);
        let parts = encode_transaction(&original, 4096).unwrap();
        let chunked = parts
            .iter()
            .filter(|p| matches!(decode_message(&p.payload), Ok(WireMessage::Chunk(_))))
            .count();
        assert!(chunked > 10, "{chunked} chunks of {} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert!(part.payload.len() + 100 <= 4096, "{}", part.payload.len());
            assert_eq!(part.msg_id, format!("1/10#{i}"));
            assert_eq!(decode_message(&part.payload).unwrap().stamp(), part.stamp);
            assert_eq!(part.stamp.last, i + 1 == parts.len());
        }
        assert!(parts.windows(2).all(|w| w[0].stamp < w[1].stamp));
        assert_eq!(consume(&parts), original.events);
    }

    #[test]
    fn a_chunk_without_its_predecessors_is_an_error() {
        let mut original = tx(1, 20_000);
        original.events.extend(tx(1, 20_000).events);
        let parts = encode_transaction(&original, 4096).unwrap();
        let mut chunks = Reassembly::default();
        let second = match decode_message(&parts[1].payload).unwrap() {
            WireMessage::Chunk(chunk) => chunk,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            chunks.push(second),
            Err(WireError::ChunkOutOfOrder { got: 1, .. })
        ));
        // The next event starts cleanly.
        let from = parts
            .iter()
            .position(|p| {
                matches!(decode_message(&p.payload), Ok(WireMessage::Chunk(c)) if c.header.chunk == 0 && c.header.tx.part > 0)
            })
            .unwrap();
        assert_eq!(consume(&parts[from..]), original.events[1..]);
    }

    #[test]
    fn refuses_garbage() {
        let decode = |b: &'static [u8]| decode_message(&Bytes::from_static(b));
        assert!(decode(b"{\"commit_lsn\":1}").is_err());
        assert!(decode(b"\xff").is_err());
        assert!(decode(b"{}\nabc").is_err());
    }
}
