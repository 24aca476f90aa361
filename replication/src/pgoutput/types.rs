//! Row-level values carried by pgoutput messages.

use std::sync::Arc;

use bytes::Bytes;

/// `pg_class.relreplident` of a table: which old values an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// Primary key (`d`).
    Default,
    /// No old values (`n`).
    Nothing,
    /// Whole old row (`f`).
    Full,
    /// A chosen unique index (`i`).
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (flag bit 1 of the Relation message).
    pub is_key: bool,
}

/// Table metadata from a pgoutput Relation message. Tuples of this relation carry one value per
/// column, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// Position of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change; its content is not in the WAL record.
    UnchangedToast,
    /// Text output format (what pgoutput sends unless `binary` is on).
    Text(Bytes),
    /// Binary send format.
    Binary(Bytes),
}

impl Value {
    /// The text of a `Text` value, when it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Raw bytes of a `Text` or `Binary` value.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Text(b) | Value::Binary(b) => Some(b),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The values of one row, one per relation column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Value>);

impl Tuple {
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.0.get(index)
    }

    /// Value of the column `name` of `relation`.
    pub fn by_name(&self, relation: &Relation, name: &str) -> Option<&Value> {
        relation.column_index(name).and_then(|i| self.0.get(i))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Old values of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Replica identity columns only (`K`); other columns are `Null`.
    Key(Tuple),
    /// The whole old row (`O`, replica identity full).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Shared relation metadata, as attached to changes.
pub type RelationRef = Arc<Relation>;
