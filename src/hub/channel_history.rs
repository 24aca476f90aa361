//! History of custom channels ([ext]): the last messages of each channel with a per-channel
//! offset, for `history` requests and for `join` with `since`. Behind [`ChannelHistory`] so that
//! a shared implementation (a JetStream stream per app, offsets = stream sequences) can replace
//! the in-memory one on several nodes.
//!
//! Offsets: each channel's log starts at the wall clock in microseconds when it is created, and
//! counts up by one per message. A log recreated later (after a restart or after all of it
//! expired) therefore starts above every offset of its previous life, so a `since` from before
//! is never mistaken for a recoverable one.

use crate::permission::AppName;
use crate::protocol::HistoryQuery;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A custom channel, across the gateway: app and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub app: AppName,
    pub name: Arc<str>,
}

impl ChannelKey {
    pub fn new(app: &AppName, name: &str) -> Self {
        ChannelKey {
            app: Arc::clone(app),
            name: name.into(),
        }
    }
}

/// How long one channel keeps its messages: the last `size`, none older than `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub size: usize,
    pub ttl: Duration,
}

/// Limits of the whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Per-channel retention unless a rule overrides it.
    pub retention: Retention,
    /// Every channel's messages together, in bytes (payload, sender sid and bookkeeping).
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            retention: Retention {
                size: 100,
                ttl: Duration::from_secs(300),
            },
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One stored message, as it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    /// The sender's sid (empty for the server publish API).
    pub sid: Arc<str>,
    pub data: Arc<str>,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}

/// A page and the cursor for the next one (`None`: nothing more is held).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    pub next: Option<u64>,
}

/// Custom-channel history. Appends for one channel are made in publish order (the hub holds the
/// channel's order lock), so offsets are that order.
pub trait ChannelHistory: Send + Sync + Debug {
    /// Stores a message; returns its offset.
    fn append(&self, key: &ChannelKey, sid: &str, data: &str, retention: Retention) -> u64;
    /// Every held message after `since`, oldest first; `None` when some may be missing (`since`
    /// older than what is held, or not an offset of this channel's current log).
    fn after(&self, key: &ChannelKey, since: u64) -> Option<Vec<StoredMessage>>;
    fn page(&self, key: &ChannelKey, query: HistoryQuery) -> Page;
    /// Forgets a channel (destroyed).
    fn remove(&self, key: &ChannelKey);
    /// Bytes held, for metrics and tests.
    fn bytes(&self) -> usize;
}

#[derive(Debug)]
struct Entry {
    message: StoredMessage,
    at: Instant,
    bytes: usize,
}

#[derive(Debug)]
struct Log {
    /// Every offset ≤ `floor` may be missing; every later one that was appended is held.
    floor: u64,
    next: u64,
    ttl: Duration,
    entries: VecDeque<Entry>,
}

impl Log {
    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.at) > self.ttl
    }

    fn held(&self, now: Instant) -> impl DoubleEndedIterator<Item = &StoredMessage> {
        self.entries
            .iter()
            .filter(move |e| !self.expired(e, now))
            .map(|e| &e.message)
    }
}

#[derive(Debug, Default)]
struct Store {
    logs: HashMap<ChannelKey, Log>,
    /// Every held entry across channels in append order, for the global byte bound.
    order: VecDeque<(ChannelKey, u64)>,
    /// Slots of `order` whose entry is already gone (evicted through its own channel).
    stale: usize,
    bytes: usize,
}

/// Bookkeeping per entry beyond its payload and sid (offset, times, queue slots).
const ENTRY_OVERHEAD: usize = 96;

impl Store {
    fn pop_front(&mut self, key: &ChannelKey) {
        let Some(log) = self.logs.get_mut(key) else {
            return;
        };
        if let Some(entry) = log.entries.pop_front() {
            self.bytes -= entry.bytes;
            self.stale += 1;
            log.floor = entry.message.offset;
        }
        if log.entries.is_empty() {
            self.logs.remove(key);
        }
    }

    /// Evicts one channel's entries past its size and age.
    fn trim(&mut self, key: &ChannelKey, size: usize, now: Instant) {
        while let Some(log) = self.logs.get(key) {
            let over = log.entries.len() > size
                || log.entries.front().is_some_and(|e| log.expired(e, now));
            if !over {
                break;
            }
            self.pop_front(key);
        }
    }

    /// Evicts the oldest entries of any channel until the store fits `max_bytes`. Entries
    /// already evicted by their channel's own bounds are skipped.
    fn fit(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((key, offset)) = self.order.pop_front() else {
                break;
            };
            let front = self
                .logs
                .get(&key)
                .and_then(|log| log.entries.front())
                .map(|e| e.message.offset);
            if front == Some(offset) {
                self.pop_front(&key);
            }
            self.stale = self.stale.saturating_sub(1);
        }
        // Entries evicted through their channel leave stale slots: drop them from the front.
        while let Some((key, offset)) = self.order.front() {
            let live = self
                .logs
                .get(key)
                .and_then(|log| log.entries.front())
                .is_some_and(|e| e.message.offset <= *offset);
            if live {
                break;
            }
            self.order.pop_front();
            self.stale = self.stale.saturating_sub(1);
        }
        // Stale slots behind a long-lived front entry: compact now and then, so the queue stays
        // proportional to what is held.
        if self.stale > self.order.len() / 2 + 64 {
            let logs = &self.logs;
            self.order.retain(|(key, offset)| {
                logs.get(key)
                    .and_then(|log| log.entries.front())
                    .is_some_and(|e| e.message.offset <= *offset)
            });
            self.stale = 0;
        }
    }
}

/// The single-node store: everything in memory, bounded in bytes.
#[derive(Debug)]
pub struct MemoryHistory {
    store: Mutex<Store>,
    max_bytes: usize,
}

fn unix_micros(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl MemoryHistory {
    pub fn new(max_bytes: usize) -> Self {
        MemoryHistory {
            store: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // Every update keeps the maps consistent between statements that can panic.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChannelHistory for MemoryHistory {
    fn append(&self, key: &ChannelKey, sid: &str, data: &str, retention: Retention) -> u64 {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut store = self.lock();
        store.trim(key, retention.size, now);
        let log = store.logs.entry(key.clone()).or_insert_with(|| {
            let start = unix_micros(wall);
            Log {
                floor: start,
                next: start + 1,
                ttl: retention.ttl,
                entries: VecDeque::new(),
            }
        });
        let offset = log.next;
        log.next += 1;
        log.ttl = retention.ttl;
        if retention.size == 0 || retention.ttl.is_zero() {
            // Offsets still advance (members see them), but nothing is kept.
            log.floor = offset;
            if log.entries.is_empty() {
                store.logs.remove(key);
            }
            return offset;
        }
        let bytes = data.len() + sid.len() + ENTRY_OVERHEAD;
        log.entries.push_back(Entry {
            message: StoredMessage {
                offset,
                sid: sid.into(),
                data: data.into(),
                at_ms: (unix_micros(wall) / 1000),
            },
            at: now,
            bytes,
        });
        store.bytes += bytes;
        store.order.push_back((key.clone(), offset));
        store.trim(key, retention.size, now);
        store.fit(self.max_bytes);
        offset
    }

    fn after(&self, key: &ChannelKey, since: u64) -> Option<Vec<StoredMessage>> {
        let now = Instant::now();
        let store = self.lock();
        let log = store.logs.get(key)?;
        // Expired entries are still in the log until the next append: the floor is the newest
        // expired one.
        let floor = log
            .entries
            .iter()
            .take_while(|e| log.expired(e, now))
            .last()
            .map_or(log.floor, |e| e.message.offset);
        if since < floor || since >= log.next {
            return None;
        }
        Some(
            log.held(now)
                .filter(|m| m.offset > since)
                .cloned()
                .collect(),
        )
    }

    fn page(&self, key: &ChannelKey, query: HistoryQuery) -> Page {
        let now = Instant::now();
        let store = self.lock();
        let Some(log) = store.logs.get(key) else {
            return Page::default();
        };
        let (mut messages, more) = match query {
            HistoryQuery::Before { cursor, limit } => {
                let mut held = log
                    .held(now)
                    .rev()
                    .filter(|m| cursor.is_none_or(|c| m.offset < c));
                let page: Vec<_> = held.by_ref().take(limit).cloned().collect();
                (page, held.next().is_some())
            }
            HistoryQuery::After { since, limit } => {
                let mut held = log.held(now).filter(|m| m.offset > since);
                let page: Vec<_> = held.by_ref().take(limit).cloned().collect();
                (page, held.next().is_some())
            }
        };
        messages.shrink_to_fit();
        let next = more.then(|| messages.last().map(|m| m.offset)).flatten();
        Page { messages, next }
    }

    fn remove(&self, key: &ChannelKey) {
        let mut store = self.lock();
        if let Some(log) = store.logs.remove(key) {
            store.bytes -= log.entries.iter().map(|e| e.bytes).sum::<usize>();
            store.stale += log.entries.len();
        }
        store.fit(self.max_bytes);
    }

    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(&"app".into(), name)
    }

    const KEEP: Retention = Retention {
        size: 100,
        ttl: Duration::from_secs(300),
    };

    fn offsets(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn offsets_count_up_and_since_replays_the_rest() {
        let h = MemoryHistory::new(1 << 20);
        let k = key("room");
        let first = h.append(&k, "s", "a", KEEP);
        let second = h.append(&k, "s", "b", KEEP);
        let third = h.append(&k, "", "c", KEEP);
        assert_eq!((second, third), (first + 1, first + 2));
        assert_eq!(offsets(&h.after(&k, first).unwrap()), vec![second, third]);
        assert_eq!(h.after(&k, third).unwrap(), vec![]);
        assert_eq!(offsets(&h.after(&k, first - 1).unwrap()).len(), 3);
        assert!(h.after(&k, first - 2).is_none(), "before the log began");
        assert!(h.after(&k, third + 1).is_none(), "not yet issued");
        assert!(h.after(&key("other"), 5).is_none());
        let data: Vec<_> = h
            .after(&k, first)
            .unwrap()
            .iter()
            .map(|m| m.data.to_string())
            .collect();
        assert_eq!(data, vec!["b", "c"]);
    }

    #[test]
    fn pages_newest_first_and_since() {
        let h = MemoryHistory::new(1 << 20);
        let k = key("room");
        let all: Vec<u64> = (0..7)
            .map(|i| h.append(&k, "s", &i.to_string(), KEEP))
            .collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = h.page(&k, HistoryQuery::Before { cursor, limit: 3 });
            seen.extend(offsets(&page.messages));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut newest_first = all.clone();
        newest_first.reverse();
        assert_eq!(seen, newest_first);

        let page = h.page(
            &k,
            HistoryQuery::After {
                since: all[1],
                limit: 2,
            },
        );
        assert_eq!(offsets(&page.messages), vec![all[2], all[3]]);
        assert_eq!(page.next, Some(all[3]));
        let last = h.page(
            &k,
            HistoryQuery::After {
                since: all[4],
                limit: 10,
            },
        );
        assert_eq!(offsets(&last.messages), vec![all[5], all[6]]);
        assert_eq!(last.next, None);
    }

    #[test]
    fn size_ttl_and_bytes_bound_it() {
        let h = MemoryHistory::new(1 << 20);
        let k = key("room");
        let small = Retention {
            size: 3,
            ttl: Duration::from_secs(300),
        };
        let offs: Vec<u64> = (0..5).map(|_| h.append(&k, "s", "x", small)).collect();
        assert!(h.after(&k, offs[0]).is_none(), "evicted by size");
        assert_eq!(offsets(&h.after(&k, offs[1]).unwrap()), offs[2..].to_vec());

        let gone = Retention {
            size: 10,
            ttl: Duration::from_nanos(1),
        };
        let t = key("ttl");
        let o = h.append(&t, "s", "x", gone);
        std::thread::sleep(Duration::from_millis(2));
        assert!(h.after(&t, o - 1).is_none(), "expired");
        assert_eq!(
            h.page(
                &t,
                HistoryQuery::Before {
                    cursor: None,
                    limit: 5
                }
            ),
            Page::default()
        );

        // Flooding many channels stays under the byte bound.
        let bounded = MemoryHistory::new(10_000);
        for i in 0..2_000 {
            bounded.append(&key(&format!("c{i}")), "sid", &"y".repeat(100), KEEP);
            assert!(bounded.bytes() <= 10_000);
        }
        assert!(bounded.lock().logs.len() < 60);
        assert!(bounded.lock().order.len() < 60);

        // One old entry pins the front while another channel churns by size: the queue of
        // slots stays bounded.
        let pinned = MemoryHistory::new(1 << 20);
        pinned.append(&key("old"), "s", "x", KEEP);
        for _ in 0..10_000 {
            pinned.append(&k, "s", "x", small);
        }
        assert!(
            pinned.lock().order.len() < 200,
            "{}",
            pinned.lock().order.len()
        );
        let newest = bounded.page(
            &key("c1999"),
            HistoryQuery::Before {
                cursor: None,
                limit: 1,
            },
        );
        assert_eq!(newest.messages.len(), 1);
    }

    #[test]
    fn a_recreated_log_starts_above_the_old_one() {
        let h = MemoryHistory::new(1 << 20);
        let k = key("room");
        let old = h.append(&k, "s", "a", KEEP);
        h.remove(&k);
        assert_eq!(h.bytes(), 0);
        std::thread::sleep(Duration::from_millis(1));
        let new = h.append(&k, "s", "b", KEEP);
        assert!(new > old + 1);
        assert!(h.after(&k, old).is_none());
    }
}
