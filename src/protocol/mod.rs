//! The StaticBackend realtime wire format: client frames in, server envelopes and WebSocket
//! frames out. Pure functions, no I/O.

mod client;
mod envelope;
pub mod frame;

pub use client::{parse_client, ClientMessage, ParseError};
pub use envelope::{encode, Envelope};

/// Channel names are 1–256 bytes with no control characters (PROTOCOL.md §3).
pub const MAX_CHANNEL_LEN: usize = 256;

/// The channel StaticBackend used internally for every tenant's events; joining it leaked them.
pub const RESERVED_CHANNEL: &str = "sbsys";

/// Why a channel name is refused, with the exact client-facing error string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    Invalid,
    Reserved,
}

impl ChannelError {
    pub fn message(self) -> &'static str {
        match self {
            ChannelError::Invalid => "invalid channel name",
            ChannelError::Reserved => "reserved channel",
        }
    }
}

pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN || name.chars().any(char::is_control) {
        return Err(ChannelError::Invalid);
    }
    if name == RESERVED_CHANNEL {
        return Err(ChannelError::Reserved);
    }
    Ok(())
}

/// `db-<repo>` channels carry database events; the repo is everything after the prefix.
pub fn db_repo(channel: &str) -> Option<&str> {
    channel.strip_prefix("db-").filter(|repo| !repo.is_empty())
}

/// Writing is refused for any casing of the prefix, so `DB-x` cannot impersonate a db channel.
pub fn is_db_channel_any_case(channel: &str) -> bool {
    channel
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("db-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert_eq!(validate_channel("room1"), Ok(()));
        assert_eq!(validate_channel(""), Err(ChannelError::Invalid));
        assert_eq!(validate_channel("a\nb"), Err(ChannelError::Invalid));
        assert_eq!(
            validate_channel(&"x".repeat(257)),
            Err(ChannelError::Invalid)
        );
        assert_eq!(validate_channel(&"x".repeat(256)), Ok(()));
        assert_eq!(validate_channel("sbsys"), Err(ChannelError::Reserved));
        assert_eq!(validate_channel("'; DROP TABLE sb_tokens; --"), Ok(()));
    }

    #[test]
    fn db_channels() {
        assert_eq!(db_repo("db-tasks_760_"), Some("tasks_760_"));
        assert_eq!(db_repo("db-"), None);
        assert_eq!(db_repo("DB-tasks"), None);
        assert!(is_db_channel_any_case("DB-tasks"));
        assert!(is_db_channel_any_case("Db-"));
        assert!(!is_db_channel_any_case("d"));
        assert!(!is_db_channel_any_case("dé"));
    }
}
