//! What to stream and how: [`ReplicationConfig`].

use std::time::Duration;

use crate::Lsn;

/// Which tables the publication covers when walcast has to create it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PublicationScope {
    /// `CREATE PUBLICATION … FOR ALL TABLES` (needs superuser).
    #[default]
    AllTables,
    /// `CREATE PUBLICATION … FOR TABLE a, b`; names may be `schema.table`.
    Tables(Vec<String>),
    /// Never create: the publication must already exist.
    None,
}

/// Settings of one replication stream.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A PostgreSQL URL or key=value string, as accepted by `tokio_postgres::Config`.
    pub conninfo: String,
    /// Logical replication slot name.
    pub slot: String,
    /// Publication name passed to pgoutput.
    pub publication: String,
    /// Created when the publication is missing (idempotent).
    pub create_publication: PublicationScope,
    /// `true`: a slot dropped by PostgreSQL when the connection ends. `false`: a persistent slot,
    /// created when missing.
    pub temporary_slot: bool,
    /// Period of standby status updates. Must stay well below the server's
    /// `wal_sender_timeout` (60 s by default): it is what keeps the connection alive while the
    /// consumer is slow and the reader is paused.
    pub status_interval: Duration,
    /// Bound of the channel of whole transactions between the reader task and the consumer.
    pub channel_capacity: usize,
    /// Where to start; `None` = the slot's confirmed position. PostgreSQL never goes back before
    /// the slot's confirmed position, whatever is asked.
    pub start_lsn: Option<Lsn>,
    /// Ask pgoutput for logical decoding messages (`pg_logical_emit_message`), PostgreSQL 14+.
    pub messages: bool,
    /// `application_name` shown in `pg_stat_replication`.
    pub application_name: String,
    /// `true`: while idle, the reader itself reports a keepalive's position as flushed.
    /// `false`: it only publishes that position ([`crate::ProgressHandle::idle_position`]) and
    /// the consumer confirms it once it has recorded it (a consumer with its own durable log).
    pub confirm_idle: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            conninfo: String::new(),
            slot: "walcast".to_owned(),
            publication: "walcast".to_owned(),
            create_publication: PublicationScope::AllTables,
            temporary_slot: false,
            status_interval: Duration::from_secs(10),
            channel_capacity: 64,
            start_lsn: None,
            messages: false,
            application_name: "walcast".to_owned(),
            confirm_idle: true,
        }
    }
}
