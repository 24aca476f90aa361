//! Reading a snapshot for `join` with `"snapshot": true`: a small pool of PostgreSQL
//! connections, a per-node limit of snapshots in flight, a REPEATABLE READ read-only
//! transaction whose `pg_current_snapshot()` decides which streamed transactions the member
//! still needs, the row count refused over the limit before any row is read, and the rows
//! streamed through a portal into bounded `snapshot` pages.

use super::sql::RowSelection;
use super::visibility::XidSnapshot;
use super::Filter;
use crate::event::build_document;
use crate::hub::{Hub, Subscriber};
use crate::protocol::{encode, frame, Channel, ChannelKind, Envelope};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};
use walcast_replication::Lsn;

/// Snapshot bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Most rows one snapshot may have; over it the join is refused before reading them.
    pub max_rows: usize,
    /// Most documents in one `snapshot` page, and the page size in bytes it stops at.
    pub page_rows: usize,
    pub page_bytes: usize,
    /// Bound of each statement, and of the wait for the stream to pass the snapshot.
    pub timeout: Duration,
    /// PostgreSQL connections kept for snapshots.
    pub pool_size: usize,
    /// Snapshots read at once on this node; others wait up to `queue_timeout`.
    pub max_in_flight: usize,
    pub queue_timeout: Duration,
    /// Events held for one member while its snapshot is read; past it the join fails.
    pub max_held_events: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            max_rows: 10_000,
            page_rows: 100,
            page_bytes: 48 * 1024,
            timeout: Duration::from_secs(10),
            pool_size: 4,
            max_in_flight: 4,
            queue_timeout: Duration::from_secs(5),
            max_held_events: 10_000,
        }
    }
}

/// Why a snapshot join failed; the `Display` text is the client-facing `error` data.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot refused: more than {0} rows (the snapshot row limit)")]
    TooManyRows(usize),
    #[error("snapshot timed out")]
    Timeout,
    #[error("too many snapshots in progress")]
    Busy,
    #[error("snapshot overrun: too many changes during the snapshot, join again")]
    Overrun,
    #[error("snapshot and since cannot be combined")]
    WithSince,
    #[error("snapshot failed")]
    Database(#[source] tokio_postgres::Error),
    #[error("snapshot failed")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// PostgreSQL answered something this gateway cannot read (snapshot or position text).
    #[error("snapshot failed")]
    Unreadable(String),
}

impl SnapshotError {
    fn from_db(error: tokio_postgres::Error) -> SnapshotError {
        if error.code() == Some(&SqlState::QUERY_CANCELED) {
            SnapshotError::Timeout
        } else {
            SnapshotError::Database(error)
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid database URL for the snapshot pool")]
pub struct PoolConfigError(#[source] tokio_postgres::Error);

/// The snapshot service of one node.
pub struct Snapshots {
    pool: Pool,
    in_flight: Semaphore,
    config: SnapshotConfig,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one snapshot read: the xid snapshot and the WAL insert position read right after it.
#[derive(Debug)]
struct Read {
    xids: XidSnapshot,
    horizon: Lsn,
    rows: usize,
}

/// One snapshot join: who, which database channel, which rows.
pub struct SnapshotJoin<'a> {
    pub subscriber: &'a Arc<Subscriber>,
    pub channel: &'a Channel,
    pub filter: Option<Arc<Filter>>,
}

impl Snapshots {
    /// Connections are opened on first use.
    pub fn new(conninfo: &str, config: SnapshotConfig) -> Result<Snapshots, PoolConfigError> {
        let pg_config: tokio_postgres::Config = conninfo.parse().map_err(PoolConfigError)?;
        // A snapshot cancelled mid-way (its connection closed) leaves its transaction open on
        // the pooled connection: every reuse starts with a ROLLBACK (a warning when idle).
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Custom("ROLLBACK".into()),
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap_or_else(|_| unreachable!("a runtime is set, so no timeout lacks one"));
        Ok(Snapshots {
            pool,
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
        })
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>, SnapshotError> {
        match tokio::time::timeout(self.config.queue_timeout, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(SnapshotError::Busy),
        }
    }

    /// Serves a snapshot join: `joined` is pushed first, then the pages, then every change
    /// the snapshot did not see, then `snapshot_end` with the position after which the member
    /// is live. On error the member is no longer in the channel.
    pub async fn serve(
        &self,
        hub: &Hub,
        join: SnapshotJoin<'_>,
        joined: bytes::Bytes,
    ) -> Result<Lsn, SnapshotError> {
        let _permit = self.permit().await?;
        let sub = join.subscriber;
        hub.begin_snapshot(
            sub,
            join.channel,
            join.filter.clone(),
            self.config.max_held_events,
            joined,
        );
        let result = self.read_and_finish(hub, &join).await;
        if result.is_err() {
            hub.leave(&sub.reader.app, sub.conn, join.channel);
        }
        result
    }

    async fn read_and_finish(
        &self,
        hub: &Hub,
        join: &SnapshotJoin<'_>,
    ) -> Result<Lsn, SnapshotError> {
        let sub = join.subscriber;
        let none = Filter::parse(&serde_json::Value::Array(Vec::new()))
            .unwrap_or_else(|_| unreachable!("the empty filter is valid"));
        let filter = join.filter.as_deref().unwrap_or(&none);
        let ChannelKind::Db { repo, level } = join.channel.kind() else {
            return Ok(Lsn::ZERO);
        };
        let selection = RowSelection::new(&sub.reader.app, repo, *level, &sub.reader, filter);
        let read = self.read(&selection, sub, join.channel, hub).await?;
        tracing::debug!(
            conn = sub.conn,
            channel = %join.channel,
            rows = read.rows,
            horizon = %read.horizon,
            "snapshot read"
        );
        self.wait_for_stream(hub, read.horizon).await?;
        let channel = join.channel;
        let finished = hub.finish_snapshot(
            sub,
            channel,
            |xid| read.xids.saw(xid),
            |position| {
                let lsn = position.to_string();
                frame::text(&encode(&Envelope {
                    kind: "snapshot_end",
                    data: &lsn,
                    channel: channel.name(),
                    lsn: Some(&lsn),
                    ..Envelope::default()
                }))
            },
        );
        match finished {
            Ok(Some(position)) => Ok(position),
            // The member left meanwhile: nothing to end.
            Ok(None) => Ok(Lsn::ZERO),
            Err(_) => Err(SnapshotError::Overrun),
        }
    }

    /// Waits until the stream has dispatched a commit at or past `horizon` (so every
    /// transaction the snapshot may have seen has been dispatched), emitting a logical message
    /// to move the stream when nothing else does.
    async fn wait_for_stream(&self, hub: &Hub, horizon: Lsn) -> Result<(), SnapshotError> {
        let mut dispatched = hub.dispatched();
        if *dispatched.borrow() >= horizon {
            return Ok(());
        }
        if let Err(error) = self.barrier().await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "snapshot barrier failed"
            );
        }
        let passed = tokio::time::timeout(self.config.timeout, async {
            dispatched.wait_for(|l| *l >= horizon).await.is_ok()
        })
        .await;
        match passed {
            Ok(true) => Ok(()),
            _ => Err(SnapshotError::Timeout),
        }
    }

    async fn barrier(&self) -> Result<(), SnapshotError> {
        let client = self.pool.get().await.map_err(SnapshotError::Pool)?;
        client
            .execute(
                "SELECT pg_logical_emit_message(false, 'walcast.snapshot', '')",
                &[],
            )
            .await
            .map_err(SnapshotError::from_db)?;
        Ok(())
    }

    async fn read(
        &self,
        selection: &RowSelection,
        sub: &Subscriber,
        channel: &Channel,
        hub: &Hub,
    ) -> Result<Read, SnapshotError> {
        let mut client = self.pool.get().await.map_err(SnapshotError::Pool)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(SnapshotError::from_db)?;
        // Our own integer, not client text.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.config.timeout.as_millis().max(1)
        ))
        .await
        .map_err(SnapshotError::from_db)?;
        // The first statement fixes the transaction's snapshot; the insert position is read
        // after it, so every commit the snapshot saw lies before it.
        let row = tx
            .query_one(
                "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text, \
                 to_regclass($1::text) IS NOT NULL",
                &[&selection.table()],
            )
            .await
            .map_err(SnapshotError::from_db)?;
        let snapshot: String = row.try_get(0).map_err(SnapshotError::from_db)?;
        let horizon: String = row.try_get(1).map_err(SnapshotError::from_db)?;
        let exists: bool = row.try_get(2).map_err(SnapshotError::from_db)?;
        let xids =
            XidSnapshot::parse(&snapshot).map_err(|_| SnapshotError::Unreadable(snapshot))?;
        let horizon: Lsn = horizon
            .parse()
            .map_err(|_| SnapshotError::Unreadable(horizon))?;
        let mut pages = Pages::new(sub, channel, self.config.page_rows, self.config.page_bytes);
        if exists {
            let params = selection.params();
            let counted: i64 = tx
                .query_one(&selection.count_sql(self.config.max_rows), &params)
                .await
                .map_err(SnapshotError::from_db)?
                .try_get(0)
                .map_err(SnapshotError::from_db)?;
            if usize::try_from(counted).unwrap_or(usize::MAX) > self.config.max_rows {
                return Err(SnapshotError::TooManyRows(self.config.max_rows));
            }
            let statement = tx
                .prepare(&selection.rows_sql())
                .await
                .map_err(SnapshotError::from_db)?;
            let portal = tx
                .bind(&statement, &params)
                .await
                .map_err(SnapshotError::from_db)?;
            let batch = i32::try_from(self.config.page_rows.max(1)).unwrap_or(i32::MAX);
            loop {
                let rows = tx
                    .query_portal(&portal, batch)
                    .await
                    .map_err(SnapshotError::from_db)?;
                for row in &rows {
                    let id: String = row.try_get(0).map_err(SnapshotError::from_db)?;
                    let account: Option<String> = row.try_get(1).map_err(SnapshotError::from_db)?;
                    let data: String = row.try_get(2).map_err(SnapshotError::from_db)?;
                    // Rows the stream would not deliver (data not an object) are left out too.
                    if let Ok(document) = build_document(&data, &id, account.as_deref()) {
                        pages.add(&document).await;
                    }
                }
                if hub.snapshot_overrun(&sub.reader.app, channel, sub.conn) {
                    return Err(SnapshotError::Overrun);
                }
                if rows.len() < batch as usize {
                    break;
                }
            }
        }
        pages.flush().await;
        tx.commit().await.map_err(SnapshotError::from_db)?;
        Ok(Read {
            xids,
            horizon,
            rows: pages.total,
        })
    }
}

/// Documents gathered into `snapshot` pages, each pushed when full. Pushing waits while the
/// connection's queue is more than half full, so a snapshot never overflows a slow reader.
struct Pages<'a> {
    sub: &'a Subscriber,
    channel: &'a Channel,
    buffer: String,
    count: usize,
    total: usize,
    max_rows: usize,
    max_bytes: usize,
}

impl<'a> Pages<'a> {
    fn new(sub: &'a Subscriber, channel: &'a Channel, max_rows: usize, max_bytes: usize) -> Self {
        Pages {
            sub,
            channel,
            buffer: String::from("["),
            count: 0,
            total: 0,
            max_rows: max_rows.max(1),
            max_bytes,
        }
    }

    async fn add(&mut self, document: &str) {
        if self.count > 0 {
            self.buffer.push(',');
        }
        self.buffer.push_str(document);
        self.count += 1;
        self.total += 1;
        if self.count >= self.max_rows || self.buffer.len() >= self.max_bytes {
            self.push().await;
        }
    }

    /// Pushes what is left; an empty snapshot still sends one (empty) page.
    async fn flush(&mut self) {
        if self.count > 0 || self.total == 0 {
            self.push().await;
        }
    }

    async fn push(&mut self) {
        self.buffer.push(']');
        let page = frame::text(&encode(&Envelope {
            kind: "snapshot",
            data: &self.buffer,
            channel: self.channel.name(),
            ..Envelope::default()
        }));
        self.sub.outbox.wait_for_room(page.len()).await;
        self.sub.outbox.push(page);
        self.buffer.clear();
        self.buffer.push('[');
        self.count = 0;
    }
}
