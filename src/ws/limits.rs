//! Connection counts (global, per app) as RAII slots, and the per-connection message rate limit.

use crate::permission::AppName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Connection counts, global and per app. Slots are RAII guards so that every exit path of a
/// connection gives its slot back.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_global: usize,
    max_per_app: usize,
    global: AtomicUsize,
    per_app: Mutex<HashMap<AppName, usize>>,
}

#[derive(Debug)]
pub struct GlobalSlot(Arc<ConnectionLimits>);

#[derive(Debug)]
pub struct AppSlot(Arc<ConnectionLimits>, AppName);

impl ConnectionLimits {
    pub fn new(max_global: usize, max_per_app: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_global,
            max_per_app,
            global: AtomicUsize::new(0),
            per_app: Mutex::new(HashMap::new()),
        })
    }

    pub fn acquire_global(self: &Arc<Self>) -> Option<GlobalSlot> {
        let taken = self
            .global
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_global).then_some(n + 1)
            });
        taken.ok().map(|_| GlobalSlot(Arc::clone(self)))
    }

    pub fn acquire_app(self: &Arc<Self>, app: &AppName) -> Option<AppSlot> {
        let mut per_app = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_app.entry(Arc::clone(app)).or_insert(0);
        if *count >= self.max_per_app {
            return None;
        }
        *count += 1;
        Some(AppSlot(Arc::clone(self), Arc::clone(app)))
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.global.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut per_app = self.0.per_app.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_app.get_mut(&self.1) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_app.remove(&self.1);
            }
        }
    }
}

/// Token bucket: `rate` messages per second on average, bursts up to `burst`. A rate of 0
/// disables the limit.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    pub fn allow(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_app_slots_are_returned() {
        let limits = ConnectionLimits::new(2, 1);
        let a = limits.acquire_global().unwrap();
        let _b = limits.acquire_global().unwrap();
        assert!(limits.acquire_global().is_none());
        drop(a);
        assert!(limits.acquire_global().is_some());
        let app: AppName = "x".into();
        let slot = limits.acquire_app(&app).unwrap();
        assert!(limits.acquire_app(&app).is_none());
        assert!(limits.acquire_app(&"y".into()).is_some());
        drop(slot);
        assert!(limits.acquire_app(&app).is_some());
    }

    #[test]
    fn bucket_refuses_past_burst() {
        let mut limiter = RateLimiter::new(1, 3);
        assert!(limiter.allow() && limiter.allow() && limiter.allow());
        assert!(!limiter.allow());
        let mut open = RateLimiter::new(0, 0);
        assert!((0..1000).all(|_| open.allow()));
    }
}
