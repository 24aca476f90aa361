//! [`ReplicationStream`]: one reader task owns the walsender socket in CopyBoth mode, decodes
//! XLogData into whole transactions, hands them over a bounded channel and sends standby status
//! updates.
//!
//! Invariants:
//! - The flush LSN reported to PostgreSQL is the consumer's confirmed position, except when the
//!   stream is idle (no transaction open or waiting for the consumer, and everything handed over
//!   confirmed): then a keepalive's position, up to which the server has sent everything, is
//!   safe to report too, so the slot does not hold WAL written by unrelated databases/tables
//!   (unless `confirm_idle` is off: then the consumer confirms that position itself).
//! - A confirmation is reported promptly (at most one extra update per 100 ms), not only at
//!   the status interval, so the slot follows the consumer within a fraction of a second.
//! - Backpressure: while a completed transaction cannot be handed over, the socket is not read,
//!   so PostgreSQL keeps the WAL; periodic status updates still go out and keep the connection
//!   inside `wal_sender_timeout`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admin::{self, SystemIdentity};
use crate::connection::{quote_ident, quote_literal, server_error, Connection, Frame};
use crate::copy_data::{standby_status_update, ServerCopyData};
use crate::pgoutput::{self, to_pg_time};
use crate::progress::{Confirmer, ProgressHandle, Shared};
use crate::transaction::{Transaction, TransactionAssembler};
use crate::{Lsn, ReplicationConfig, ReplicationError};

/// How long [`ReplicationStream::stop`] waits for the server to end the copy.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two status updates sent because the consumer confirmed more.
const CONFIRM_GAP: Duration = Duration::from_millis(100);

/// A running logical replication stream of whole committed transactions.
#[derive(Debug)]
pub struct ReplicationStream {
    rx: mpsc::Receiver<Transaction>,
    shared: Arc<Shared>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ReplicationError>>>,
    identity: SystemIdentity,
    start_lsn: Lsn,
}

impl ReplicationStream {
    /// Connects, runs `IDENTIFY_SYSTEM`, ensures the publication and slot exist (idempotent),
    /// sends `START_REPLICATION` and spawns the reader task. Returns once streaming has started.
    pub async fn start(config: ReplicationConfig) -> Result<ReplicationStream, ReplicationError> {
        let pg: tokio_postgres::Config = config
            .conninfo
            .parse()
            .map_err(ReplicationError::ConnInfo)?;
        if config.slot.is_empty() || config.publication.is_empty() {
            return Err(ReplicationError::Config(
                "slot and publication names must not be empty".into(),
            ));
        }
        if config.channel_capacity == 0 {
            return Err(ReplicationError::Config(
                "channel_capacity must be at least 1".into(),
            ));
        }
        if config.status_interval.is_zero() {
            return Err(ReplicationError::Config(
                "status_interval must be positive".into(),
            ));
        }
        let span =
            info_span!("replication", slot = %config.slot, publication = %config.publication);
        let (conn, identity, start_lsn) = connect_and_start(&pg, &config)
            .instrument(span.clone())
            .await?;

        let shared = Shared::new(start_lsn);
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let reader = Reader {
            conn,
            tx,
            shared: shared.clone(),
            assembler: TransactionAssembler::new(),
            pending: None,
            last_delivered_end: start_lsn,
            idle_flush: Lsn::ZERO,
            consumer_gone: false,
            status_interval: config.status_interval,
            confirm_idle: config.confirm_idle,
            reported: start_lsn,
            last_status: Instant::now(),
        };
        let task = tokio::spawn(reader.run(stop_rx).instrument(span));
        Ok(ReplicationStream {
            rx,
            shared,
            stop_tx: Some(stop_tx),
            task: Some(task),
            identity,
            start_lsn,
        })
    }

    /// The next whole committed transaction, in commit order. After the stream stopped or a
    /// fatal error was returned, `None`. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Transaction, ReplicationError>> {
        if let Some(tx) = self.rx.recv().await {
            return Some(Ok(tx));
        }
        // The reader dropped its sender: it ended; report how, once.
        let handle = self.task.as_mut()?;
        let result = handle.await;
        self.task = None;
        match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(join) => Some(Err(ReplicationError::Task(join))),
        }
    }

    /// A handle through which the consumer confirms accepted transactions.
    pub fn confirmer(&self) -> Confirmer {
        Confirmer {
            shared: self.shared.clone(),
        }
    }

    /// Positions for lag metrics.
    pub fn progress(&self) -> ProgressHandle {
        ProgressHandle {
            shared: self.shared.clone(),
        }
    }

    /// `IDENTIFY_SYSTEM` result of the server streamed from.
    pub fn identity(&self) -> &SystemIdentity {
        &self.identity
    }

    /// The position streaming started from: the slot's confirmed position, or the requested
    /// start if later.
    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// Sends a final status update with the confirmed LSN, ends the copy (CopyDone), waits for
    /// the server to end it too and closes the connection. Transactions not yet received by the
    /// consumer are dropped; they were not confirmed, so the next start replays them.
    pub async fn stop(mut self) -> Result<(), ReplicationError> {
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(handle) => handle.await.map_err(ReplicationError::Task)?,
            None => Ok(()),
        }
    }
}

/// A stream dropped without [`ReplicationStream::stop`] ends its connection at once (no final
/// status update): what was not confirmed is streamed again to the next reader of the slot.
impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn connect_and_start(
    pg: &tokio_postgres::Config,
    config: &ReplicationConfig,
) -> Result<(Connection, SystemIdentity, Lsn), ReplicationError> {
    let mut conn = Connection::connect(pg, true, &config.application_name).await?;
    let identity = admin::identify_system(&mut conn).await?;
    admin::ensure_publication(&mut conn, &config.publication, &config.create_publication).await?;
    admin::ensure_slot(&mut conn, &config.slot, config.temporary_slot).await?;
    // Where PostgreSQL will start: never before the slot's confirmed position. Our reported
    // flush starts there too, because PostgreSQL 15 does not ignore a flush position older than
    // the slot's and would move the slot backwards.
    let rows = conn
        .simple_query(&format!(
            "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(&config.slot)
        ))
        .await?;
    let slot_confirmed: Lsn = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lsn::ZERO);
    let start = config.start_lsn.unwrap_or(Lsn::ZERO).max(slot_confirmed);
    let mut options = format!(
        "proto_version '1', publication_names {}",
        quote_literal(&quote_ident(&config.publication))
    );
    if config.messages {
        options.push_str(", messages 'true'");
    }
    let sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {start} ({options})",
        quote_ident(&config.slot)
    );
    conn.start_copy_both(&sql).await?;
    info!(%start, server_lsn = %identity.xlogpos, timeline = identity.timeline, "streaming started");
    Ok((conn, identity, start))
}

/// What woke the reader loop.
enum Event {
    Stop,
    Tick,
    Confirmed,
    Progress,
    Failed(ReplicationError),
}

/// What a frame meant for the loop.
enum Flow {
    Continue,
    ServerEnded,
}

struct Reader {
    conn: Connection,
    tx: mpsc::Sender<Transaction>,
    shared: Arc<Shared>,
    assembler: TransactionAssembler,
    /// A complete transaction the bounded channel had no room for. While set, the socket is not
    /// read.
    pending: Option<Transaction>,
    last_delivered_end: Lsn,
    /// Highest keepalive position seen while idle; safe to report as flushed.
    idle_flush: Lsn,
    consumer_gone: bool,
    status_interval: Duration,
    confirm_idle: bool,
    /// The flush position last reported to the server, and when.
    reported: Lsn,
    last_status: Instant,
}

impl Reader {
    async fn run(mut self, stop: oneshot::Receiver<()>) -> Result<(), ReplicationError> {
        let result = self.stream(stop).await;
        if let Err(e) = &result {
            warn!(error = %e, "replication stream failed");
        }
        result
    }

    async fn stream(&mut self, mut stop: oneshot::Receiver<()>) -> Result<(), ReplicationError> {
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.status_interval, self.status_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Decode everything already buffered before touching the socket again.
            let mut ended = false;
            while self.pending.is_none() && !self.consumer_gone {
                let Some(frame) = self.conn.try_frame()? else {
                    break;
                };
                if let Flow::ServerEnded = self.on_frame(frame).await? {
                    ended = true;
                    break;
                }
            }
            if ended {
                return Err(ReplicationError::Closed);
            }
            if self.consumer_gone {
                debug!("consumer dropped the stream");
                return self.shutdown().await;
            }
            let event = tokio::select! {
                biased;
                _ = &mut stop => Event::Stop,
                _ = ticker.tick() => Event::Tick,
                _ = self.shared.confirmed_changed.notified() => Event::Confirmed,
                permit = self.tx.reserve(), if self.pending.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(tx) = self.pending.take() {
                            self.last_delivered_end = tx.end_lsn;
                            permit.send(tx);
                        }
                        Event::Progress
                    }
                    Err(_) => Event::Stop,
                },
                read = self.conn.read_more(), if self.pending.is_none() => match read {
                    Ok(()) => Event::Progress,
                    Err(e) => Event::Failed(e),
                },
            };
            match event {
                Event::Stop => return self.shutdown().await,
                Event::Tick => {
                    // Ask for a keepalive when the server has WAL past what is known idle: its
                    // answer tells whether everything before the server's end was handed over,
                    // which lets the slot and the lag figures catch up on a quiet database.
                    let behind =
                        self.idle_flush.0 < self.shared.server_wal_end.load(Ordering::Relaxed);
                    self.send_status(behind).await?
                }
                // At most one extra update per CONFIRM_GAP: a consumer confirming every
                // transaction must not turn into one message per transaction.
                Event::Confirmed => {
                    if self.shared.confirmed() > self.reported
                        && self.last_status.elapsed() >= CONFIRM_GAP
                    {
                        self.send_status(false).await?
                    }
                }
                Event::Progress => {}
                Event::Failed(e) => return Err(e),
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, ReplicationError> {
        let msg = match frame {
            Frame::Message(m) => m,
            Frame::CopyBothResponse => {
                return Err(ReplicationError::Protocol(
                    "CopyBothResponse while streaming".into(),
                ))
            }
        };
        match msg {
            Message::CopyData(body) => match ServerCopyData::parse(body.into_bytes())? {
                ServerCopyData::XLogData {
                    wal_start,
                    wal_end,
                    data,
                } => {
                    self.shared
                        .server_wal_end
                        .store(wal_end.0, Ordering::Relaxed);
                    self.shared.received.store(wal_start.0, Ordering::Relaxed);
                    let msg = pgoutput::decode_bytes(data)?;
                    if let Some(tx) = self.assembler.push(msg)? {
                        self.deliver(tx);
                    }
                }
                ServerCopyData::Keepalive {
                    wal_end,
                    reply_requested,
                } => {
                    self.shared
                        .server_wal_end
                        .store(wal_end.0, Ordering::Relaxed);
                    if self.is_idle() && wal_end > self.idle_flush {
                        self.idle_flush = wal_end;
                        self.shared.received.store(wal_end.0, Ordering::Relaxed);
                        self.shared.idle.store(wal_end.0, Ordering::Release);
                        self.shared.idle_changed.notify_one();
                    }
                    if reply_requested {
                        self.send_status(false).await?;
                    }
                }
            },
            Message::CopyDone => {
                // The server ended the stream (shutdown, slot dropped…): end ours and go.
                frontend::copy_done(&mut self.conn.write_buf);
                let _ = self.conn.flush().await;
                return Ok(Flow::ServerEnded);
            }
            // A walsender that finishes on server shutdown ends with CommandComplete, without
            // CopyDone.
            Message::CommandComplete(_) => return Ok(Flow::ServerEnded),
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
            _ => {
                return Err(ReplicationError::Protocol(
                    "unexpected message while streaming".into(),
                ))
            }
        }
        Ok(Flow::Continue)
    }

    /// Nothing in flight: no open transaction, nothing waiting for channel room, and the
    /// consumer confirmed everything handed over.
    fn is_idle(&self) -> bool {
        !self.assembler.in_transaction()
            && self.pending.is_none()
            && self.shared.confirmed() >= self.last_delivered_end
    }

    fn deliver(&mut self, tx: Transaction) {
        self.shared
            .last_commit_micros
            .store(to_pg_time(tx.commit_time), Ordering::Relaxed);
        let end = tx.end_lsn;
        match self.tx.try_send(tx) {
            Ok(()) => self.last_delivered_end = end,
            Err(mpsc::error::TrySendError::Full(tx)) => self.pending = Some(tx),
            Err(mpsc::error::TrySendError::Closed(_)) => self.consumer_gone = true,
        }
    }

    async fn send_status(&mut self, reply: bool) -> Result<(), ReplicationError> {
        let mut flush = self.shared.confirmed();
        if self.confirm_idle {
            flush = flush.max(self.idle_flush);
        }
        self.reported = flush;
        self.last_status = Instant::now();
        debug!(%flush, "standby status update");
        standby_status_update(
            flush,
            to_pg_time(SystemTime::now()),
            reply,
            &mut self.conn.write_buf,
        );
        self.conn.flush().await
    }

    /// Final status update, CopyDone, wait for the server's end of copy, Terminate.
    async fn shutdown(&mut self) -> Result<(), ReplicationError> {
        self.send_status(false).await?;
        frontend::copy_done(&mut self.conn.write_buf);
        self.conn.flush().await?;
        let conn = &mut self.conn;
        let drained = tokio::time::timeout(STOP_TIMEOUT, async {
            loop {
                match conn.read_frame().await {
                    Ok(Frame::Message(Message::ReadyForQuery(_))) => return Ok(()),
                    Ok(Frame::Message(Message::ErrorResponse(body))) => {
                        return Err(server_error(&body))
                    }
                    // Data still in flight, the server's CopyDone, CommandComplete.
                    Ok(_) => {}
                    Err(ReplicationError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let result = match drained {
            Ok(r) => r,
            Err(_) => {
                warn!("server did not end the copy within {STOP_TIMEOUT:?}; closing");
                Ok(())
            }
        };
        info!(confirmed = %self.shared.confirmed(), "replication stream stopped");
        self.conn.terminate().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The gateway spawns both the start future and the stream on a multi-threaded runtime.
    #[test]
    fn start_future_and_stream_are_send() {
        let fut = ReplicationStream::start(ReplicationConfig::default());
        assert_send(&fut);
        fn stream_is_send_sync<T: Send + Sync>() {}
        stream_is_send_sync::<ReplicationStream>();
        stream_is_send_sync::<Confirmer>();
        stream_is_send_sync::<ProgressHandle>();
    }

    #[tokio::test]
    async fn rejects_unusable_configuration() {
        let bad = |config: ReplicationConfig| async move {
            ReplicationStream::start(config).await.unwrap_err()
        };
        let base = ReplicationConfig {
            conninfo: "host=127.0.0.1 port=1 user=x".into(),
            ..ReplicationConfig::default()
        };
        assert!(matches!(
            bad(ReplicationConfig {
                conninfo: "postgres://[::1".into(),
                ..base.clone()
            })
            .await,
            ReplicationError::ConnInfo(_)
        ));
        assert!(matches!(
            bad(ReplicationConfig {
                channel_capacity: 0,
                ..base.clone()
            })
            .await,
            ReplicationError::Config(_)
        ));
        assert!(matches!(
            bad(ReplicationConfig {
                slot: String::new(),
                ..base.clone()
            })
            .await,
            ReplicationError::Config(_)
        ));
        // Nothing listens on port 1; the error names the address tried, not the credentials.
        let refused = bad(ReplicationConfig {
            conninfo: "postgres://x:hunter2@127.0.0.1:1/db".into(),
            ..base
        })
        .await;
        assert!(matches!(refused, ReplicationError::Connect { .. }));
        assert_eq!(
            refused.to_string(),
            "cannot connect to PostgreSQL at 127.0.0.1:1"
        );
    }
}
