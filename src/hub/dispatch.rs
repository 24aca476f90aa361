use super::dbindex::DbChannel;
use super::{read, Delivery, Hub, Subscriber};
use crate::event::{CommittedEvents, DocumentChange, DocumentEvent};
use crate::permission::{may_read, RowAccess};
use crate::protocol::{encode, frame, Envelope};
use bytes::Bytes;
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
}

const CREATED: &str = "db_created";
const UPDATED: &str = "db_updated";
const DELETED: &str = "db_deleted";

/// The (at most three) frames one event can produce, each encoded once on first use and
/// shared by every recipient.
struct Frames<'a> {
    event: &'a DocumentEvent,
    channel: &'a str,
    lsn: &'a str,
    created: Option<Bytes>,
    updated: Option<Bytes>,
    deleted: Option<Bytes>,
}

impl<'a> Frames<'a> {
    fn new(event: &'a DocumentEvent, channel: &'a str, lsn: &'a str) -> Self {
        Frames {
            event,
            channel,
            lsn,
            created: None,
            updated: None,
            deleted: None,
        }
    }

    fn build(channel: &str, lsn: &str, kind: &str, data: &str) -> Bytes {
        frame::text(&encode(&Envelope {
            kind,
            data,
            channel,
            lsn: Some(lsn),
            ..Envelope::default()
        }))
    }

    fn get(&mut self, kind: &'static str) -> Bytes {
        let (event, channel, lsn) = (self.event, self.channel, self.lsn);
        let slot = match kind {
            CREATED => &mut self.created,
            UPDATED => &mut self.updated,
            _ => &mut self.deleted,
        };
        slot.get_or_insert_with(|| match &event.change {
            DocumentChange::Created { document, .. } | DocumentChange::Updated { document, .. }
                if kind != DELETED =>
            {
                Self::build(channel, lsn, kind, document)
            }
            _ => {
                let id = serde_json::Value::String(event.id.clone()).to_string();
                Self::build(channel, lsn, DELETED, &id)
            }
        })
        .clone()
    }
}

fn send(delivery: &mut Delivery, sub: &Arc<Subscriber>, frame: Bytes) {
    delivery.record(sub.outbox.push(frame));
}

impl Hub {
    /// Pushes every event of one committed transaction to the subscribers allowed to read it.
    pub fn dispatch(&self, tx: &CommittedEvents) -> DispatchStats {
        let mut stats = DispatchStats {
            events: tx.events.len(),
            ..DispatchStats::default()
        };
        let lsn = tx.commit_lsn.to_string();
        let mut delivery = Delivery::default();
        let mut channel_name = String::new();
        let db = read(&self.db);
        for event in &tx.events {
            channel_name.clear();
            channel_name.push_str("db-");
            channel_name.push_str(&event.repo);
            let Some(index) = db
                .get(&*event.app)
                .and_then(|c| c.get(channel_name.as_str()))
            else {
                continue;
            };
            let mut frames = Frames::new(event, &channel_name, &lsn);
            if !deliver(index, event, &mut frames, &mut delivery) {
                stats.fail_closed += 1;
            }
        }
        stats.delivered = delivery.delivered;
        stats.slow_consumers = delivery.slow_consumers;
        stats
    }
}

/// Returns false when some readers could not be judged (fail closed).
fn deliver(
    index: &DbChannel,
    event: &DocumentEvent,
    frames: &mut Frames<'_>,
    out: &mut Delivery,
) -> bool {
    let level = index.level;
    match &event.change {
        DocumentChange::Created { row, .. } => {
            for sub in index.readers(row) {
                send(out, sub, frames.get(CREATED));
            }
            true
        }
        DocumentChange::Updated { row, previous, .. } => match previous {
            Some(old) if old != row => {
                moved(index, old, row, frames, out);
                true
            }
            Some(_) => {
                for sub in index.readers(row) {
                    send(out, sub, frames.get(UPDATED));
                }
                true
            }
            None => {
                // The new row's readers are known and may read it; whoever could read only the
                // old version cannot be found, so they get nothing rather than a guess.
                for sub in index.readers(row) {
                    send(out, sub, frames.get(UPDATED));
                }
                false
            }
        },
        DocumentChange::Deleted { previous } => match previous {
            Some(old) => {
                for sub in index.readers(old) {
                    send(out, sub, frames.get(DELETED));
                }
                true
            }
            None => {
                for sub in index.unconditional_readers() {
                    send(out, sub, frames.get(DELETED));
                }
                level == crate::permission::ReadLevel::Everyone
            }
        },
    }
}

/// An update that changed who may read the row: old-only readers see it leave, new-only readers
/// see it arrive, readers of both see an update.
fn moved(
    index: &DbChannel,
    old: &RowAccess,
    new: &RowAccess,
    frames: &mut Frames<'_>,
    out: &mut Delivery,
) {
    let level = index.level;
    for sub in index.readers(old) {
        if may_read(level, &sub.reader, new) {
            send(out, sub, frames.get(UPDATED));
        } else {
            send(out, sub, frames.get(DELETED));
        }
    }
    for sub in index.readers(new) {
        if !may_read(level, &sub.reader, old) {
            send(out, sub, frames.get(CREATED));
        }
    }
}
