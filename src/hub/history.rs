//! The resume window (PROTOCOL.md §8): recent committed transactions kept in memory so that a
//! client rejoining with `since` gets exactly what it missed. The WAL is the durable copy: the
//! slot's confirmed position is held back to the window's start, so after a restart PostgreSQL
//! streams the window again and it is rebuilt.

use crate::event::{CommittedEvents, DocumentChange};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use walcast_replication::Lsn;

/// How much history to keep. Either bound at zero disables the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    pub max_age: Duration,
    pub max_bytes: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            max_age: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl WindowConfig {
    pub const DISABLED: WindowConfig = WindowConfig {
        max_age: Duration::ZERO,
        max_bytes: 0,
    };

    fn enabled(&self) -> bool {
        !self.max_age.is_zero() && self.max_bytes > 0
    }
}

#[derive(Debug)]
struct Entry {
    tx: Arc<CommittedEvents>,
    bytes: usize,
    at: Instant,
}

/// Invariant: every transaction with `end_lsn > start` that was dispatched is held, in commit
/// order; `confirmable` is the end of the newest evicted one (what PostgreSQL may forget).
#[derive(Debug)]
pub struct History {
    config: WindowConfig,
    entries: VecDeque<Entry>,
    bytes: usize,
    start: Lsn,
    confirmable: Lsn,
}

fn size_of(tx: &CommittedEvents) -> usize {
    tx.events
        .iter()
        .map(|e| {
            let doc = match &e.change {
                DocumentChange::Created { document, .. }
                | DocumentChange::Updated { document, .. } => document.len(),
                DocumentChange::Deleted { .. } => 0,
            };
            doc + e.id.len() + 128
        })
        .sum::<usize>()
        + 64
}

impl History {
    /// `start`: where the replication stream starts; everything after it will be pushed.
    pub fn new(config: WindowConfig, start: Lsn) -> Self {
        History {
            config,
            entries: VecDeque::new(),
            bytes: 0,
            start,
            confirmable: start,
        }
    }

    /// Keeps a dispatched transaction (only if it has events: an empty one needs no replay) and
    /// evicts past the bounds.
    pub fn push(&mut self, tx: Arc<CommittedEvents>, now: Instant) {
        if !self.config.enabled() {
            self.evicted(tx.end_lsn);
            return;
        }
        if tx.events.is_empty() && self.entries.is_empty() {
            self.evicted(tx.end_lsn);
            return;
        }
        let bytes = size_of(&tx);
        self.bytes += bytes;
        self.entries.push_back(Entry { tx, bytes, at: now });
        self.expire(now);
    }

    fn evicted(&mut self, end: Lsn) {
        self.start = self.start.max(end);
        self.confirmable = self.confirmable.max(end);
    }

    /// Drops what is older than the window or past its byte bound.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            let too_old = now.duration_since(front.at) > self.config.max_age;
            if !(too_old || self.bytes > self.config.max_bytes) {
                break;
            }
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= entry.bytes;
            self.evicted(entry.tx.end_lsn);
        }
    }

    /// What the replication slot may be confirmed up to.
    pub fn confirmable(&self) -> Lsn {
        self.confirmable
    }

    /// The held transactions committed after `since`, or `None` when some may be missing
    /// (`since` is older than the window).
    pub fn after(&self, since: Lsn) -> Option<impl Iterator<Item = &CommittedEvents>> {
        if !self.config.enabled() || since == Lsn::ZERO || since < self.start {
            return None;
        }
        Some(
            self.entries
                .iter()
                .map(|e| &*e.tx)
                .filter(move |tx| tx.commit_lsn > since),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DocumentEvent;
    use std::time::SystemTime;

    fn tx(commit: u64, events: usize) -> Arc<CommittedEvents> {
        Arc::new(CommittedEvents {
            xid: 0,
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
            commit_time: SystemTime::UNIX_EPOCH,
            events: (0..events)
                .map(|i| DocumentEvent {
                    app: "a".into(),
                    repo: "r".into(),
                    id: i.to_string(),
                    change: DocumentChange::Deleted {
                        previous: None,
                        previous_data: None,
                    },
                })
                .collect(),
        })
    }

    #[test]
    fn replays_after_since_and_refuses_older() {
        let now = Instant::now();
        let mut h = History::new(WindowConfig::default(), Lsn(100));
        h.push(tx(200, 1), now);
        h.push(tx(300, 1), now);
        let after: Vec<u64> = h.after(Lsn(200)).unwrap().map(|t| t.commit_lsn.0).collect();
        assert_eq!(after, vec![300]);
        assert_eq!(h.after(Lsn(100)).unwrap().count(), 2);
        assert!(h.after(Lsn(99)).is_none());
        assert_eq!(h.confirmable(), Lsn(100), "held back to the window start");
    }

    #[test]
    fn evicts_by_age_and_bytes_and_moves_the_start() {
        let now = Instant::now();
        let config = WindowConfig {
            max_age: Duration::from_secs(10),
            max_bytes: 1_000_000,
        };
        let mut h = History::new(config, Lsn(100));
        h.push(tx(200, 1), now);
        h.push(tx(300, 1), now + Duration::from_secs(5));
        h.expire(now + Duration::from_secs(11));
        assert_eq!(h.confirmable(), Lsn(208));
        assert!(h.after(Lsn(100)).is_none());
        assert_eq!(h.after(Lsn(208)).unwrap().count(), 1);

        let tiny = WindowConfig {
            max_age: Duration::from_secs(10),
            max_bytes: 300,
        };
        let mut h = History::new(tiny, Lsn(0));
        h.push(tx(200, 1), now);
        h.push(tx(300, 1), now);
        assert_eq!(
            h.confirmable(),
            Lsn(208),
            "the byte bound evicted the oldest"
        );
    }

    #[test]
    fn disabled_window_confirms_everything_and_recovers_nothing() {
        let mut h = History::new(WindowConfig::DISABLED, Lsn(0));
        h.push(tx(200, 3), Instant::now());
        assert_eq!(h.confirmable(), Lsn(208));
        assert!(h.after(Lsn(208)).is_none());
    }
}
