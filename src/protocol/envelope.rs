//! Server → client envelopes and their JSON encoding.

use serde::Serialize;

/// A server → client message. Keys serialise in the order StaticBackend clients expect; the
/// `[ext]` keys follow the five and are omitted when unused.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Envelope<'a> {
    pub sid: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub data: &'a str,
    pub channel: &'a str,
    pub token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsn: Option<&'a str>,
    /// The event's `crate::event::Position`: what `since` takes to resume right after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// A custom-channel message's offset in its channel's history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl<'a> Envelope<'a> {
    pub fn reply(sid: &'a str, kind: &'a str, data: &'a str) -> Self {
        Envelope {
            sid,
            kind,
            data,
            ..Envelope::default()
        }
    }
}

/// JSON text of an envelope. Serialising borrowed strings into a Vec cannot fail.
pub fn encode(envelope: &Envelope<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + envelope.sid.len()
            + envelope.kind.len()
            + envelope.data.len()
            + envelope.channel.len()
            + envelope.token.len(),
    );
    if serde_json::to_writer(&mut out, envelope).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_keys_in_order() {
        let text = encode(&Envelope::reply("", "init", "abc"));
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"sid":"","type":"init","data":"abc","channel":"","token":""}"#
        );
    }

    #[test]
    fn extensions_follow_and_escape() {
        let text = encode(&Envelope {
            kind: "db_created",
            data: r#"{"a":"q\""}"#,
            channel: "db-x",
            lsn: Some("0/1"),
            ..Envelope::default()
        });
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"sid":"","type":"db_created","data":"{\"a\":\"q\\\"\"}","channel":"db-x","token":"","lsn":"0/1"}"#
        );
    }
}
