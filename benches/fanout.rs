//! Permission evaluation + fanout in memory, through the real hub: 10,000 subscribers over 1,000
//! accounts on an account-readable repo (`_760_`), one committed transaction with one event per
//! account, every outbox drained as a writer would. Throughput is in deliveries.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::FutureExt;
use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;
use walcast::event::{CommittedEvents, DocumentChange, DocumentEvent};
use walcast::hub::{Actor, Hub, Outbox, Subscriber};
use walcast::permission::{Reader, RowAccess};
use walcast::protocol::Channel;
use walcast::protocol::Outgoing;
use walcast_replication::Lsn;

const SUBSCRIBERS: usize = 10_000;
const ACCOUNTS: usize = 1_000;
const REPO: &str = "items_760_";

struct Setup {
    hub: Hub,
    outboxes: Vec<Arc<Outbox>>,
    accounts: Vec<Uuid>,
}

fn setup(channel: &Channel) -> Setup {
    let app: Arc<str> = "bench".into();
    let hub = Hub::default();
    let accounts: Vec<Uuid> = (0..ACCOUNTS)
        .map(|i| Uuid::from_u128(i as u128 + 1))
        .collect();
    let mut outboxes = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let outbox = Arc::new(Outbox::new(4 << 20));
        let subscriber = Arc::new(Subscriber {
            conn: i as u64,
            reader: Arc::new(Reader {
                app: Arc::clone(&app),
                user_id: Uuid::from_u128(1_000_000 + i as u128),
                account_id: Some(accounts[i % ACCOUNTS]),
                role: 0,
            }),
            outbox: Arc::clone(&outbox),
            guest: false,
        });
        hub.join(&subscriber, channel, None, None, |_| {
            Bytes::from_static(b"joined")
        })
        .expect("open channel");
        outboxes.push(outbox);
    }
    Setup {
        hub,
        outboxes,
        accounts,
    }
}

/// What each connection's writer does: take everything queued.
fn drain(outboxes: &[Arc<Outbox>], batch: &mut Vec<Outgoing>) -> usize {
    let mut frames = 0;
    for outbox in outboxes {
        batch.clear();
        // Frames are queued, so the future is ready at once.
        let _ = outbox.next_batch(batch).now_or_never();
        frames += batch.len();
    }
    frames
}

fn db_fanout(c: &mut Criterion) {
    let s = setup(&Channel::parse(&format!("db-{REPO}")).expect("valid channel name"));
    let app: Arc<str> = "bench".into();
    let repo: Arc<str> = REPO.into();
    let events = s
        .accounts
        .iter()
        .enumerate()
        .map(|(i, account)| DocumentEvent {
            app: Arc::clone(&app),
            repo: Arc::clone(&repo),
            id: Uuid::from_u128(10_000_000 + i as u128).to_string(),
            change: DocumentChange::Created {
                row: RowAccess {
                    account_id: Some(*account),
                    owner_id: Some(Uuid::from_u128(1_000_000 + i as u128)),
                },
                document: format!(
                    r#"{{"accountId":"{account}","b":"wcb:1700000000000000:{i}:","id":"{}"}}"#,
                    Uuid::from_u128(10_000_000 + i as u128)
                ),
            },
        })
        .collect();
    let tx = Arc::new(CommittedEvents {
        xid: 0,
        commit_lsn: Lsn(0x016B_3748),
        end_lsn: Lsn(0x016B_3780),
        commit_time: SystemTime::now(),
        events,
    });
    let mut batch = Vec::new();
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("db_10k_subscribers_1k_accounts", |b| {
        b.iter(|| {
            let stats = s
                .hub
                .dispatch(black_box(Arc::clone(&tx)), false, SystemTime::now());
            assert_eq!(stats.delivered, SUBSCRIBERS);
            drain(&s.outboxes, &mut batch)
        })
    });
    group.finish();
}

fn channel_fanout(c: &mut Criterion) {
    let room = Channel::parse("room").expect("valid channel name");
    let s = setup(&room);
    let app: Arc<str> = "bench".into();
    let data = "x".repeat(120);
    let mut batch = Vec::new();
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("channel_10k_members", |b| {
        b.iter(|| {
            let delivery = s
                .hub
                .publish(&app, room.name(), Actor::Server, black_box(&data))
                .expect("open channel");
            assert_eq!(delivery.delivered, SUBSCRIBERS);
            drain(&s.outboxes, &mut batch)
        })
    });
    group.finish();
}

criterion_group!(benches, db_fanout, channel_fanout);
criterion_main!(benches);
