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
//! - Live delivery comes before the log append, and a batch of transactions that were ready
//!   together is dispatched before any of its subscribers' writers is woken (once each).
//!
//! [`Pipeline`] keeps the stream running (reconnecting with backoff) and moves each batch of
//! ready transactions through [`live::Live`] (dispatch) and then [`window::Window`] (the log);
//! [`report::Reporter`] turns positions into figures.
//!
//! [`Entry::Covered`]: crate::journal::Entry::Covered

mod live;
mod report;
mod window;

use crate::config::Settings;
use crate::event::{Assembler, CommittedEvents};
use crate::gateway::{replication_config, GatewayError};
use crate::hub::{Hub, Rooms, Wakes};
use crate::journal::{LogStats, SegmentLog, WindowLog};
use crate::telemetry::Telemetry;
use futures_util::FutureExt;
use live::Live;
use report::Reporter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use walcast_replication::{Lsn, ReplicationError, ReplicationStream, SystemIdentity, Transaction};
use window::Window;

/// Transactions ready together are taken from the stream as one batch, up to this many changes
/// (each counted as at least one; a bigger transaction goes alone): their subscribers' writers are woken after the whole
/// batch, once each. Bounded so that the first transaction's delivery never waits for much.
const READY_CHANGES: usize = 64;

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
    assembler: Assembler,
    live: Live,
    window: Window,
    reporter: Reporter,
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
        Pipeline {
            settings,
            assembler: Assembler::new(),
            live: Live::new(
                Arc::clone(&opened.hub),
                telemetry.clone(),
                recovery_end,
                opened.tail,
            ),
            window: Window::new(opened),
            reporter: Reporter::new(opened, telemetry, status),
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
            self.reporter.streaming(true);
            let outcome = self.stream(&mut stream, &stop, &mut backoff).await;
            self.reporter.streaming(false);
            self.reporter.assembler(&mut self.assembler);
            match outcome {
                Outcome::Stopped => {
                    self.finish(stream).await;
                    return;
                }
                Outcome::Fatal(error) => {
                    self.window.close(None).await;
                    let _ = fatal.send(error);
                    return;
                }
                Outcome::Failed => {}
            }
            drop(stream);
            stream = loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        self.window.close(None).await;
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
                        self.window.close(None).await;
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
        self.window
            .reopen_if_failed(&self.settings, &stream)
            .await?;
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
        let (mut durable, log_open) = match self.window.durable() {
            Some(durable) => (durable, true),
            None => (watch::channel(Lsn::ZERO).1, false),
        };
        if log_open {
            confirmer.confirm(*durable.borrow_and_update());
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        // What the stream returned after a batch it ended: handled before waiting again.
        let mut carried: Option<Received> = None;
        loop {
            let next = match carried.take() {
                Some(next) => next,
                None => tokio::select! {
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
                        if let Err(error) = self.window.covered(progress.idle_position()).await {
                            tracing::error!(error = &error as &dyn std::error::Error, "window log append failed");
                            return Outcome::Failed;
                        }
                        continue;
                    }
                    _ = ticker.tick() => {
                        self.reporter.tick(&progress, &self.live, &self.window, &mut self.assembler);
                        continue;
                    }
                    next = stream.recv() => next,
                },
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
            let (ready, ended) = take_ready(stream, tx);
            carried = ended;
            let accepted = self.dispatch(ready);
            for (events, end, at) in accepted {
                if !self.window.is_open() {
                    confirmer.confirm(end);
                } else if let Err(error) = self.window.append(events, end, at).await {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "window log append failed"
                    );
                    return Outcome::Failed;
                }
            }
            *backoff = Duration::from_millis(200);
        }
    }

    /// Dispatches the new transactions of a ready batch, then wakes the writers they reached;
    /// returns what the log (or, with resume off, the slot) must take next, in commit order.
    fn dispatch(&mut self, ready: Vec<Transaction>) -> Vec<Accepted> {
        let mut wakes = Wakes::default();
        let mut accepted = Vec::with_capacity(ready.len());
        for tx in ready {
            if !self.live.wants(tx.end_lsn) && !self.window.wants(tx.end_lsn) {
                continue;
            }
            let events = Arc::new(self.assembler.assemble(&tx));
            let at = SystemTime::now();
            if self.live.wants(tx.end_lsn) {
                self.live
                    .dispatch(&events, tx.end_lsn, tx.commit_time, at, &mut wakes);
            }
            accepted.push((events, tx.end_lsn, at));
        }
        wakes.flush();
        accepted
    }

    /// Ordered end: the log durable and closed, the slot confirmed up to it, the stream ended.
    async fn finish(mut self, stream: ReplicationStream) {
        let confirmer = stream.confirmer();
        let idle = stream.progress().idle_position();
        if let Err(error) = self.window.covered(idle).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "window log append failed"
            );
        }
        self.window.close(Some(&confirmer)).await;
        if let Err(error) = stream.stop().await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "replication stop failed"
            );
        }
    }
}

/// A transaction taken from the stream: its events, end LSN and when it entered the window.
type Accepted = (Arc<CommittedEvents>, Lsn, SystemTime);

/// What [`ReplicationStream::recv`] returns.
type Received = Option<Result<Transaction, ReplicationError>>;

/// `first` and the transactions the stream has ready right now, up to [`READY_CHANGES`]
/// changes; and what ended the batch when the stream returned something else (an error, or its
/// end), for the caller to handle after the batch.
fn take_ready(
    stream: &mut ReplicationStream,
    first: Transaction,
) -> (Vec<Transaction>, Option<Received>) {
    let mut changes = first.changes.len().max(1);
    let mut ready = vec![first];
    while changes < READY_CHANGES {
        // `recv` is cancel-safe: polled once, nothing is lost when it is not ready.
        match stream.recv().now_or_never() {
            Some(Some(Ok(tx))) => {
                changes += tx.changes.len().max(1);
                ready.push(tx);
            }
            Some(other) => return (ready, Some(other)),
            None => break,
        }
    }
    (ready, None)
}

enum Outcome {
    Stopped,
    /// Retried with backoff.
    Failed,
    /// Retrying cannot help (credentials, privileges, slot removed…).
    Fatal(ReplicationError),
}
