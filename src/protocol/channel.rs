//! Channel names, parsed once at the edge into a [`Channel`]: a database channel (`db-<repo>`,
//! with the repo's read level) or a custom one; a reserved or malformed name is an error value
//! carrying the client-facing message (PROTOCOL.md §3).

use crate::permission::{read_level, ReadLevel};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Channel names are 1–256 bytes with no control characters.
pub const MAX_CHANNEL_LEN: usize = 256;

/// The channel StaticBackend used internally for every tenant's events; joining it leaked them.
pub const RESERVED_CHANNEL: &str = "sbsys";

/// Database channels are named `db-<repo>`.
const DB_PREFIX: &str = "db-";

/// Why a channel name is refused, with the exact client-facing error string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// `chan_in` without a channel.
    Missing,
    Invalid,
    Reserved,
    /// `chan_in` to a database channel, in any casing of the prefix.
    NotWritable,
}

impl ChannelError {
    pub fn message(self) -> &'static str {
        match self {
            ChannelError::Missing => "no channel was specified",
            ChannelError::Invalid => "invalid channel name",
            ChannelError::Reserved => "reserved channel",
            ChannelError::NotWritable => "you cannot write to database channel",
        }
    }
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ChannelError {}

/// What a channel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// Document events of one repo, filtered by its read level.
    Db { repo: Arc<str>, level: ReadLevel },
    /// Messages clients publish with `chan_in`.
    Custom,
}

/// A valid channel name and what it carries. Equality and hashing are the name's, so a set of
/// channels can be searched by name.
#[derive(Debug, Clone)]
pub struct Channel {
    name: Arc<str>,
    kind: ChannelKind,
}

impl Channel {
    /// A channel to join: any valid name; `db-<repo>` (exact lowercase prefix, non-empty repo)
    /// is a database channel, everything else custom.
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN || name.chars().any(char::is_control) {
            return Err(ChannelError::Invalid);
        }
        if name == RESERVED_CHANNEL {
            return Err(ChannelError::Reserved);
        }
        let kind = match name.strip_prefix(DB_PREFIX).filter(|repo| !repo.is_empty()) {
            Some(repo) => ChannelKind::Db {
                repo: repo.into(),
                level: read_level(repo),
            },
            None => ChannelKind::Custom,
        };
        Ok(Channel {
            name: name.into(),
            kind,
        })
    }

    /// A channel to publish to: custom only. Any casing of the `db-` prefix is refused, so
    /// `DB-x` cannot impersonate a database channel.
    pub fn parse_writable(name: &str) -> Result<Channel, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Missing);
        }
        let db_like = name
            .get(..DB_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(DB_PREFIX));
        if db_like {
            return Err(ChannelError::NotWritable);
        }
        Channel::parse(name)
    }

    /// The database channel of a repo.
    pub fn db(repo: &Arc<str>) -> Channel {
        Channel {
            name: format!("{DB_PREFIX}{repo}").into(),
            kind: ChannelKind::Db {
                repo: Arc::clone(repo),
                level: read_level(repo),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &ChannelKind {
        &self.kind
    }
}

impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Channel {}

impl Hash for Channel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Result<ChannelKind, ChannelError> {
        Channel::parse(name).map(|c| c.kind().clone())
    }

    #[test]
    fn channel_names() {
        assert_eq!(kind("room1"), Ok(ChannelKind::Custom));
        assert_eq!(kind(""), Err(ChannelError::Invalid));
        assert_eq!(kind("a\nb"), Err(ChannelError::Invalid));
        assert_eq!(kind(&"x".repeat(257)), Err(ChannelError::Invalid));
        assert_eq!(kind(&"x".repeat(256)), Ok(ChannelKind::Custom));
        assert_eq!(kind("sbsys"), Err(ChannelError::Reserved));
        assert_eq!(kind("'; DROP TABLE sb_tokens; --"), Ok(ChannelKind::Custom));
    }

    #[test]
    fn db_channels() {
        assert_eq!(
            kind("db-tasks_760_"),
            Ok(ChannelKind::Db {
                repo: "tasks_760_".into(),
                level: ReadLevel::Account
            })
        );
        assert_eq!(kind("db-"), Ok(ChannelKind::Custom));
        assert_eq!(kind("DB-tasks"), Ok(ChannelKind::Custom));
        let repo: Arc<str> = "pub_notes".into();
        let db = Channel::db(&repo);
        assert_eq!(db.name(), "db-pub_notes");
        assert_eq!(Channel::parse("db-pub_notes").map(|c| c.kind), Ok(db.kind));
    }

    #[test]
    fn writable_channels() {
        assert_eq!(
            Channel::parse_writable("").map(|c| c.kind),
            Err(ChannelError::Missing)
        );
        for name in ["db-x", "DB-tasks", "Db-", "db-"] {
            assert_eq!(
                Channel::parse_writable(name).map(|c| c.kind),
                Err(ChannelError::NotWritable),
                "{name}"
            );
        }
        assert_eq!(
            Channel::parse_writable("d").map(|c| c.kind),
            Ok(ChannelKind::Custom)
        );
        assert_eq!(
            Channel::parse_writable("dé").map(|c| c.kind),
            Ok(ChannelKind::Custom)
        );
        assert_eq!(
            Channel::parse_writable("sbsys").map(|c| c.kind),
            Err(ChannelError::Reserved)
        );
    }

    #[test]
    fn sets_are_searched_by_name() {
        let mut joined = std::collections::HashSet::new();
        joined.insert(Channel::parse("db-x").unwrap());
        assert!(joined.contains("db-x"));
        assert!(joined.take("db-x").is_some());
    }
}
