//! Positions shared between the reader task, the consumer's [`Confirmer`] and metrics
//! ([`ProgressHandle`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Notify;

use crate::pgoutput::pg_time;
use crate::Lsn;

const NO_COMMIT: i64 = i64::MIN;

#[derive(Debug)]
pub(crate) struct Shared {
    /// Highest end LSN the consumer confirmed (or the slot's position at start). Only grows.
    pub(crate) confirmed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) server_wal_end: AtomicU64,
    pub(crate) last_commit_micros: AtomicI64,
    /// Highest keepalive position seen while idle: every transaction before it was handed over.
    pub(crate) idle: AtomicU64,
    pub(crate) idle_changed: Notify,
    /// Signalled when the consumer confirms more, so the reader reports it without waiting.
    pub(crate) confirmed_changed: Notify,
}

impl Shared {
    pub(crate) fn new(confirmed: Lsn) -> Arc<Self> {
        Arc::new(Shared {
            confirmed: AtomicU64::new(confirmed.0),
            received: AtomicU64::new(confirmed.0),
            server_wal_end: AtomicU64::new(0),
            last_commit_micros: AtomicI64::new(NO_COMMIT),
            idle: AtomicU64::new(0),
            idle_changed: Notify::new(),
            confirmed_changed: Notify::new(),
        })
    }

    pub(crate) fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Ordering::Acquire))
    }
}

/// Tells the stream which transactions the consumer has durably accepted. Cloneable; cheap.
#[derive(Debug, Clone)]
pub struct Confirmer {
    pub(crate) shared: Arc<Shared>,
}

impl Confirmer {
    /// Confirms everything up to `lsn` (a transaction's `end_lsn`). Monotonic: a lower value than
    /// one already confirmed is ignored. The next standby status update reports it as flushed,
    /// which lets PostgreSQL recycle the WAL before it.
    pub fn confirm(&self, lsn: Lsn) {
        if self.shared.confirmed.fetch_max(lsn.0, Ordering::AcqRel) < lsn.0 {
            self.shared.confirmed_changed.notify_one();
        }
    }

    /// The highest confirmed position.
    pub fn confirmed(&self) -> Lsn {
        self.shared.confirmed()
    }
}

/// Read-only view of the stream's positions, for lag metrics. Cloneable; cheap.
#[derive(Debug, Clone)]
pub struct ProgressHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ProgressHandle {
    /// Latest server WAL end seen in XLogData or a keepalive.
    pub fn server_wal_end(&self) -> Lsn {
        Lsn(self.shared.server_wal_end.load(Ordering::Relaxed))
    }

    /// Position of the last message received (or the keepalive position when idle).
    pub fn received(&self) -> Lsn {
        Lsn(self.shared.received.load(Ordering::Relaxed))
    }

    /// Highest position confirmed by the consumer.
    pub fn confirmed(&self) -> Lsn {
        self.shared.confirmed()
    }

    /// The latest position up to which the server has sent everything and the consumer
    /// confirmed everything handed over (a keepalive's position while idle). `0/0` until the
    /// stream has been idle once.
    pub fn idle_position(&self) -> Lsn {
        Lsn(self.shared.idle.load(Ordering::Acquire))
    }

    /// Resolves when [`Self::idle_position`] may have moved (cancel-safe; a change before the
    /// call is not lost).
    pub async fn idle_changed(&self) {
        self.shared.idle_changed.notified().await
    }

    /// Commit time of the last transaction handed to the consumer.
    pub fn last_commit_time(&self) -> Option<SystemTime> {
        match self.shared.last_commit_micros.load(Ordering::Relaxed) {
            NO_COMMIT => None,
            micros => Some(pg_time(micros)),
        }
    }
}
