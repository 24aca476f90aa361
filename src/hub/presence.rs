//! Presence of custom channels ([ext]): who is in a channel (user, account, sid, the metadata
//! the client gave at join). Behind [`PresenceStore`] so that a shared implementation (a
//! JetStream KV bucket keyed by channel and sid) can replace the in-memory one on several nodes;
//! members are keyed by sid, which is unique across nodes.

use super::channel_history::ChannelKey;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// One member as the `presence` reply and the `presence_join` / `presence_leave` events show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub sid: Arc<str>,
    pub user_id: Uuid,
    pub account_id: Option<Uuid>,
    /// What the client sent as `meta` with its `join` (bounded in size), else `null`.
    pub meta: serde_json::Value,
}

impl Member {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Members of every presence-enabled channel.
pub trait PresenceStore: Send + Sync + Debug {
    /// Adds (or replaces) a member; returns whether it was new.
    fn add(&self, key: &ChannelKey, member: Member) -> bool;
    fn remove(&self, key: &ChannelKey, sid: &str) -> Option<Member>;
    /// At most `limit` members, in sid order (stable across calls).
    fn list(&self, key: &ChannelKey, limit: usize) -> Vec<Member>;
    /// Forgets a channel (destroyed).
    fn remove_channel(&self, key: &ChannelKey);
    /// Members across all channels, for metrics and tests.
    fn member_count(&self) -> usize;
}

/// The single-node store.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<ChannelKey, BTreeMap<Arc<str>, Member>>>,
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, BTreeMap<Arc<str>, Member>>> {
        // Single inserts and removes: a panic elsewhere cannot leave the map inconsistent.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PresenceStore for MemoryPresence {
    fn add(&self, key: &ChannelKey, member: Member) -> bool {
        self.lock()
            .entry(key.clone())
            .or_default()
            .insert(Arc::clone(&member.sid), member)
            .is_none()
    }

    fn remove(&self, key: &ChannelKey, sid: &str) -> Option<Member> {
        let mut channels = self.lock();
        let members = channels.get_mut(key)?;
        let removed = members.remove(sid);
        if members.is_empty() {
            channels.remove(key);
        }
        removed
    }

    fn list(&self, key: &ChannelKey, limit: usize) -> Vec<Member> {
        self.lock()
            .get(key)
            .map(|members| members.values().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    fn remove_channel(&self, key: &ChannelKey) {
        self.lock().remove(key);
    }

    fn member_count(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(sid: &str) -> Member {
        Member {
            sid: sid.into(),
            user_id: Uuid::from_u128(1),
            account_id: None,
            meta: serde_json::json!({"status": "online"}),
        }
    }

    #[test]
    fn add_list_remove() {
        let store = MemoryPresence::default();
        let k = ChannelKey::new(&"app".into(), "presence-x");
        assert!(store.add(&k, member("b")));
        assert!(store.add(&k, member("a")));
        assert!(!store.add(&k, member("a")));
        let sids: Vec<_> = store
            .list(&k, 10)
            .iter()
            .map(|m| m.sid.to_string())
            .collect();
        assert_eq!(sids, vec!["a", "b"]);
        assert_eq!(store.list(&k, 1).len(), 1);
        assert_eq!(store.remove(&k, "a").map(|m| m.sid), Some("a".into()));
        assert_eq!(store.remove(&k, "a"), None);
        store.remove(&k, "b");
        assert_eq!(store.member_count(), 0);
        assert!(store.lock().is_empty(), "empty channels are dropped");
    }

    #[test]
    fn member_json() {
        let json = member("s").to_json();
        assert_eq!(
            json,
            r#"{"sid":"s","userId":"00000000-0000-0000-0000-000000000001","accountId":null,"meta":{"status":"online"}}"#
        );
    }
}
