//! The replication pipeline: slot → whole transactions → document events → hub (live delivery
//! and the in-memory window) and the window log → slot confirmation once durable.
//!
//! Invariants:
//! - The slot is confirmed only up to what the window log made durable (or, with resume off,
//!   what was dispatched), so a crash at any point loses nothing the slot let go of.
//! - Two cursors de-duplicate what the slot re-sends (after a reconnect, or a restart whose last
//!   batch was durable but not yet confirmed): `dispatched` (live delivery) and `logged` (the
//!   window log). At start both are the log's tail.
//! - Idle keepalive positions reach the slot through the log too ([`Entry::Covered`]): a slot
//!   found ahead of the log at start then always means entries were lost.

use crate::config::Settings;
use crate::event::{Assembler, Position};
use crate::gateway::{replication_config, GatewayError};
use crate::hub::{Hub, Rooms};
use crate::journal::{Entry, JournalError, LogStats, SegmentLog, WindowLog};
use crate::telemetry::{LagFigures, Telemetry};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use walcast_replication::{
    Lsn, ProgressHandle, ReplicationError, ReplicationStream, SystemIdentity,
};

/// What `/readyz` shows besides readiness.
#[derive(Debug, Default)]
pub struct Status {
    pub streaming: AtomicBool,
    pub log: Mutex<Option<LogStats>>,
}

impl Status {
    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    pub fn log(&self) -> Option<LogStats> {
        self.log.lock().ok().and_then(|l| l.clone())
    }
}

/// The window log's directory for one server, database and slot.
pub fn log_dir(settings: &Settings, identity: &SystemIdentity) -> PathBuf {
    let db = identity.dbname.as_deref().unwrap_or("db");
    let name: String = format!("{}-{db}-{}", identity.system_id, settings.slot)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    settings.data_dir.join("window").join(name)
}

pub struct Pipeline {
    settings: Settings,
    hub: Arc<Hub>,
    telemetry: Telemetry,
    status: Arc<Status>,
    log: Option<Arc<dyn WindowLog>>,
    assembler: Assembler,
    /// Transactions ending up to here were committed before this process started: they go to
    /// resuming members only.
    recovery_end: Lsn,
    dispatched: Lsn,
    logged: Lsn,
    last_commit: Option<SystemTime>,
}

/// The pipeline's starting state: the opened log (if resume is on) and the hub rebuilt from it.
pub struct Opened {
    pub hub: Arc<Hub>,
    pub log: Option<Arc<dyn WindowLog>>,
    pub tail: Lsn,
}

/// Opens the window log for the stream just started and rebuilds the in-memory window from it.
pub async fn open(settings: &Settings, stream: &ReplicationStream) -> Result<Opened, GatewayError> {
    let window = settings.resume_window;
    if !window.enabled() {
        return Ok(Opened {
            hub: Arc::new(
                Hub::new(window, stream.start_lsn(), [])
                    .with_rooms(Rooms::new(settings.rooms.clone())),
            ),
            log: None,
            tail: Lsn::ZERO,
        });
    }
    let dir = log_dir(settings, stream.identity());
    let log = SegmentLog::open(dir, window, stream.start_lsn())
        .await
        .map_err(GatewayError::Journal)?;
    let replay = log.replay(Lsn::ZERO).await.map_err(GatewayError::Journal)?;
    tracing::info!(
        dir = %log.stats().location,
        start = %replay.start,
        tail = %replay.tail,
        transactions = replay.transactions.len(),
        "resume window rebuilt from the window log"
    );
    let hub = Hub::new(window, replay.start, replay.transactions)
        .with_rooms(Rooms::new(settings.rooms.clone()));
    hub.expire_history(SystemTime::now());
    Ok(Opened {
        hub: Arc::new(hub),
        log: Some(Arc::new(log)),
        tail: replay.tail,
    })
}

impl Pipeline {
    pub fn new(
        settings: Settings,
        opened: &Opened,
        recovery_end: Lsn,
        telemetry: Telemetry,
        status: Arc<Status>,
    ) -> Pipeline {
        if let (Some(log), Ok(mut slot)) = (&opened.log, status.log.lock()) {
            *slot = Some(log.stats());
        }
        Pipeline {
            settings,
            hub: Arc::clone(&opened.hub),
            telemetry,
            status,
            log: opened.log.clone(),
            assembler: Assembler::new(),
            recovery_end,
            dispatched: opened.tail,
            logged: opened.tail,
            last_commit: None,
        }
    }

    /// Streams until `stop`, reconnecting with backoff when the stream fails (resuming from the
    /// slot; what it re-sends is skipped by position). On `stop`: the log is made durable, the
    /// slot confirmed up to it, and the stream ended. An error retrying cannot fix is sent on
    /// `fatal` and ends the pipeline.
    pub async fn run(
        mut self,
        mut stream: ReplicationStream,
        fatal: oneshot::Sender<ReplicationError>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            self.status.streaming.store(true, Ordering::Release);
            let outcome = self.stream(&mut stream, &stop, &mut backoff).await;
            self.status.streaming.store(false, Ordering::Release);
            record_assembler(&self.telemetry, &mut self.assembler);
            match outcome {
                Outcome::Stopped => {
                    self.finish(stream).await;
                    return;
                }
                Outcome::Fatal(error) => {
                    self.close_log(None).await;
                    let _ = fatal.send(error);
                    return;
                }
                Outcome::Failed => {}
            }
            drop(stream);
            stream = loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        self.close_log(None).await;
                        return;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match self.restart().await {
                    Ok(stream) => break stream,
                    Err(GatewayError::Replication(error)) if error.is_permanent() => {
                        tracing::error!(
                            error = &error as &dyn std::error::Error,
                            "replication cannot restart"
                        );
                        self.close_log(None).await;
                        let _ = fatal.send(error);
                        return;
                    }
                    Err(error) => tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        retry_in = ?backoff,
                        "replication restart failed"
                    ),
                }
            };
        }
    }

    async fn restart(&mut self) -> Result<ReplicationStream, GatewayError> {
        let stream = ReplicationStream::start(replication_config(&self.settings))
            .await
            .map_err(GatewayError::Replication)?;
        // A log whose writer failed is reopened; what it lost is appended again from what the
        // slot re-sends (it was never confirmed).
        if self
            .log
            .as_ref()
            .is_some_and(|log| log.durable().has_changed().is_err())
        {
            self.log = None;
            let opened = open(&self.settings, &stream).await?;
            self.logged = opened.tail;
            self.log = opened.log;
        }
        tracing::info!(start = %stream.start_lsn(), "replication resumed");
        Ok(stream)
    }

    async fn stream(
        &mut self,
        stream: &mut ReplicationStream,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Outcome {
        let confirmer = stream.confirmer();
        let progress = stream.progress();
        let (mut durable, log_open) = match &self.log {
            Some(log) => (log.durable(), true),
            None => (watch::channel(Lsn::ZERO).1, false),
        };
        if log_open {
            confirmer.confirm(*durable.borrow_and_update());
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return Outcome::Stopped,
                changed = durable.changed(), if log_open => {
                    if changed.is_err() {
                        tracing::error!("window log stopped; reconnecting");
                        return Outcome::Failed;
                    }
                    confirmer.confirm(*durable.borrow_and_update());
                    continue;
                }
                _ = progress.idle_changed() => {
                    if let Err(error) = self.covered(progress.idle_position()).await {
                        tracing::error!(error = &error as &dyn std::error::Error, "window log append failed");
                        return Outcome::Failed;
                    }
                    continue;
                }
                _ = ticker.tick() => {
                    self.report(&progress);
                    continue;
                }
                next = stream.recv() => next,
            };
            let tx = match next {
                Some(Ok(tx)) => tx,
                Some(Err(error)) if error.is_permanent() => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "replication failed for good"
                    );
                    return Outcome::Fatal(error);
                }
                Some(Err(error)) => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "replication failed"
                    );
                    return Outcome::Failed;
                }
                None => {
                    tracing::warn!("replication stream ended by the server");
                    return Outcome::Failed;
                }
            };
            if tx.end_lsn <= self.dispatched && tx.end_lsn <= self.logged {
                continue;
            }
            let events = Arc::new(self.assembler.assemble(&tx));
            let at = SystemTime::now();
            if tx.end_lsn > self.dispatched {
                let stats =
                    self.hub
                        .dispatch(Arc::clone(&events), tx.end_lsn <= self.recovery_end, at);
                self.telemetry.transaction_in(stats.events);
                self.telemetry.delivered(stats.delivered);
                self.telemetry
                    .drop_reason("slow_consumer", stats.slow_consumers);
                self.telemetry.drop_reason("fail_closed", stats.fail_closed);
                self.dispatched = tx.end_lsn;
                self.last_commit = Some(tx.commit_time);
            }
            match &self.log {
                Some(log) if tx.end_lsn > self.logged => {
                    if let Err(error) = log.append(Entry::Transaction { tx: events, at }).await {
                        tracing::error!(
                            error = &error as &dyn std::error::Error,
                            "window log append failed"
                        );
                        return Outcome::Failed;
                    }
                    self.logged = tx.end_lsn;
                }
                Some(_) => {}
                None => confirmer.confirm(tx.end_lsn),
            }
            *backoff = Duration::from_millis(200);
        }
    }

    /// The slot may move to an idle position once the log records it (resume on), or at once.
    async fn covered(&mut self, idle: Lsn) -> Result<(), JournalError> {
        match &self.log {
            Some(log) if idle > self.logged => {
                log.append(Entry::Covered(idle)).await?;
                self.logged = idle;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Ordered end: the log durable and closed, the slot confirmed up to it, the stream ended.
    async fn finish(mut self, stream: ReplicationStream) {
        let confirmer = stream.confirmer();
        let idle = stream.progress().idle_position();
        if let Err(error) = self.covered(idle).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "window log append failed"
            );
        }
        self.close_log(Some(&confirmer)).await;
        if let Err(error) = stream.stop().await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "replication stop failed"
            );
        }
    }

    async fn close_log(&mut self, confirmer: Option<&walcast_replication::Confirmer>) {
        let Some(log) = self.log.take() else { return };
        match log.close().await {
            Ok(durable) => {
                if let Some(confirmer) = confirmer {
                    confirmer.confirm(durable);
                }
                tracing::info!(%durable, "window log closed");
            }
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                "window log close failed"
            ),
        }
    }

    fn report(&mut self, progress: &ProgressHandle) {
        record_assembler(&self.telemetry, &mut self.assembler);
        let now = SystemTime::now();
        let (held_bytes, oldest_held) = self.hub.expire_history(now);
        let log = self.log.as_ref().map(|log| {
            log.expire(now);
            log.stats()
        });
        let server_end = progress.server_wal_end();
        // Received but not dispatched, and not yet received: everything the server has past
        // the last dispatched transaction, unless the stream was idle there.
        let dispatched = self.dispatched.max(progress.idle_position());
        let lag_bytes = server_end.0.saturating_sub(dispatched.0);
        let lag_seconds = match self.last_commit {
            Some(at) if lag_bytes > 0 => now
                .duration_since(at)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            _ => 0.0,
        };
        let confirmed = progress.confirmed();
        self.telemetry.replication(LagFigures {
            lag_bytes,
            lag_seconds,
            confirmed,
            slot_retained_bytes: server_end.0.saturating_sub(confirmed.0),
            window_bytes: held_bytes as u64,
            window_oldest: oldest_held.map(|p: Position| p.commit),
        });
        if let Some(stats) = &log {
            self.telemetry.window_log(stats);
        }
        if let Ok(mut slot) = self.status.log.lock() {
            *slot = log;
        }
        self.telemetry.channels(self.hub.channel_count());
    }
}

enum Outcome {
    Stopped,
    /// Retried with backoff.
    Failed,
    /// Retrying cannot help (credentials, privileges, slot removed…).
    Fatal(ReplicationError),
}

fn record_assembler(telemetry: &Telemetry, assembler: &mut Assembler) {
    let stats = std::mem::take(&mut assembler.stats);
    telemetry.drop_reason("invalid_row", stats.invalid_rows as usize);
    telemetry.drop_reason("missing_document", stats.missing_document as usize);
    telemetry.drop_reason("truncate", stats.truncates as usize);
}
