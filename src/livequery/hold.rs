//! Members of a db channel whose snapshot is being read: the transactions dispatched meanwhile
//! are held for them (bounded), to be judged by xid once the snapshot is known.

use super::filter::Filter;
use crate::event::CommittedEvents;
use crate::hub::{ConnId, Subscriber};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One member waiting for its snapshot.
#[derive(Debug)]
pub struct Waiting {
    pub subscriber: Arc<Subscriber>,
    pub filter: Option<Arc<Filter>>,
    /// Transactions dispatched shortly before the member registered: a transaction can reach
    /// the WAL (and this gateway) a moment before it becomes visible to new snapshots, so the
    /// last few are judged by xid like the held ones.
    pub before: Vec<Arc<CommittedEvents>>,
    /// Transactions dispatched since, in commit order.
    pub held: Vec<Arc<CommittedEvents>>,
    held_events: usize,
    limit: usize,
    /// The bound was passed: what was held is dropped and the snapshot must be retried.
    pub overrun: bool,
}

impl Waiting {
    pub fn new(
        subscriber: Arc<Subscriber>,
        filter: Option<Arc<Filter>>,
        before: Vec<Arc<CommittedEvents>>,
        limit: usize,
    ) -> Self {
        Waiting {
            subscriber,
            filter,
            before,
            held: Vec::new(),
            held_events: 0,
            limit,
            overrun: false,
        }
    }

    fn hold(&mut self, tx: &Arc<CommittedEvents>) {
        if self.overrun || self.held.last().is_some_and(|last| Arc::ptr_eq(last, tx)) {
            return;
        }
        self.held_events += tx.events.len();
        if self.held_events > self.limit {
            self.overrun = true;
            self.held = Vec::new();
            self.before = Vec::new();
            return;
        }
        self.held.push(Arc::clone(tx));
    }
}

/// The waiting members of one db channel. `len` lets dispatch skip the lock when nobody waits.
#[derive(Debug, Default)]
pub struct WaitingMembers {
    members: Mutex<HashMap<ConnId, Waiting>>,
    len: AtomicUsize,
}

impl WaitingMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Waiting>> {
        // Each update is a single insert/remove/push: a panic elsewhere leaves it usable.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub fn insert(&self, conn: ConnId, waiting: Waiting) {
        let mut members = self.lock();
        members.insert(conn, waiting);
        self.len.store(members.len(), Ordering::Release);
    }

    pub fn remove(&self, conn: ConnId) -> Option<Waiting> {
        let mut members = self.lock();
        let waiting = members.remove(&conn);
        self.len.store(members.len(), Ordering::Release);
        waiting
    }

    /// Holds a transaction (with events of this channel) for every waiting member, once.
    pub fn hold(&self, tx: &Arc<CommittedEvents>) {
        if self.is_empty() {
            return;
        }
        for waiting in self.lock().values_mut() {
            waiting.hold(tx);
        }
    }

    pub fn overrun(&self, conn: ConnId) -> bool {
        self.lock().get(&conn).is_some_and(|w| w.overrun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DocumentChange, DocumentEvent};
    use crate::hub::Outbox;
    use crate::permission::Reader;
    use std::time::SystemTime;
    use walcast_replication::Lsn;

    fn tx(events: usize) -> Arc<CommittedEvents> {
        Arc::new(CommittedEvents {
            xid: 1,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time: SystemTime::UNIX_EPOCH,
            events: (0..events)
                .map(|_| DocumentEvent {
                    app: "a".into(),
                    repo: "r".into(),
                    id: "i".into(),
                    change: DocumentChange::Deleted {
                        previous: None,
                        previous_data: None,
                    },
                })
                .collect(),
        })
    }

    #[test]
    fn holds_once_per_transaction_and_overruns_past_the_bound() {
        let sub = Arc::new(Subscriber {
            conn: 1,
            reader: Arc::new(Reader {
                app: "a".into(),
                user_id: uuid::Uuid::nil(),
                account_id: None,
                role: 0,
            }),
            outbox: Arc::new(Outbox::new(1024)),
            guest: false,
        });
        let members = WaitingMembers::default();
        assert!(members.is_empty());
        members.insert(1, Waiting::new(sub, None, vec![], 3));
        let a = tx(2);
        members.hold(&a);
        members.hold(&a);
        assert!(!members.overrun(1));
        members.hold(&tx(2));
        assert!(members.overrun(1));
        let waiting = members.remove(1).unwrap();
        assert!(waiting.held.is_empty());
        assert!(members.is_empty());
    }
}
