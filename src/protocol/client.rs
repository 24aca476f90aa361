//! Client frame bytes → [`ClientMessage`]: the envelope's string fields, validated once.

use serde_json::{Map, Value};

/// A client frame after validation: the five envelope keys as strings (missing or `null` read as
/// empty), plus the `[ext]` keys: `since` (resume; a string, or a number for custom-channel
/// offsets), `idempotency_key` (`chan_in`; also spelled `idempotencyKey`), the live-query keys
/// of `join`: `snapshot` (`true` asks for one) and `filter` (kept as JSON, parsed into a
/// request), and `meta` (presence metadata at `join`, kept as JSON text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientMessage {
    pub sid: String,
    pub kind: String,
    pub data: String,
    pub channel: String,
    pub token: String,
    pub since: Option<String>,
    pub idempotency_key: Option<String>,
    pub snapshot: bool,
    pub filter: Option<Value>,
    pub meta: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is not a string")]
    NotAString(&'static str),
}

impl ParseError {
    /// Every parse failure gets the same answer on the wire.
    pub const CLIENT_MESSAGE: &'static str = "invalid message";
}

pub fn parse_client(frame: &[u8]) -> Result<ClientMessage, ParseError> {
    let mut object: Map<String, Value> =
        serde_json::from_slice(frame).map_err(|_| ParseError::NotAnObject)?;
    // Fields are read in the order written, so the first non-string key is the one reported.
    Ok(ClientMessage {
        sid: envelope_string(&mut object, "sid")?,
        kind: envelope_string(&mut object, "type")?,
        data: envelope_string(&mut object, "data")?,
        channel: envelope_string(&mut object, "channel")?,
        token: envelope_string(&mut object, "token")?,
        since: match object.remove("since") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        idempotency_key: ["idempotency_key", "idempotencyKey"]
            .into_iter()
            .find_map(|key| match object.remove(key) {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            }),
        snapshot: matches!(object.remove("snapshot"), Some(Value::Bool(true))),
        filter: match object.remove("filter") {
            None | Some(Value::Null) => None,
            // A client that keeps every value a string may send the filter as JSON text.
            Some(Value::String(text)) => {
                Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Some(value) => Some(value),
        },
        meta: match object.remove("meta") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.to_string()),
        },
    })
}

/// One of the five envelope keys: a string, missing or `null` read as empty.
fn envelope_string(
    object: &mut Map<String, Value>,
    key: &'static str,
) -> Result<String, ParseError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ParseError::NotAString(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_keys() {
        let m = parse_client(
            br#"{"sid":"s","type":"join","data":"d","channel":"c","token":"t","extra":1}"#,
        )
        .unwrap();
        assert_eq!(m.sid, "s");
        assert_eq!(m.kind, "join");
        assert_eq!(m.data, "d");
        assert_eq!(m.channel, "c");
        assert_eq!(m.token, "t");
        assert_eq!(m.since, None);
    }

    #[test]
    fn missing_and_null_are_empty() {
        let m = parse_client(br#"{"type":"echo","data":null}"#).unwrap();
        assert_eq!(m.kind, "echo");
        assert_eq!(m.data, "");
        assert_eq!(m.sid, "");
    }

    #[test]
    fn rejects_non_objects_and_non_strings() {
        assert_eq!(parse_client(b"[1,2]"), Err(ParseError::NotAnObject));
        assert_eq!(parse_client(b"hello"), Err(ParseError::NotAnObject));
        assert_eq!(parse_client(b"\"str\""), Err(ParseError::NotAnObject));
        assert_eq!(parse_client(b""), Err(ParseError::NotAnObject));
        assert_eq!(
            parse_client(br#"{"type":1}"#),
            Err(ParseError::NotAString("type"))
        );
        assert_eq!(
            parse_client(br#"{"data":{"a":1}}"#),
            Err(ParseError::NotAString("data"))
        );
    }

    #[test]
    fn idempotency_key_extension() {
        let m = parse_client(br#"{"type":"chan_in","idempotency_key":"k1"}"#).unwrap();
        assert_eq!(m.idempotency_key.as_deref(), Some("k1"));
        let m = parse_client(br#"{"type":"chan_in","idempotencyKey":"k2"}"#).unwrap();
        assert_eq!(m.idempotency_key.as_deref(), Some("k2"));
        let m = parse_client(br#"{"type":"chan_in","idempotency_key":""}"#).unwrap();
        assert_eq!(m.idempotency_key, None);
    }

    #[test]
    fn live_query_extensions() {
        let m = parse_client(
            br#"{"type":"join","data":"db-x","snapshot":true,"filter":[["a","eq",1]]}"#,
        )
        .unwrap();
        assert!(m.snapshot);
        assert_eq!(m.filter, Some(serde_json::json!([["a", "eq", 1]])));
        let m = parse_client(br#"{"type":"join","filter":"[[\"a\",\"eq\",1]]"}"#).unwrap();
        assert_eq!(m.filter, Some(serde_json::json!([["a", "eq", 1]])));
        let m = parse_client(br#"{"type":"join","snapshot":"yes","filter":null}"#).unwrap();
        assert!(!m.snapshot);
        assert_eq!(m.filter, None);
    }

    #[test]
    fn since_extension() {
        let m = parse_client(br#"{"type":"join","data":"db-x","since":"0/16B3748"}"#).unwrap();
        assert_eq!(m.since.as_deref(), Some("0/16B3748"));
        let m =
            parse_client(br#"{"type":"join","data":"room","since":42,"meta":{"a":[1]}}"#).unwrap();
        assert_eq!(m.since.as_deref(), Some("42"));
        assert_eq!(m.meta.as_deref(), Some(r#"{"a":[1]}"#));
    }

    /// Client frames come from anyone: random bytes, every truncation and byte flips of valid
    /// messages either parse or are refused, never panic.
    #[test]
    fn arbitrary_input_never_panics() {
        let valid =
            br#"{"sid":"s","type":"join","data":"db-x","channel":"c","token":"t","since":"0/1"}"#;
        for cut in 0..=valid.len() {
            let _ = parse_client(&valid[..cut]);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = valid.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            let _ = parse_client(&input);
            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = parse_client(&random);
        }
        let deep = "[".repeat(100_000);
        assert!(parse_client(deep.as_bytes()).is_err());
    }
}
