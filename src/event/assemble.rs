//! Whole committed transactions → document events: column positions cached per relation
//! version, rows turned into StaticBackend documents, skipped rows counted.

use super::repo::is_repo;
use super::{build_document, CommittedEvents, DocumentChange, DocumentEvent};
use crate::permission::{AppName, RowAccess};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;
use walcast_replication::{Change, OldTuple, Relation, Transaction, Tuple, Value};

/// Why a row change produced no event. Counted, never silent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleStats {
    /// `data` was not a JSON object, or `id` was NULL: nothing a client could use.
    pub invalid_rows: u64,
    /// An update whose `data` was unchanged TOAST with no old tuple to take it from.
    pub missing_document: u64,
    /// TRUNCATE of a repo: rows vanish without per-row WAL records.
    pub truncates: u64,
}

/// Column positions of a document table, cached per relation version.
#[derive(Debug)]
struct Shape {
    relation: Arc<Relation>,
    repo: Option<RepoColumns>,
}

#[derive(Debug)]
struct RepoColumns {
    app: AppName,
    repo: Arc<str>,
    id: usize,
    account_id: usize,
    owner_id: usize,
    data: usize,
}

impl RepoColumns {
    fn of(relation: &Relation) -> Option<RepoColumns> {
        let columns = relation.columns.iter().map(|c| c.name.as_str());
        if !is_repo(&relation.schema, &relation.name, columns) {
            return None;
        }
        Some(RepoColumns {
            app: Arc::from(relation.schema.as_str()),
            repo: Arc::from(relation.name.as_str()),
            id: relation.column_index("id")?,
            account_id: relation.column_index("account_id")?,
            owner_id: relation.column_index("owner_id")?,
            data: relation.column_index("data")?,
        })
    }

    fn access(&self, tuple: &Tuple) -> Option<RowAccess> {
        Some(RowAccess {
            account_id: uuid_column(tuple, self.account_id)?,
            owner_id: uuid_column(tuple, self.owner_id)?,
        })
    }
}

/// `Some(None)` is SQL NULL; `None` means the value is not known (unchanged TOAST, not text, bad uuid).
fn uuid_column(tuple: &Tuple, index: usize) -> Option<Option<Uuid>> {
    match tuple.0.get(index)? {
        Value::Null => Some(None),
        value => value
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .map(Some),
    }
}

fn text_column(tuple: &Tuple, index: usize) -> Option<&str> {
    tuple.0.get(index).and_then(Value::as_str)
}

/// Turns transactions into document events. Holds the per-relation column cache, replaced when
/// the replication stream hands over a new `Relation` (DDL while streaming).
#[derive(Debug, Default)]
pub struct Assembler {
    shapes: HashMap<u32, Shape>,
    pub stats: AssembleStats,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn assemble(&mut self, tx: &Transaction) -> CommittedEvents {
        let mut events = Vec::with_capacity(tx.changes.len());
        for change in &tx.changes {
            if let Some(event) = self.event(change) {
                events.push(event);
            }
        }
        CommittedEvents {
            xid: tx.xid,
            commit_lsn: tx.commit_lsn,
            end_lsn: tx.end_lsn,
            commit_time: tx.commit_time,
            events,
        }
    }

    fn columns(&mut self, relation: &Arc<Relation>) -> Option<&RepoColumns> {
        let fresh = match self.shapes.get(&relation.oid) {
            Some(shape) => !Arc::ptr_eq(&shape.relation, relation),
            None => true,
        };
        if fresh {
            self.shapes.insert(
                relation.oid,
                Shape {
                    relation: Arc::clone(relation),
                    repo: RepoColumns::of(relation),
                },
            );
        }
        self.shapes.get(&relation.oid)?.repo.as_ref()
    }

    fn event(&mut self, change: &Change) -> Option<DocumentEvent> {
        match change {
            Change::Insert { relation, new } => {
                let cols = self.columns(relation)?;
                let made = created(cols, new);
                self.count(made)
            }
            Change::Update { relation, old, new } => {
                let cols = self.columns(relation)?;
                let made = updated(cols, old.as_ref(), new);
                self.count(made)
            }
            Change::Delete { relation, old } => {
                let cols = self.columns(relation)?;
                let made = deleted(cols, old);
                self.count(made)
            }
            Change::Truncate { relations, .. } => {
                let repos = relations
                    .iter()
                    .filter(|r| self.columns(r).is_some())
                    .count();
                self.stats.truncates += repos as u64;
                None
            }
            _ => None,
        }
    }

    fn count(&mut self, made: Result<DocumentEvent, Skip>) -> Option<DocumentEvent> {
        match made {
            Ok(event) => Some(event),
            Err(Skip::Invalid) => {
                self.stats.invalid_rows += 1;
                None
            }
            Err(Skip::MissingDocument) => {
                self.stats.missing_document += 1;
                None
            }
        }
    }
}

enum Skip {
    Invalid,
    MissingDocument,
}

fn document(cols: &RepoColumns, tuple: &Tuple, data: &str) -> Result<(String, String), Skip> {
    let id = text_column(tuple, cols.id).ok_or(Skip::Invalid)?;
    let account = text_column(tuple, cols.account_id);
    let doc = build_document(data, id, account).map_err(|_| Skip::Invalid)?;
    Ok((id.to_owned(), doc))
}

fn event(cols: &RepoColumns, id: String, change: DocumentChange) -> DocumentEvent {
    DocumentEvent {
        app: Arc::clone(&cols.app),
        repo: Arc::clone(&cols.repo),
        id,
        change,
    }
}

fn created(cols: &RepoColumns, new: &Tuple) -> Result<DocumentEvent, Skip> {
    let data = text_column(new, cols.data).ok_or(Skip::Invalid)?;
    let row = cols.access(new).ok_or(Skip::Invalid)?;
    let (id, document) = document(cols, new, data)?;
    Ok(event(cols, id, DocumentChange::Created { row, document }))
}

fn updated(cols: &RepoColumns, old: Option<&OldTuple>, new: &Tuple) -> Result<DocumentEvent, Skip> {
    let old_full = match old {
        Some(OldTuple::Full(t)) => Some(t),
        _ => None,
    };
    // Unchanged TOAST: with replica identity FULL the old tuple carries the flattened value.
    let data = match new.0.get(cols.data) {
        Some(Value::UnchangedToast) => old_full
            .and_then(|t| text_column(t, cols.data))
            .ok_or(Skip::MissingDocument)?,
        _ => text_column(new, cols.data).ok_or(Skip::Invalid)?,
    };
    let previous = old_full.and_then(|t| cols.access(t));
    let previous_data = old_full
        .and_then(|t| text_column(t, cols.data))
        .map(str::to_owned);
    let row = cols.access(new).ok_or(Skip::Invalid)?;
    let (id, document) = document(cols, new, data)?;
    Ok(event(
        cols,
        id,
        DocumentChange::Updated {
            row,
            previous,
            previous_data,
            document,
        },
    ))
}

fn deleted(cols: &RepoColumns, old: &OldTuple) -> Result<DocumentEvent, Skip> {
    let (tuple, previous, previous_data) = match old {
        OldTuple::Full(t) => (
            t,
            cols.access(t),
            text_column(t, cols.data).map(str::to_owned),
        ),
        OldTuple::Key(t) => (t, None, None),
    };
    let id = text_column(tuple, cols.id).ok_or(Skip::Invalid)?;
    Ok(event(
        cols,
        id.to_owned(),
        DocumentChange::Deleted {
            previous,
            previous_data,
        },
    ))
}

#[cfg(test)]
mod tests;
