//! The fanout hub: channel membership per app, custom-channel publish, and permission-filtered
//! delivery of document events. It never touches a socket: it pushes pre-encoded frames into
//! each connection's bounded [`Outbox`].
//!
//! Invariants: every channel is scoped by app; a connection is in a channel at most once; one
//! transaction's frames are pushed under one read lock of the db index, so no join/leave and no
//! other transaction interleaves with it, and per-subscriber order is commit order.

mod dbindex;
mod dispatch;
mod outbox;

pub use dispatch::DispatchStats;
pub use outbox::{Closing, Outbox, Push};

use crate::permission::{AppName, Reader};
use bytes::Bytes;
use dbindex::DbChannel;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub type ConnId = u64;

/// A connection as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    pub conn: ConnId,
    pub reader: Arc<Reader>,
    pub outbox: Arc<Outbox>,
}

type Members = HashMap<ConnId, Arc<Outbox>>;

#[derive(Debug, Default)]
pub struct Hub {
    custom: RwLock<HashMap<AppName, HashMap<Box<str>, Members>>>,
    db: RwLock<HashMap<AppName, HashMap<Box<str>, DbChannel>>>,
}

/// What a publish reached, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: usize,
    pub slow_consumers: usize,
}

impl Delivery {
    fn record(&mut self, push: Push) {
        match push {
            Push::Queued => self.delivered += 1,
            Push::Overflow => self.slow_consumers += 1,
            Push::Closed => {}
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Hub maps are updated by single inserts/removes; a panic elsewhere cannot corrupt them.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Idempotent: joining twice keeps one membership. `db-<repo>` channels go to the
    /// permission index, everything else is a custom channel.
    pub fn join(&self, subscriber: &Arc<Subscriber>, channel: &str) {
        let app = &subscriber.reader.app;
        match crate::protocol::db_repo(channel) {
            Some(repo) => {
                let mut db = write(&self.db);
                db.entry(Arc::clone(app))
                    .or_default()
                    .entry(channel.into())
                    .or_insert_with(|| DbChannel::new(repo))
                    .insert(Arc::clone(subscriber));
            }
            None => {
                let mut custom = write(&self.custom);
                custom
                    .entry(Arc::clone(app))
                    .or_default()
                    .entry(channel.into())
                    .or_default()
                    .insert(subscriber.conn, Arc::clone(&subscriber.outbox));
            }
        }
    }

    /// Returns whether the connection was a member. Empty channels are dropped so that
    /// abandoned names do not accumulate.
    pub fn leave(&self, app: &str, conn: ConnId, channel: &str) -> bool {
        if crate::protocol::db_repo(channel).is_some() {
            let mut db = write(&self.db);
            let Some(channels) = db.get_mut(app) else {
                return false;
            };
            let Some(index) = channels.get_mut(channel) else {
                return false;
            };
            let was = index.remove(conn);
            if index.is_empty() {
                channels.remove(channel);
                if channels.is_empty() {
                    db.remove(app);
                }
            }
            was
        } else {
            let mut custom = write(&self.custom);
            let Some(channels) = custom.get_mut(app) else {
                return false;
            };
            let Some(members) = channels.get_mut(channel) else {
                return false;
            };
            let was = members.remove(&conn).is_some();
            if members.is_empty() {
                channels.remove(channel);
                if channels.is_empty() {
                    custom.remove(app);
                }
            }
            was
        }
    }

    /// Pushes one pre-encoded `chan_out` frame to every member of a custom channel.
    pub fn publish(&self, app: &str, channel: &str, frame: &Bytes) -> Delivery {
        let mut delivery = Delivery::default();
        let custom = read(&self.custom);
        if let Some(members) = custom.get(app).and_then(|c| c.get(channel)) {
            for outbox in members.values() {
                delivery.record(outbox.push(frame.clone()));
            }
        }
        delivery
    }

    /// Number of channels with at least one member, custom and db.
    pub fn channel_count(&self) -> usize {
        let custom: usize = read(&self.custom).values().map(HashMap::len).sum();
        let db: usize = read(&self.db).values().map(HashMap::len).sum();
        custom + db
    }
}
