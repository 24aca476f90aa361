//! The subscribers of one database channel, indexed by account and user so that finding a
//! row's readers costs the number of readers.

use super::{ConnId, Subscriber};
use crate::event::Position;
use crate::livequery::{Filter, FilterGroups, WaitingMembers};
use crate::permission::{ReadLevel, RowAccess};
use crate::protocol::Channel;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

type Bucket = HashMap<ConnId, Arc<Subscriber>>;

/// Subscribers of one `db-<repo>` channel, indexed so that finding the readers of a row costs in
/// proportion to how many there are: root users apart (they read everything), everyone else by
/// account and by user. Roots are never in the account/user buckets, so the union of a bucket
/// and the roots has no duplicates.
#[derive(Debug)]
pub struct DbChannel {
    pub channel: Channel,
    pub level: ReadLevel,
    all: Bucket,
    roots: Bucket,
    by_account: HashMap<Uuid, Bucket>,
    by_user: HashMap<Uuid, Bucket>,
    /// Members that joined with `since`: the only ones that receive transactions committed
    /// before the gateway started (they asked for what they missed; everyone else loaded their
    /// data after those commits).
    resumers: HashMap<ConnId, Position>,
    /// Members' subscription filters, grouped (members without one are not in it).
    pub filters: FilterGroups,
    /// Members whose snapshot is being read: not in the buckets yet, transactions held.
    pub waiting: WaitingMembers,
}

impl DbChannel {
    /// `level` is the read level of `channel`'s repo.
    pub fn new(channel: Channel, level: ReadLevel) -> Self {
        DbChannel {
            channel,
            level,
            all: Bucket::new(),
            roots: Bucket::new(),
            by_account: HashMap::new(),
            by_user: HashMap::new(),
            resumers: Default::default(),
            filters: FilterGroups::default(),
            waiting: WaitingMembers::default(),
        }
    }

    /// `since`: the member resumes after this event position. A member already in the channel keeps
    /// one membership; its filter is replaced.
    pub fn insert(
        &mut self,
        sub: Arc<Subscriber>,
        since: Option<Position>,
        filter: Option<Arc<Filter>>,
    ) {
        if let Some(since) = since {
            self.resumers.insert(sub.conn, since);
        }
        self.filters.assign(sub.conn, filter);
        if self.all.contains_key(&sub.conn) {
            return;
        }
        self.all.insert(sub.conn, Arc::clone(&sub));
        if sub.reader.is_root() {
            self.roots.insert(sub.conn, sub);
            return;
        }
        if let Some(account) = sub.reader.account_id {
            self.by_account
                .entry(account)
                .or_default()
                .insert(sub.conn, Arc::clone(&sub));
        }
        self.by_user
            .entry(sub.reader.user_id)
            .or_default()
            .insert(sub.conn, sub);
    }

    pub fn remove(&mut self, conn: ConnId) -> bool {
        let was_waiting = self.waiting.remove(conn).is_some();
        self.filters.remove(conn);
        let Some(sub) = self.all.remove(&conn) else {
            return was_waiting;
        };
        self.resumers.remove(&conn);
        if self.roots.remove(&conn).is_some() {
            return true;
        }
        fn take(map: &mut HashMap<Uuid, Bucket>, key: Uuid, conn: ConnId) {
            if let Some(bucket) = map.get_mut(&key) {
                bucket.remove(&conn);
                if bucket.is_empty() {
                    map.remove(&key);
                }
            }
        }
        if let Some(account) = sub.reader.account_id {
            take(&mut self.by_account, account, conn);
        }
        take(&mut self.by_user, sub.reader.user_id, conn);
        true
    }

    /// Whether the event at `pos` goes to this member at all: a resuming member never gets what
    /// it saw up to `since` (the replay may still be catching up after a restart); events of
    /// that catch-up (`recovery`) go to resuming members only.
    pub fn admits(&self, conn: ConnId, pos: Position, recovery: bool) -> bool {
        if self.resumers.is_empty() {
            return !recovery;
        }
        match self.resumers.get(&conn) {
            Some(since) => pos > *since,
            None => !recovery,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.waiting.is_empty()
    }

    /// Every subscriber that may read a row with these access columns, each once.
    pub fn readers<'a>(
        &'a self,
        row: &RowAccess,
    ) -> Box<dyn Iterator<Item = &'a Arc<Subscriber>> + 'a> {
        match self.level {
            ReadLevel::Everyone => Box::new(self.all.values()),
            ReadLevel::Account => {
                let bucket = row.account_id.and_then(|a| self.by_account.get(&a));
                Box::new(
                    bucket
                        .into_iter()
                        .flat_map(|b| b.values())
                        .chain(self.roots.values()),
                )
            }
            ReadLevel::Owner => {
                let account = row.account_id;
                let bucket = row.owner_id.and_then(|u| self.by_user.get(&u));
                Box::new(
                    bucket
                        .into_iter()
                        .flat_map(|b| b.values())
                        .filter(move |s| account.is_some() && s.reader.account_id == account)
                        .chain(self.roots.values()),
                )
            }
        }
    }

    /// Readers that need no row information: root users, or everybody on a public repo.
    pub fn unconditional_readers<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Arc<Subscriber>> + 'a> {
        match self.level {
            ReadLevel::Everyone => Box::new(self.all.values()),
            _ => Box::new(self.roots.values()),
        }
    }
}
