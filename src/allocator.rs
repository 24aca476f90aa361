//! Gives heap that a burst freed back to the operating system. glibc's malloc keeps freed memory
//! in its per-thread arenas (it returns only the free top of the main heap), so after a flat-out
//! fanout the queues the writers shrank stay resident for the life of the process. A periodic
//! `malloc_trim(0)` releases the free pages of every arena.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Often enough that a burst's memory is gone seconds after it; rare enough that pages freed
/// and reused under steady load are not refaulted more than once per period.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Trims the heap every [`TRIM_EVERY`] until `stop` (a no-op elsewhere than glibc).
pub(crate) fn spawn_trim(stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => trim(),
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only takes glibc's own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
