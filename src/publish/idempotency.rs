//! Idempotency keys: a key seen within the window is answered again without a second delivery.
//! The store is a trait so that a cluster implementation (a shared key-value bucket whose
//! `create` fails on an existing key) can stand in for the in-memory one.

use futures_util::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys longer than this are refused (`invalid idempotency key`).
pub const MAX_KEY_BYTES: usize = 256;

/// Whether a key was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First sighting within the window: deliver.
    First,
    /// Seen within the window: answer as before, deliver nothing.
    Repeat,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared store could not be reached; retrying later may succeed.
    #[error("idempotency store unavailable")]
    Unavailable,
}

/// Where a key counts: the same key on another app or channel is another message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub app: &'a str,
    pub channel: &'a str,
}

/// Records idempotency keys for the configured window.
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Atomically records `key` in `scope`: [`Claim::First`] for exactly one caller per key and
    /// window, [`Claim::Repeat`] for every other.
    fn claim<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a key is remembered from its first sighting; zero disables keys (every
    /// message is delivered).
    pub window: Duration,
    /// Bound on remembered keys; past it the oldest is forgotten early (and counted).
    pub max_keys: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            window: Duration::from_secs(120),
            max_keys: 100_000,
        }
    }
}

/// One process's keys. Memory is bounded by `max_keys` × the longest scoped key (app name,
/// channel ≤ 256 bytes, key ≤ 256 bytes).
#[derive(Debug)]
pub struct MemoryIdempotency {
    config: IdempotencyConfig,
    state: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    seen: HashMap<Arc<str>, Instant>,
    /// First sightings in time order: expiry and eviction take from the front.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl MemoryIdempotency {
    pub fn new(config: IdempotencyConfig) -> Self {
        MemoryIdempotency {
            config,
            state: Mutex::new(Keys::default()),
        }
    }

    /// The synchronous core of [`IdempotencyStore::claim`], at a given time.
    pub fn claim_at(&self, scope: Scope<'_>, key: &str, now: Instant) -> Claim {
        if self.config.window.is_zero() {
            return Claim::First;
        }
        // NUL cannot occur in channel names (control character) and separates unambiguously.
        let scoped: Arc<str> = format!("{}\0{}\0{key}", scope.app, scope.channel).into();
        let mut keys = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, _)) = keys.order.front() {
            if now.duration_since(*at) < self.config.window {
                break;
            }
            if let Some((_, old)) = keys.order.pop_front() {
                keys.seen.remove(&old);
            }
        }
        if keys.seen.contains_key(&scoped) {
            return Claim::Repeat;
        }
        while keys.seen.len() >= self.config.max_keys.max(1) {
            let Some((_, old)) = keys.order.pop_front() else {
                break;
            };
            keys.seen.remove(&old);
            metrics::counter!("walcast_idempotency_evictions_total").increment(1);
        }
        keys.seen.insert(Arc::clone(&scoped), now);
        keys.order.push_back((now, scoped));
        Claim::First
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }
}

impl IdempotencyStore for MemoryIdempotency {
    fn claim<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let claim = self.claim_at(scope, key, Instant::now());
        Box::pin(std::future::ready(Ok(claim)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: Scope<'static> = Scope {
        app: "app",
        channel: "room",
    };

    fn store(window_secs: u64, max_keys: usize) -> MemoryIdempotency {
        MemoryIdempotency::new(IdempotencyConfig {
            window: Duration::from_secs(window_secs),
            max_keys,
        })
    }

    #[test]
    fn repeat_within_window_first_after() {
        let keys = store(120, 10);
        let t0 = Instant::now();
        assert_eq!(keys.claim_at(ROOM, "k", t0), Claim::First);
        assert_eq!(
            keys.claim_at(ROOM, "k", t0 + Duration::from_secs(119)),
            Claim::Repeat
        );
        assert_eq!(
            keys.claim_at(ROOM, "k", t0 + Duration::from_secs(120)),
            Claim::First
        );
    }

    #[test]
    fn scoped_by_app_and_channel() {
        let keys = store(120, 10);
        let t0 = Instant::now();
        assert_eq!(keys.claim_at(ROOM, "k", t0), Claim::First);
        let other_channel = Scope {
            app: "app",
            channel: "other",
        };
        let other_app = Scope {
            app: "app2",
            channel: "room",
        };
        assert_eq!(keys.claim_at(other_channel, "k", t0), Claim::First);
        assert_eq!(keys.claim_at(other_app, "k", t0), Claim::First);
        assert_eq!(keys.claim_at(ROOM, "k", t0), Claim::Repeat);
    }

    #[test]
    fn bounded_by_evicting_the_oldest() {
        let keys = store(120, 3);
        let t0 = Instant::now();
        for key in ["a", "b", "c", "d"] {
            assert_eq!(keys.claim_at(ROOM, key, t0), Claim::First);
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.claim_at(ROOM, "d", t0), Claim::Repeat);
        assert_eq!(keys.claim_at(ROOM, "a", t0), Claim::First, "evicted early");
    }

    #[test]
    fn expired_keys_free_memory() {
        let keys = store(1, 100);
        let t0 = Instant::now();
        for i in 0..50 {
            keys.claim_at(ROOM, &i.to_string(), t0);
        }
        keys.claim_at(ROOM, "late", t0 + Duration::from_secs(2));
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn zero_window_disables() {
        let keys = store(0, 10);
        let t0 = Instant::now();
        assert_eq!(keys.claim_at(ROOM, "k", t0), Claim::First);
        assert_eq!(keys.claim_at(ROOM, "k", t0), Claim::First);
        assert_eq!(keys.len(), 0);
    }
}
