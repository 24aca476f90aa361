//! Idempotency keys shared by every node: one JetStream KV bucket (`<stream>_idempotency`) whose
//! entries live the idempotency window (the bucket's max age: 2.9 servers have no per-message
//! TTL). A key is claimed with `create`, which writes only when the key has no entry (a CAS on
//! the key's last sequence), so of two nodes claiming one key at once exactly one wins.
//!
//! Bound: at most `max_keys` entries; past it the oldest is dropped early (discard old), as the
//! in-memory store does.

use super::channels::escape_into;
use super::{bucket, ClusterError};
use crate::publish::{Claim, IdempotencyConfig, IdempotencyStore, Scope, StoreError};
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::{stream, Context};
use bytes::Bytes;
use futures_util::future::BoxFuture;

#[derive(Debug)]
pub struct NatsIdempotency {
    /// `None` when the window is zero (keys ignored, every message delivered).
    store: Option<kv::Store>,
}

impl NatsIdempotency {
    /// Creates or updates the bucket (its max age follows the configured window).
    pub async fn open(
        js: &Context,
        bucket: &str,
        config: IdempotencyConfig,
    ) -> Result<NatsIdempotency, ClusterError> {
        if config.window.is_zero() {
            return Ok(NatsIdempotency { store: None });
        }
        let limits = bucket::Limits {
            max_age: config.window,
            max_entries: Some(config.max_keys),
            discard: stream::DiscardPolicy::Old,
        };
        let store = bucket::open(js, bucket, limits).await?;
        Ok(NatsIdempotency { store: Some(store) })
    }
}

impl IdempotencyStore for NatsIdempotency {
    fn claim<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let Some(store) = &self.store else {
                return Ok(Claim::First);
            };
            match store.create(kv_key(scope, key), Bytes::new()).await {
                Ok(_) => Ok(Claim::First),
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(Claim::Repeat),
                Err(error) => {
                    tracing::warn!(%error, "idempotency key not recorded in NATS");
                    Err(StoreError::Unavailable)
                }
            }
        })
    }
}

/// `<app>.<channel>.<key>`, each escaped into one KV key token (`=XX` for any byte but letters,
/// digits, `-` and `_`; a lone `=` for an empty name).
fn kv_key(scope: Scope<'_>, key: &str) -> String {
    let mut out = String::with_capacity(scope.app.len() + scope.channel.len() + key.len() + 2);
    for (i, name) in [scope.app, scope.channel, key].into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if name.is_empty() {
            out.push('=');
        }
        escape_into(&mut out, name, '=');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_distinct_per_scope() {
        let scope = |app, channel| Scope { app, channel };
        let keys = [
            kv_key(scope("app", "room"), "k1"),
            kv_key(scope("app", "room"), "k.1"),
            kv_key(scope("app", "room.k"), "1"),
            kv_key(scope("app", "room"), "k=2E1"),
            kv_key(scope("app", "röom"), "a b*>"),
            kv_key(scope("", "room"), "k1"),
        ];
        for key in &keys {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(key.matches('.').count(), 2, "{key}");
            assert!(!key.starts_with('.') && !key.ends_with('.'));
        }
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
    }
}
