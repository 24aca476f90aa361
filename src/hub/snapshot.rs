//! The hub's side of `join` with `"snapshot": true`: a member first waits (its channel's
//! transactions are held for it) while its snapshot is read, then every held transaction the
//! snapshot did not see is pushed, then `snapshot_end`, and the member is live.
//!
//! Exactness: the member registers (write lock) before the snapshot is taken, and the snapshot
//! ends only once the stream has dispatched a commit at or past the WAL position read right
//! after the snapshot was taken. So every transaction committed before that point was either
//! seen by the snapshot, or is held / among the last ones dispatched before registration, and
//! is judged by xid; every later one is live and cannot have been seen.

use super::{dispatch, lock, write, Hub, Subscriber};
use crate::event::{CommittedEvents, Position};
use crate::livequery::{Filter, Waiting};
use crate::protocol::{Channel, ChannelKind};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::watch;
use walcast_replication::Lsn;

/// How many of the last transactions (with events) are kept for registering snapshots. A
/// transaction reaches the WAL, and may be dispatched, a moment before new snapshots see it as
/// committed; this covers that moment many times over.
pub const RECENT_TRANSACTIONS: usize = 256;

/// More changes arrived during the snapshot than a waiting member may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many changes during the snapshot")]
pub struct SnapshotOverrun;

impl Hub {
    /// Called by dispatch under the db read lock, once per transaction.
    pub(super) fn record_dispatched(&self, tx: &Arc<CommittedEvents>) {
        if !tx.events.is_empty() {
            let mut recent = lock(&self.recent);
            if recent.len() >= RECENT_TRANSACTIONS {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(tx));
        }
        self.dispatched.send_if_modified(|last| {
            let newer = tx.commit_lsn > *last;
            if newer {
                *last = tx.commit_lsn;
            }
            newer
        });
    }

    /// The commit LSN of the newest dispatched transaction, watched.
    pub fn dispatched(&self) -> watch::Receiver<Lsn> {
        self.dispatched.subscribe()
    }

    /// Registers `subscriber` as waiting for a snapshot of the database channel `channel`:
    /// pushes `reply` first, replaces any membership it had, and from now on holds the
    /// channel's transactions for it, up to `max_held_events` events.
    pub fn begin_snapshot(
        &self,
        subscriber: &Arc<Subscriber>,
        channel: &Channel,
        filter: Option<Arc<Filter>>,
        max_held_events: usize,
        reply: Bytes,
    ) {
        let ChannelKind::Db { repo, level } = channel.kind() else {
            return;
        };
        let mut db = write(&self.db);
        let index = db
            .entry(Arc::clone(&subscriber.reader.app))
            .or_default()
            .entry(Arc::clone(repo))
            .or_insert_with(|| super::DbChannel::new(channel.clone(), *level));
        index.remove(subscriber.conn);
        subscriber.outbox.push(reply);
        let before = lock(&self.recent).iter().cloned().collect();
        index.waiting.insert(
            subscriber.conn,
            Waiting::new(Arc::clone(subscriber), filter, before, max_held_events),
        );
    }

    /// Whether the waiting member already held more than it may (its snapshot is lost).
    pub fn snapshot_overrun(&self, app: &str, channel: &Channel, conn: super::ConnId) -> bool {
        let ChannelKind::Db { repo, .. } = channel.kind() else {
            return false;
        };
        super::read(&self.db)
            .get(app)
            .and_then(|c| c.get(&**repo))
            .is_some_and(|index| index.waiting.overrun(conn))
    }

    /// Ends a snapshot: pushes every held transaction `saw` says the snapshot did not see (by
    /// xid; permission and filter applied), then `end(position)` with the newest dispatched
    /// commit LSN, and makes the member live. `Ok(None)`: the member is no longer waiting (it
    /// left). On overrun the member is removed from the channel.
    pub fn finish_snapshot(
        &self,
        subscriber: &Subscriber,
        channel: &Channel,
        saw: impl Fn(u32) -> bool,
        end: impl FnOnce(Lsn) -> Bytes,
    ) -> Result<Option<Lsn>, SnapshotOverrun> {
        let ChannelKind::Db { repo, .. } = channel.kind() else {
            return Ok(None);
        };
        let app = &subscriber.reader.app;
        let mut db = write(&self.db);
        let Some(channels) = db.get_mut(app) else {
            return Ok(None);
        };
        let Some(index) = channels.get_mut(&**repo) else {
            return Ok(None);
        };
        let Some(waiting) = index.waiting.remove(subscriber.conn) else {
            return Ok(None);
        };
        if waiting.overrun {
            if index.is_empty() {
                channels.remove(&**repo);
                if channels.is_empty() {
                    db.remove(app);
                }
            }
            return Err(SnapshotOverrun);
        }
        let unseen = waiting
            .before
            .iter()
            .chain(waiting.held.iter())
            .filter(|tx| !saw(tx.xid))
            .map(|tx| &**tx);
        dispatch::replay(
            &waiting.subscriber,
            index,
            waiting.filter.as_deref(),
            Position::after_transaction(Lsn::ZERO),
            unseen,
        );
        let position = *self.dispatched.borrow();
        waiting.subscriber.outbox.push(end(position));
        index.insert(Arc::clone(&waiting.subscriber), None, waiting.filter);
        Ok(Some(position))
    }
}
