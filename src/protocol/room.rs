//! [ext] room request payloads: the `history` query carried in `data`.

use serde_json::{Map, Value};

/// Which page of a custom channel's history a `history` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// Newest first, offsets below `cursor` (from the newest when `None`).
    Before { cursor: Option<u64>, limit: usize },
    /// Oldest first, offsets above `since`.
    After { since: u64, limit: usize },
}

/// A `history` `data` that is neither empty nor a valid query object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid history request")]
pub struct InvalidHistoryQuery;

impl InvalidHistoryQuery {
    pub const MESSAGE: &'static str = "invalid history request";
}

impl HistoryQuery {
    pub const DEFAULT_LIMIT: usize = 50;
    pub const MAX_LIMIT: usize = 1000;

    /// `data` empty (the newest page), or a JSON object with `cursor` (newest first, below it)
    /// or `since` (oldest first, after it), and `limit` (1–1000; more is cut to 1000). Numbers
    /// may be JSON numbers or strings; `null` or `""` reads as absent; other keys are ignored.
    pub fn parse(data: &str) -> Result<HistoryQuery, InvalidHistoryQuery> {
        if data.trim().is_empty() {
            return Ok(HistoryQuery::Before {
                cursor: None,
                limit: Self::DEFAULT_LIMIT,
            });
        }
        let mut query: Map<String, Value> =
            serde_json::from_str(data).map_err(|_| InvalidHistoryQuery)?;
        let limit = match number(query.remove("limit"))? {
            None => Self::DEFAULT_LIMIT,
            Some(0) => return Err(InvalidHistoryQuery),
            Some(n) => usize::try_from(n)
                .unwrap_or(Self::MAX_LIMIT)
                .min(Self::MAX_LIMIT),
        };
        match (
            number(query.remove("cursor"))?,
            number(query.remove("since"))?,
        ) {
            (Some(_), Some(_)) => Err(InvalidHistoryQuery),
            (cursor, None) => Ok(HistoryQuery::Before { cursor, limit }),
            (None, Some(since)) => Ok(HistoryQuery::After { since, limit }),
        }
    }
}

fn number(value: Option<Value>) -> Result<Option<u64>, InvalidHistoryQuery> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(InvalidHistoryQuery),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| InvalidHistoryQuery),
        Some(_) => Err(InvalidHistoryQuery),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_queries() {
        let parse = HistoryQuery::parse;
        assert_eq!(
            parse(""),
            Ok(HistoryQuery::Before {
                cursor: None,
                limit: 50
            })
        );
        assert_eq!(
            parse(r#"{"cursor":12,"limit":"3"}"#),
            Ok(HistoryQuery::Before {
                cursor: Some(12),
                limit: 3
            })
        );
        assert_eq!(
            parse(r#"{"since":"7","limit":5000}"#),
            Ok(HistoryQuery::After {
                since: 7,
                limit: 1000
            })
        );
        assert_eq!(
            parse(r#"{"cursor":null,"other":1}"#),
            Ok(HistoryQuery::Before {
                cursor: None,
                limit: 50
            })
        );
        for bad in [
            "x",
            "[]",
            r#"{"limit":0}"#,
            r#"{"cursor":-1}"#,
            r#"{"cursor":"a"}"#,
            r#"{"cursor":1,"since":2}"#,
            r#"{"limit":{}}"#,
        ] {
            assert_eq!(parse(bad), Err(InvalidHistoryQuery), "{bad}");
        }
        assert_eq!(
            InvalidHistoryQuery.to_string(),
            InvalidHistoryQuery::MESSAGE
        );
    }
}
