//! A JetStream KV bucket opened the way a 2.9 server allows: its stream is created here with
//! the shape of a KV bucket (`$KV.<bucket>.>`, one value per key, rollups, direct get) rather
//! than with `create_key_value`, which first reads account details 2.9 servers do not send.

use super::ClusterError;
use async_nats::jetstream::kv;
use async_nats::jetstream::{stream, Context};
use std::time::Duration;

/// How long entries live and how many the bucket keeps.
pub struct Limits {
    /// Entries expire this long after their last write.
    pub max_age: Duration,
    /// At most this many entries (`None`: unbounded).
    pub max_entries: Option<usize>,
    /// When full: refuse new entries (`New`) or drop the oldest (`Old`).
    pub discard: stream::DiscardPolicy,
}

pub async fn open(js: &Context, bucket: &str, limits: Limits) -> Result<kv::Store, ClusterError> {
    js.create_or_update_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_messages: limits
            .max_entries
            .map_or(-1, |n| i64::try_from(n.max(1)).unwrap_or(i64::MAX)),
        max_age: limits.max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: limits.discard,
        num_replicas: 1,
        ..stream::Config::default()
    })
    .await
    .map_err(ClusterError::jetstream)?;
    js.get_key_value(bucket)
        .await
        .map_err(ClusterError::jetstream)
}
