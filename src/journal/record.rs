//! The byte layout of one window-log record and its frame.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`. Payload: a kind byte, then
//! little-endian integers and `u32`-length-prefixed UTF-8 strings. Decoding never panics and
//! refuses anything malformed, so a torn or corrupt tail is detected rather than misread.

use super::Entry;
use crate::event::{CommittedEvents, DocumentChange, DocumentEvent};
use crate::permission::RowAccess;
use bytes::{Buf, BufMut};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;
use walcast_replication::Lsn;

pub const FRAME_HEADER: usize = 8;
/// A larger length field is corruption, not a record.
pub const MAX_PAYLOAD: usize = 1 << 30;

const TRANSACTION: u8 = 1;
const COVERED: u8 = 2;
const CREATED: u8 = 1;
const UPDATED: u8 = 2;
const DELETED: u8 = 3;

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_micros(m: i64) -> SystemTime {
    if m >= 0 {
        UNIX_EPOCH + Duration::from_micros(m as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(m.unsigned_abs())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        Some(id) => {
            out.put_u8(1);
            out.put_slice(id.as_bytes());
        }
        None => out.put_u8(0),
    }
}

fn put_row(out: &mut Vec<u8>, row: &RowAccess) {
    put_uuid(out, row.account_id);
    put_uuid(out, row.owner_id);
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_previous(out: &mut Vec<u8>, row: &Option<RowAccess>) {
    match row {
        Some(row) => {
            out.put_u8(1);
            put_row(out, row);
        }
        None => out.put_u8(0),
    }
}

/// Appends the framed record of `entry` to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let at = out.len();
    out.put_bytes(0, FRAME_HEADER);
    match entry {
        Entry::Covered(lsn) => {
            out.put_u8(COVERED);
            out.put_u64_le(lsn.0);
        }
        Entry::Transaction { tx, at } => {
            out.put_u8(TRANSACTION);
            out.put_u32_le(tx.xid);
            out.put_u64_le(tx.commit_lsn.0);
            out.put_u64_le(tx.end_lsn.0);
            out.put_i64_le(micros(tx.commit_time));
            out.put_i64_le(micros(*at));
            out.put_u32_le(tx.events.len() as u32);
            for e in &tx.events {
                put_str(out, &e.app);
                put_str(out, &e.repo);
                put_str(out, &e.id);
                match &e.change {
                    DocumentChange::Created { row, document } => {
                        out.put_u8(CREATED);
                        put_row(out, row);
                        put_str(out, document);
                    }
                    DocumentChange::Updated {
                        row,
                        previous,
                        previous_data,
                        document,
                    } => {
                        out.put_u8(UPDATED);
                        put_row(out, row);
                        put_previous(out, previous);
                        put_opt_str(out, previous_data);
                        put_str(out, document);
                    }
                    DocumentChange::Deleted {
                        previous,
                        previous_data,
                    } => {
                        out.put_u8(DELETED);
                        put_previous(out, previous);
                        put_opt_str(out, previous_data);
                    }
                }
            }
        }
    }
    let payload = &out[at + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("incomplete record")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("invalid record contents")]
    Invalid,
}

/// Reads one framed record from the start of `bytes`: the entry and its framed length.
pub fn decode(bytes: &[u8]) -> Result<(Entry, usize), Malformed> {
    if bytes.len() < FRAME_HEADER {
        return Err(Malformed::Truncated);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Err(Malformed::Invalid);
    }
    let payload = bytes
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(Malformed::Truncated)?;
    if crc32fast::hash(payload) != crc {
        return Err(Malformed::Checksum);
    }
    let entry = Payload(payload).entry().ok_or(Malformed::Invalid)?;
    Ok((entry, FRAME_HEADER + len))
}

struct Payload<'a>(&'a [u8]);

impl Payload<'_> {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32_le())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    fn i64(&mut self) -> Option<i64> {
        (self.0.remaining() >= 8).then(|| self.0.get_i64_le())
    }
    fn str(&mut self) -> Option<&str> {
        let len = self.u32()? as usize;
        let bytes = self.0.get(..len)?;
        self.0.advance(len);
        std::str::from_utf8(bytes).ok()
    }
    fn uuid(&mut self) -> Option<Option<Uuid>> {
        match self.u8()? {
            0 => Some(None),
            1 => {
                let bytes: [u8; 16] = self.0.get(..16)?.try_into().ok()?;
                self.0.advance(16);
                Some(Some(Uuid::from_bytes(bytes)))
            }
            _ => None,
        }
    }
    fn row(&mut self) -> Option<RowAccess> {
        Some(RowAccess {
            account_id: self.uuid()?,
            owner_id: self.uuid()?,
        })
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?.to_owned())),
            _ => None,
        }
    }
    fn previous(&mut self) -> Option<Option<RowAccess>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.row()?)),
            _ => None,
        }
    }

    fn entry(mut self) -> Option<Entry> {
        let entry = match self.u8()? {
            COVERED => Entry::Covered(Lsn(self.u64()?)),
            TRANSACTION => {
                let xid = self.u32()?;
                let commit_lsn = Lsn(self.u64()?);
                let end_lsn = Lsn(self.u64()?);
                let commit_time = from_micros(self.i64()?);
                let at = from_micros(self.i64()?);
                let count = self.u32()? as usize;
                // Each event takes at least 13 bytes: a bound before allocating.
                if count > self.0.remaining() / 13 {
                    return None;
                }
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    let app: Arc<str> = Arc::from(self.str()?);
                    let repo: Arc<str> = Arc::from(self.str()?);
                    let id = self.str()?.to_owned();
                    let change = match self.u8()? {
                        CREATED => DocumentChange::Created {
                            row: self.row()?,
                            document: self.str()?.to_owned(),
                        },
                        UPDATED => DocumentChange::Updated {
                            row: self.row()?,
                            previous: self.previous()?,
                            previous_data: self.opt_str()?,
                            document: self.str()?.to_owned(),
                        },
                        DELETED => DocumentChange::Deleted {
                            previous: self.previous()?,
                            previous_data: self.opt_str()?,
                        },
                        _ => return None,
                    };
                    events.push(DocumentEvent {
                        app,
                        repo,
                        id,
                        change,
                    });
                }
                Entry::Transaction {
                    tx: Arc::new(CommittedEvents {
                        xid,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        events,
                    }),
                    at,
                }
            }
            _ => return None,
        };
        self.0.is_empty().then_some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let a = Some(Uuid::from_u128(7));
        let events = vec![
            DocumentEvent {
                app: "acme".into(),
                repo: "tasks_760_".into(),
                id: "i1".into(),
                change: DocumentChange::Created {
                    row: RowAccess {
                        account_id: a,
                        owner_id: None,
                    },
                    document: r#"{"id":"i1","n":"é"}"#.into(),
                },
            },
            DocumentEvent {
                app: "acme".into(),
                repo: "tasks_760_".into(),
                id: "i2".into(),
                change: DocumentChange::Updated {
                    row: RowAccess::default(),
                    previous: Some(RowAccess {
                        account_id: a,
                        owner_id: a,
                    }),
                    previous_data: Some(r#"{"n":1}"#.into()),
                    document: "{}".into(),
                },
            },
            DocumentEvent {
                app: "acme".into(),
                repo: "r".into(),
                id: "i3".into(),
                change: DocumentChange::Deleted {
                    previous: None,
                    previous_data: None,
                },
            },
        ];
        Entry::Transaction {
            tx: Arc::new(CommittedEvents {
                xid: 4242,
                commit_lsn: Lsn(100),
                end_lsn: Lsn(108),
                commit_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
                events,
            }),
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_001_000_000),
        }
    }

    #[test]
    fn round_trips() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        encode(&Entry::Covered(Lsn(200)), &mut buf);
        let (first, n) = decode(&buf).unwrap();
        let (
            Entry::Transaction { tx, at },
            Entry::Transaction {
                tx: want,
                at: want_at,
            },
        ) = (first, sample())
        else {
            panic!("kind")
        };
        assert_eq!(tx.events, want.events);
        assert_eq!(
            (tx.xid, tx.commit_lsn, tx.end_lsn),
            (want.xid, want.commit_lsn, want.end_lsn)
        );
        assert_eq!((tx.commit_time, at), (want.commit_time, want_at));
        let (second, m) = decode(&buf[n..]).unwrap();
        assert!(matches!(second, Entry::Covered(Lsn(200))));
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn torn_and_corrupt_records_are_refused() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i}");
        }
    }
}
