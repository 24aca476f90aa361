//! Custom channels as rooms ([ext] beyond StaticBackend's join / `chan_in`): access rules,
//! presence, history with offsets and `since`, room metadata and destroy. Every publish — a
//! client's `chan_in` or the server publish API — goes through [`Hub::publish`], so rules and
//! history apply to both.
//!
//! Invariants: a room's publishes are serialised by its order lock, so offsets, history and
//! every member's delivery order agree; a join's reply, its `since` replay, the room metadata
//! and its presence event are pushed under the rooms write lock, so no message published
//! meanwhile is missed or duplicated. Lock order: rooms → room order → history / presence →
//! outbox.

use super::channel_history::{
    ChannelHistory, ChannelKey, HistoryLimits, MemoryHistory, Retention, StoredMessage,
};
use super::presence::{Member, MemoryPresence, PresenceStore};
use super::{lock, read, write, ConnId, Delivery, Hub, Joined, Outbox, Subscriber};
use crate::permission::AppName;
use crate::protocol::{encode, frame, Envelope, HistoryQuery, Outgoing};
use crate::rules::{Denied, Policy, Publisher, Rules};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Room settings: rules and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub rules: Rules,
    pub history: HistoryLimits,
    /// Members listed in a `presence` reply at most.
    pub presence_max_members: usize,
    /// Largest `meta` a member may give at join (bytes of JSON).
    pub presence_max_meta_bytes: usize,
    /// Largest room metadata (bytes of JSON).
    pub room_meta_max_bytes: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            rules: Rules::default(),
            history: HistoryLimits::default(),
            presence_max_members: 1000,
            presence_max_meta_bytes: 1024,
            room_meta_max_bytes: 4096,
        }
    }
}

/// Why a room request was refused, with its exact client-facing string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomError {
    Denied(Denied),
    PresenceMetaTooLarge,
    RoomMetaTooLarge,
    InvalidMeta,
}

impl RoomError {
    pub fn message(self) -> &'static str {
        match self {
            RoomError::Denied(denied) => denied.message(),
            RoomError::PresenceMetaTooLarge => "presence metadata too large",
            RoomError::RoomMetaTooLarge => "room metadata too large",
            RoomError::InvalidMeta => "invalid metadata",
        }
    }
}

impl From<Denied> for RoomError {
    fn from(denied: Denied) -> Self {
        RoomError::Denied(denied)
    }
}

/// Who acts on a room: a connection (its subscriber and sid) or the server publish API.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Connection {
        subscriber: &'a Subscriber,
        sid: &'a str,
    },
    Server,
    /// A message another node admitted (cluster mode), delivered here with its sender's sid.
    Relayed {
        sid: &'a str,
    },
}

impl<'a> Actor<'a> {
    /// `None` for a guest connection, which may not write or destroy.
    fn publisher(self) -> Option<Publisher<'a>> {
        match self {
            Actor::Connection { subscriber, .. } => subscriber.identity().map(Publisher::User),
            Actor::Server | Actor::Relayed { .. } => Some(Publisher::Server),
        }
    }

    pub fn sid(self) -> &'a str {
        match self {
            Actor::Connection { sid, .. } | Actor::Relayed { sid } => sid,
            Actor::Server => "",
        }
    }

    fn conn(self) -> Option<ConnId> {
        match self {
            Actor::Connection { subscriber, .. } => Some(subscriber.conn),
            Actor::Server | Actor::Relayed { .. } => None,
        }
    }
}

#[derive(Debug)]
struct RoomMember {
    outbox: Arc<Outbox>,
    sid: Arc<str>,
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<ConnId, RoomMember>,
    /// Held while a message is given its offset and pushed to every member.
    order: Mutex<()>,
    /// `{"meta":…,"updatedAt":…}`, sent to joiners. Lives while the room has members.
    meta: Option<Arc<str>>,
}

impl Room {
    /// One shared message for every member but `except` (a sender answered on its own, see
    /// [`Hub::publish_burst`]), compressed at most once for those that negotiated
    /// permessage-deflate.
    fn broadcast(&self, message: Outgoing, except: Option<ConnId>, delivery: &mut Delivery) {
        for (conn, member) in &self.members {
            if Some(*conn) != except {
                delivery.record(member.outbox.push(message.clone()), message.frames());
            }
        }
    }
}

type AppRooms = HashMap<Arc<str>, Room>;

/// The room state of a hub.
#[derive(Debug)]
pub struct Rooms {
    channels: RwLock<HashMap<AppName, AppRooms>>,
    history: Arc<dyn ChannelHistory>,
    presence: Arc<dyn PresenceStore>,
    config: RoomConfig,
}

impl Rooms {
    pub fn new(config: RoomConfig) -> Self {
        Rooms::with_stores(
            config.clone(),
            Arc::new(MemoryHistory::new(config.history.max_bytes)),
            Arc::new(MemoryPresence::default()),
        )
    }

    /// With other stores (several nodes share them).
    pub fn with_stores(
        config: RoomConfig,
        history: Arc<dyn ChannelHistory>,
        presence: Arc<dyn PresenceStore>,
    ) -> Self {
        Rooms {
            channels: RwLock::default(),
            history,
            presence,
            config,
        }
    }

    fn retention(&self, policy: &Policy) -> Retention {
        let global = self.config.history.retention;
        Retention {
            size: policy.history_size.unwrap_or(global.size),
            ttl: policy.history_ttl.unwrap_or(global.ttl),
        }
    }

    pub fn count(&self) -> usize {
        read(&self.channels).values().map(HashMap::len).sum()
    }

    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    pub fn presence_members(&self) -> usize {
        self.presence.member_count()
    }
}

/// A reply to one message of a burst's sender (see [`Hub::publish_burst`]).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The encoded reply frame (`ok`, or the refusal).
    pub reply: Bytes,
    /// The message is published: it is among the burst's data, in order.
    pub published: bool,
}

/// The sender's frames for a burst: each reply, followed by its own copy when it is a member.
fn answered(answers: &[Answer], copies: &[Bytes], member: bool) -> Vec<Bytes> {
    let mut copies = copies.iter().filter(|_| member);
    let mut own = Vec::with_capacity(answers.len() * 2);
    for answer in answers {
        own.push(answer.reply.clone());
        if answer.published {
            own.extend(copies.next().cloned());
        }
    }
    own
}

fn event(sid: &str, kind: &str, data: &str, channel: &str, offset: Option<u64>) -> Bytes {
    frame::text(&encode(&Envelope {
        sid,
        kind,
        data,
        channel,
        offset,
        ..Envelope::default()
    }))
}

fn chan_out(message: &StoredMessage, channel: &str) -> Bytes {
    event(
        &message.sid,
        "chan_out",
        &message.data,
        channel,
        Some(message.offset),
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A bounded JSON value from client text.
fn json_value(
    text: &str,
    max: usize,
    too_large: RoomError,
) -> Result<serde_json::Value, RoomError> {
    if text.len() > max {
        return Err(too_large);
    }
    serde_json::from_str(text).map_err(|_| RoomError::InvalidMeta)
}

#[derive(serde::Serialize)]
struct HistoryMessage<'a> {
    offset: u64,
    sid: &'a str,
    data: &'a str,
    timestamp: u64,
}

#[derive(serde::Serialize)]
struct HistoryReply<'a> {
    messages: Vec<HistoryMessage<'a>>,
    cursor: Option<u64>,
}

/// A join of a custom channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomJoin<'a> {
    /// The last offset the client saw.
    pub since: Option<u64>,
    /// JSON text of the member's presence metadata.
    pub meta: Option<&'a str>,
}

impl Hub {
    fn policy(&self, channel: &str) -> &Policy {
        self.rooms.config.rules.policy(channel)
    }

    pub fn is_room_member(&self, app: &str, channel: &str, conn: ConnId) -> bool {
        read(&self.rooms.channels)
            .get(app)
            .and_then(|rooms| rooms.get(channel))
            .is_some_and(|room| room.members.contains_key(&conn))
    }

    /// Joins a custom channel (idempotent). `reply` builds the `joined` frame; with `since`,
    /// every held message after it follows, then the room metadata if set, then live traffic.
    pub fn join_room(
        &self,
        subscriber: &Arc<Subscriber>,
        sid: &str,
        channel: &str,
        join: RoomJoin<'_>,
        reply: impl FnOnce(Joined) -> Bytes,
    ) -> Result<(), RoomError> {
        let policy = self.policy(channel);
        policy.may_join(channel, subscriber.identity())?;
        let meta = match join.meta {
            Some(text) if policy.presence => json_value(
                text,
                self.rooms.config.presence_max_meta_bytes,
                RoomError::PresenceMetaTooLarge,
            )?,
            _ => serde_json::Value::Null,
        };
        let app = &subscriber.reader.app;
        let key = ChannelKey::new(app, channel);
        let mut channels = write(&self.rooms.channels);
        let room = channels
            .entry(Arc::clone(app))
            .or_default()
            .entry(Arc::clone(&key.name))
            .or_default();
        match join.since {
            None => {
                subscriber.outbox.push(reply(Joined::Live));
            }
            Some(since) => {
                let held = policy
                    .history
                    .then(|| self.rooms.history.after(&key, since))
                    .flatten();
                subscriber.outbox.push(reply(Joined::Resumed {
                    recovered: held.is_some(),
                }));
                for message in held.iter().flatten() {
                    subscriber.outbox.push(chan_out(message, channel));
                }
            }
        }
        if let Some(meta) = &room.meta {
            subscriber
                .outbox
                .push(event("", "room_meta", meta, channel, None));
        }
        let new = !room.members.contains_key(&subscriber.conn);
        if new {
            room.members.insert(
                subscriber.conn,
                RoomMember {
                    outbox: Arc::clone(&subscriber.outbox),
                    sid: sid.into(),
                },
            );
        }
        // Guests are not listed: they have no user to show.
        if new && policy.presence && !subscriber.guest {
            let member = Member {
                sid: sid.into(),
                user_id: subscriber.reader.user_id,
                account_id: subscriber.reader.account_id,
                meta,
            };
            let frame = event("", "presence_join", &member.to_json(), channel, None);
            self.rooms.presence.add(&key, member);
            room.broadcast(Outgoing::shared(frame), None, &mut Delivery::default());
        }
        Ok(())
    }

    /// Returns whether the connection was a member. An emptied room is dropped (with its
    /// metadata) so that abandoned names do not accumulate.
    pub(super) fn leave_room(&self, app: &str, conn: ConnId, channel: &str) -> bool {
        let mut channels = write(&self.rooms.channels);
        let Some(rooms) = channels.get_mut(app) else {
            return false;
        };
        let Some(room) = rooms.get_mut(channel) else {
            return false;
        };
        let Some(member) = room.members.remove(&conn) else {
            return false;
        };
        if self.policy(channel).presence {
            let key = ChannelKey {
                app: app.into(),
                name: channel.into(),
            };
            if let Some(gone) = self.rooms.presence.remove(&key, &member.sid) {
                let frame = event("", "presence_leave", &gone.to_json(), channel, None);
                room.broadcast(Outgoing::shared(frame), None, &mut Delivery::default());
            }
        }
        if room.members.is_empty() {
            rooms.remove(channel);
            if rooms.is_empty() {
                channels.remove(app);
            }
        }
        true
    }

    /// Whether connections that did not authenticate may join this channel (its rule has
    /// `auth = false`).
    pub fn admits_guests(&self, channel: &str) -> bool {
        !self.policy(channel).auth
    }

    /// Whether the channel rules let `actor` publish on this channel.
    pub fn may_publish(&self, app: &str, channel: &str, actor: Actor<'_>) -> Result<(), Denied> {
        let member = actor
            .conn()
            .is_some_and(|conn| self.is_room_member(app, channel, conn));
        let publisher = actor.publisher().ok_or(Denied::Write)?;
        self.policy(channel).may_publish(channel, publisher, member)
    }

    /// Publishes to a custom channel (`chan_in` or the server publish API, through
    /// `crate::publish::Publisher`): checks the rules, gives the message its offset and keeps
    /// it in history, then pushes the `chan_out` to every member.
    pub fn publish(
        &self,
        app: &str,
        channel: &str,
        actor: Actor<'_>,
        data: &str,
    ) -> Result<Delivery, RoomError> {
        self.publish_burst(app, channel, actor, &[data], &[])
    }

    /// [`Hub::publish`] for several messages of one sender to one channel, in order: they get
    /// consecutive offsets, and each member gets them as one queue entry (one push and one
    /// wake-up per member for the burst, not per message).
    ///
    /// `answers`: the sending connection's replies, one per message it sent (`data` holds the
    /// published ones), pushed with the burst under the room's order lock. A sender that is a
    /// member gets each reply right before its own copy, so every connection sees what it would
    /// have seen had the messages been published one by one. Empty: the caller has answered.
    /// Nothing is pushed when the rules refuse the burst.
    pub fn publish_burst(
        &self,
        app: &str,
        channel: &str,
        actor: Actor<'_>,
        data: &[&str],
        answers: &[Answer],
    ) -> Result<Delivery, RoomError> {
        self.may_publish(app, channel, actor)?;
        let policy = self.policy(channel);
        let mut delivery = Delivery::default();
        let channels = read(&self.rooms.channels);
        let room = channels.get(app).and_then(|rooms| rooms.get(channel));
        let _order = room.map(|room| lock(&room.order));
        let key = ChannelKey::new(&app.into(), channel);
        let frames: Vec<Bytes> = data
            .iter()
            .map(|data| {
                let offset = policy.history.then(|| {
                    self.rooms
                        .history
                        .append(&key, actor.sid(), data, self.rooms.retention(policy))
                });
                event(actor.sid(), "chan_out", data, channel, offset)
            })
            .collect();
        let sender = match actor {
            Actor::Connection { subscriber, .. } if !answers.is_empty() => Some(subscriber),
            _ => None,
        };
        let sender_member = sender
            .filter(|sender| room.is_some_and(|room| room.members.contains_key(&sender.conn)));
        if let Some(sender) = sender {
            let own = answered(answers, &frames, sender_member.is_some());
            let pushed = sender.outbox.push(Outgoing::burst(&own));
            if sender_member.is_some() {
                delivery.record(pushed, frames.len());
            }
        }
        if let Some(room) = room {
            let except = sender_member.map(|sender| sender.conn);
            room.broadcast(Outgoing::burst(&frames), except, &mut delivery);
        }
        Ok(delivery)
    }

    /// The `presence` reply's data: a JSON list of members (at most the configured number).
    pub fn presence(&self, subscriber: &Subscriber, channel: &str) -> Result<String, RoomError> {
        let policy = self.policy(channel);
        if !policy.presence {
            return Err(Denied::NoPresence.into());
        }
        let app = &subscriber.reader.app;
        let channels = read(&self.rooms.channels);
        let room = channels.get(&**app).and_then(|rooms| rooms.get(channel));
        let member = room.is_some_and(|room| room.members.contains_key(&subscriber.conn));
        policy.may_read(channel, subscriber.identity(), member)?;
        // Members whose connection is already closing (slow consumer) are on their way out.
        let closing: Vec<&str> = room
            .map(|room| {
                room.members
                    .values()
                    .filter(|m| m.outbox.is_closing())
                    .map(|m| &*m.sid)
                    .collect()
            })
            .unwrap_or_default();
        let limit = self.rooms.config.presence_max_members;
        let members: Vec<Member> = self
            .rooms
            .presence
            .list(&ChannelKey::new(app, channel), limit + closing.len())
            .into_iter()
            .filter(|m| !closing.contains(&&*m.sid))
            .take(limit)
            .collect();
        Ok(serde_json::to_string(&members).unwrap_or_else(|_| "[]".to_owned()))
    }

    /// The `history` reply's data: `{"messages":[{offset,sid,data,timestamp}…],"cursor":…}`.
    pub fn history(
        &self,
        subscriber: &Subscriber,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<String, RoomError> {
        let policy = self.policy(channel);
        if !policy.history {
            return Err(Denied::NoHistory.into());
        }
        let app = &subscriber.reader.app;
        let member = self.is_room_member(app, channel, subscriber.conn);
        policy.may_read(channel, subscriber.identity(), member)?;
        let page = self
            .rooms
            .history
            .page(&ChannelKey::new(app, channel), query);
        let reply = HistoryReply {
            messages: page
                .messages
                .iter()
                .map(|m| HistoryMessage {
                    offset: m.offset,
                    sid: &m.sid,
                    data: &m.data,
                    timestamp: m.at_ms,
                })
                .collect(),
            cursor: page.next,
        };
        Ok(serde_json::to_string(&reply).unwrap_or_default())
    }

    /// The room metadata (`{"meta":…,"updatedAt":…}`), or `""` when none is set.
    pub fn room_meta(&self, subscriber: &Subscriber, channel: &str) -> Result<String, RoomError> {
        let policy = self.policy(channel);
        let app = &subscriber.reader.app;
        let channels = read(&self.rooms.channels);
        let room = channels.get(&**app).and_then(|rooms| rooms.get(channel));
        let member = room.is_some_and(|room| room.members.contains_key(&subscriber.conn));
        policy.may_read(channel, subscriber.identity(), member)?;
        Ok(room
            .and_then(|room| room.meta.as_deref())
            .unwrap_or_default()
            .to_owned())
    }

    /// Sets the room metadata and sends it (`room_meta`) to every member, after `ack` to the
    /// setter.
    pub fn set_room_meta(
        &self,
        subscriber: &Subscriber,
        sid: &str,
        channel: &str,
        meta: &str,
        ack: Bytes,
    ) -> Result<Delivery, RoomError> {
        let policy = self.policy(channel);
        let value = json_value(
            meta,
            self.rooms.config.room_meta_max_bytes,
            RoomError::RoomMetaTooLarge,
        )?;
        let app = &subscriber.reader.app;
        let mut channels = write(&self.rooms.channels);
        let room = channels
            .get_mut(&**app)
            .and_then(|rooms| rooms.get_mut(channel));
        let member = room
            .as_ref()
            .is_some_and(|room| room.members.contains_key(&subscriber.conn));
        let who = subscriber.identity().ok_or(Denied::RoomMeta)?;
        policy.may_set_room_meta(who, member)?;
        // Root may set it without being a member, but only on a room that exists.
        let Some(room) = room else {
            return Err(Denied::RoomMeta.into());
        };
        let text: Arc<str> = serde_json::json!({"meta": value, "updatedAt": unix_ms()})
            .to_string()
            .into();
        room.meta = Some(Arc::clone(&text));
        subscriber.outbox.push(ack);
        let mut delivery = Delivery::default();
        room.broadcast(
            Outgoing::shared(event(sid, "room_meta", &text, channel, None)),
            None,
            &mut delivery,
        );
        Ok(delivery)
    }

    /// Destroys a custom channel: every member gets `destroyed` and is removed; presence,
    /// metadata and history are dropped. Returns how many members there were.
    pub fn destroy(&self, app: &str, channel: &str, actor: Actor<'_>) -> Result<usize, RoomError> {
        Policy::may_destroy(actor.publisher().ok_or(Denied::Destroy)?)?;
        let key = ChannelKey::new(&app.into(), channel);
        let mut channels = write(&self.rooms.channels);
        let room = channels
            .get_mut(app)
            .and_then(|rooms| rooms.remove(channel));
        if channels.get(app).is_some_and(HashMap::is_empty) {
            channels.remove(app);
        }
        self.rooms.presence.remove_channel(&key);
        self.rooms.history.remove(&key);
        let Some(room) = room else {
            return Ok(0);
        };
        room.broadcast(
            Outgoing::shared(event("", "destroyed", channel, channel, None)),
            None,
            &mut Delivery::default(),
        );
        Ok(room.members.len())
    }
}
