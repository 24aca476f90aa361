//! Pure decoder of pgoutput logical replication messages (the payload of `XLogData`).
//!
//! No I/O, no state, never panics: every read is bounds-checked and every count is validated
//! against the bytes actually present before anything is allocated for it. Values are zero-copy
//! slices of the input [`Bytes`] (one reference-count increment each, no per-value allocation).
//!
//! Protocol versions 1 and 2 are decoded. Version 2 adds the streaming messages (`S`, `E`, `c`,
//! `A`) and a leading transaction id on change messages sent inside a stream block; the caller,
//! who sees Stream Start / Stop, says whether it is inside one ([`decode_in_stream`]).

mod reader;
mod types;

use bytes::Bytes;

pub use types::{Column, OldTuple, Relation, RelationRef, ReplicaIdentity, Tuple, Value};

use crate::Lsn;
use reader::Reader;

/// Why a payload is not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message truncated at byte {at}")]
    Truncated { at: usize },
    #[error("string starting at byte {at} has no NUL terminator")]
    Unterminated { at: usize },
    #[error("negative length at byte {at}")]
    NegativeLength { at: usize },
    #[error("negative count at byte {at}")]
    NegativeCount { at: usize },
    #[error("empty message")]
    Empty,
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown tuple data kind {0:#04x}")]
    UnknownTupleKind(u8),
    #[error("unknown replica identity {0:#04x}")]
    UnknownReplicaIdentity(u8),
    #[error("unexpected tuple marker {0:#04x}")]
    UnexpectedMarker(u8),
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes { extra: usize },
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation {
        /// Set inside a v2 stream block.
        xid: Option<u32>,
        relation: Relation,
    },
    Type {
        xid: Option<u32>,
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        relation_oid: u32,
        new: Tuple,
    },
    Update {
        xid: Option<u32>,
        relation_oid: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        xid: Option<u32>,
        relation_oid: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        cascade: bool,
        restart_identity: bool,
        relation_oids: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// v2: a block of changes of an in-progress transaction starts.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    /// v2: the current stream block ends.
    StreamStop,
    /// v2: a streamed transaction committed.
    StreamCommit {
        xid: u32,
        commit: Commit,
    },
    /// v2: a streamed (sub)transaction aborted.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// Begin of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (known because pgoutput sends a transaction only once committed).
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC (PostgreSQL epoch); see [`pg_time`].
    pub commit_time: i64,
    pub xid: u32,
}

/// Commit of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position a consumer confirms.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// Decodes one pgoutput message outside a v2 stream block. Copies `buf` once; prefer
/// [`decode_bytes`] when the payload is already in a [`Bytes`].
pub fn decode(buf: &[u8]) -> Result<LogicalMessage, DecodeError> {
    decode_bytes(Bytes::copy_from_slice(buf))
}

/// Decodes one pgoutput message outside a v2 stream block; values share `buf`'s allocation.
pub fn decode_bytes(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_in_stream(buf, false)
}

/// Decodes one pgoutput message; `in_stream` says whether a v2 Stream Start is open, in which
/// case change messages carry a leading transaction id.
pub fn decode_in_stream(buf: Bytes, in_stream: bool) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8().map_err(|_| DecodeError::Empty)?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin(Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => LogicalMessage::Commit(commit(&mut r)?),
        b'O' => LogicalMessage::Origin {
            commit_lsn: Lsn(r.u64()?),
            name: r.cstr()?,
        },
        b'R' => {
            let xid = stream_xid(&mut r, in_stream)?;
            LogicalMessage::Relation {
                xid,
                relation: relation(&mut r)?,
            }
        }
        b'Y' => LogicalMessage::Type {
            xid: stream_xid(&mut r, in_stream)?,
            oid: r.u32()?,
            schema: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let xid = stream_xid(&mut r, in_stream)?;
            let relation_oid = r.u32()?;
            match r.u8()? {
                b'N' => {}
                other => return Err(DecodeError::UnexpectedMarker(other)),
            }
            LogicalMessage::Insert {
                xid,
                relation_oid,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let xid = stream_xid(&mut r, in_stream)?;
            let relation_oid = r.u32()?;
            let (old, new) = match r.u8()? {
                b'N' => (None, tuple(&mut r)?),
                marker @ (b'K' | b'O') => {
                    let old = old_tuple(marker, tuple(&mut r)?);
                    match r.u8()? {
                        b'N' => {}
                        other => return Err(DecodeError::UnexpectedMarker(other)),
                    }
                    (Some(old), tuple(&mut r)?)
                }
                other => return Err(DecodeError::UnexpectedMarker(other)),
            };
            LogicalMessage::Update {
                xid,
                relation_oid,
                old,
                new,
            }
        }
        b'D' => {
            let xid = stream_xid(&mut r, in_stream)?;
            let relation_oid = r.u32()?;
            let old = match r.u8()? {
                marker @ (b'K' | b'O') => old_tuple(marker, tuple(&mut r)?),
                other => return Err(DecodeError::UnexpectedMarker(other)),
            };
            LogicalMessage::Delete {
                xid,
                relation_oid,
                old,
            }
        }
        b'T' => {
            let xid = stream_xid(&mut r, in_stream)?;
            let at = r.pos();
            let n = r.i32()?;
            let n = usize::try_from(n).map_err(|_| DecodeError::NegativeCount { at })?;
            let options = r.u8()?;
            // 4 bytes per OID: refuse counts the buffer cannot hold before allocating.
            if n > r.remaining() / 4 {
                return Err(DecodeError::Truncated { at: r.pos() });
            }
            let mut relation_oids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_oids.push(r.u32()?);
            }
            LogicalMessage::Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_oids,
            }
        }
        b'M' => LogicalMessage::Message {
            xid: stream_xid(&mut r, in_stream)?,
            transactional: r.u8()? & 1 != 0,
            lsn: Lsn(r.u64()?),
            prefix: r.cstr()?,
            content: r.counted_bytes()?,
        },
        b'S' => LogicalMessage::StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? == 1,
        },
        b'E' => LogicalMessage::StreamStop,
        b'c' => LogicalMessage::StreamCommit {
            xid: r.u32()?,
            commit: commit(&mut r)?,
        },
        b'A' => {
            let msg = LogicalMessage::StreamAbort {
                xid: r.u32()?,
                subxid: r.u32()?,
            };
            // Protocol v4 appends abort LSN and time for parallel apply; not needed here.
            return Ok(msg);
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Converts a PostgreSQL timestamp (microseconds since 2000-01-01 UTC) to [`SystemTime`].
/// Out-of-range values saturate at the Unix epoch rather than panic.
///
/// [`SystemTime`]: std::time::SystemTime
pub fn pg_time(micros: i64) -> std::time::SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    let t = if micros >= 0 {
        pg_epoch.checked_add(Duration::from_micros(micros.unsigned_abs()))
    } else {
        pg_epoch.checked_sub(Duration::from_micros(micros.unsigned_abs()))
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Microseconds since the PostgreSQL epoch for `t` (for standby status updates).
pub fn to_pg_time(t: std::time::SystemTime) -> i64 {
    const PG_EPOCH_UNIX_MICROS: i128 = 946_684_800_000_000;
    let unix_micros = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    i64::try_from(unix_micros - PG_EPOCH_UNIX_MICROS).unwrap_or(0)
}

fn stream_xid(r: &mut Reader, in_stream: bool) -> Result<Option<u32>, DecodeError> {
    if in_stream {
        Ok(Some(r.u32()?))
    } else {
        Ok(None)
    }
}

fn commit(r: &mut Reader) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8()?,
        commit_lsn: Lsn(r.u64()?),
        end_lsn: Lsn(r.u64()?),
        commit_time: r.i64()?,
    })
}

fn old_tuple(marker: u8, tuple: Tuple) -> OldTuple {
    if marker == b'K' {
        OldTuple::Key(tuple)
    } else {
        OldTuple::Full(tuple)
    }
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let oid = r.u32()?;
    let schema = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other)),
    };
    let at = r.pos();
    let n = usize::try_from(r.i16()?).map_err(|_| DecodeError::NegativeCount { at })?;
    // A column takes at least 10 bytes (flags, empty name, type OID, modifier).
    let mut columns = Vec::with_capacity(n.min(r.remaining() / 10));
    for _ in 0..n {
        let flags = r.u8()?;
        columns.push(Column {
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
            is_key: flags & 1 != 0,
        });
    }
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let at = r.pos();
    let n = usize::try_from(r.i16()?).map_err(|_| DecodeError::NegativeCount { at })?;
    // Every value takes at least its one kind byte.
    let mut values = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        values.push(match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(r.counted_bytes()?),
            b'b' => Value::Binary(r.counted_bytes()?),
            other => return Err(DecodeError::UnknownTupleKind(other)),
        });
    }
    Ok(Tuple(values))
}

#[cfg(test)]
mod tests;
