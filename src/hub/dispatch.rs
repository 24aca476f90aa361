//! Database events to subscribers: the one decision rule (who gets which event kind), live
//! dispatch of a transaction, and resume replay to one member.

use super::dbindex::DbChannel;
use super::{read, ConnId, Delivery, Hub, Subscriber, Wakes};
use crate::event::{CommittedEvents, DocumentChange, DocumentEvent, EventKind, Position};
use crate::livequery::{EventFilters, Filter, Sight};
use crate::permission::{may_read, ReadLevel, Reader, RowAccess};
use crate::protocol::{encode, frame, ChannelKind, Envelope, Outgoing};
use std::sync::Arc;

/// Outcome of dispatching one transaction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchStats {
    pub events: usize,
    pub delivered: usize,
    pub slow_consumers: usize,
    /// Events some subscribers could not be judged for (no old row in the WAL): sent only to
    /// readers that need no row information, never guessed.
    pub fail_closed: usize,
    /// Subscription filter evaluations: at most one per distinct filter per event.
    pub filter_evaluations: usize,
}

/// The (at most three) frames one event can produce, each encoded once on first use and
/// shared by every recipient.
struct Frames<'a> {
    event: &'a DocumentEvent,
    channel: &'a str,
    lsn: &'a str,
    pos: Position,
    encoded: [Option<Outgoing>; 3],
}

impl<'a> Frames<'a> {
    fn new(event: &'a DocumentEvent, channel: &'a str, lsn: &'a str, pos: Position) -> Self {
        Frames {
            event,
            channel,
            lsn,
            pos,
            encoded: Default::default(),
        }
    }

    fn build(channel: &str, lsn: &str, pos: Position, kind: EventKind, data: &str) -> Outgoing {
        Outgoing::shared(frame::text(&encode(&Envelope {
            kind: kind.as_str(),
            data,
            channel,
            lsn: Some(lsn),
            pos: Some(&pos.to_string()),
            ..Envelope::default()
        })))
    }

    fn get(&mut self, kind: EventKind) -> Outgoing {
        let (event, channel, lsn, pos) = (self.event, self.channel, self.lsn, self.pos);
        self.encoded[kind.index()]
            .get_or_insert_with(|| match (kind, event.change.document()) {
                (EventKind::Created | EventKind::Updated, Some(document)) => {
                    Self::build(channel, lsn, pos, kind, document)
                }
                // A delete names the document by its id (a JSON string). A row without a
                // document is deleted whatever the kind asked: `decide` never asks otherwise.
                (EventKind::Deleted, _) | (EventKind::Created | EventKind::Updated, None) => {
                    let id = serde_json::Value::String(event.id.clone()).to_string();
                    Self::build(channel, lsn, pos, EventKind::Deleted, &id)
                }
            })
            .clone()
    }
}

/// The one rule of PROTOCOL.md §4 for one reader and one change: which event, if any, the reader
/// gets. `sight` says whether the reader's subscription filter passes the old and the new row
/// version ([`Sight::ALL`] without a filter); a row moving into the reader's sight (permission
/// or filter) is `db_created`, out of it `db_deleted`. Live dispatch applies it to the candidates
/// the index yields; resume replay and snapshot catch-up to one subscriber.
fn decide(
    level: ReadLevel,
    reader: &Reader,
    change: &DocumentChange,
    sight: Sight,
) -> Option<EventKind> {
    let reads = |row: &RowAccess| may_read(level, reader, row);
    match change {
        DocumentChange::Created { row, .. } => {
            (reads(row) && sight.new).then_some(EventKind::Created)
        }
        DocumentChange::Updated {
            row,
            previous: Some(old),
            ..
        } => {
            let was = reads(old) && sight.old.unwrap_or(true);
            let is = reads(row) && sight.new;
            match (was, is) {
                (true, true) => Some(EventKind::Updated),
                (true, false) => Some(EventKind::Deleted),
                (false, true) => Some(EventKind::Created),
                (false, false) => None,
            }
        }
        // Without the old row, readers of only the old version cannot be found: they get
        // nothing rather than a guess (fail closed). A reader of the new row whose filter no
        // longer passes is told it is gone: harmless if it never had it.
        DocumentChange::Updated { row, .. } => reads(row).then_some(if sight.new {
            EventKind::Updated
        } else {
            EventKind::Deleted
        }),
        DocumentChange::Deleted {
            previous: Some(old),
            ..
        } => (reads(old) && sight.old.unwrap_or(true)).then_some(EventKind::Deleted),
        DocumentChange::Deleted { previous: None, .. } => {
            (reader.is_root() || level == ReadLevel::Everyone).then_some(EventKind::Deleted)
        }
    }
}

/// The sight of a member of `index` on the event behind `filters`: its filter group evaluated
/// once per event and shared by the group.
fn sight_of(index: &DbChannel, conn: ConnId, filters: &mut EventFilters<'_>) -> Sight {
    match index.filters.slot_of(conn) {
        Some(slot) => match index.filters.filter(slot) {
            Some(filter) => filters.sight(slot, filter),
            None => Sight::ALL,
        },
        None => Sight::ALL,
    }
}

/// Whether some readers could not be judged for this change (no old row in the WAL).
fn fails_closed(level: ReadLevel, change: &DocumentChange) -> bool {
    match change {
        DocumentChange::Updated { previous, .. } => {
            previous.is_none() && level != ReadLevel::Everyone
        }
        DocumentChange::Deleted { previous, .. } => {
            previous.is_none() && level != ReadLevel::Everyone
        }
        DocumentChange::Created { .. } => false,
    }
}

impl Hub {
    /// Pushes every event of one committed transaction to the subscribers allowed to read it,
    /// then keeps it for resume. `recovery`: the transaction was committed before the gateway
    /// started, so only members that asked to resume get it. `at`: when it entered the window.
    pub fn dispatch(
        &self,
        tx: Arc<CommittedEvents>,
        recovery: bool,
        at: std::time::SystemTime,
    ) -> DispatchStats {
        self.dispatch_held(tx, recovery, at, &mut Wakes::default())
    }

    /// [`Hub::dispatch`] leaving the writers of the outboxes it pushed to asleep until `wakes`
    /// is flushed: one wake per subscriber per batch of transactions, not per event. The
    /// caller flushes before waiting for anything.
    pub fn dispatch_held(
        &self,
        tx: Arc<CommittedEvents>,
        recovery: bool,
        at: std::time::SystemTime,
        wakes: &mut Wakes,
    ) -> DispatchStats {
        let mut stats = DispatchStats {
            events: tx.events.len(),
            ..DispatchStats::default()
        };
        let lsn = tx.commit_lsn.to_string();
        let mut delivery = Delivery::default();
        let db = read(&self.db);
        for (i, event) in tx.events.iter().enumerate() {
            let Some(index) = db.get(&*event.app).and_then(|c| c.get(&*event.repo)) else {
                continue;
            };
            index.waiting.hold(&tx);
            if fails_closed(index.level, &event.change) {
                stats.fail_closed += 1;
            }
            let pos = Position::new(tx.commit_lsn, i);
            let mut frames = Frames::new(event, index.channel.name(), &lsn, pos);
            let mut filters = EventFilters::new(event);
            for sub in candidates(index, &event.change) {
                if !index.admits(sub.conn, pos, recovery) {
                    continue;
                }
                let sight = sight_of(index, sub.conn, &mut filters);
                if let Some(kind) = decide(index.level, &sub.reader, &event.change, sight) {
                    delivery.record(wakes.push(&sub.outbox, frames.get(kind)), 1);
                }
            }
            stats.filter_evaluations += filters.evaluations();
        }
        // Under the db read lock: a snapshot registering its member (write lock) sees this
        // transaction either here, dispatched before it, or held for it — never neither.
        self.record_dispatched(&tx);
        super::lock(&self.history).push(tx, at);
        drop(db);
        stats.delivered = delivery.delivered;
        stats.slow_consumers = delivery.slow_consumers;
        stats
    }
}

/// Everyone who might get an event for this change, each once: the readers of the old row
/// version and, for a move, the readers of the new one who could not read the old.
fn candidates<'a>(
    index: &'a DbChannel,
    change: &'a DocumentChange,
) -> Box<dyn Iterator<Item = &'a Arc<Subscriber>> + 'a> {
    let level = index.level;
    match change {
        DocumentChange::Created { row, .. } => index.readers(row),
        DocumentChange::Updated {
            row,
            previous: Some(old),
            ..
        } if old != row => Box::new(
            index.readers(old).chain(
                index
                    .readers(row)
                    .filter(move |s| !may_read(level, &s.reader, old)),
            ),
        ),
        DocumentChange::Updated { row, .. } => index.readers(row),
        DocumentChange::Deleted {
            previous: Some(old),
            ..
        } => index.readers(old),
        DocumentChange::Deleted { previous: None, .. } => index.unconditional_readers(),
    }
}

/// Pushes to one subscriber every held event of `index`'s channel after `since` it may read and
/// `filter` passes, in commit order.
pub(super) fn replay<'a>(
    sub: &Subscriber,
    index: &DbChannel,
    filter: Option<&Filter>,
    since: Position,
    held: impl Iterator<Item = &'a CommittedEvents>,
) {
    let ChannelKind::Db { repo, .. } = index.channel.kind() else {
        return;
    };
    for tx in held {
        let lsn = tx.commit_lsn.to_string();
        for (i, event) in tx.events.iter().enumerate() {
            let pos = Position::new(tx.commit_lsn, i);
            if pos <= since || event.repo != *repo || event.app != sub.reader.app {
                continue;
            }
            let sight = match filter {
                Some(filter) => EventFilters::new(event).evaluate(filter),
                None => Sight::ALL,
            };
            if let Some(kind) = decide(index.level, &sub.reader, &event.change, sight) {
                let frame = Frames::new(event, index.channel.name(), &lsn, pos).get(kind);
                sub.outbox.push(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, Outbox};
    use crate::protocol::Channel;
    use futures_util::FutureExt;
    use std::time::SystemTime;
    use uuid::Uuid;
    use walcast_replication::Lsn;

    /// Three accounts × three users, one root, on a repo of each read level: the index-driven
    /// dispatch must reach exactly the subscribers `decide` picks by brute force.
    #[test]
    fn index_candidates_match_brute_force() {
        let account = |i: u128| Some(Uuid::from_u128(i));
        let user = |i: u128| Uuid::from_u128(100 + i);
        let rows = [
            RowAccess {
                account_id: account(1),
                owner_id: Some(user(1)),
            },
            RowAccess {
                account_id: account(1),
                owner_id: Some(user(5)),
            },
            RowAccess {
                account_id: account(2),
                owner_id: Some(user(4)),
            },
            RowAccess {
                account_id: None,
                owner_id: None,
            },
            RowAccess {
                account_id: account(3),
                owner_id: None,
            },
        ];
        let mut changes = Vec::new();
        for row in rows {
            changes.push(DocumentChange::Created {
                row,
                document: "{}".into(),
            });
            changes.push(DocumentChange::Deleted {
                previous: Some(row),
                previous_data: Some("{}".into()),
            });
            changes.push(DocumentChange::Updated {
                row,
                previous: None,
                previous_data: None,
                document: "{}".into(),
            });
            for old in rows {
                changes.push(DocumentChange::Updated {
                    row,
                    previous: Some(old),
                    previous_data: Some("{}".into()),
                    document: "{}".into(),
                });
            }
        }
        changes.push(DocumentChange::Deleted {
            previous: None,
            previous_data: None,
        });

        for repo in ["r_700_", "r_760_", "r_744_", "pub_r"] {
            let hub = Hub::default();
            let mut subs = Vec::new();
            for i in 0..10u128 {
                let reader = Reader {
                    app: "app".into(),
                    user_id: user(i),
                    account_id: account(i / 3 + 1),
                    role: if i == 9 { 100 } else { 0 },
                };
                let sub = Arc::new(Subscriber {
                    conn: i as u64,
                    reader: Arc::new(reader),
                    outbox: Arc::new(Outbox::new(1 << 20)),
                    guest: false,
                });
                let channel = Channel::parse(&format!("db-{repo}")).unwrap();
                hub.join(&sub, &channel, None, None, |_| {
                    bytes::Bytes::from_static(b"j")
                })
                .unwrap();
                let mut batch = Vec::new();
                let _ = sub.outbox.next_batch(&mut batch).now_or_never();
                subs.push(sub);
            }
            let level = crate::permission::read_level(repo);
            for change in &changes {
                let tx = Arc::new(CommittedEvents {
                    xid: 0,
                    commit_lsn: Lsn(1),
                    end_lsn: Lsn(2),
                    commit_time: SystemTime::UNIX_EPOCH,
                    events: vec![DocumentEvent {
                        app: "app".into(),
                        repo: repo.into(),
                        id: "i".into(),
                        change: change.clone(),
                    }],
                });
                hub.dispatch(tx, false, SystemTime::UNIX_EPOCH);
                for sub in &subs {
                    let mut batch = Vec::new();
                    let _ = sub.outbox.next_batch(&mut batch).now_or_never();
                    let got: Vec<String> = batch
                        .iter()
                        .map(|f| {
                            let text = String::from_utf8_lossy(f.frame());
                            EventKind::ALL
                                .into_iter()
                                .find(|k| text.contains(k.as_str()))
                                .map_or("?", EventKind::as_str)
                                .to_owned()
                        })
                        .collect();
                    let want: Vec<String> = decide(level, &sub.reader, change, Sight::ALL)
                        .map(|k| k.as_str().to_owned())
                        .into_iter()
                        .collect();
                    assert_eq!(got, want, "{repo} {change:?} conn {}", sub.conn);
                }
            }
        }
    }

    /// A batch of transactions held in one `Wakes`: each reached subscriber is registered for
    /// one wake however many events it got, and finds them in commit order.
    #[test]
    fn held_dispatch_wakes_each_subscriber_once_in_order() {
        let hub = Hub::default();
        let account = Some(Uuid::from_u128(1));
        let subs: Vec<_> = (0..3u64)
            .map(|conn| {
                let sub = Arc::new(Subscriber {
                    conn,
                    reader: Arc::new(Reader {
                        app: "app".into(),
                        user_id: Uuid::from_u128(100 + u128::from(conn)),
                        account_id: account,
                        role: 0,
                    }),
                    outbox: Arc::new(Outbox::new(1 << 20)),
                    guest: false,
                });
                let channel = Channel::parse("db-r_760_").unwrap();
                hub.join(&sub, &channel, None, None, |_| {
                    bytes::Bytes::from_static(b"j")
                })
                .unwrap();
                let mut batch = Vec::new();
                let _ = sub.outbox.next_batch(&mut batch).now_or_never();
                sub
            })
            .collect();
        let row = RowAccess {
            account_id: account,
            owner_id: None,
        };
        let event = |id: &str| DocumentEvent {
            app: "app".into(),
            repo: "r_760_".into(),
            id: id.into(),
            change: DocumentChange::Created {
                row,
                document: format!(r#"{{"id":"{id}"}}"#),
            },
        };
        let mut wakes = Wakes::default();
        for (commit, ids) in [(1, ["a", "b"]), (3, ["c", "d"])] {
            let tx = Arc::new(CommittedEvents {
                xid: 0,
                commit_lsn: Lsn(commit),
                end_lsn: Lsn(commit + 1),
                commit_time: SystemTime::UNIX_EPOCH,
                events: ids.into_iter().map(event).collect(),
            });
            let stats = hub.dispatch_held(tx, false, SystemTime::UNIX_EPOCH, &mut wakes);
            assert_eq!(stats.delivered, 6);
        }
        assert_eq!(wakes.len(), subs.len());
        wakes.flush();
        for sub in &subs {
            let mut batch = Vec::new();
            assert_eq!(sub.outbox.next_batch(&mut batch).now_or_never(), Some(None));
            let ids: Vec<String> = batch
                .iter()
                .map(|f| {
                    let text = String::from_utf8_lossy(f.frame()).into_owned();
                    ["a", "b", "c", "d"]
                        .into_iter()
                        .find(|id| text.contains(&format!(r#"\"id\":\"{id}\""#)))
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect();
            assert_eq!(ids, ["a", "b", "c", "d"], "conn {}", sub.conn);
        }
    }
}
