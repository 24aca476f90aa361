//! Envelope encoding + WebSocket frame building: what the hub does once per event (db) or once
//! per published message (chan_out), shared by every recipient.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use walcast::protocol::{encode, frame, Envelope};

fn frames(c: &mut Criterion) {
    let document = r#"{"accountId":"0b6f9e0e-8f7a-4c1e-9d3b-2a6c1f0e5d4a","b":"wcb:1700000000000000:42:","done":false,"id":"5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f","title":"Write the benchmark chapter"}"#;
    let data = format!("wcb:1700000000000000:42:{}", "x".repeat(76));
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("db_created", |b| {
        b.iter(|| {
            frame::text(&encode(&Envelope {
                kind: "db_created",
                data: black_box(document),
                channel: "db-tasks_760_",
                lsn: Some("0/16B3748"),
                ..Envelope::default()
            }))
        })
    });
    group.bench_function("chan_out_100b", |b| {
        b.iter(|| {
            frame::text(&encode(&Envelope {
                sid: "8c0f6f0e-3f55-4d0e-9f57-1d2b3c4d5e6f",
                kind: "chan_out",
                data: black_box(&data),
                channel: "room",
                ..Envelope::default()
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
