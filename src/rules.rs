//! Per-channel access rules for custom channels (\[ext\]): who may join, write, read history and
//! presence, set room metadata; whether presence and history are kept. Read from the config
//! file's `[[channel]]` tables; the first rule whose pattern matches a channel name decides.
//!
//! Patterns: `*` matches any run of characters (possibly empty); `{account}` and `{user}` match a
//! non-empty run and, for access, must equal the caller's account id / user id. So
//! `private-{account}-*` selects every `private-…` channel, and admits only the account named in
//! it. A channel no rule matches gets `Policy::default`.

use crate::permission::Reader;
use serde::Deserialize;
use std::time::Duration;

/// Who may do something on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Any authenticated user of the app (and, with `auth = false`, any connection of the app).
    Anyone,
    /// Connections that have joined the channel.
    Members,
    /// Root users (role ≥ 100) only; for writes, also the server publish API.
    Root,
}

/// Who published a message: a connection's user, or the server publish API (trusted).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Publisher<'a> {
    User(&'a Reader),
    Server,
}

/// A refusal, with its exact client-facing string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Join,
    Write,
    Read,
    RoomMeta,
    Destroy,
    NoPresence,
    NoHistory,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::Join => "you cannot join this channel",
            Denied::Write => "you cannot write to this channel",
            Denied::Read => "you cannot read this channel",
            Denied::RoomMeta => "you cannot change this room's metadata",
            Denied::Destroy => "you cannot destroy this channel",
            Denied::NoPresence => "presence is not enabled on this channel",
            Denied::NoHistory => "history is not enabled on this channel",
        }
    }
}

/// One `[[channel]]` table of the config file. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub pattern: String,
    /// `false`: connections that named their app (`sbpk`) but did not authenticate may join and
    /// read. They never write.
    #[serde(default = "yes")]
    pub auth: bool,
    #[serde(default)]
    pub join: Option<Audience>,
    #[serde(default)]
    pub publish: Option<Audience>,
    /// Reading history, presence and room metadata.
    #[serde(default)]
    pub read: Option<Audience>,
    #[serde(default)]
    pub room_meta: Option<Audience>,
    #[serde(default)]
    pub presence: bool,
    #[serde(default = "yes")]
    pub history: bool,
    /// Overrides the global `history_size` for these channels.
    #[serde(default)]
    pub history_size: Option<usize>,
    /// Overrides the global `history_ttl_secs` for these channels.
    #[serde(default)]
    pub history_ttl_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("channel rule pattern `{0}` is empty or longer than 256 bytes")]
    PatternLength(String),
    #[error("channel rule pattern `{0}`: unknown placeholder (use {{account}} or {{user}})")]
    Placeholder(String),
    #[error("channel rule `{0}`: `join` cannot be `members`")]
    JoinMembers(String),
    #[error("channel rule `{0}` matches `db-` channels; rules apply to custom channels only")]
    DbChannel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Literal(&'a str),
    Star,
    Account,
    User,
}

/// A parsed pattern. Kept as its source text; tokens are re-derived when matching (patterns are
/// short and matching happens on join/write, not per delivered message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern(String);

impl Pattern {
    pub fn parse(source: &str) -> Result<Pattern, RuleError> {
        if source.is_empty() || source.len() > crate::protocol::MAX_CHANNEL_LEN {
            return Err(RuleError::PatternLength(source.to_owned()));
        }
        tokens(source).map_err(|()| RuleError::Placeholder(source.to_owned()))?;
        Ok(Pattern(source.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn tokens(&self) -> Vec<Token<'_>> {
        tokens(&self.0).unwrap_or_default()
    }

    fn has_placeholders(&self) -> bool {
        self.tokens()
            .iter()
            .any(|t| matches!(t, Token::Account | Token::User))
    }

    /// Whether the rule is about this channel (placeholders match any non-empty text).
    pub fn selects(&self, channel: &str) -> bool {
        glob(&self.tokens(), channel.as_bytes(), None)
    }

    /// Whether the placeholders can be filled with this identity (`None`: anonymous, which
    /// fills no placeholder).
    fn admits(&self, channel: &str, who: Option<&Reader>) -> bool {
        if !self.has_placeholders() {
            return true;
        }
        let Some(who) = who else {
            return false;
        };
        let ids = Ids {
            account: who.account_id.map(|a| a.to_string()),
            user: who.user_id.to_string(),
        };
        glob(&self.tokens(), channel.as_bytes(), Some(&ids))
    }
}

fn tokens(source: &str) -> Result<Vec<Token<'_>>, ()> {
    let mut out = Vec::new();
    let mut rest = source;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('*') {
            if out.last() != Some(&Token::Star) {
                out.push(Token::Star);
            }
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let (name, after) = after.split_once('}').ok_or(())?;
            out.push(match name {
                "account" => Token::Account,
                "user" => Token::User,
                _ => return Err(()),
            });
            rest = after;
        } else {
            let end = rest.find(['*', '{']).unwrap_or(rest.len());
            out.push(Token::Literal(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

struct Ids {
    account: Option<String>,
    user: String,
}

/// One byte-level pattern element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Byte(u8),
    /// Any one byte.
    One,
    /// Any run of bytes, possibly empty.
    Star,
}

/// Byte-level form of a pattern: placeholders become their id (with `ids`) or "one byte then a
/// star" (any non-empty text). `None` when a placeholder cannot be filled.
fn units(tokens: &[Token<'_>], ids: Option<&Ids>) -> Option<Vec<Unit>> {
    let mut out = Vec::new();
    for token in tokens {
        let id = match (token, ids) {
            (Token::Literal(text), _) => Some(*text),
            (Token::Star, _) => {
                out.push(Unit::Star);
                None
            }
            (Token::Account, Some(ids)) => Some(ids.account.as_deref()?),
            (Token::User, Some(ids)) => Some(ids.user.as_str()),
            (Token::Account | Token::User, None) => {
                out.extend([Unit::One, Unit::Star]);
                None
            }
        };
        out.extend(id.unwrap_or_default().bytes().map(Unit::Byte));
    }
    Some(out)
}

/// Wildcard match in O(pattern × name): on a mismatch, only the most recent star is widened
/// (the classic greedy algorithm, exact for `*` and single-byte units).
fn glob(tokens: &[Token<'_>], name: &[u8], ids: Option<&Ids>) -> bool {
    let Some(pattern) = units(tokens, ids) else {
        return false;
    };
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(Unit::Star) => {
                star = Some((p, n));
                p += 1;
            }
            Some(Unit::One) => {
                p += 1;
                n += 1;
            }
            Some(Unit::Byte(b)) if *b == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|u| *u == Unit::Star)
}

/// What applies to one channel, resolved from its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pattern: Option<Pattern>,
    pub auth: bool,
    pub join: Audience,
    pub publish: Audience,
    pub read: Audience,
    pub room_meta: Audience,
    pub presence: bool,
    pub history: bool,
    pub history_size: Option<usize>,
    pub history_ttl: Option<Duration>,
}

impl Default for Policy {
    /// StaticBackend's behaviour: any authenticated user joins and writes (without joining);
    /// members read history; no presence.
    fn default() -> Self {
        Policy {
            pattern: None,
            auth: true,
            join: Audience::Anyone,
            publish: Audience::Anyone,
            read: Audience::Members,
            room_meta: Audience::Members,
            presence: false,
            history: true,
            history_size: None,
            history_ttl: None,
        }
    }
}

fn allowed(audience: Audience, who: Option<&Reader>, member: bool) -> bool {
    let root = who.is_some_and(Reader::is_root);
    match audience {
        Audience::Anyone => true,
        Audience::Members => member || root,
        Audience::Root => root,
    }
}

impl Policy {
    /// `who`: `None` for a connection that did not authenticate.
    pub fn may_join(&self, channel: &str, who: Option<&Reader>) -> Result<(), Denied> {
        if who.is_none() && self.auth {
            return Err(Denied::Join);
        }
        let root = who.is_some_and(Reader::is_root);
        let identity = root || self.pattern.as_ref().is_none_or(|p| p.admits(channel, who));
        if identity && allowed(self.join, who, false) {
            Ok(())
        } else {
            Err(Denied::Join)
        }
    }

    /// Writes need the right to join as well: a private channel is not writable by outsiders.
    pub fn may_publish(
        &self,
        channel: &str,
        publisher: Publisher<'_>,
        member: bool,
    ) -> Result<(), Denied> {
        let who = match publisher {
            Publisher::Server => return Ok(()),
            Publisher::User(who) => who,
        };
        if self.may_join(channel, Some(who)).is_err() || !allowed(self.publish, Some(who), member) {
            return Err(Denied::Write);
        }
        Ok(())
    }

    pub fn may_read(
        &self,
        channel: &str,
        who: Option<&Reader>,
        member: bool,
    ) -> Result<(), Denied> {
        if member || (self.may_join(channel, who).is_ok() && allowed(self.read, who, false)) {
            Ok(())
        } else {
            Err(Denied::Read)
        }
    }

    pub fn may_set_room_meta(&self, who: &Reader, member: bool) -> Result<(), Denied> {
        if allowed(self.room_meta, Some(who), member) && (member || who.is_root()) {
            Ok(())
        } else {
            Err(Denied::RoomMeta)
        }
    }

    /// Destroying a room is for root users and the server publish API only.
    pub fn may_destroy(publisher: Publisher<'_>) -> Result<(), Denied> {
        match publisher {
            Publisher::Server => Ok(()),
            Publisher::User(who) if who.is_root() => Ok(()),
            Publisher::User(_) => Err(Denied::Destroy),
        }
    }
}

/// The ordered rule list. Configured rules replace the built-in ones entirely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Policy>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::from_specs(&Rules::builtin()).unwrap_or_else(|_| Rules { rules: Vec::new() })
    }
}

impl Rules {
    /// The rules in force when the config file has no `[[channel]]` table.
    pub(crate) fn builtin() -> Vec<RuleSpec> {
        let spec = |pattern: &str| RuleSpec {
            pattern: pattern.to_owned(),
            auth: true,
            join: None,
            publish: None,
            read: None,
            room_meta: None,
            presence: false,
            history: true,
            history_size: None,
            history_ttl_secs: None,
        };
        vec![
            spec("private-{account}-*"),
            // Any other `private-` name (no account in it): root only, never public by accident.
            RuleSpec {
                join: Some(Audience::Root),
                ..spec("private-*")
            },
            RuleSpec {
                presence: true,
                ..spec("presence-*")
            },
            RuleSpec {
                publish: Some(Audience::Root),
                ..spec("readonly-*")
            },
        ]
    }

    pub fn from_specs(specs: &[RuleSpec]) -> Result<Rules, RuleError> {
        let defaults = Policy::default();
        let rules = specs
            .iter()
            .map(|spec| {
                let pattern = Pattern::parse(&spec.pattern)?;
                if spec.join == Some(Audience::Members) {
                    return Err(RuleError::JoinMembers(spec.pattern.clone()));
                }
                if pattern.selects("db-x") && !pattern.as_str().starts_with('*') {
                    return Err(RuleError::DbChannel(spec.pattern.clone()));
                }
                Ok(Policy {
                    pattern: Some(pattern),
                    auth: spec.auth,
                    join: spec.join.unwrap_or(defaults.join),
                    publish: spec.publish.unwrap_or(defaults.publish),
                    read: spec.read.unwrap_or(defaults.read),
                    room_meta: spec.room_meta.unwrap_or(defaults.room_meta),
                    presence: spec.presence,
                    history: spec.history,
                    history_size: spec.history_size,
                    history_ttl: spec.history_ttl_secs.map(Duration::from_secs),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// The first matching rule's policy, or the default one.
    pub(crate) fn policy(&self, channel: &str) -> &Policy {
        static DEFAULT: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        self.rules
            .iter()
            .find(|p| p.pattern.as_ref().is_some_and(|p| p.selects(channel)))
            .unwrap_or_else(|| DEFAULT.get_or_init(Policy::default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn glob_patterns() {
        let p = Pattern::parse("chat-*-room").unwrap();
        assert!(p.selects("chat--room"));
        assert!(p.selects("chat-a-b-room"));
        assert!(!p.selects("chat-a-roomx"));
        assert!(Pattern::parse("*").unwrap().selects(""));
        assert!(Pattern::parse("a**b").unwrap().selects("ab"));
        assert!(Pattern::parse("exact").unwrap().selects("exact"));
        assert!(!Pattern::parse("exact").unwrap().selects("exact2"));
        assert!(Pattern::parse("x-{team}").is_err());
        assert!(Pattern::parse("x-{account").is_err());
        assert!(Pattern::parse("").is_err());
        // Many stars over a long name stay fast enough to run in a unit test.
        let stars = Pattern::parse("*a*a*a*a*a*a*b").unwrap();
        assert!(!stars.selects(&"a".repeat(200)));
    }

    #[test]
    fn private_channels_admit_their_account_only() {
        let rules = Rules::default();
        let alice = Reader::numbered(1, 10, 0);
        let bob = Reader::numbered(2, 20, 0);
        let root = Reader::numbered(3, 30, 100);
        let channel = format!("private-{}-chat", Uuid::from_u128(1));
        let policy = rules.policy(&channel);
        assert_eq!(policy.may_join(&channel, Some(&alice)), Ok(()));
        assert_eq!(policy.may_join(&channel, Some(&bob)), Err(Denied::Join));
        assert_eq!(policy.may_join(&channel, Some(&root)), Ok(()));
        assert_eq!(policy.may_join(&channel, None), Err(Denied::Join));
        assert_eq!(
            policy.may_publish(&channel, Publisher::User(&bob), false),
            Err(Denied::Write)
        );
        assert_eq!(
            policy.may_read(&channel, Some(&bob), false),
            Err(Denied::Read)
        );
        // Not a uuid at all: still selected by the private rule, admits nobody but root.
        let odd = "private-nobody";
        assert!(rules.policy(odd).may_join(odd, Some(&alice)).is_err());
        let odd = "private-x-y";
        assert!(rules.policy(odd).may_join(odd, Some(&alice)).is_err());
    }

    #[test]
    fn builtin_presence_and_readonly() {
        let rules = Rules::default();
        assert!(rules.policy("presence-lobby").presence);
        assert!(!rules.policy("lobby").presence);
        let user = Reader::numbered(1, 1, 0);
        let root = Reader::numbered(1, 2, 100);
        let ro = rules.policy("readonly-news");
        assert_eq!(
            ro.may_publish("readonly-news", Publisher::User(&user), true),
            Err(Denied::Write)
        );
        assert_eq!(
            ro.may_publish("readonly-news", Publisher::User(&root), false),
            Ok(())
        );
        assert_eq!(
            ro.may_publish("readonly-news", Publisher::Server, false),
            Ok(())
        );
        assert_eq!(ro.may_join("readonly-news", Some(&user)), Ok(()));
        let plain = rules.policy("room");
        assert_eq!(
            plain.may_publish("room", Publisher::User(&user), false),
            Ok(())
        );
        assert_eq!(
            plain.may_read("room", Some(&user), false),
            Err(Denied::Read)
        );
        assert_eq!(plain.may_read("room", Some(&user), true), Ok(()));
    }

    #[test]
    fn first_match_wins_and_specs_parse_strictly() {
        let specs: Vec<RuleSpec> =
            toml::from_str::<std::collections::HashMap<String, Vec<RuleSpec>>>(
                r#"
            [[channel]]
            pattern = "team-{user}-*"
            join = "anyone"
            read = "anyone"
            [[channel]]
            pattern = "team-*"
            join = "root"
            history = false
            presence = true
            history_size = 5
            "#,
            )
            .unwrap()
            .remove("channel")
            .unwrap();
        let rules = Rules::from_specs(&specs).unwrap();
        let me = Reader::numbered(1, 7, 0);
        let mine = format!("team-{}-notes", Uuid::from_u128(7));
        assert_eq!(rules.policy(&mine).may_join(&mine, Some(&me)), Ok(()));
        assert!(rules.policy(&mine).history_size.is_none());
        let theirs = format!("team-{}-notes", Uuid::from_u128(8));
        assert_eq!(
            rules.policy(&theirs).may_join(&theirs, Some(&me)),
            Err(Denied::Join)
        );
        let other = "team-x";
        assert_eq!(rules.policy(other).history_size, Some(5));
        assert_eq!(
            rules.policy(other).may_join(other, Some(&me)),
            Err(Denied::Join)
        );
        assert!(!rules.policy(other).history);
        // No built-in rules once rules are configured.
        assert!(!rules.policy("presence-x").presence);

        assert!(toml::from_str::<RuleSpec>("pattern = \"x\"\nwho = 1").is_err());
        assert!(toml::from_str::<RuleSpec>("pattern = \"x\"\njoin = \"all\"").is_err());
        let members_join: RuleSpec = toml::from_str("pattern = \"x\"\njoin = \"members\"").unwrap();
        assert!(Rules::from_specs(&[members_join]).is_err());
        let db: RuleSpec = toml::from_str("pattern = \"db-*\"").unwrap();
        assert!(Rules::from_specs(&[db]).is_err());
    }

    #[test]
    fn anonymous_access_needs_auth_false() {
        let spec: RuleSpec =
            toml::from_str("pattern = \"public-*\"\nauth = false\nread = \"anyone\"").unwrap();
        let rules = Rules::from_specs(&[spec]).unwrap();
        let p = rules.policy("public-feed");
        assert_eq!(p.may_join("public-feed", None), Ok(()));
        assert_eq!(p.may_read("public-feed", None, false), Ok(()));
        assert!(Rules::default()
            .policy("feed")
            .may_join("feed", None)
            .is_err());
    }

    #[test]
    fn room_meta_and_destroy() {
        let rules = Rules::default();
        let user = Reader::numbered(1, 1, 0);
        let root = Reader::numbered(1, 2, 100);
        let p = rules.policy("room");
        assert_eq!(p.may_set_room_meta(&user, true), Ok(()));
        assert_eq!(p.may_set_room_meta(&user, false), Err(Denied::RoomMeta));
        assert_eq!(
            Policy::may_destroy(Publisher::User(&user)),
            Err(Denied::Destroy)
        );
        assert_eq!(Policy::may_destroy(Publisher::User(&root)), Ok(()));
        assert_eq!(Policy::may_destroy(Publisher::Server), Ok(()));
    }
}
