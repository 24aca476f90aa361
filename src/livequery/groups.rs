//! Members of one db channel grouped by filter: members with equal (canonical) filters share a
//! dense slot, so one event is evaluated once per distinct filter, not once per member.

use super::filter::Filter;
use crate::hub::ConnId;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct Group {
    filter: Arc<Filter>,
    members: usize,
}

/// Invariant: `by_conn` names only occupied slots; a slot is freed when its last member goes.
#[derive(Debug, Default)]
pub struct FilterGroups {
    by_conn: HashMap<ConnId, usize>,
    by_filter: HashMap<Arc<Filter>, usize>,
    slots: Vec<Option<Group>>,
    free: Vec<usize>,
}

impl FilterGroups {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Gives `conn` this filter (replacing any it had); `None` removes it.
    pub fn assign(&mut self, conn: ConnId, filter: Option<Arc<Filter>>) {
        self.remove(conn);
        let Some(filter) = filter else {
            return;
        };
        let slot = match self.by_filter.get(&filter) {
            Some(&slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or(self.slots.len());
                if slot == self.slots.len() {
                    self.slots.push(None);
                }
                self.slots[slot] = Some(Group {
                    filter: Arc::clone(&filter),
                    members: 0,
                });
                self.by_filter.insert(filter, slot);
                slot
            }
        };
        if let Some(group) = self.slots[slot].as_mut() {
            group.members += 1;
        }
        self.by_conn.insert(conn, slot);
    }

    pub fn remove(&mut self, conn: ConnId) {
        let Some(slot) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(group) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        group.members -= 1;
        if group.members == 0 {
            if let Some(group) = self.slots[slot].take() {
                self.by_filter.remove(&group.filter);
            }
            self.free.push(slot);
        }
    }

    /// The member's filter slot, `None` when it has no filter.
    pub fn slot_of(&self, conn: ConnId) -> Option<usize> {
        if self.by_conn.is_empty() {
            return None;
        }
        self.by_conn.get(&conn).copied()
    }

    pub fn filter(&self, slot: usize) -> Option<&Arc<Filter>> {
        self.slots.get(slot)?.as_ref().map(|g| &g.filter)
    }

    /// One past the highest slot in use.
    #[cfg(test)]
    fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Distinct filters in use.
    #[cfg(test)]
    fn distinct(&self) -> usize {
        self.by_filter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: serde_json::Value) -> Option<Arc<Filter>> {
        Some(Arc::new(Filter::parse(&v).unwrap()))
    }

    #[test]
    fn equal_filters_share_a_slot_and_slots_are_reused() {
        let mut g = FilterGroups::default();
        g.assign(1, f(json!([["a", "eq", 1]])));
        g.assign(2, f(json!([["a", "eq", 1.0]])));
        g.assign(3, f(json!([["b", "eq", 1]])));
        g.assign(4, None);
        assert_eq!(g.slot_of(1), g.slot_of(2));
        assert_ne!(g.slot_of(1), g.slot_of(3));
        assert_eq!(g.slot_of(4), None);
        assert_eq!(g.distinct(), 2);
        // A new join replaces the filter.
        g.assign(2, f(json!([["b", "eq", 1]])));
        assert_eq!(g.slot_of(2), g.slot_of(3));
        g.remove(1);
        assert_eq!(g.distinct(), 1);
        g.assign(5, f(json!([["c", "eq", 1]])));
        assert_eq!(g.slot_count(), 2, "the freed slot is reused");
        g.remove(2);
        g.remove(3);
        g.remove(5);
        assert!(g.is_empty());
        assert_eq!(g.distinct(), 0);
    }
}
