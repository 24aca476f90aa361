//! One connection's protocol state machine: typed requests in, replies and hub calls out
//! (PROTOCOL.md §3).

mod burst;
mod rooms;

use super::limits::{AppSlot, RateLimiter};
use super::WsContext;
use crate::auth::{constant_time_eq, AuthError};
use crate::event::Position;
use crate::hub::{Actor, ConnId, Delivery, Joined, Outbox, RoomError, RoomJoin, Subscriber};
use crate::livequery::{SnapshotError, SnapshotJoin};
use crate::permission::Reader;
use crate::protocol::{
    encode, frame, Channel, ChannelError, ChannelKind, ClientMessage, CloseReason, Envelope,
    JoinRequest, ParseError, Request, Since,
};
use crate::publish::Outgoing;
use rand::Rng;
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use walcast_replication::Lsn;

/// `snapshot` and `filter` on a channel that carries no documents.
const LIVE_QUERY_CHANNELS: &str = "snapshot and filter apply to db- channels only";

/// What the reader loop must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Close the connection with this code and reason (after the replies already queued).
    Close(CloseReason),
}

/// The transport a session speaks over. The protocol is the same; only the token differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `auth` issues a random token bound to the connection (PROTOCOL.md §3).
    WebSocket,
    /// Server-Sent Events (§1b): the published client sends its session JWT as `token` on
    /// every message, so the token is the JWT that authenticated, and once authenticated every
    /// message must carry it.
    EventStream,
}

struct Authed {
    subscriber: Arc<Subscriber>,
    token: String,
    _app_slot: AppSlot,
}

/// A connection that named its app (`sbpk`) and acts without `auth`: only on custom channels
/// whose rule has `auth = false` (the hub's rules decide).
struct Guest {
    subscriber: Arc<Subscriber>,
    _app_slot: AppSlot,
}

/// One connection's protocol state. Lives in the connection's reader task; messages are handled
/// one at a time, in order, which is what keeps a sender's messages ordered for every member.
pub struct Session {
    ctx: Arc<WsContext>,
    conn: ConnId,
    sid: String,
    outbox: Arc<Outbox>,
    app_key: Option<String>,
    authed: Option<Authed>,
    guest: Option<Guest>,
    joined: HashSet<Channel>,
    rate: RateLimiter,
    transport: Transport,
}

impl Session {
    pub fn new(
        ctx: Arc<WsContext>,
        conn: ConnId,
        outbox: Arc<Outbox>,
        app_key: Option<String>,
        transport: Transport,
    ) -> Self {
        let rate = RateLimiter::new(ctx.config.rate_per_sec, ctx.config.rate_burst);
        Session {
            ctx,
            conn,
            sid: uuid::Uuid::new_v4().to_string(),
            outbox,
            app_key,
            authed: None,
            guest: None,
            joined: HashSet::new(),
            rate,
            transport,
        }
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    fn push(&self, envelope: &Envelope<'_>) {
        self.outbox.push(frame::text(&encode(envelope)));
    }

    fn reply(&self, kind: &str, data: &str) {
        self.push(&Envelope::reply(&self.sid, kind, data));
    }

    fn error(&self, message: &str) {
        self.reply("error", message);
    }

    pub fn send_init(&self) {
        self.push(&Envelope::reply("", "init", &self.sid));
    }

    /// A message its transport already parsed (SSE reads the sid to find the session).
    pub async fn handle_parsed(&mut self, parsed: Result<ClientMessage, ParseError>) -> Next {
        if !self.admit() {
            return Next::Continue;
        }
        self.dispatch(parsed).await
    }

    fn admit(&mut self) -> bool {
        let allowed = self.rate.allow();
        if !allowed {
            self.refuse_rate();
        }
        allowed
    }

    fn refuse_rate(&self) {
        self.ctx.telemetry.drop_reason("rate_limited", 1);
        self.error("rate limit exceeded");
    }

    /// On SSE an authenticated session accepts only messages carrying its token.
    fn bound_to(&self, token: &str) -> bool {
        match (&self.authed, self.transport) {
            (Some(authed), Transport::EventStream) => {
                constant_time_eq(authed.token.as_bytes(), token.as_bytes())
            }
            _ => true,
        }
    }

    async fn dispatch(&mut self, parsed: Result<ClientMessage, ParseError>) -> Next {
        match self.request(parsed) {
            Ok(request) => self.serve(request).await,
            Err(refused) => {
                self.error(&refused);
                Next::Continue
            }
        }
    }

    /// The request a parsed message makes, or why it is refused (the `error` text), before
    /// anything is answered: a burst answers what came before it first.
    fn request(
        &self,
        parsed: Result<ClientMessage, ParseError>,
    ) -> Result<Request, Cow<'static, str>> {
        let msg = parsed.map_err(|_| Cow::Borrowed(ParseError::CLIENT_MESSAGE))?;
        if msg.sid != self.sid {
            return Err("invalid sid".into());
        }
        if !self.bound_to(&msg.token) {
            return Err("invalid token".into());
        }
        Request::from_message(msg).map_err(|unknown| unknown.to_string().into())
    }

    async fn serve(&mut self, request: Request) -> Next {
        match request {
            Request::Echo {
                data,
                channel,
                token,
            } => {
                let data = format!("echo: {data}");
                self.push(&Envelope {
                    sid: &self.sid,
                    kind: "echo",
                    data: &data,
                    channel: &channel,
                    token: &token,
                    ..Envelope::default()
                });
            }
            Request::Auth { jwt } => return self.auth(&jwt).await,
            Request::Join(join) => self.join(join).await,
            Request::Leave { token, channel } => self.leave(&token, &channel),
            Request::ChanIn {
                token,
                channel,
                data,
                idempotency_key,
            } => {
                self.chan_in(&token, channel, &data, idempotency_key.as_deref())
                    .await
            }
            Request::Presence { token, channel } => self.presence(&token, channel).await,
            Request::History {
                token,
                channel,
                query,
            } => self.history(&token, channel, query).await,
            Request::RoomMeta {
                token,
                channel,
                data,
            } => self.room_meta(&token, channel, &data).await,
            Request::Destroy { token, channel } => self.destroy(&token, channel),
        }
        Next::Continue
    }

    async fn auth(&mut self, jwt: &str) -> Next {
        let reader = match self
            .ctx
            .auth
            .authenticate(jwt, self.app_key.as_deref())
            .await
        {
            Ok(reader) => reader,
            Err(AuthError::Invalid) => {
                self.error("invalid token");
                return Next::Continue;
            }
            Err(error) => {
                tracing::warn!(
                    conn = self.conn,
                    error = &error as &dyn std::error::Error,
                    "auth lookup failed"
                );
                self.error("invalid token");
                return Next::Continue;
            }
        };
        // A connection authenticates as one user at a time: a new identity starts clean.
        self.leave_all();
        self.authed = None;
        self.guest = None;
        let reader = Arc::new(reader);
        let Some(app_slot) = self.ctx.limits.acquire_app(&reader.app) else {
            self.ctx.telemetry.drop_reason("connection_limit", 1);
            self.error(CloseReason::ConnectionLimit.text());
            return Next::Close(CloseReason::ConnectionLimit);
        };
        let token = match self.transport {
            Transport::WebSocket => random_token(),
            Transport::EventStream => jwt.to_owned(),
        };
        self.authed = Some(Authed {
            subscriber: Arc::new(Subscriber {
                conn: self.conn,
                reader,
                outbox: Arc::clone(&self.outbox),
                guest: false,
            }),
            token: token.clone(),
            _app_slot: app_slot,
        });
        self.reply("token", &token);
        Next::Continue
    }

    /// The subscriber behind a valid websocket token, or `invalid token` sent.
    fn check_token(&self, token: &str) -> Option<Arc<Subscriber>> {
        match &self.authed {
            Some(authed)
                if !token.is_empty()
                    && constant_time_eq(authed.token.as_bytes(), token.as_bytes()) =>
            {
                Some(Arc::clone(&authed.subscriber))
            }
            _ => {
                self.error("invalid token");
                None
            }
        }
    }

    /// The subscriber and channel of a join or publish, or the refusal sent. The token is
    /// checked before the channel, so an unauthenticated client learns nothing about names.
    fn authorize(
        &self,
        token: &str,
        channel: Result<Channel, ChannelError>,
    ) -> Option<(Arc<Subscriber>, Channel)> {
        let subscriber = self.check_token(token)?;
        let channel = self.valid_channel(channel)?;
        Some((subscriber, channel))
    }

    /// The channel named in a request, or its refusal (`invalid channel name`, ...) sent.
    fn valid_channel(&self, channel: Result<Channel, ChannelError>) -> Option<Channel> {
        channel
            .inspect_err(|refused| self.error(refused.message()))
            .ok()
    }

    /// Like [`Session::check_token`], but a connection that has not authenticated, sends no
    /// token and named its app acts as that app's guest (rules decide what a guest may do).
    ///
    /// `channel` is the channel asked for: only one whose rule has `auth = false` takes guests;
    /// for any other, a missing token is `invalid token`, as without rules.
    async fn caller(
        &mut self,
        token: &str,
        channel: &Result<Channel, ChannelError>,
    ) -> Option<Arc<Subscriber>> {
        let open = channel
            .as_ref()
            .is_ok_and(|c| self.ctx.hub.admits_guests(c.name()));
        if self.authed.is_some() || !token.is_empty() || !open {
            return self.check_token(token);
        }
        if let Some(guest) = &self.guest {
            return Some(Arc::clone(&guest.subscriber));
        }
        let Some(app_key) = self.app_key.as_deref() else {
            self.error("invalid token");
            return None;
        };
        let app = match self.ctx.auth.app(app_key).await {
            Ok(app) => app,
            Err(error) => {
                if !matches!(error, AuthError::Invalid) {
                    tracing::warn!(
                        conn = self.conn,
                        error = &error as &dyn std::error::Error,
                        "app lookup failed"
                    );
                }
                self.error("invalid token");
                return None;
            }
        };
        let Some(app_slot) = self.ctx.limits.acquire_app(&app) else {
            self.ctx.telemetry.drop_reason("connection_limit", 1);
            self.error(CloseReason::ConnectionLimit.text());
            return None;
        };
        let subscriber = Arc::new(Subscriber {
            conn: self.conn,
            reader: Arc::new(Reader {
                app,
                user_id: uuid::Uuid::nil(),
                account_id: None,
                role: 0,
            }),
            outbox: Arc::clone(&self.outbox),
            guest: true,
        });
        self.guest = Some(Guest {
            subscriber: Arc::clone(&subscriber),
            _app_slot: app_slot,
        });
        Some(subscriber)
    }

    async fn join(&mut self, request: JoinRequest) {
        let JoinRequest {
            token,
            channel,
            since,
            snapshot,
            filter,
            meta,
        } = request;
        let Some(subscriber) = self.caller(&token, &channel).await else {
            return;
        };
        let Some(channel) = self.valid_channel(channel) else {
            return;
        };
        if subscriber.guest && matches!(channel.kind(), ChannelKind::Db { .. }) {
            self.error("invalid token");
            return;
        }
        if !self.joined.contains(&channel) && self.joined.len() >= self.ctx.config.max_channels {
            // Rooms destroyed since they were joined no longer count.
            let (hub, app, conn) = (&self.ctx.hub, &subscriber.reader.app, self.conn);
            self.joined.retain(|c| match c.kind() {
                ChannelKind::Db { .. } => true,
                ChannelKind::Custom => hub.is_room_member(app, c.name(), conn),
            });
            if self.joined.len() >= self.ctx.config.max_channels {
                self.error("channel limit reached");
                return;
            }
        }
        // Every live-query refusal comes before anything changes.
        let filter = match filter {
            None => None,
            Some(Ok(filter)) if filter.predicates().is_empty() => None,
            Some(Ok(filter)) => Some(Arc::new(filter)),
            Some(Err(refused)) => {
                self.error(&refused.to_string());
                return;
            }
        };
        let is_db = matches!(channel.kind(), ChannelKind::Db { .. });
        if !is_db && (snapshot || filter.is_some()) {
            self.error(LIVE_QUERY_CHANNELS);
            return;
        }
        let sid = self.sid.clone();
        let name = channel.name().to_owned();
        let joined = |joined: Joined| {
            let recovered = match joined {
                Joined::Live => None,
                Joined::Resumed { recovered } => Some(recovered),
            };
            frame::text(&encode(&Envelope {
                sid: &sid,
                kind: "joined",
                data: &name,
                recovered,
                ..Envelope::default()
            }))
        };
        match (channel.kind(), since) {
            (ChannelKind::Db { .. }, since) if snapshot => {
                if since.is_some() {
                    self.error(&SnapshotError::WithSince.to_string());
                    return;
                }
                let was_member = !self.joined.insert(channel.clone());
                let join = SnapshotJoin {
                    subscriber: &subscriber,
                    channel: &channel,
                    filter,
                };
                let served = self
                    .ctx
                    .snapshots
                    .serve(&self.ctx.hub, join, joined(Joined::Live))
                    .await;
                if let Err(error) = served {
                    // Refused before registering (busy), a previous membership stays.
                    if !(was_member && matches!(error, SnapshotError::Busy)) {
                        self.joined.remove(&channel);
                    }
                    if matches!(
                        error,
                        SnapshotError::Database(_)
                            | SnapshotError::Pool(_)
                            | SnapshotError::Unreadable(_)
                    ) {
                        tracing::warn!(
                            conn = self.conn,
                            channel = %channel,
                            error = &error as &dyn std::error::Error,
                            "snapshot failed"
                        );
                    }
                    self.ctx.telemetry.drop_reason("snapshot_refused", 1);
                    self.error(&error.to_string());
                }
            }
            (ChannelKind::Db { .. }, since) => {
                // An offset is no commit position: 0/0 is never recoverable, so reload.
                let since = since.map(|since| match since {
                    Since::Position(position) => position,
                    Since::Offset(_) => Position::after_transaction(Lsn::ZERO),
                });
                let result = self
                    .ctx
                    .hub
                    .join(&subscriber, &channel, since, filter, joined);
                self.joined_or_refused(channel, result);
            }
            (ChannelKind::Custom, since) => {
                let join = RoomJoin {
                    since: since.map(|since| match since {
                        Since::Offset(offset) => offset,
                        Since::Position(_) => 0,
                    }),
                    meta: meta.as_deref(),
                };
                let result =
                    self.ctx
                        .hub
                        .join_room(&subscriber, &sid, channel.name(), join, joined);
                self.joined_or_refused(channel, result);
            }
        }
    }

    fn joined_or_refused(&mut self, channel: Channel, result: Result<(), RoomError>) {
        match result {
            Ok(()) => {
                self.joined.insert(channel);
            }
            Err(refused) => self.error(refused.message()),
        }
    }

    fn leave(&mut self, token: &str, name: &str) {
        let guest = match &self.guest {
            Some(guest) if token.is_empty() && self.authed.is_none() => {
                Some(Arc::clone(&guest.subscriber))
            }
            _ => None,
        };
        let Some(subscriber) = guest.or_else(|| self.check_token(token)) else {
            return;
        };
        if let Some(channel) = self.joined.take(name) {
            self.ctx
                .hub
                .leave(&subscriber.reader.app, self.conn, &channel);
        }
        self.reply("left", name);
    }

    async fn chan_in(
        &self,
        token: &str,
        channel: Result<Channel, ChannelError>,
        data: &str,
        idempotency_key: Option<&str>,
    ) {
        let Some((subscriber, channel)) = self.authorize(token, channel) else {
            return;
        };
        let outgoing = Outgoing {
            app: &subscriber.reader.app,
            channel: &channel,
            data,
            sender: Actor::Connection {
                subscriber: &subscriber,
                sid: &self.sid,
            },
            idempotency_key,
        };
        // `ok` is queued before the fanout so the sender sees it ahead of its own copy.
        let published = self
            .ctx
            .publisher
            .publish(outgoing, || self.reply("ok", ""))
            .await;
        if let Err(refused) = published {
            self.error(refused.message());
        }
    }

    fn delivered(&self, delivery: Delivery) {
        self.ctx.telemetry.delivered(delivery.delivered);
        self.ctx
            .telemetry
            .drop_reason("slow_consumer", delivery.slow_consumers);
    }

    /// Removes every membership; called on re-auth and when the connection ends.
    pub fn leave_all(&mut self) {
        let subscriber = match (&self.authed, &self.guest) {
            (Some(authed), _) => Some(&authed.subscriber),
            (None, Some(guest)) => Some(&guest.subscriber),
            (None, None) => None,
        };
        if let Some(subscriber) = subscriber {
            let app = &subscriber.reader.app;
            for channel in self.joined.drain() {
                self.ctx.hub.leave(app, self.conn, &channel);
            }
        }
        self.joined.clear();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_all();
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
