//! The writer side of a fanout to N compressing connections: plain frames, the compressed form
//! computed once and shared (what the gateway does), and compression per connection (what a
//! server without sharing does). Per delivery: time here, bytes printed once at start.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use walcast::protocol::{encode, frame, Envelope, Outgoing};
use walcast::ws::deflate::compressed_text_frame;

fn message() -> bytes::Bytes {
    let document = r#"{"accountId":"0b6f9e0e-8f7a-4c1e-9d3b-2a6c1f0e5d4a","b":"wcb:1700000000000000:42:","done":false,"id":"5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f","title":"Write the benchmark chapter","notes":"Measure fanout with and without permessage-deflate, plain and TLS, at one and ten thousand connections; report ratios measured in the same run."}"#;
    frame::text(&encode(&Envelope {
        kind: "db_created",
        data: document,
        channel: "db-tasks_760_",
        lsn: Some("0/16B3748"),
        ..Envelope::default()
    }))
}

/// What one recipient's writer puts on its socket for a fanout message.
type Write<'a> = dyn Fn(&Outgoing) -> bytes::Bytes + 'a;

fn fanout(c: &mut Criterion) {
    let plain = message();
    let payload = frame::text_payload(&plain).unwrap_or_default().to_vec();
    eprintln!(
        "frame bytes per delivery: plain {}, compressed {}",
        plain.len(),
        compressed_text_frame(&payload).len()
    );
    let mut group = c.benchmark_group("deflate_fanout");
    let plain_write = |m: &Outgoing| m.frame().clone();
    let shared_write = |m: &Outgoing| m.for_connection(|_| true, compressed_text_frame).clone();
    let per_connection_write = |_: &Outgoing| compressed_text_frame(black_box(&payload));
    let variants: [(&str, &Write); 3] = [
        ("plain", &plain_write),
        ("compressed_once_shared", &shared_write),
        ("compressed_per_connection", &per_connection_write),
    ];
    let mut out = Vec::with_capacity(4 << 20);
    for recipients in [1_000u64, 10_000] {
        group.throughput(Throughput::Elements(recipients));
        for (name, write) in variants {
            group.bench_with_input(BenchmarkId::new(name, recipients), &recipients, |b, &n| {
                b.iter(|| {
                    // A new message per fanout, as the hub makes one per event.
                    let message = Outgoing::shared(plain.clone());
                    out.clear();
                    for _ in 0..n {
                        out.extend_from_slice(&write(&message));
                    }
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
