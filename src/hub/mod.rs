//! The fanout hub: channel membership per app, custom-channel publish, and permission-filtered
//! delivery of document events. It never touches a socket: it pushes pre-encoded frames into
//! each connection's bounded [`Outbox`].
//!
//! Invariants: every channel is scoped by app; a connection is in a channel at most once; one
//! transaction's frames are pushed, and the transaction added to the resume history, under one
//! read lock of the db index, so no join/leave and no other transaction interleaves with it, and
//! per-subscriber order is commit order. A join's reply and its resume replay are pushed under
//! the write lock, before any live event can reach the new member. Dispatch may leave writers
//! asleep until a batch of transactions is pushed ([`Wakes`]): that moves when a writer looks,
//! never what order it finds.

mod channel_history;
mod dbindex;
mod dispatch;
mod history;
mod outbox;
mod presence;
mod rooms;
mod snapshot;

pub use channel_history::{
    ChannelHistory, ChannelKey, HistoryLimits, MemoryHistory, Page, Retention, StoredMessage,
};
pub use dispatch::DispatchStats;
pub use history::WindowConfig;
pub use outbox::{Outbox, Push, Wakes};
pub use presence::{Member, MemoryPresence, PresenceStore};
pub use rooms::{Actor, Answer, RoomConfig, RoomError, RoomJoin, Rooms};
pub use snapshot::{SnapshotOverrun, RECENT_TRANSACTIONS};

use crate::event::{CommittedEvents, Position};
use crate::livequery::Filter;
use crate::permission::{AppName, Reader};
use crate::protocol::{Channel, ChannelKind};
use bytes::Bytes;
use dbindex::DbChannel;
use history::History;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;
use walcast_replication::Lsn;

pub type ConnId = u64;

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A process-wide unique connection id, whatever the transport (memberships are keyed by it).
pub fn new_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A connection as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    pub conn: ConnId,
    pub reader: Arc<Reader>,
    pub outbox: Arc<Outbox>,
    /// A connection that named its app but did not authenticate: `reader` carries only the
    /// app. It may only join and read custom channels whose rule has `auth = false`.
    pub guest: bool,
}

impl Subscriber {
    /// Who the channel rules see: nobody for a guest.
    pub fn identity(&self) -> Option<&Reader> {
        (!self.guest).then_some(&*self.reader)
    }
}

#[derive(Debug)]
pub struct Hub {
    /// Custom channels: members, presence, history, metadata.
    rooms: Rooms,
    /// Database channels by app and repo (what a WAL event carries).
    db: RwLock<HashMap<AppName, HashMap<Arc<str>, DbChannel>>>,
    history: Mutex<History>,
    /// The last transactions with events, for snapshots registering (see `snapshot`).
    recent: Mutex<VecDeque<Arc<CommittedEvents>>>,
    /// Commit LSN of the newest dispatched transaction (events or not).
    dispatched: tokio::sync::watch::Sender<Lsn>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(WindowConfig::DISABLED, Lsn::ZERO, [])
    }
}

/// How a `join` went, for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// No `since` was asked for.
    Live,
    /// `since` was asked for: whether everything after it was replayed.
    Resumed { recovered: bool },
}

/// What a publish reached, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: usize,
    pub slow_consumers: usize,
}

impl Delivery {
    /// One push of `frames` frames to one connection.
    fn record(&mut self, push: Push, frames: usize) {
        match push {
            Push::Queued => self.delivered += frames,
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// `start`: where the resume window begins; `recovered`: what the window log held at start
    /// (oldest first, each with when it was appended).
    pub fn new(
        window: WindowConfig,
        start: Lsn,
        recovered: impl IntoIterator<Item = (Arc<CommittedEvents>, SystemTime)>,
    ) -> Self {
        let mut history = History::new(window, start);
        for (tx, at) in recovered {
            history.push(tx, at);
        }
        Hub {
            rooms: Rooms::new(RoomConfig::default()),
            db: RwLock::default(),
            history: Mutex::new(history),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_TRANSACTIONS)),
            dispatched: tokio::sync::watch::Sender::new(Lsn::ZERO),
        }
    }

    /// Custom-channel state: counts and bytes for metrics and tests.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// Replaces the room settings (rules, history and presence bounds); before any join.
    pub fn with_rooms(mut self, rooms: Rooms) -> Self {
        self.rooms = rooms;
        self
    }

    /// Idempotent: joining twice keeps one membership. Database channels go to the
    /// permission index, custom ones to their room (see [`Hub::join_room`]). `reply` builds the `joined` frame,
    /// pushed before any event of the channel; with `since` on a database channel, every held
    /// event after it that the subscriber may read follows the reply, then live events.
    pub fn join(
        &self,
        subscriber: &Arc<Subscriber>,
        channel: &Channel,
        since: Option<Position>,
        filter: Option<Arc<Filter>>,
        reply: impl FnOnce(Joined) -> Bytes,
    ) -> Result<(), RoomError> {
        let app = &subscriber.reader.app;
        match channel.kind() {
            ChannelKind::Db { repo, level } => {
                let mut db = write(&self.db);
                let index = db
                    .entry(Arc::clone(app))
                    .or_default()
                    .entry(Arc::clone(repo))
                    .or_insert_with(|| DbChannel::new(channel.clone(), *level));
                match since {
                    None => {
                        subscriber.outbox.push(reply(Joined::Live));
                    }
                    Some(since) => {
                        let history = lock(&self.history);
                        let held = history.after(since);
                        let recovered = held.is_some();
                        subscriber.outbox.push(reply(Joined::Resumed { recovered }));
                        if let Some(held) = held {
                            dispatch::replay(subscriber, index, filter.as_deref(), since, held);
                        }
                    }
                }
                // A member that was waiting for a snapshot of this channel now joins without.
                index.waiting.remove(subscriber.conn);
                index.insert(Arc::clone(subscriber), since, filter);
                Ok(())
            }
            // Without sid, presence metadata or offset; connections use `join_room`.
            ChannelKind::Custom => {
                self.join_room(subscriber, "", channel.name(), RoomJoin::default(), reply)
            }
        }
    }

    /// Drops history past the window; returns the held bytes and the oldest held position.
    pub fn expire_history(&self, now: SystemTime) -> (usize, Option<Position>) {
        let mut history = lock(&self.history);
        history.expire(now);
        history.extent()
    }

    /// Returns whether the connection was a member. Empty channels are dropped so that
    /// abandoned names do not accumulate.
    pub fn leave(&self, app: &str, conn: ConnId, channel: &Channel) -> bool {
        match channel.kind() {
            ChannelKind::Db { repo, .. } => {
                let mut db = write(&self.db);
                let Some(channels) = db.get_mut(app) else {
                    return false;
                };
                let Some(index) = channels.get_mut(&**repo) else {
                    return false;
                };
                let was = index.remove(conn);
                if index.is_empty() {
                    channels.remove(&**repo);
                    if channels.is_empty() {
                        db.remove(app);
                    }
                }
                was
            }
            ChannelKind::Custom => self.leave_room(app, conn, channel.name()),
        }
    }

    /// Number of channels with at least one member, custom and db.
    pub fn channel_count(&self) -> usize {
        let db: usize = read(&self.db).values().map(HashMap::len).sum();
        self.rooms.count() + db
    }
}
