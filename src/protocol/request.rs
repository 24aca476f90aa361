//! What a client asks for, parsed once from a [`ClientMessage`] into a [`Request`]
//! (PROTOCOL.md §3). An unknown `type` is an error value carrying the type, answered
//! `<type> command not found`.
//!
//! Adding a request: a variant here, its arm in [`Request::from_message`] (the only place that
//! reads the `type` string), and its arm in the session's `handle` (the compiler asks for it).

use super::{Channel, ChannelError, ChannelKind, ClientMessage, HistoryQuery, InvalidHistoryQuery};
use crate::event::Position;
use crate::livequery::{Filter, FilterError};
use walcast_replication::Lsn;

/// Where a `join` resumes: an event position (or bare LSN) on a database channel, a history
/// offset on a custom one (\[ext\]). An unreadable one is [`Lsn::ZERO`] / offset 0, which nothing
/// holds, so the client is told to reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Position(Position),
    Offset(u64),
}

/// One client request, its fields already typed. Fields a request does not use are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `echo`: answered with `echo: <data>`, channel and token sent back as they came.
    Echo {
        data: String,
        channel: String,
        token: String,
    },
    /// `auth`: `jwt` is the StaticBackend session token (the frame's `data`).
    Auth { jwt: String },
    /// `join`.
    Join(JoinRequest),
    /// `leave`: any name; leaving a channel one is not in is answered like any other leave.
    Leave { token: String, channel: String },
    /// `chan_in`: publish `data` to a custom channel. \[ext\] `idempotency_key`: a retry with
    /// the same key within the window is answered `ok` and not delivered again.
    ChanIn {
        token: String,
        channel: Result<Channel, ChannelError>,
        data: String,
        idempotency_key: Option<String>,
    },
    /// `presence` \[ext\]: the members of the custom channel named in `channel`.
    Presence {
        token: String,
        channel: Result<Channel, ChannelError>,
    },
    /// `history` \[ext\]: a page of the custom channel's history; `data` is the query.
    History {
        token: String,
        channel: Result<Channel, ChannelError>,
        query: Result<HistoryQuery, InvalidHistoryQuery>,
    },
    /// `room_meta` \[ext\]: empty `data` reads the room's metadata, else sets it to `data` (JSON).
    RoomMeta {
        token: String,
        channel: Result<Channel, ChannelError>,
        data: String,
    },
    /// `destroy` \[ext\]: ends the custom channel; its members get `destroyed`.
    Destroy {
        token: String,
        channel: Result<Channel, ChannelError>,
    },
}

/// `join`: the channel is refused only after the token is checked, so its parse error is kept,
/// not raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub token: String,
    pub channel: Result<Channel, ChannelError>,
    /// The resume point (PROTOCOL.md §8): an event position or a bare LSN on a database
    /// channel, an offset on a custom one.
    pub since: Option<Since>,
    /// \[ext\] `"snapshot": true`: the readable rows first, then live changes.
    pub snapshot: bool,
    /// \[ext\] A subscription filter, parsed here; its refusal is kept, like the channel's.
    pub filter: Option<Result<Filter, FilterError>>,
    /// \[ext\] The JSON text of the member's presence metadata.
    pub meta: Option<String>,
}

/// A room request's channel, named in `channel`: missing, else any valid name (a database
/// channel is refused later, by the request).
fn room_channel(name: &str) -> Result<Channel, ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Missing);
    }
    Channel::parse(name)
}

/// A message whose `type` names no request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0} command not found")]
    UnknownType(String),
}

impl Request {
    /// The request a parsed client message asks for.
    pub fn from_message(message: ClientMessage) -> Result<Request, RequestError> {
        let ClientMessage {
            sid: _,
            kind,
            data,
            channel,
            token,
            since,
            idempotency_key,
            snapshot,
            filter,
            meta,
        } = message;
        match kind.as_str() {
            "echo" => Ok(Request::Echo {
                data,
                channel,
                token,
            }),
            "auth" => Ok(Request::Auth { jwt: data }),
            "join" => {
                let channel = Channel::parse(&data);
                let since = since.map(|s| match channel.as_ref().map(Channel::kind) {
                    Ok(ChannelKind::Db { .. }) => {
                        Since::Position(s.parse().unwrap_or(Position::after_transaction(Lsn::ZERO)))
                    }
                    _ => Since::Offset(s.parse().unwrap_or(0)),
                });
                Ok(Request::Join(JoinRequest {
                    token,
                    channel,
                    since,
                    snapshot,
                    filter: filter.as_ref().map(Filter::parse),
                    meta,
                }))
            }
            "leave" => Ok(Request::Leave {
                token,
                channel: data,
            }),
            "chan_in" => Ok(Request::ChanIn {
                token,
                channel: Channel::parse_writable(&channel),
                data,
                idempotency_key,
            }),
            "presence" => Ok(Request::Presence {
                token,
                channel: room_channel(&channel),
            }),
            "history" => Ok(Request::History {
                token,
                channel: room_channel(&channel),
                query: HistoryQuery::parse(&data),
            }),
            "room_meta" => Ok(Request::RoomMeta {
                token,
                channel: room_channel(&channel),
                data,
            }),
            "destroy" => Ok(Request::Destroy {
                token,
                channel: room_channel(&channel),
            }),
            _ => Err(RequestError::UnknownType(kind)),
        }
    }

    /// The wire `type` of this request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Echo { .. } => "echo",
            Request::Auth { .. } => "auth",
            Request::Join(_) => "join",
            Request::Leave { .. } => "leave",
            Request::ChanIn { .. } => "chan_in",
            Request::Presence { .. } => "presence",
            Request::History { .. } => "history",
            Request::RoomMeta { .. } => "room_meta",
            Request::Destroy { .. } => "destroy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_client;

    fn request(frame: &str) -> Result<Request, RequestError> {
        Request::from_message(parse_client(frame.as_bytes()).unwrap())
    }

    fn join(frame: &str) -> JoinRequest {
        match request(frame) {
            Ok(Request::Join(join)) => join,
            other => panic!("not a join: {other:?}"),
        }
    }

    #[test]
    fn each_type() {
        assert_eq!(
            request(r#"{"type":"echo","data":"d","channel":"c","token":"t"}"#),
            Ok(Request::Echo {
                data: "d".into(),
                channel: "c".into(),
                token: "t".into()
            })
        );
        assert_eq!(
            request(r#"{"type":"auth","data":"jwt"}"#),
            Ok(Request::Auth { jwt: "jwt".into() })
        );
        assert_eq!(
            request(r#"{"type":"leave","data":"room","token":"t"}"#),
            Ok(Request::Leave {
                token: "t".into(),
                channel: "room".into()
            })
        );
        let db = join(r#"{"type":"join","data":"db-x","token":"t","since":"0/16B3748"}"#);
        assert_eq!(db.token, "t");
        assert_eq!(db.channel.map(|c| c.name().to_owned()), Ok("db-x".into()));
        assert_eq!(
            db.since,
            Some(Since::Position(Position::after_transaction(Lsn(0x16B3748))))
        );
        assert!(!db.snapshot);
        assert_eq!(db.filter, None);
        assert_eq!(db.meta, None);
        let live = join(r#"{"type":"join","data":"db-x","snapshot":true,"filter":[["a","eq",1]]}"#);
        assert!(live.snapshot);
        assert!(live
            .filter
            .is_some_and(|f| f.is_ok_and(|f| f.predicates().len() == 1)));
        let room =
            join(r#"{"type":"join","data":"presence-x","since":17,"meta":{"status":"online"}}"#);
        assert_eq!(room.since, Some(Since::Offset(17)));
        assert_eq!(room.meta.as_deref(), Some(r#"{"status":"online"}"#));
        let Ok(Request::History { channel, query, .. }) = request(
            r#"{"type":"history","channel":"room","data":"{\"cursor\":\"9\",\"limit\":2}"}"#,
        ) else {
            panic!("not a history");
        };
        assert_eq!(channel.map(|c| c.name().to_owned()), Ok("room".into()));
        assert_eq!(
            query,
            Ok(HistoryQuery::Before {
                cursor: Some(9),
                limit: 2
            })
        );
        let Ok(Request::Presence { channel, .. }) = request(r#"{"type":"presence","data":"room"}"#)
        else {
            panic!("not a presence");
        };
        assert_eq!(
            channel.err(),
            Some(ChannelError::Missing),
            "the name is in `channel`"
        );
        let Ok(Request::ChanIn { channel, data, .. }) =
            request(r#"{"type":"chan_in","channel":"room","data":"hi"}"#)
        else {
            panic!("not a chan_in");
        };
        assert_eq!(channel.map(|c| c.name().to_owned()), Ok("room".into()));
        assert_eq!(data, "hi");
    }

    #[test]
    fn kind_names_the_parsed_type() {
        for kind in [
            "echo",
            "auth",
            "join",
            "leave",
            "chan_in",
            "presence",
            "history",
            "room_meta",
            "destroy",
        ] {
            let frame = format!(r#"{{"type":"{kind}","data":"x","channel":"y"}}"#);
            assert_eq!(request(&frame).map(|r| r.kind()), Ok(kind));
        }
    }

    #[test]
    fn channel_refusals_are_kept_for_later() {
        let channel = join(r#"{"type":"join","data":"sbsys"}"#).channel;
        assert_eq!(channel.err(), Some(ChannelError::Reserved));
        let Ok(Request::ChanIn { channel, .. }) = request(r#"{"type":"chan_in","channel":"DB-x"}"#)
        else {
            panic!("not a chan_in");
        };
        assert_eq!(channel.err(), Some(ChannelError::NotWritable));
    }

    #[test]
    fn unreadable_since_is_zero_and_empty_since_is_none() {
        let since = |frame: &str| join(frame).since;
        assert_eq!(
            since(r#"{"type":"join","data":"db-x","since":"soon"}"#),
            Some(Since::Position(Position::after_transaction(Lsn::ZERO)))
        );
        assert_eq!(
            since(r#"{"type":"join","data":"db-x","since":"0/16B3748:7"}"#),
            Some(Since::Position(Position::new(Lsn(0x16B3748), 7)))
        );
        assert_eq!(
            since(r#"{"type":"join","data":"room","since":"soon"}"#),
            Some(Since::Offset(0))
        );
        assert_eq!(since(r#"{"type":"join","data":"db-x","since":""}"#), None);
    }

    #[test]
    fn unknown_type_is_an_error_carrying_it() {
        let unknown = request(r#"{"type":"JOIN"}"#).unwrap_err();
        assert_eq!(unknown, RequestError::UnknownType("JOIN".into()));
        assert_eq!(unknown.to_string(), "JOIN command not found");
        assert_eq!(request("{}").unwrap_err().to_string(), " command not found");
    }
}
