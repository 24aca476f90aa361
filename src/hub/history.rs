//! The resume window in memory (PROTOCOL.md §8): recent committed transactions, so that a client
//! rejoining with `since` gets exactly what it missed. The durable copy is the window log
//! ([`crate::journal`]); this is rebuilt from it at start and fed by dispatch afterwards.

use crate::event::{CommittedEvents, DocumentChange, Position};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
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

    pub fn enabled(&self) -> bool {
        !self.max_age.is_zero() && self.max_bytes > 0
    }

    /// Whether something kept since `at` is past the age bound at `now` (a clock that went
    /// backwards keeps it).
    pub fn too_old(&self, at: SystemTime, now: SystemTime) -> bool {
        now.duration_since(at).unwrap_or_default() > self.max_age
    }
}

#[derive(Debug)]
struct Entry {
    tx: Arc<CommittedEvents>,
    bytes: usize,
    at: SystemTime,
}

/// Invariant: every transaction with events and `end_lsn > start` that was dispatched is held,
/// in commit order.
#[derive(Debug)]
pub struct History {
    config: WindowConfig,
    entries: VecDeque<Entry>,
    bytes: usize,
    start: Lsn,
}

/// Approximate memory held for one transaction.
pub fn size_of(tx: &CommittedEvents) -> usize {
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
    /// `start`: everything with events committed after it will be pushed (or was recovered).
    pub fn new(config: WindowConfig, start: Lsn) -> Self {
        History {
            config,
            entries: VecDeque::new(),
            bytes: 0,
            start,
        }
    }

    /// Keeps a dispatched transaction (only if it has events: an empty one needs no replay) and
    /// evicts past the bounds. `at`: when it was first appended to the window log.
    pub fn push(&mut self, tx: Arc<CommittedEvents>, at: SystemTime) {
        if !self.config.enabled() || tx.events.is_empty() {
            if self.entries.is_empty() {
                self.start = self.start.max(tx.end_lsn);
            }
            return;
        }
        let bytes = size_of(&tx);
        self.bytes += bytes;
        self.entries.push_back(Entry { tx, bytes, at });
        self.expire(at);
    }

    /// Drops what is older than the window or past its byte bound.
    pub fn expire(&mut self, now: SystemTime) {
        while let Some(front) = self.entries.front() {
            if !(self.config.too_old(front.at, now) || self.bytes > self.config.max_bytes) {
                break;
            }
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= entry.bytes;
            self.start = self.start.max(entry.tx.end_lsn);
        }
    }

    /// Held bytes (approximate) and the position of the oldest held event.
    pub fn extent(&self) -> (usize, Option<Position>) {
        let oldest = self
            .entries
            .front()
            .map(|e| Position::new(e.tx.commit_lsn, 0));
        (self.bytes, oldest)
    }

    /// The held transactions that have events after `since`, or `None` when some may be missing
    /// (`since` is older than the window, or resume is disabled). The caller skips events at or
    /// before `since` inside the first one.
    pub fn after(&self, since: Position) -> Option<impl Iterator<Item = &CommittedEvents>> {
        if !self.config.enabled() || since.commit == Lsn::ZERO || since.commit < self.start {
            return None;
        }
        Some(
            self.entries
                .iter()
                .map(|e| &*e.tx)
                .filter(move |tx| tx.commit_lsn >= since.commit),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(commit: u64, events: usize) -> Arc<CommittedEvents> {
        crate::event::deletes(commit, events)
    }

    fn commits(h: &History, since: Position) -> Option<Vec<u64>> {
        Some(h.after(since)?.map(|t| t.commit_lsn.0).collect())
    }

    #[test]
    fn replays_from_a_position_and_refuses_older() {
        let now = SystemTime::now();
        let mut h = History::new(WindowConfig::default(), Lsn(100));
        h.push(tx(200, 3), now);
        h.push(tx(300, 1), now);
        let whole = Position::after_transaction(Lsn(200));
        assert_eq!(
            commits(&h, whole),
            Some(vec![200, 300]),
            "the caller skips inside"
        );
        assert_eq!(
            commits(&h, Position::new(Lsn(200), 1)),
            Some(vec![200, 300])
        );
        assert_eq!(
            commits(&h, Position::after_transaction(Lsn(100))),
            Some(vec![200, 300])
        );
        assert_eq!(commits(&h, Position::after_transaction(Lsn(99))), None);
        assert_eq!(commits(&h, Position::after_transaction(Lsn::ZERO)), None);
        assert_eq!(h.extent().1, Some(Position::new(Lsn(200), 0)));
    }

    #[test]
    fn evicts_by_age_and_bytes_and_moves_the_start() {
        let now = SystemTime::now();
        let config = WindowConfig {
            max_age: Duration::from_secs(10),
            max_bytes: 1_000_000,
        };
        let mut h = History::new(config, Lsn(100));
        h.push(tx(200, 1), now);
        h.push(tx(300, 1), now + Duration::from_secs(5));
        h.expire(now + Duration::from_secs(11));
        assert!(h.after(Position::new(Lsn(200), 0)).is_none());
        assert_eq!(
            commits(&h, Position::after_transaction(Lsn(208))),
            Some(vec![300])
        );

        let tiny = WindowConfig {
            max_age: Duration::from_secs(10),
            max_bytes: 300,
        };
        let mut h = History::new(tiny, Lsn(0));
        h.push(tx(200, 1), now);
        h.push(tx(300, 1), now);
        assert_eq!(
            h.extent().1,
            Some(Position::new(Lsn(300), 0)),
            "the byte bound evicted the oldest"
        );
    }

    #[test]
    fn disabled_window_recovers_nothing() {
        let mut h = History::new(WindowConfig::DISABLED, Lsn(0));
        h.push(tx(200, 3), SystemTime::now());
        assert!(h.after(Position::after_transaction(Lsn(208))).is_none());
    }
}
