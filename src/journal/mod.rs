//! The resume window's durable log (PROTOCOL.md §8): committed transactions, already decoded
//! into document events, appended in commit order by the slot holder, made durable in batches,
//! replayed at start (and, in cluster mode, by every node) from a position.
//!
//! Contract of every [`WindowLog`]:
//! - [`WindowLog::append`] takes entries in commit order; an entry is safe once
//!   [`WindowLog::durable`] has reached its end LSN. Only then may the replication slot be
//!   confirmed past it: whatever the slot re-sends after a crash is at or before nothing durable
//!   is missing, so the reader de-duplicates by position against [`Replay::tail`].
//! - [`Entry::Covered`] records that no transaction with events exists up to a position (empty
//!   transactions, idle keepalives), so confirming the slot there is safe too, and a slot that
//!   is found ahead of the log at start means entries were lost: the window restarts there.
//! - Retention (age, bytes) never drops entries newer than what readers are told they hold.
//!
//! One implementation today: [`segments::SegmentLog`], checksummed segment files in the data
//! directory. Cluster mode fills the same trait with a JetStream stream (publish = append,
//! publish ack = durable, ordered consumer from a sequence = replay).

mod record;
mod segments;

use crate::event::CommittedEvents;
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use walcast_replication::Lsn;

pub use segments::SegmentLog;

/// One appended item.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A transaction with its document events (possibly none).
    Transaction {
        tx: Arc<CommittedEvents>,
        at: SystemTime,
    },
    /// Nothing with events up to this position.
    Covered(Lsn),
}

impl Entry {
    pub fn end(&self) -> Lsn {
        match self {
            Entry::Transaction { tx, .. } => tx.end_lsn,
            Entry::Covered(lsn) => *lsn,
        }
    }
}

/// What a log holds after a position.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every transaction with events after this position is in `transactions`.
    pub start: Lsn,
    /// The highest position the log covers (transaction end or covered position).
    pub tail: Lsn,
    /// Transactions with events, oldest first, each with when it was appended.
    pub transactions: Vec<(Arc<CommittedEvents>, SystemTime)>,
}

/// Figures for metrics and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Where the log lives (a directory, a stream name).
    pub location: String,
    pub bytes: u64,
    pub segments: u64,
    /// Commit LSN of the oldest transaction held.
    pub oldest: Option<Lsn>,
    /// The durable position.
    pub durable: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("window log I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("window log directory {0} is in use by another walcast process")]
    Locked(PathBuf),
    #[error("window log writer stopped")]
    Stopped,
}

impl JournalError {
    /// Retrying may help (a full disk freed, a lock released); the process should not
    /// silently continue without a durable window meanwhile.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JournalError::Io { .. } | JournalError::Locked(_))
    }
}

/// A durable, ordered log of committed transactions: the resume window's source of truth.
pub trait WindowLog: Send + Sync + std::fmt::Debug {
    /// Queues one entry (commit order). Waits only for room in a bounded queue.
    fn append(&self, entry: Entry) -> BoxFuture<'_, Result<(), JournalError>>;
    /// The highest end LSN that survives a crash.
    fn durable(&self) -> watch::Receiver<Lsn>;
    /// Everything held with events after `after`, oldest first.
    fn replay(&self, after: Lsn) -> BoxFuture<'_, Result<Replay, JournalError>>;
    /// Drops what retention no longer keeps, as of `now`.
    fn expire(&self, now: SystemTime);
    fn stats(&self) -> LogStats;
    /// Makes everything appended durable and stops appending; returns the durable position.
    fn close(&self) -> BoxFuture<'_, Result<Lsn, JournalError>>;
}
