//! A row's `data` → the document JSON StaticBackend sent (id and accountId added, keys sorted).

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the data column is not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    #[error("the data column is not a JSON object")]
    NotAnObject,
}

/// The document StaticBackend sent for a row: its `data` object with `id` and `accountId` added,
/// keys sorted at every depth (Go's `json.Marshal` of a map). A NULL account reads as `""`.
pub fn build_document(
    data: &str,
    id: &str,
    account_id: Option<&str>,
) -> Result<String, DocumentError> {
    let value: Value = serde_json::from_str(data).map_err(DocumentError::InvalidJson)?;
    let Value::Object(mut object) = value else {
        return Err(DocumentError::NotAnObject);
    };
    object.insert("id".to_owned(), Value::String(id.to_owned()));
    object.insert(
        "accountId".to_owned(),
        Value::String(account_id.unwrap_or_default().to_owned()),
    );
    let sorted = sort_keys(Value::Object(object));
    Ok(sorted.to_string())
}

/// serde_json's map is ordered only without its `preserve_order` feature, which any crate in
/// the build could switch on; sorting here keeps the output independent of that.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut sorted = Map::with_capacity(entries.len());
            for (k, v) in entries {
                sorted.insert(k, sort_keys(v));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_id_and_account_sorted() {
        let doc = build_document(
            r#"{"title": "x", "done": false, "z": {"b": 1, "a": [{"d": 1, "c": 2}]}}"#,
            "11111111-1111-1111-1111-111111111111",
            Some("22222222-2222-2222-2222-222222222222"),
        )
        .unwrap();
        assert_eq!(
            doc,
            r#"{"accountId":"22222222-2222-2222-2222-222222222222","done":false,"id":"11111111-1111-1111-1111-111111111111","title":"x","z":{"a":[{"c":2,"d":1}],"b":1}}"#
        );
    }

    #[test]
    fn row_values_win_over_data_keys() {
        let doc = build_document(r#"{"id":"spoof","accountId":"spoof"}"#, "real", None).unwrap();
        assert_eq!(doc, r#"{"accountId":"","id":"real"}"#);
    }

    #[test]
    fn rejects_non_objects() {
        assert!(matches!(
            build_document("[1]", "i", None),
            Err(DocumentError::NotAnObject)
        ));
        assert!(matches!(
            build_document("{", "i", None),
            Err(DocumentError::InvalidJson(_))
        ));
    }
}
