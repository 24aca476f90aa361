//! Committed transactions from the WAL → document events (PROTOCOL.md §4).
//!
//! A document table ("repo") is a table of an app schema with the StaticBackend shape
//! ([`repo::is_repo`]). Everything else streamed by the publication is ignored here.

mod assemble;
mod document;
mod kind;
mod position;
pub mod repo;

pub(crate) use assemble::Assembler;
pub(crate) use document::build_document;
pub use kind::EventKind;
pub(crate) use position::Position;

use crate::permission::{AppName, RowAccess};
use std::sync::Arc;
use std::time::SystemTime;
use walcast_replication::Lsn;

/// Serialized as is between cluster nodes (`cluster::wire`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DocumentChange {
    /// `document` is the JSON text StaticBackend sent: row `data` + `id` + `accountId`, keys sorted.
    Created { row: RowAccess, document: String },
    /// `previous` is the row's access columns before the update, when the WAL carried them;
    /// `previous_data` the old `data` text (for subscription filters), likewise.
    Updated {
        row: RowAccess,
        previous: Option<RowAccess>,
        previous_data: Option<String>,
        document: String,
    },
    /// `previous` is `None` when the WAL carried only the key (replica identity not FULL).
    Deleted {
        previous: Option<RowAccess>,
        previous_data: Option<String>,
    },
}

impl DocumentChange {
    /// What happened to the row itself (a reader may be told otherwise when it moved).
    pub fn kind(&self) -> EventKind {
        match self {
            DocumentChange::Created { .. } => EventKind::Created,
            DocumentChange::Updated { .. } => EventKind::Updated,
            DocumentChange::Deleted { .. } => EventKind::Deleted,
        }
    }

    /// The document JSON text; a deleted row has none.
    pub fn document(&self) -> Option<&str> {
        match self {
            DocumentChange::Created { document, .. } | DocumentChange::Updated { document, .. } => {
                Some(document)
            }
            DocumentChange::Deleted { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocumentEvent {
    pub app: AppName,
    pub repo: Arc<str>,
    pub id: String,
    pub change: DocumentChange,
}

/// All document events of one committed transaction, in WAL order.
#[derive(Debug, Clone)]
pub struct CommittedEvents {
    /// The transaction's id as pgoutput sends it (32 bits): what snapshot visibility is decided
    /// by. 0 for a non-transactional logical message.
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// What the consumer confirms once the transaction is handed over.
    pub end_lsn: Lsn,
    pub commit_time: SystemTime,
    pub events: Vec<DocumentEvent>,
}

/// A transaction of `events` deletes committed at `commit` (ending 8 bytes later), for tests.
#[cfg(test)]
pub(crate) fn deletes(commit: u64, events: usize) -> Arc<CommittedEvents> {
    Arc::new(CommittedEvents {
        xid: 0,
        commit_lsn: Lsn(commit),
        end_lsn: Lsn(commit + 8),
        commit_time: SystemTime::UNIX_EPOCH,
        events: (0..events)
            .map(|i| DocumentEvent {
                app: "a".into(),
                repo: "r".into(),
                id: format!("{commit}-{i}"),
                change: DocumentChange::Deleted {
                    previous: None,
                    previous_data: None,
                },
            })
            .collect(),
    })
}
