//! Cluster settings: the NATS URL, this node's id, and the names derived from the stream name
//! and subject prefix, validated once.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterSettingsError {
    #[error("invalid cluster stream name `{0}` (letters, digits, `-` and `_` only)")]
    Stream(String),
    #[error("invalid cluster subject prefix `{0}` (dot-separated tokens of letters, digits, `-` and `_`)")]
    Subject(String),
    #[error("invalid node id `{0}` (letters, digits, `-`, `_` and `.` only)")]
    NodeId(String),
    #[error("the cluster lease must last at least one second")]
    Lease,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub url: String,
    pub node_id: String,
    /// JetStream stream of committed transactions.
    pub stream: String,
    /// Prefix of every subject: `<prefix>.tx`, `<prefix>.chan.<app>.<channel>`.
    pub subject: String,
    pub lease_ttl: Duration,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSettings {
    pub fn new(
        url: String,
        node_id: Option<String>,
        stream: Option<String>,
        subject: Option<String>,
        lease_secs: Option<u64>,
    ) -> Result<ClusterSettings, ClusterSettingsError> {
        let stream = stream.unwrap_or_else(|| "WALCAST".to_owned());
        if !is_token(&stream) {
            return Err(ClusterSettingsError::Stream(stream));
        }
        let subject = subject.unwrap_or_else(|| "walcast".to_owned());
        if !subject.split('.').all(is_token) {
            return Err(ClusterSettingsError::Subject(subject));
        }
        let node_id = node_id
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        if !node_id.split('.').all(is_token) {
            return Err(ClusterSettingsError::NodeId(node_id));
        }
        let lease_secs = lease_secs.unwrap_or(3);
        if lease_secs == 0 {
            return Err(ClusterSettingsError::Lease);
        }
        Ok(ClusterSettings {
            url,
            node_id,
            stream,
            subject,
            lease_ttl: Duration::from_secs(lease_secs),
        })
    }

    /// The stream's only subject.
    pub fn tx_subject(&self) -> String {
        format!("{}.tx", self.subject)
    }

    /// Prefix of the custom-channel subjects (`<prefix>.chan.<app>.<channel>`).
    pub fn channel_prefix(&self) -> String {
        format!("{}.chan", self.subject)
    }

    /// KV bucket of the slot lease.
    pub fn lease_bucket(&self) -> String {
        format!("{}_lease", self.stream)
    }

    /// KV bucket of the publish idempotency keys.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idempotency", self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(stream: &str, subject: &str) -> Result<ClusterSettings, ClusterSettingsError> {
        ClusterSettings::new(
            "nats://127.0.0.1:4222".into(),
            Some("n1".into()),
            Some(stream.into()),
            Some(subject.into()),
            None,
        )
    }

    #[test]
    fn derives_names_and_refuses_bad_ones() {
        let s = settings("WALCAST", "walcast.prod").unwrap();
        assert_eq!(s.tx_subject(), "walcast.prod.tx");
        assert_eq!(s.channel_prefix(), "walcast.prod.chan");
        assert_eq!(s.lease_bucket(), "WALCAST_lease");
        assert_eq!(s.idempotency_bucket(), "WALCAST_idempotency");
        assert_eq!(s.lease_ttl, Duration::from_secs(3));
        assert!(matches!(
            settings("a.b", "x"),
            Err(ClusterSettingsError::Stream(_))
        ));
        assert!(matches!(
            settings("S", "x.*"),
            Err(ClusterSettingsError::Subject(_))
        ));
        assert!(matches!(
            settings("S", "x..y"),
            Err(ClusterSettingsError::Subject(_))
        ));
    }

    #[test]
    fn default_node_id_is_random_and_valid() {
        let a = ClusterSettings::new("nats://x".into(), None, None, None, None).unwrap();
        let b = ClusterSettings::new("nats://x".into(), None, None, None, None).unwrap();
        assert_ne!(a.node_id, b.node_id);
        assert_eq!(
            ClusterSettings::new("nats://x".into(), None, None, None, Some(0)),
            Err(ClusterSettingsError::Lease)
        );
    }
}
