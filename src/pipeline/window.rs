//! The pipeline's side of the window log: each transaction appended once, in commit order; idle
//! positions recorded; a log whose writer failed reopened; an ordered close.

use super::{open, Opened};
use crate::config::Settings;
use crate::event::CommittedEvents;
use crate::gateway::GatewayError;
use crate::journal::{Entry, JournalError, LogStats, WindowLog};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use walcast_replication::{Confirmer, Lsn, ReplicationStream};

pub(super) struct Window {
    /// `None` with resume off, and after the log was closed.
    log: Option<Arc<dyn WindowLog>>,
    /// End of the newest entry appended: what the slot re-sends up to here is not appended again.
    logged: Lsn,
}

impl Window {
    pub(super) fn new(opened: &Opened) -> Self {
        Window {
            log: opened.log.clone(),
            logged: opened.tail,
        }
    }

    /// Whether the slot may be confirmed only from the log's durable position (resume on).
    pub(super) fn is_open(&self) -> bool {
        self.log.is_some()
    }

    /// The log's durable position, watched, while it is open.
    pub(super) fn durable(&self) -> Option<watch::Receiver<Lsn>> {
        self.log.as_ref().map(|log| log.durable())
    }

    /// Whether the transaction ending at `end` is new to the log.
    pub(super) fn wants(&self, end: Lsn) -> bool {
        end > self.logged
    }

    /// Appends one transaction unless the log already has it (or resume is off).
    pub(super) async fn append(
        &mut self,
        events: Arc<CommittedEvents>,
        end: Lsn,
        at: SystemTime,
    ) -> Result<(), JournalError> {
        match &self.log {
            Some(log) if end > self.logged => {
                log.append(Entry::Transaction { tx: events, at }).await?;
                self.logged = end;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The slot may move to an idle position once the log records it (resume on), or at once.
    pub(super) async fn covered(&mut self, idle: Lsn) -> Result<(), JournalError> {
        match &self.log {
            Some(log) if idle > self.logged => {
                log.append(Entry::Covered(idle)).await?;
                self.logged = idle;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A log whose writer failed is reopened for the stream just restarted; what it lost is
    /// appended again from what the slot re-sends (it was never confirmed).
    pub(super) async fn reopen_if_failed(
        &mut self,
        settings: &Settings,
        stream: &ReplicationStream,
    ) -> Result<(), GatewayError> {
        if self
            .log
            .as_ref()
            .is_some_and(|log| log.durable().has_changed().is_err())
        {
            self.log = None;
            let opened = open(settings, stream).await?;
            self.logged = opened.tail;
            self.log = opened.log;
        }
        Ok(())
    }

    /// Drops what retention no longer keeps; the log's figures, while it is open.
    pub(super) fn expire(&self, now: SystemTime) -> Option<LogStats> {
        self.log.as_ref().map(|log| {
            log.expire(now);
            log.stats()
        })
    }

    /// Makes the log durable and closes it; the slot is confirmed up to it when `confirmer`
    /// is given.
    pub(super) async fn close(&mut self, confirmer: Option<&Confirmer>) {
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
}
