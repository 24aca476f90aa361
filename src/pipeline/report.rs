//! What the pipeline shows: once a second the resume window's expiry and the lag, window and
//! log figures for telemetry and `/readyz`; whether the stream is up; the assembler's drops.

use super::live::Live;
use super::window::Window;
use super::{Opened, Status};
use crate::event::{Assembler, Position};
use crate::hub::Hub;
use crate::telemetry::{LagFigures, Telemetry};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use walcast_replication::ProgressHandle;

pub(super) struct Reporter {
    hub: Arc<Hub>,
    telemetry: Telemetry,
    status: Arc<Status>,
}

impl Reporter {
    pub(super) fn new(opened: &Opened, telemetry: Telemetry, status: Arc<Status>) -> Self {
        if let (Some(log), Ok(mut slot)) = (&opened.log, status.log.lock()) {
            *slot = Some(log.stats());
        }
        Reporter {
            hub: Arc::clone(&opened.hub),
            telemetry,
            status,
        }
    }

    pub(super) fn streaming(&self, up: bool) {
        self.status.streaming.store(up, Ordering::Release);
    }

    /// The assembler's drop counts since the last call, as drop reasons.
    pub(super) fn assembler(&self, assembler: &mut Assembler) {
        let stats = std::mem::take(&mut assembler.stats);
        let telemetry = &self.telemetry;
        telemetry.drop_reason("invalid_row", stats.invalid_rows as usize);
        telemetry.drop_reason("missing_document", stats.missing_document as usize);
        telemetry.drop_reason("truncate", stats.truncates as usize);
    }

    /// The once-a-second tick: expiry of the resume window and the log, then every figure.
    pub(super) fn tick(
        &self,
        progress: &ProgressHandle,
        live: &Live,
        window: &Window,
        assembler: &mut Assembler,
    ) {
        self.assembler(assembler);
        let now = SystemTime::now();
        let (held_bytes, oldest_held) = self.hub.expire_history(now);
        let log = window.expire(now);
        let server_end = progress.server_wal_end();
        // Received but not dispatched, and not yet received: everything the server has past
        // the last dispatched transaction, unless the stream was idle there.
        let dispatched = live.dispatched().max(progress.idle_position());
        let lag_bytes = server_end.0.saturating_sub(dispatched.0);
        let lag_seconds = match live.last_commit() {
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
