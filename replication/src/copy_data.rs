//! The streaming replication sub-protocol carried in CopyData: `XLogData` (`w`), primary
//! keepalive (`k`) and the standby status update (`r`) we send back.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use crate::{Lsn, ReplicationError};

/// A server → client CopyData payload.
#[derive(Debug)]
pub(crate) enum ServerCopyData {
    XLogData {
        wal_start: Lsn,
        /// Server's current end of WAL.
        wal_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        /// Position up to which the server has sent everything.
        wal_end: Lsn,
        reply_requested: bool,
    },
}

impl ServerCopyData {
    pub(crate) fn parse(payload: Bytes) -> Result<Self, ReplicationError> {
        const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
        const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
        let u64_at = |at: usize| -> Option<u64> {
            let b = payload.get(at..at + 8)?;
            Some(u64::from_be_bytes(b.try_into().ok()?))
        };
        match payload.first() {
            Some(b'w') if payload.len() >= XLOG_HEADER => {
                let (Some(start), Some(end)) = (u64_at(1), u64_at(9)) else {
                    return Err(truncated());
                };
                Ok(ServerCopyData::XLogData {
                    wal_start: Lsn(start),
                    wal_end: Lsn(end),
                    data: payload.slice(XLOG_HEADER..),
                })
            }
            Some(b'k') if payload.len() >= KEEPALIVE_LEN => {
                let Some(end) = u64_at(1) else {
                    return Err(truncated());
                };
                Ok(ServerCopyData::Keepalive {
                    wal_end: Lsn(end),
                    reply_requested: payload.get(17) == Some(&1),
                })
            }
            Some(b'w' | b'k') => Err(truncated()),
            Some(other) => Err(ReplicationError::Protocol(format!(
                "unknown CopyData message type {other:#04x}"
            ))),
            None => Err(ReplicationError::Protocol("empty CopyData".into())),
        }
    }
}

fn truncated() -> ReplicationError {
    ReplicationError::Protocol("truncated XLogData or keepalive".into())
}

/// Appends a CopyData standby status update reporting `lsn` as written, flushed and applied.
pub(crate) fn standby_status_update(lsn: Lsn, now_pg_micros: i64, reply: bool, out: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(lsn.0);
    body.put_u64(lsn.0);
    body.put_u64(lsn.0);
    body.put_i64(now_pg_micros);
    body.put_u8(u8::from(reply));
    // A 34-byte body always fits the 32-bit CopyData length, so this cannot fail.
    if let Ok(msg) = frontend::CopyData::new(body.freeze()) {
        msg.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(2);
        w.put_i64(3);
        w.put_slice(b"Bxyz");
        match ServerCopyData::parse(w.freeze()).unwrap() {
            ServerCopyData::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                assert_eq!(
                    (wal_start, wal_end, &data[..]),
                    (Lsn(1), Lsn(2), &b"Bxyz"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(7);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            ServerCopyData::parse(k.freeze()).unwrap(),
            ServerCopyData::Keepalive {
                wal_end: Lsn(7),
                reply_requested: true
            }
        ));
        assert!(ServerCopyData::parse(Bytes::from_static(b"k\0\0")).is_err());
        assert!(ServerCopyData::parse(Bytes::from_static(b"")).is_err());
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        standby_status_update(Lsn(0x10), 5, true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(out[0], b'd');
        assert_eq!(out[5], b'r');
        assert_eq!(&out[6..14], &0x10u64.to_be_bytes());
        assert_eq!(out[38], 1);
    }
}
