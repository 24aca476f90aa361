//! Room requests of a session ([ext]): `presence`, `history`, `room_meta`, `destroy`. Like
//! `chan_in`, each names its channel in `channel` and carries the websocket token in `token`.

use super::Session;
use crate::hub::{Actor, RoomError, Subscriber};
use crate::protocol::{
    encode, frame, Channel, ChannelError, ChannelKind, Envelope, HistoryQuery, InvalidHistoryQuery,
};
use crate::rules::{Denied, Policy, Publisher};
use std::sync::Arc;

impl Session {
    /// Token (or guest) and channel checks shared by the reading room requests, in `chan_in`'s
    /// order.
    async fn room_request(
        &mut self,
        token: &str,
        channel: Result<Channel, ChannelError>,
        db: Denied,
    ) -> Option<(Arc<Subscriber>, Channel)> {
        let subscriber = self.caller(token, &channel).await?;
        let channel = self.room_channel(channel, db)?;
        Some((subscriber, channel))
    }

    /// `db` is the refusal for a database channel (rooms are custom channels).
    fn room_channel(&self, channel: Result<Channel, ChannelError>, db: Denied) -> Option<Channel> {
        let channel = self.valid_channel(channel)?;
        if let ChannelKind::Db { .. } = channel.kind() {
            self.error(db.message());
            return None;
        }
        Some(channel)
    }

    fn answer(&self, kind: &str, channel: &Channel, result: Result<String, RoomError>) {
        match result {
            Ok(data) => self.push(&Envelope {
                sid: &self.sid,
                kind,
                data: &data,
                channel: channel.name(),
                ..Envelope::default()
            }),
            Err(refused) => self.error(refused.message()),
        }
    }

    pub(super) async fn presence(&mut self, token: &str, channel: Result<Channel, ChannelError>) {
        let Some((subscriber, channel)) =
            self.room_request(token, channel, Denied::NoPresence).await
        else {
            return;
        };
        let result = self.ctx.hub.presence(&subscriber, channel.name());
        self.answer("presence", &channel, result);
    }

    pub(super) async fn history(
        &mut self,
        token: &str,
        channel: Result<Channel, ChannelError>,
        query: Result<HistoryQuery, InvalidHistoryQuery>,
    ) {
        let Some((subscriber, channel)) =
            self.room_request(token, channel, Denied::NoHistory).await
        else {
            return;
        };
        let Ok(query) = query else {
            self.error(InvalidHistoryQuery::MESSAGE);
            return;
        };
        let result = self.ctx.hub.history(&subscriber, channel.name(), query);
        self.answer("history", &channel, result);
    }

    /// Empty `data` reads the metadata; otherwise `data` is the new metadata (JSON).
    pub(super) async fn room_meta(
        &mut self,
        token: &str,
        channel: Result<Channel, ChannelError>,
        data: &str,
    ) {
        let Some((subscriber, channel)) = self.room_request(token, channel, Denied::RoomMeta).await
        else {
            return;
        };
        if data.is_empty() {
            let result = self.ctx.hub.room_meta(&subscriber, channel.name());
            self.answer("room_meta", &channel, result);
            return;
        }
        let ok = frame::text(&encode(&Envelope::reply(&self.sid, "ok", "")));
        match self
            .ctx
            .hub
            .set_room_meta(&subscriber, &self.sid, channel.name(), data, ok)
        {
            Ok(delivery) => self.delivered(delivery),
            Err(refused) => self.error(refused.message()),
        }
    }

    pub(super) fn destroy(&self, token: &str, channel: Result<Channel, ChannelError>) {
        let Some(subscriber) = self.check_token(token) else {
            return;
        };
        let Some(channel) = self.room_channel(channel, Denied::Destroy) else {
            return;
        };
        if let Err(refused) = Policy::may_destroy(Publisher::User(&subscriber.reader)) {
            self.error(refused.message());
            return;
        }
        // `ok` first: a destroying member then sees its `destroyed` like everyone else.
        self.reply("ok", "");
        let actor = Actor::Connection {
            subscriber: &subscriber,
            sid: &self.sid,
        };
        if let Err(refused) = self
            .ctx
            .hub
            .destroy(&subscriber.reader.app, channel.name(), actor)
        {
            self.error(refused.message());
        }
    }
}
