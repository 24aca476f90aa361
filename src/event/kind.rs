//! The three kinds of document event a subscriber receives, and their wire names.

/// What a subscriber is told happened to a document it may (now, or no longer) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Created, EventKind::Updated, EventKind::Deleted];

    /// The envelope `type` (PROTOCOL.md §4).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "db_created",
            EventKind::Updated => "db_updated",
            EventKind::Deleted => "db_deleted",
        }
    }

    /// Dense index, for per-kind slots.
    pub const fn index(self) -> usize {
        match self {
            EventKind::Created => 0,
            EventKind::Updated => 1,
            EventKind::Deleted => 2,
        }
    }

    /// The kind named by an envelope `type`; anything else is not a document event.
    pub fn from_wire(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_wire(kind.as_str()), Some(kind));
            assert_eq!(EventKind::ALL[kind.index()], kind);
        }
        assert_eq!(EventKind::from_wire("db_moved"), None);
    }
}
