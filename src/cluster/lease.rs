//! The slot lease: one JetStream KV entry (key = slot name, value = holder's node id) in a bucket
//! whose entries live `ttl` after their last write. Taken with `create` (only when absent),
//! renewed with `update` at the revision this node wrote last (CAS), so a node that missed a
//! renewal and lost the entry can never renew someone else's.

use super::{bucket, ClusterError};
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream;
use async_nats::jetstream::Context;
use bytes::Bytes;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Lease {
    store: kv::Store,
    key: String,
    node: String,
    ttl: Duration,
    /// Revision of this node's last write, while it holds the lease.
    revision: Option<u64>,
    /// Until when the lease is surely still ours (last successful write's send time + ttl).
    valid_until: Option<Instant>,
}

impl Lease {
    pub async fn open(
        js: &Context,
        bucket: &str,
        slot: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Lease, ClusterError> {
        let limits = bucket::Limits {
            max_age: ttl,
            max_entries: None,
            discard: stream::DiscardPolicy::New,
        };
        let store = bucket::open(js, bucket, limits).await?;
        Ok(Lease {
            store,
            key: slot.to_owned(),
            node: node.to_owned(),
            ttl,
            revision: None,
            valid_until: None,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this node holds the lease now (as far as it can know without asking).
    pub fn held(&self) -> bool {
        self.valid_until.is_some_and(|until| Instant::now() < until)
    }

    /// Takes the lease when nobody holds it. `Ok(false)`: someone else does.
    pub async fn try_acquire(&mut self) -> Result<bool, ClusterError> {
        let sent = Instant::now();
        match self
            .store
            .create(&self.key, Bytes::from(self.node.clone()))
            .await
        {
            Ok(revision) => {
                self.revision = Some(revision);
                self.valid_until = Some(sent + self.ttl);
                Ok(true)
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(ClusterError::jetstream(error)),
        }
    }

    /// Extends the lease. `LeaseLost` when another node wrote the entry or it expired;
    /// another error is transient (the lease stays ours until `held()` turns false).
    pub async fn renew(&mut self) -> Result<(), ClusterError> {
        let Some(revision) = self.revision else {
            return Err(ClusterError::LeaseLost);
        };
        let sent = Instant::now();
        match self
            .store
            .update(&self.key, Bytes::from(self.node.clone()), revision)
            .await
        {
            Ok(revision) => {
                self.revision = Some(revision);
                self.valid_until = Some(sent + self.ttl);
                Ok(())
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                self.forget();
                Err(ClusterError::LeaseLost)
            }
            Err(error) => Err(ClusterError::jetstream(error)),
        }
    }

    /// Gives the lease up at once (clean shutdown), so another node need not wait for the TTL.
    pub async fn release(&mut self) {
        if let Some(revision) = self.revision {
            if let Err(error) = self
                .store
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                tracing::debug!(%error, "lease release failed; it expires by itself");
            }
        }
        self.forget();
    }

    pub fn forget(&mut self) {
        self.revision = None;
        self.valid_until = None;
    }
}
