//! Who may read a document row: the repo's read level (from its name) × the row's
//! `account_id`/`owner_id` × the reader's identity (PROTOCOL.md §4).

mod level;

pub(crate) use level::{read_level, ReadLevel};

use std::sync::Arc;
use uuid::Uuid;

/// Users with this role or above see every row of their app.
const ROOT_ROLE: i32 = 100;

/// The tenant a connection, channel or row belongs to: the app's schema name.
pub type AppName = Arc<str>;

/// An authenticated user, fixed for the lifetime of the websocket token that was issued for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub app: AppName,
    pub user_id: Uuid,
    pub account_id: Option<Uuid>,
    pub role: i32,
}

impl Reader {
    pub fn is_root(&self) -> bool {
        self.role >= ROOT_ROLE
    }

    /// A user of the app named `app` whose ids are the given numbers, for tests.
    #[cfg(test)]
    pub(crate) fn numbered(account: u128, user: u128, role: i32) -> Reader {
        Reader {
            app: "app".into(),
            user_id: Uuid::from_u128(user),
            account_id: Some(Uuid::from_u128(account)),
            role,
        }
    }
}

/// The permission-relevant columns of one row version. `None` is a SQL NULL.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct RowAccess {
    pub account_id: Option<Uuid>,
    pub owner_id: Option<Uuid>,
}

/// Whether `reader` may read a row with `row` access columns in a repo of `level`. The caller
/// guarantees reader and row belong to the same app.
pub(crate) fn may_read(level: ReadLevel, reader: &Reader, row: &RowAccess) -> bool {
    if reader.is_root() {
        return true;
    }
    let same_account = reader.account_id.is_some() && row.account_id == reader.account_id;
    match level {
        ReadLevel::Everyone => true,
        ReadLevel::Account => same_account,
        ReadLevel::Owner => same_account && row.owner_id == Some(reader.user_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(account: Option<u128>, owner: Option<u128>) -> RowAccess {
        RowAccess {
            account_id: account.map(Uuid::from_u128),
            owner_id: owner.map(Uuid::from_u128),
        }
    }

    #[test]
    fn account_level() {
        let a1 = Reader::numbered(1, 11, 0);
        let c = Reader::numbered(2, 21, 0);
        assert!(may_read(ReadLevel::Account, &a1, &row(Some(1), Some(12))));
        assert!(!may_read(ReadLevel::Account, &c, &row(Some(1), Some(12))));
        assert!(!may_read(ReadLevel::Account, &a1, &row(None, None)));
    }

    #[test]
    fn owner_level_needs_both() {
        let a1 = Reader::numbered(1, 11, 0);
        assert!(may_read(ReadLevel::Owner, &a1, &row(Some(1), Some(11))));
        assert!(!may_read(ReadLevel::Owner, &a1, &row(Some(1), Some(12))));
        assert!(!may_read(ReadLevel::Owner, &a1, &row(Some(2), Some(11))));
    }

    #[test]
    fn everyone_and_root() {
        let c = Reader::numbered(2, 21, 0);
        let root = Reader::numbered(9, 99, 100);
        assert!(may_read(ReadLevel::Everyone, &c, &row(None, None)));
        assert!(may_read(ReadLevel::Owner, &root, &row(Some(1), Some(11))));
        assert!(may_read(ReadLevel::Account, &root, &row(None, None)));
    }

    #[test]
    fn null_account_reader_never_matches_null_row() {
        let orphan = Reader {
            account_id: None,
            ..Reader::numbered(0, 5, 0)
        };
        assert!(!may_read(ReadLevel::Account, &orphan, &row(None, None)));
    }
}
