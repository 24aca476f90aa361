//! Assembles decoded pgoutput messages into whole committed [`Transaction`]s.
//!
//! Invariants: changes are only accepted between Begin and Commit; a change's relation must have
//! been announced by a Relation message earlier in this session (pgoutput guarantees this), and a
//! new Relation message for an OID replaces the cached one (DDL while streaming). Relation
//! messages carry no WAL position, so positions come from Begin and Commit only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::pgoutput::{pg_time, LogicalMessage, OldTuple, Relation, Tuple};
use crate::{Lsn, ReplicationError};

/// One committed transaction, as the consumer receives it.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub xid: u32,
    /// Begin's final LSN: the LSN of the commit record.
    pub final_lsn: Lsn,
    /// Commit message's commit LSN (equal to `final_lsn`).
    pub commit_lsn: Lsn,
    /// End of the commit record: the position a consumer confirms once it has accepted this
    /// transaction.
    pub end_lsn: Lsn,
    pub commit_time: SystemTime,
    pub changes: Vec<Change>,
}

/// One row-level change (or logical message) of a transaction.
#[derive(Debug, Clone)]
pub enum Change {
    Insert {
        relation: Arc<Relation>,
        new: Tuple,
    },
    Update {
        relation: Arc<Relation>,
        /// Present when the key changed (`K`) or the replica identity is full (`O`).
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation: Arc<Relation>,
        old: OldTuple,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `pg_logical_emit_message`; non-transactional ones arrive as a transaction of their own
    /// with `xid` 0 and all three LSNs equal to the message's LSN.
    Message {
        transactional: bool,
        prefix: String,
        content: Bytes,
    },
}

impl Change {
    /// The relation of an insert, update or delete.
    pub fn relation(&self) -> Option<&Arc<Relation>> {
        match self {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => Some(relation),
            _ => None,
        }
    }
}

/// Relation cache plus the transaction being assembled.
#[derive(Debug, Default)]
pub struct TransactionAssembler {
    relations: HashMap<u32, Arc<Relation>>,
    current: Option<Transaction>,
}

impl TransactionAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// True between Begin and Commit.
    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Cached metadata of relation `oid`.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// Feeds one message; returns the transaction it completed, if any.
    pub fn push(&mut self, msg: LogicalMessage) -> Result<Option<Transaction>, ReplicationError> {
        match msg {
            LogicalMessage::Begin(b) => {
                if let Some(open) = &self.current {
                    return Err(protocol(format!(
                        "Begin of xid {} while xid {} is open",
                        b.xid, open.xid
                    )));
                }
                self.current = Some(Transaction {
                    xid: b.xid,
                    final_lsn: b.final_lsn,
                    commit_lsn: b.final_lsn,
                    end_lsn: b.final_lsn,
                    commit_time: pg_time(b.commit_time),
                    changes: Vec::new(),
                });
                Ok(None)
            }
            LogicalMessage::Commit(c) => {
                let mut tx = self
                    .current
                    .take()
                    .ok_or_else(|| protocol("Commit without Begin".into()))?;
                tx.commit_lsn = c.commit_lsn;
                tx.end_lsn = c.end_lsn;
                tx.commit_time = pg_time(c.commit_time);
                Ok(Some(tx))
            }
            LogicalMessage::Relation { relation, .. } => {
                self.relations.insert(relation.oid, Arc::new(relation));
                Ok(None)
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Type { .. } => Ok(None),
            LogicalMessage::Insert {
                relation_oid, new, ..
            } => {
                let relation = self.lookup(relation_oid)?;
                self.add(Change::Insert { relation, new })
            }
            LogicalMessage::Update {
                relation_oid,
                old,
                new,
                ..
            } => {
                let relation = self.lookup(relation_oid)?;
                self.add(Change::Update { relation, old, new })
            }
            LogicalMessage::Delete {
                relation_oid, old, ..
            } => {
                let relation = self.lookup(relation_oid)?;
                self.add(Change::Delete { relation, old })
            }
            LogicalMessage::Truncate {
                cascade,
                restart_identity,
                relation_oids,
                ..
            } => {
                let relations = relation_oids
                    .into_iter()
                    .map(|oid| self.lookup(oid))
                    .collect::<Result<Vec<_>, _>>()?;
                self.add(Change::Truncate {
                    relations,
                    cascade,
                    restart_identity,
                })
            }
            LogicalMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
                ..
            } => {
                let change = Change::Message {
                    transactional,
                    prefix,
                    content,
                };
                if transactional || self.current.is_some() {
                    return self.add(change);
                }
                Ok(Some(Transaction {
                    xid: 0,
                    final_lsn: lsn,
                    commit_lsn: lsn,
                    end_lsn: lsn,
                    commit_time: SystemTime::now(),
                    changes: vec![change],
                }))
            }
            LogicalMessage::StreamStart { .. }
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit { .. }
            | LogicalMessage::StreamAbort { .. } => Err(protocol(
                "streamed in-progress transactions were not requested".into(),
            )),
        }
    }

    fn lookup(&self, oid: u32) -> Result<Arc<Relation>, ReplicationError> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            protocol(format!(
                "change for relation {oid} before its Relation message"
            ))
        })
    }

    fn add(&mut self, change: Change) -> Result<Option<Transaction>, ReplicationError> {
        let tx = self
            .current
            .as_mut()
            .ok_or_else(|| protocol("change outside a transaction".into()))?;
        tx.changes.push(change);
        Ok(None)
    }
}

fn protocol(msg: String) -> ReplicationError {
    ReplicationError::Protocol(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Begin, Column, Commit, ReplicaIdentity, Value};

    fn rel(oid: u32, cols: &[&str]) -> LogicalMessage {
        LogicalMessage::Relation {
            xid: None,
            relation: Relation {
                oid,
                schema: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: cols
                    .iter()
                    .map(|c| Column {
                        name: (*c).into(),
                        type_oid: 25,
                        type_modifier: -1,
                        is_key: false,
                    })
                    .collect(),
            },
        }
    }

    fn begin(xid: u32) -> LogicalMessage {
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(100),
            commit_time: 0,
            xid,
        })
    }

    fn commit() -> LogicalMessage {
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(108),
            commit_time: 0,
        })
    }

    fn insert(oid: u32) -> LogicalMessage {
        LogicalMessage::Insert {
            xid: None,
            relation_oid: oid,
            new: Tuple(vec![Value::Null]),
        }
    }

    #[test]
    fn assembles_and_replaces_relations() {
        let mut a = TransactionAssembler::new();
        assert!(a.push(rel(1, &["a"])).unwrap().is_none());
        a.push(begin(5)).unwrap();
        a.push(insert(1)).unwrap();
        a.push(rel(1, &["a", "b"])).unwrap();
        a.push(insert(1)).unwrap();
        let tx = a.push(commit()).unwrap().unwrap();
        assert_eq!((tx.xid, tx.end_lsn, tx.changes.len()), (5, Lsn(108), 2));
        assert_eq!(tx.changes[0].relation().unwrap().columns.len(), 1);
        assert_eq!(tx.changes[1].relation().unwrap().columns.len(), 2);
        assert!(!a.in_transaction());
    }

    #[test]
    fn rejects_out_of_order_messages() {
        let mut a = TransactionAssembler::new();
        assert!(a.push(commit()).is_err());
        assert!(a.push(insert(1)).is_err());
        a.push(begin(1)).unwrap();
        assert!(a.push(insert(9)).is_err());
        assert!(a.push(begin(2)).is_err());
    }
}
