//! A committed transaction as stream messages: JSON, one message per transaction, split into
//! parts (same LSNs, `part` counting up, `last` on the final one) when it would exceed the
//! server's maximum payload. The message id is `<commit LSN>#<part>`, so JetStream's
//! de-duplication drops a part sent twice.

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

/// The messages of one transaction, each at most `max_payload` bytes when its events allow.
/// An event alone larger than that travels in a part of its own (the server refuses it; the
/// holder reports it).
pub fn encode_transaction(
    tx: &CommittedEvents,
    max_payload: usize,
) -> Result<Vec<Part>, WireError> {
    let whole = encode_part(tx, 0, true, &tx.events)?;
    if whole.payload.len() + ENVELOPE_BYTES <= max_payload {
        return Ok(vec![whole]);
    }
    let budget = max_payload.saturating_sub(ENVELOPE_BYTES).max(1);
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, event) in tx.events.iter().enumerate() {
        let len = serde_json::to_vec(event).map_err(WireError::Encode)?.len() + 1;
        if size + len > budget && i > start {
            ranges.push(start..i);
            (start, size) = (i, 0);
        }
        size += len;
    }
    ranges.push(start..tx.events.len());
    let count = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let part = u32::try_from(i).unwrap_or(u32::MAX);
            encode_part(tx, part, i + 1 == count, &tx.events[range])
        })
        .collect()
}

fn encode_part(
    tx: &CommittedEvents,
    part: u32,
    last: bool,
    events: &[DocumentEvent],
) -> Result<Part, WireError> {
    let payload = serde_json::to_vec(&Outgoing {
        commit_lsn: tx.commit_lsn.0,
        end_lsn: tx.end_lsn.0,
        xid: tx.xid,
        commit_time: tx.commit_time,
        part,
        last,
        events,
    })
    .map_err(WireError::Encode)?;
    Ok(Part {
        msg_id: format!("{}#{part}", tx.commit_lsn),
        stamp: Stamp {
            end_lsn: tx.end_lsn,
            part,
            last,
        },
        payload: Bytes::from(payload),
    })
}

pub fn decode_transaction(payload: &[u8]) -> Result<WireTransaction, WireError> {
    serde_json::from_slice(payload).map_err(WireError::Decode)
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
        let back = decode_transaction(&parts[0].payload).unwrap();
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
            let back = decode_transaction(&part.payload).unwrap();
            assert_eq!(back.last, i + 1 == parts.len());
            assert_eq!(back.stamp(), part.stamp);
            events.extend(back.events);
        }
        assert_eq!(events, original.events);
        assert!(parts.windows(2).all(|w| w[0].stamp < w[1].stamp));
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode_transaction(b"{\"commit_lsn\":1}").is_err());
        assert!(decode_transaction(b"\xff").is_err());
    }
}
