//! Live delivery of the stream's transactions: each handed to the hub once, in commit order,
//! with its figures recorded.

use crate::event::CommittedEvents;
use crate::hub::{Hub, Wakes};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::SystemTime;
use walcast_replication::Lsn;

pub(super) struct Live {
    hub: Arc<Hub>,
    telemetry: Telemetry,
    /// Transactions ending up to here were committed before this process started: they go to
    /// resuming members only.
    recovery_end: Lsn,
    /// End of the newest transaction dispatched: what the slot re-sends up to here is skipped.
    dispatched: Lsn,
    /// Commit time of the newest transaction dispatched.
    last_commit: Option<SystemTime>,
}

impl Live {
    /// `tail`: the end of what was dispatched before (the window log's tail at start).
    pub(super) fn new(hub: Arc<Hub>, telemetry: Telemetry, recovery_end: Lsn, tail: Lsn) -> Self {
        Live {
            hub,
            telemetry,
            recovery_end,
            dispatched: tail,
            last_commit: None,
        }
    }

    pub(super) fn dispatched(&self) -> Lsn {
        self.dispatched
    }

    pub(super) fn last_commit(&self) -> Option<SystemTime> {
        self.last_commit
    }

    /// Whether the transaction ending at `end` is new to live delivery.
    pub(super) fn wants(&self, end: Lsn) -> bool {
        end > self.dispatched
    }

    /// Dispatches one new transaction; the writers it touched stay asleep until `wakes` is
    /// flushed, so that a batch of ready transactions wakes each subscriber once.
    pub(super) fn dispatch(
        &mut self,
        events: &Arc<CommittedEvents>,
        end: Lsn,
        commit_time: SystemTime,
        at: SystemTime,
        wakes: &mut Wakes,
    ) {
        let recovery = end <= self.recovery_end;
        let stats = self
            .hub
            .dispatch_held(Arc::clone(events), recovery, at, wakes);
        self.telemetry.transaction_in(stats.events);
        self.telemetry.delivered(stats.delivered);
        self.telemetry
            .drop_reason("slow_consumer", stats.slow_consumers);
        self.telemetry.drop_reason("fail_closed", stats.fail_closed);
        self.dispatched = end;
        self.last_commit = Some(commit_time);
    }
}
