//! PostgreSQL logical replication (pgoutput) reader on tokio.
//!
//! [`ReplicationStream::start`] opens a walsender connection, makes sure the publication and
//! the logical slot exist, starts streaming and yields whole committed [`Transaction`]s in
//! commit order. The consumer confirms each transaction's `end_lsn` through a [`Confirmer`];
//! only confirmed positions are reported to PostgreSQL as flushed.
//!
//! ```no_run
//! # async fn example() -> Result<(), walcast_replication::ReplicationError> {
//! use walcast_replication::{Change, ReplicationConfig, ReplicationStream};
//!
//! let mut stream = ReplicationStream::start(ReplicationConfig {
//!     conninfo: "postgres://walcast:secret@db.internal:5432/app".into(),
//!     ..ReplicationConfig::default()
//! })
//! .await?;
//! let confirmer = stream.confirmer();
//! while let Some(tx) = stream.recv().await {
//!     let tx = tx?;
//!     for change in &tx.changes {
//!         if let Change::Insert { relation, new } = change {
//!             let id = new.by_name(relation, "id").and_then(|v| v.as_str());
//!             println!("{}.{} insert id={id:?}", relation.schema, relation.name);
//!         }
//!     }
//!     // Only once the transaction is safely handed on: PostgreSQL may then drop its WAL.
//!     confirmer.confirm(tx.end_lsn);
//! }
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`lsn`] — the [`Lsn`] WAL position type (`X/Y` text form).
//! - [`config`] — [`ReplicationConfig`], [`PublicationScope`].
//! - [`error`] — [`ReplicationError`].
//! - `connection` — transport (TCP / Unix socket), startup, authentication (trust, cleartext,
//!   MD5, SCRAM-SHA-256), simple queries, backend message framing — on `postgres-protocol`.
//! - [`admin`] — `IDENTIFY_SYSTEM`, publication and slot creation (idempotent).
//! - `copy_data` — XLogData / keepalive parsing and standby status updates.
//! - [`pgoutput`] — the pure, never-panicking pgoutput decoder.
//! - [`transaction`] — relation cache and assembly of messages into [`Transaction`]s.
//! - [`progress`] — [`Confirmer`] and [`ProgressHandle`] shared with the reader task.
//! - [`stream`] — [`ReplicationStream`], the reader task, feedback and shutdown.
//! - `embedded` (feature `embedded`) — a private PostgreSQL started from the installed binaries,
//!   for tests and embedded use.

pub mod admin;
pub mod config;
mod connection;
mod copy_data;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod progress;
pub mod stream;
pub mod transaction;

pub use admin::SystemIdentity;
pub use config::{PublicationScope, ReplicationConfig};
pub use error::ReplicationError;
pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{Column, DecodeError, OldTuple, Relation, ReplicaIdentity, Tuple, Value};
pub use progress::{Confirmer, ProgressHandle};
pub use stream::ReplicationStream;
pub use transaction::{Change, Transaction, TransactionAssembler};
