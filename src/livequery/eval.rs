//! Filters applied to one document event: the new and old row versions are parsed once, on
//! first need, and each distinct filter (group slot) is evaluated at most once per event.

use super::filter::{DocumentFields, Filter};
use crate::event::{DocumentChange, DocumentEvent};
use serde_json::{Map, Value};
use std::cell::OnceCell;

/// Whether the old and the new version of a row pass a filter. `old` is `None` when the WAL
/// did not carry the old row (replica identity not FULL); `new` is false for a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sight {
    pub old: Option<bool>,
    pub new: bool,
}

impl Sight {
    /// What an unfiltered member sees: everything passes.
    pub const ALL: Sight = Sight {
        old: Some(true),
        new: true,
    };
}

type Parsed = Option<(Map<String, Value>, String)>;

/// One event's row versions, parsed lazily, and the filter results per group slot.
pub struct EventFilters<'e> {
    event: &'e DocumentEvent,
    new: OnceCell<Option<Map<String, Value>>>,
    old: OnceCell<Parsed>,
    memo: Vec<Option<Sight>>,
    evaluations: usize,
}

fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

impl<'e> EventFilters<'e> {
    pub fn new(event: &'e DocumentEvent) -> Self {
        EventFilters {
            event,
            new: OnceCell::new(),
            old: OnceCell::new(),
            memo: Vec::new(),
            evaluations: 0,
        }
    }

    /// Filter evaluations done so far (a memo hit is not one).
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    /// The filter of group `slot` on this event, evaluated once per slot.
    pub fn sight(&mut self, slot: usize, filter: &Filter) -> Sight {
        if let Some(Some(known)) = self.memo.get(slot) {
            return *known;
        }
        let sight = self.evaluate(filter);
        if self.memo.len() <= slot {
            self.memo.resize(slot + 1, None);
        }
        self.memo[slot] = Some(sight);
        sight
    }

    /// The filter on this event, without the memo.
    pub fn evaluate(&mut self, filter: &Filter) -> Sight {
        self.evaluations += 1;
        let event = self.event;
        let document = match &event.change {
            DocumentChange::Created { document, .. } | DocumentChange::Updated { document, .. } => {
                Some(document)
            }
            DocumentChange::Deleted { .. } => None,
        };
        let new = match document {
            Some(document) => self
                .new
                .get_or_init(|| object(document))
                .as_ref()
                .and_then(DocumentFields::of_document)
                .is_some_and(|fields| filter.matches(&fields)),
            None => false,
        };
        let old = self
            .old
            .get_or_init(|| old_version(&event.change))
            .as_ref()
            .map(|(data, account)| {
                filter.matches(&DocumentFields {
                    id: &event.id,
                    account_id: account,
                    data,
                })
            });
        Sight { old, new }
    }
}

/// The old row's `data` and account text, when the WAL carried them.
fn old_version(change: &DocumentChange) -> Parsed {
    let (previous, data) = match change {
        DocumentChange::Updated {
            previous,
            previous_data,
            ..
        }
        | DocumentChange::Deleted {
            previous,
            previous_data,
        } => (previous.as_ref()?, previous_data.as_deref()?),
        DocumentChange::Created { .. } => return None,
    };
    let account = previous
        .account_id
        .map(|a| a.to_string())
        .unwrap_or_default();
    Some((object(data)?, account))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::RowAccess;
    use serde_json::json;

    fn event(change: DocumentChange) -> DocumentEvent {
        DocumentEvent {
            app: "a".into(),
            repo: "r".into(),
            id: "i1".into(),
            change,
        }
    }

    #[test]
    fn old_and_new_versions_and_memo() {
        let f = Filter::parse(&json!([["s", "eq", "open"]])).unwrap();
        let e = event(DocumentChange::Updated {
            row: RowAccess::default(),
            previous: Some(RowAccess::default()),
            previous_data: Some(r#"{"s": "open"}"#.into()),
            document: r#"{"accountId":"","id":"i1","s":"closed"}"#.into(),
        });
        let mut filters = EventFilters::new(&e);
        let moved_out = Sight {
            old: Some(true),
            new: false,
        };
        assert_eq!(filters.sight(3, &f), moved_out);
        assert_eq!(filters.sight(3, &f), moved_out);
        assert_eq!(filters.evaluations(), 1);

        let d = event(DocumentChange::Deleted {
            previous: None,
            previous_data: None,
        });
        assert_eq!(
            EventFilters::new(&d).evaluate(&f),
            Sight {
                old: None,
                new: false
            }
        );
        let id = Filter::parse(&json!([["id", "eq", "i1"], ["accountId", "eq", ""]])).unwrap();
        let d = event(DocumentChange::Deleted {
            previous: Some(RowAccess::default()),
            previous_data: Some("{}".into()),
        });
        assert_eq!(EventFilters::new(&d).evaluate(&id).old, Some(true));
    }
}
