//! Decoder tests: every message type from hand-built bytes, and malformed input refused.

use super::*;

/// Builds pgoutput messages byte by byte, as PostgreSQL's `logicalproto.c` writes them.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, s: &str) -> Self {
        let w = self.u8(b't').i32(s.len() as i32);
        let mut v = w.0;
        v.extend_from_slice(s.as_bytes());
        W(v)
    }
}

fn relation_msg() -> Vec<u8> {
    W::default()
        .u8(b'R')
        .i32(16384)
        .cstr("public")
        .cstr("items")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .cstr("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .cstr("body")
        .i32(3802)
        .i32(-1)
        .0
}

#[test]
fn begin_and_commit() {
    let b = W::default().u8(b'B').u64(0x1_0000_0010).u64(123).i32(7).0;
    assert_eq!(
        decode(&b),
        Ok(LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x1_0000_0010),
            commit_time: 123,
            xid: 7
        }))
    );
    let c = W::default().u8(b'C').u8(0).u64(10).u64(20).u64(30).0;
    assert_eq!(
        decode(&c),
        Ok(LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(10),
            end_lsn: Lsn(20),
            commit_time: 30
        }))
    );
}

#[test]
fn relation() {
    let LogicalMessage::Relation { xid, relation } = decode(&relation_msg()).unwrap() else {
        panic!("not a relation");
    };
    assert_eq!(xid, None);
    assert_eq!(relation.oid, 16384);
    assert_eq!(
        (relation.schema.as_str(), relation.name.as_str()),
        ("public", "items")
    );
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    assert_eq!(relation.columns.len(), 2);
    assert!(relation.columns[0].is_key);
    assert_eq!(relation.columns[1].type_oid, 3802);
    assert_eq!(relation.column_index("body"), Some(1));
}

#[test]
fn insert_with_all_value_kinds() {
    let mut m = W::default()
        .u8(b'I')
        .i32(16384)
        .u8(b'N')
        .i16(4)
        .text("42")
        .u8(b'n')
        .u8(b'u');
    m = m.u8(b'b').i32(2).u8(0xde).u8(0xad);
    let LogicalMessage::Insert {
        new, relation_oid, ..
    } = decode(&m.0).unwrap()
    else {
        panic!("not an insert");
    };
    assert_eq!(relation_oid, 16384);
    assert_eq!(new.0[0].as_str(), Some("42"));
    assert_eq!(new.0[1], Value::Null);
    assert_eq!(new.0[2], Value::UnchangedToast);
    assert_eq!(new.0[3], Value::Binary(Bytes::from_static(&[0xde, 0xad])));
}

#[test]
fn update_variants() {
    let plain = W::default().u8(b'U').i32(1).u8(b'N').i16(1).text("a").0;
    assert!(matches!(
        decode(&plain),
        Ok(LogicalMessage::Update { old: None, .. })
    ));
    let key = W::default()
        .u8(b'U')
        .i32(1)
        .u8(b'K')
        .i16(1)
        .text("k")
        .u8(b'N')
        .i16(1)
        .text("a");
    assert!(matches!(
        decode(&key.0),
        Ok(LogicalMessage::Update {
            old: Some(OldTuple::Key(_)),
            ..
        })
    ));
    let full = W::default()
        .u8(b'U')
        .i32(1)
        .u8(b'O')
        .i16(1)
        .text("o")
        .u8(b'N')
        .i16(1)
        .text("a");
    assert!(matches!(
        decode(&full.0),
        Ok(LogicalMessage::Update {
            old: Some(OldTuple::Full(_)),
            ..
        })
    ));
    let bad = W::default()
        .u8(b'U')
        .i32(1)
        .u8(b'K')
        .i16(1)
        .text("k")
        .u8(b'X')
        .0;
    assert_eq!(decode(&bad), Err(DecodeError::UnexpectedMarker(b'X')));
}

#[test]
fn delete_truncate_message_origin_type() {
    let d = W::default().u8(b'D').i32(1).u8(b'K').i16(1).text("k").0;
    assert!(matches!(
        decode(&d),
        Ok(LogicalMessage::Delete {
            old: OldTuple::Key(_),
            ..
        })
    ));
    let t = W::default().u8(b'T').i32(2).u8(3).i32(10).i32(11).0;
    assert_eq!(
        decode(&t),
        Ok(LogicalMessage::Truncate {
            xid: None,
            cascade: true,
            restart_identity: true,
            relation_oids: vec![10, 11]
        })
    );
    let m = W::default()
        .u8(b'M')
        .u8(1)
        .u64(99)
        .cstr("walcast")
        .i32(2)
        .u8(b'h')
        .u8(b'i')
        .0;
    assert_eq!(
        decode(&m),
        Ok(LogicalMessage::Message {
            xid: None,
            transactional: true,
            lsn: Lsn(99),
            prefix: "walcast".into(),
            content: Bytes::from_static(b"hi")
        })
    );
    let o = W::default().u8(b'O').u64(5).cstr("node_a").0;
    assert_eq!(
        decode(&o),
        Ok(LogicalMessage::Origin {
            commit_lsn: Lsn(5),
            name: "node_a".into()
        })
    );
    let y = W::default()
        .u8(b'Y')
        .i32(70000)
        .cstr("public")
        .cstr("mood")
        .0;
    assert!(matches!(
        decode(&y),
        Ok(LogicalMessage::Type { oid: 70000, .. })
    ));
}

#[test]
fn stream_messages_v2() {
    let s = W::default().u8(b'S').i32(9).u8(1).0;
    assert_eq!(
        decode(&s),
        Ok(LogicalMessage::StreamStart {
            xid: 9,
            first_segment: true
        })
    );
    let ins = W::default()
        .u8(b'I')
        .i32(9)
        .i32(16384)
        .u8(b'N')
        .i16(1)
        .text("x")
        .0;
    let msg = decode_in_stream(Bytes::from(ins), true).unwrap();
    assert!(matches!(
        msg,
        LogicalMessage::Insert {
            xid: Some(9),
            relation_oid: 16384,
            ..
        }
    ));
    assert_eq!(decode(b"E"), Ok(LogicalMessage::StreamStop));
    let c = W::default().u8(b'c').i32(9).u8(0).u64(1).u64(2).u64(3).0;
    assert!(matches!(
        decode(&c),
        Ok(LogicalMessage::StreamCommit { xid: 9, .. })
    ));
}

#[test]
fn rejects_malformed_input() {
    assert_eq!(decode(b""), Err(DecodeError::Empty));
    assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
    let neg = W::default()
        .u8(b'I')
        .i32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(-5)
        .0;
    assert!(matches!(
        decode(&neg),
        Err(DecodeError::NegativeLength { .. })
    ));
    let huge = W::default()
        .u8(b'I')
        .i32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(i32::MAX)
        .0;
    assert!(matches!(decode(&huge), Err(DecodeError::Truncated { .. })));
    let many = W::default().u8(b'T').i32(i32::MAX).u8(0).0;
    assert!(matches!(decode(&many), Err(DecodeError::Truncated { .. })));
    let trailing = W::default().u8(b'E').u8(0).0;
    assert_eq!(
        decode(&trailing),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    let unterminated = W::default().u8(b'O').u64(5).u8(b'x').0;
    assert!(matches!(
        decode(&unterminated),
        Err(DecodeError::Unterminated { .. })
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let msgs = [
        relation_msg(),
        W::default()
            .u8(b'U')
            .i32(1)
            .u8(b'O')
            .i16(2)
            .text("o")
            .u8(b'u')
            .u8(b'N')
            .i16(1)
            .text("a")
            .0,
        W::default()
            .u8(b'M')
            .u8(0)
            .u64(99)
            .cstr("p")
            .i32(2)
            .u8(b'h')
            .u8(b'i')
            .0,
    ];
    for m in msgs {
        assert!(decode(&m).is_ok());
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
    }
}

/// Cheap property test (no external crate): random and mutated inputs never panic.
#[test]
fn random_and_mutated_input_never_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds = [
        relation_msg(),
        W::default()
            .u8(b'I')
            .i32(1)
            .u8(b'N')
            .i16(2)
            .text("ab")
            .u8(b'n')
            .0,
    ];
    let tags = b"BCORYIUDTMSEcA";
    for i in 0..50_000 {
        let mut buf = if i % 2 == 0 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = v.first_mut() {
                *first = tags[(next() % tags.len() as u64) as usize];
            }
            v
        } else {
            seeds[i % seeds.len()].clone()
        };
        for _ in 0..(next() % 4) {
            if !buf.is_empty() {
                let at = (next() as usize) % buf.len();
                buf[at] = next() as u8;
            }
        }
        let _ = decode_in_stream(Bytes::from(buf), i % 3 == 0);
    }
}

#[test]
fn pg_time_conversion() {
    use std::time::{Duration, UNIX_EPOCH};
    assert_eq!(pg_time(0), UNIX_EPOCH + Duration::from_secs(946_684_800));
    assert_eq!(to_pg_time(pg_time(1_234_567)), 1_234_567);
    let _ = (pg_time(i64::MIN), pg_time(i64::MAX), to_pg_time(UNIX_EPOCH));
}
