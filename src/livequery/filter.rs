//! Subscription filters (`join` with `"filter"`): an AND of predicates on document fields, parsed
//! once from the client's JSON into a canonical [`Filter`], evaluated on live documents here and
//! translated to parameterised SQL for snapshots (`super::sql`) with the same semantics:
//!
//! - a predicate is false when the field is missing or holds a value of another JSON type than
//!   the operand (no coercion: `"3"` never equals `3`);
//! - numbers compare as IEEE doubles (SQL: `::float8`), strings by bytes (SQL: `COLLATE "C"`,
//!   i.e. code point order in UTF-8), booleans by equality only;
//! - `id` and `accountId` are the document's (`accountId` is `""` for a row without account).

use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt::Write as _;

/// Most predicates one filter may hold.
pub const MAX_PREDICATES: usize = 16;
/// Most values one `in` predicate may list.
pub const MAX_IN_VALUES: usize = 100;
/// Longest field name segment, and longest string operand, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_STRING_BYTES: usize = 1024;

/// Why a filter is refused; the `Display` text is the client-facing `error` data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid filter: expected an array of [field, operator, value] predicates")]
    NotAnArray,
    #[error("invalid filter: more than {MAX_PREDICATES} predicates")]
    TooManyPredicates,
    #[error("invalid filter: each predicate is [field, operator, value]")]
    NotAPredicate,
    #[error("invalid filter: field {0:?} is not a plain name (letters, digits and _, starting with a letter or _)")]
    NotAPlainName(String),
    #[error("invalid filter: field {0:?} is deeper than two levels")]
    TooDeep(String),
    #[error("invalid filter: unknown operator {0:?} (eq, neq, lt, lte, gt, gte, in)")]
    UnknownOperator(String),
    #[error("invalid filter: {op:?} on {field:?} takes {expected}")]
    WrongValueType {
        field: String,
        op: &'static str,
        expected: &'static str,
    },
    #[error("invalid filter: \"in\" takes at most {MAX_IN_VALUES} values")]
    TooManyValues,
    #[error("invalid filter: string values are at most {MAX_STRING_BYTES} bytes")]
    StringTooLong,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

impl Op {
    fn parse(name: &str) -> Result<Op, FilterError> {
        Ok(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            other => return Err(FilterError::UnknownOperator(other.to_owned())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
        }
    }

    /// Whether an ordering of the field's value against the operand satisfies this operator.
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq | Op::In => ord == Ordering::Equal,
            Op::Neq => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Lte => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Gte => ord != Ordering::Less,
        }
    }

    fn orders(self) -> bool {
        matches!(self, Op::Lt | Op::Lte | Op::Gt | Op::Gte)
    }
}

/// Which document field a predicate reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// The row's `id` (uuid text).
    Id,
    /// The row's `account_id` as text, `""` when NULL.
    AccountId,
    /// A key of the row's `data` object, or a key of an object under one (one or two names).
    Data(Vec<String>),
}

impl Field {
    fn parse(path: &str) -> Result<Field, FilterError> {
        let names: Vec<&str> = path.split('.').collect();
        if names.len() > 2 {
            return Err(FilterError::TooDeep(path.to_owned()));
        }
        if !names.iter().all(|n| is_plain_name(n)) {
            return Err(FilterError::NotAPlainName(path.to_owned()));
        }
        Ok(match names.as_slice() {
            ["id"] => Field::Id,
            ["accountId"] => Field::AccountId,
            // The document's `id`/`accountId` replace any such key of `data`: nothing lies below.
            ["id" | "accountId", _] => return Err(FilterError::TooDeep(path.to_owned())),
            _ => Field::Data(names.iter().map(|n| (*n).to_owned()).collect()),
        })
    }

    /// The dotted path as the client wrote it.
    pub fn path(&self) -> String {
        match self {
            Field::Id => "id".to_owned(),
            Field::AccountId => "accountId".to_owned(),
            Field::Data(names) => names.join("."),
        }
    }
}

/// Names start with a letter or `_` so that a segment can never be read as an array index.
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An operand value. Numbers are kept as doubles, which is how they compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    String(String),
    Number(f64),
    Bool(bool),
}

impl Scalar {
    /// How a document field compares to this operand, or `None` when the types differ.
    fn compare(&self, value: FieldValue<'_>) -> Option<Ordering> {
        match (self, value) {
            (Scalar::String(s), FieldValue::Text(v)) => Some(v.as_bytes().cmp(s.as_bytes())),
            (Scalar::String(s), FieldValue::Json(Value::String(v))) => {
                Some(v.as_bytes().cmp(s.as_bytes()))
            }
            (Scalar::Number(n), FieldValue::Json(Value::Number(v))) => v.as_f64()?.partial_cmp(n),
            (Scalar::Bool(b), FieldValue::Json(Value::Bool(v))) => Some(v.cmp(b)),
            _ => None,
        }
    }

    fn canonical(&self, out: &mut String) {
        match self {
            Scalar::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
            Scalar::Number(n) => {
                // `-0.0 == 0.0`: one spelling, so equal filters share a group.
                let n = if *n == 0.0 { 0.0 } else { *n };
                let _ = write!(out, "{n:?}");
            }
            Scalar::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
}

/// One predicate: `field op operand`. For `in`, `values` holds the list; otherwise one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub field: Field,
    pub op: Op,
    pub values: Vec<Scalar>,
}

impl Predicate {
    fn parse(item: &Value) -> Result<Predicate, FilterError> {
        let Some([field, op, operand]) = item.as_array().map(Vec::as_slice) else {
            return Err(FilterError::NotAPredicate);
        };
        let (Some(path), Some(op)) = (field.as_str(), op.as_str()) else {
            return Err(FilterError::NotAPredicate);
        };
        let field = Field::parse(path)?;
        let op = Op::parse(op)?;
        let wrong = |expected: &'static str| FilterError::WrongValueType {
            field: path.to_owned(),
            op: op.as_str(),
            expected,
        };
        let text_only = matches!(field, Field::Id | Field::AccountId);
        let expected = match (op, text_only) {
            (Op::In, true) => "an array of strings",
            (Op::In, false) => "an array of strings, numbers or booleans",
            (_, true) => "a string",
            (o, false) if o.orders() => "a string or a number",
            _ => "a string, a number or a boolean",
        };
        let scalar = |value: &Value| -> Result<Scalar, FilterError> {
            let scalar = match value {
                Value::String(s) if s.len() > MAX_STRING_BYTES => {
                    return Err(FilterError::StringTooLong)
                }
                Value::String(s) => Scalar::String(s.clone()),
                Value::Number(n) if !text_only => {
                    Scalar::Number(n.as_f64().ok_or_else(|| wrong(expected))?)
                }
                Value::Bool(b) if !text_only && !op.orders() => Scalar::Bool(*b),
                _ => return Err(wrong(expected)),
            };
            Ok(scalar)
        };
        let values = if op == Op::In {
            let list = operand.as_array().ok_or_else(|| wrong(expected))?;
            if list.len() > MAX_IN_VALUES {
                return Err(FilterError::TooManyValues);
            }
            list.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        } else {
            vec![scalar(operand)?]
        };
        Ok(Predicate { field, op, values })
    }

    /// Whether the document's field satisfies this predicate.
    fn matches(&self, doc: &DocumentFields<'_>) -> bool {
        let Some(value) = doc.get(&self.field) else {
            return false;
        };
        self.values
            .iter()
            .any(|operand| operand.compare(value).is_some_and(|o| self.op.holds(o)))
    }

    fn canonical(&self) -> String {
        let mut out = Value::String(self.field.path()).to_string();
        out.push(',');
        out.push_str(self.op.as_str());
        out.push(',');
        let mut values: Vec<String> = self
            .values
            .iter()
            .map(|v| {
                let mut s = String::new();
                v.canonical(&mut s);
                s
            })
            .collect();
        if self.op == Op::In {
            values.sort();
            values.dedup();
        }
        out.push_str(&values.join("|"));
        out
    }
}

/// The fields a filter can read from one version of a row.
#[derive(Debug, Clone, Copy)]
pub struct DocumentFields<'a> {
    pub id: &'a str,
    /// `""` for a row without account (what the document's `accountId` says).
    pub account_id: &'a str,
    pub data: &'a Map<String, Value>,
}

impl<'a> DocumentFields<'a> {
    /// The fields of a document as sent to clients (its `id`/`accountId` keys are the row's).
    pub fn of_document(document: &'a Map<String, Value>) -> Option<DocumentFields<'a>> {
        Some(DocumentFields {
            id: document.get("id")?.as_str()?,
            account_id: document.get("accountId")?.as_str()?,
            data: document,
        })
    }

    fn get(&self, field: &Field) -> Option<FieldValue<'a>> {
        match field {
            Field::Id => Some(FieldValue::Text(self.id)),
            Field::AccountId => Some(FieldValue::Text(self.account_id)),
            Field::Data(names) => {
                let first = self.data.get(names.first()?)?;
                let value = match names.get(1) {
                    None => first,
                    Some(second) => first.as_object()?.get(second)?,
                };
                Some(FieldValue::Json(value))
            }
        }
    }
}

/// A field's value: JSON from `data`, or the text of a row column.
#[derive(Debug, Clone, Copy)]
enum FieldValue<'a> {
    Json(&'a Value),
    Text(&'a str),
}

/// An AND of predicates in canonical order (sorted, duplicates removed), so that two filters
/// that mean the same are equal and share one evaluation per event.
#[derive(Debug, Clone)]
pub struct Filter {
    predicates: Vec<Predicate>,
    canonical: String,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Filter {}

impl std::hash::Hash for Filter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}

impl Filter {
    /// Parses the `filter` value of a `join`. `[]` is a filter that matches every row.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        let items = value.as_array().ok_or(FilterError::NotAnArray)?;
        if items.len() > MAX_PREDICATES {
            return Err(FilterError::TooManyPredicates);
        }
        let mut keyed: Vec<(String, Predicate)> = items
            .iter()
            .map(|item| Predicate::parse(item).map(|p| (p.canonical(), p)))
            .collect::<Result<_, _>>()?;
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        keyed.dedup_by(|a, b| a.0 == b.0);
        let canonical = keyed
            .iter()
            .map(|(k, _)| format!("[{k}]"))
            .collect::<Vec<_>>()
            .join("&");
        Ok(Filter {
            predicates: keyed.into_iter().map(|(_, p)| p).collect(),
            canonical,
        })
    }

    pub fn predicates(&self) -> &[Predicate] {
        &self.predicates
    }

    /// A stable text naming what this filter means; equal filters have equal keys.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether a row version with these fields passes every predicate.
    pub fn matches(&self, doc: &DocumentFields<'_>) -> bool {
        self.predicates.iter().all(|p| p.matches(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> Result<Filter, FilterError> {
        Filter::parse(&value)
    }

    fn doc(data: Value) -> Map<String, Value> {
        let Value::Object(mut map) = data else {
            panic!("not an object")
        };
        map.insert("id".into(), json!("11111111-1111-1111-1111-111111111111"));
        map.insert("accountId".into(), json!(""));
        map
    }

    fn passes(f: &Filter, data: Value) -> bool {
        let d = doc(data);
        f.matches(&DocumentFields::of_document(&d).unwrap())
    }

    #[test]
    fn and_of_predicates() {
        let f = filter(json!([["status", "eq", "open"], ["priority", "gte", 3]])).unwrap();
        assert!(passes(&f, json!({"status": "open", "priority": 3})));
        assert!(passes(&f, json!({"status": "open", "priority": 7.5})));
        assert!(!passes(&f, json!({"status": "open", "priority": 2})));
        assert!(!passes(&f, json!({"status": "closed", "priority": 9})));
        assert!(!passes(&f, json!({"status": "open"})), "missing field");
        assert!(
            !passes(&f, json!({"status": "open", "priority": "9"})),
            "type mismatch"
        );
    }

    #[test]
    fn operators_and_types() {
        let check = |pred: Value, data: Value| passes(&filter(json!([pred])).unwrap(), data);
        assert!(check(json!(["n", "neq", 1]), json!({"n": 2})));
        assert!(!check(json!(["n", "neq", 1]), json!({"n": 1.0})));
        assert!(
            !check(json!(["n", "neq", 1]), json!({"n": "x"})),
            "neq of another type is false"
        );
        assert!(!check(json!(["n", "neq", 1]), json!({})));
        assert!(check(json!(["n", "lt", 1]), json!({"n": -1})));
        assert!(check(json!(["n", "lte", 1]), json!({"n": 1})));
        assert!(check(json!(["n", "gt", 1]), json!({"n": 1.5})));
        assert!(check(json!(["s", "lt", "b"]), json!({"s": "a"})));
        assert!(check(json!(["s", "lt", "a"]), json!({"s": "B"})), "bytes");
        assert!(check(json!(["s", "gt", "z"]), json!({"s": "é"})), "bytes");
        assert!(check(json!(["b", "eq", true]), json!({"b": true})));
        assert!(!check(json!(["b", "eq", true]), json!({"b": 1})));
        assert!(check(json!(["s", "in", ["a", 2, false]]), json!({"s": 2})));
        assert!(check(
            json!(["s", "in", ["a", 2, false]]),
            json!({"s": false})
        ));
        assert!(!check(
            json!(["s", "in", ["a", 2, false]]),
            json!({"s": "2"})
        ));
        assert!(!check(json!(["s", "in", []]), json!({"s": "a"})));
        assert!(check(json!(["m.p", "eq", 1]), json!({"m": {"p": 1}})));
        assert!(!check(json!(["m.p", "eq", 1]), json!({"m": [1]})));
        assert!(!check(json!(["m", "eq", 1]), json!({"m": {"p": 1}})));
        assert!(check(
            json!(["id", "eq", "11111111-1111-1111-1111-111111111111"]),
            json!({})
        ));
        assert!(check(json!(["accountId", "eq", ""]), json!({})));
        assert!(check(json!(["accountId", "lt", "a"]), json!({})));
    }

    #[test]
    fn refusals_carry_their_message() {
        let err = |v: Value| filter(v).unwrap_err().to_string();
        assert_eq!(
            err(json!({"status": "open"})),
            "invalid filter: expected an array of [field, operator, value] predicates"
        );
        assert_eq!(
            err(json!([["status", "like", "o%"]])),
            "invalid filter: unknown operator \"like\" (eq, neq, lt, lte, gt, gte, in)"
        );
        assert_eq!(
            err(json!([["status", "eq"]])),
            "invalid filter: each predicate is [field, operator, value]"
        );
        assert_eq!(
            err(json!([["a b", "eq", 1]])),
            "invalid filter: field \"a b\" is not a plain name (letters, digits and _, starting with a letter or _)"
        );
        assert!(err(json!([["0", "eq", 1]])).contains("not a plain name"));
        assert!(err(json!([["a.", "eq", 1]])).contains("not a plain name"));
        assert!(err(json!([["x'--", "eq", 1]])).contains("not a plain name"));
        assert_eq!(
            err(json!([["a.b.c", "eq", 1]])),
            "invalid filter: field \"a.b.c\" is deeper than two levels"
        );
        assert!(err(json!([["id.x", "eq", 1]])).contains("deeper than two levels"));
        assert_eq!(
            err(json!([["p", "gte", true]])),
            "invalid filter: \"gte\" on \"p\" takes a string or a number"
        );
        assert_eq!(
            err(json!([["p", "eq", null]])),
            "invalid filter: \"eq\" on \"p\" takes a string, a number or a boolean"
        );
        assert_eq!(
            err(json!([["p", "eq", {"a": 1}]])),
            "invalid filter: \"eq\" on \"p\" takes a string, a number or a boolean"
        );
        assert_eq!(
            err(json!([["id", "eq", 3]])),
            "invalid filter: \"eq\" on \"id\" takes a string"
        );
        assert_eq!(
            err(json!([["p", "in", 3]])),
            "invalid filter: \"in\" on \"p\" takes an array of strings, numbers or booleans"
        );
        let many: Vec<i32> = (0..101).collect();
        assert_eq!(
            err(json!([["p", "in", many]])),
            "invalid filter: \"in\" takes at most 100 values"
        );
        let preds: Vec<Value> = (0..17).map(|i| json!(["p", "eq", i])).collect();
        assert_eq!(err(json!(preds)), "invalid filter: more than 16 predicates");
        assert_eq!(
            err(json!([["p", "eq", "x".repeat(1025)]])),
            "invalid filter: string values are at most 1024 bytes"
        );
    }

    #[test]
    fn canonical_form_groups_equal_filters() {
        let a = filter(json!([["status", "eq", "open"], ["priority", "gte", 3]])).unwrap();
        let b = filter(json!([
            ["priority", "gte", 3.0],
            ["status", "eq", "open"],
            ["status", "eq", "open"]
        ]))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), b.canonical());
        let c = filter(json!([["s", "in", [2, "a", 2]]])).unwrap();
        let d = filter(json!([["s", "in", ["a", 2]]])).unwrap();
        assert_eq!(c, d);
        assert_ne!(a, c);
        assert_ne!(
            filter(json!([["s", "eq", "1"]])).unwrap(),
            filter(json!([["s", "eq", 1]])).unwrap()
        );
        assert_eq!(filter(json!([])).unwrap().predicates().len(), 0);
    }
}
