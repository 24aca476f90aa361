//! pgoutput decoding, the first step of the data path: one StaticBackend-shaped Insert message
//! (id, account_id, owner_id uuids, ~200-byte jsonb document, timestamp) as the walsender sends it,
//! and every golden fixture captured from PostgreSQL.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use walcast_replication::pgoutput::decode_bytes;

fn insert_message() -> Bytes {
    let columns: [&[u8]; 5] = [
        b"5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
        b"0b6f9e0e-8f7a-4c1e-9d3b-2a6c1f0e5d4a",
        b"9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
        br#"{"done": false, "tags": ["benchmark", "walcast", "pgoutput"], "title": "Write the benchmark chapter", "notes": "decode one StaticBackend row", "priority": 3, "estimate": 1.5}"#,
        b"2026-11-23 17:00:00.123456",
    ];
    let mut buf = BytesMut::new();
    buf.put_u8(b'I');
    buf.put_u32(16_384);
    buf.put_u8(b'N');
    buf.put_u16(columns.len() as u16);
    for value in columns {
        buf.put_u8(b't');
        buf.put_u32(value.len() as u32);
        buf.put_slice(value);
    }
    buf.freeze()
}

fn fixtures() -> Vec<Bytes> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/replication/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .filter_map(|p| std::fs::read(p).ok().map(Bytes::from))
        .collect()
}

fn decode(c: &mut Criterion) {
    let insert = insert_message();
    assert!(decode_bytes(insert.clone()).is_ok());
    let golden = fixtures();
    assert!(!golden.is_empty(), "golden fixtures not found");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_staticbackend_row", |b| {
        b.iter(|| decode_bytes(black_box(insert.clone())))
    });
    group.throughput(Throughput::Elements(golden.len() as u64));
    group.bench_function("golden_fixtures", |b| {
        b.iter(|| {
            golden
                .iter()
                .filter(|m| decode_bytes(black_box((*m).clone())).is_ok())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
