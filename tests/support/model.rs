//! An independent model of PROTOCOL.md §4 ("Who receives an event"), written from the spec
//! text and not from the gateway's code: the property and crash tests check every delivery
//! against it.

use uuid::Uuid;

/// A connected, authenticated user.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub app: String,
    pub user: Uuid,
    pub account: Uuid,
    pub role: i32,
}

/// What the permission rule looks at in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub id: Uuid,
    pub account: Uuid,
    pub owner: Uuid,
    /// The document's version (`data.v`), to tell one update from another.
    pub v: i64,
}

/// One committed row change of `app`.`repo`.
#[derive(Debug, Clone)]
pub enum Change {
    Insert(Row),
    Update { old: Row, new: Row },
    Delete(Row),
}

/// One event as a subscriber sees it: (channel, type, document id, version; 0 for deletes).
pub type Seen = (String, &'static str, Uuid, i64);

/// "`_\d\d\d_$` gives the owner, account and everyone digits; no suffix means 740."
fn digits(repo: &str) -> [u32; 3] {
    let chars: Vec<char> = repo.chars().collect();
    let n = chars.len();
    if n >= 5 && chars[n - 1] == '_' && chars[n - 5] == '_' {
        let d: Vec<u32> = chars[n - 4..n - 1]
            .iter()
            .filter_map(|c| c.to_digit(10))
            .collect();
        if d.len() == 3 {
            return [d[0], d[1], d[2]];
        }
    }
    [7, 4, 0]
}

/// Whether `u` may read `row` of `app`.`repo`.
pub fn may_read(u: &Subscriber, app: &str, repo: &str, row: &Row) -> bool {
    if u.app != app {
        return false;
    }
    if u.role >= 100 || repo.starts_with("pub_") {
        return true;
    }
    // "A digit allows reading when it has bit 4." Everyone, else account, else owner.
    let [_, account, everyone] = digits(repo);
    if everyone & 4 == 4 {
        true
    } else if account & 4 == 4 {
        row.account == u.account
    } else {
        row.account == u.account && row.owner == u.user
    }
}

/// The event `u`, a member of `db-<repo>`, receives for `change`, if any (moves out of sight
/// are deletes, into sight creates).
pub fn event_for(u: &Subscriber, app: &str, repo: &str, change: &Change) -> Option<Seen> {
    let channel = format!("db-{repo}");
    let sees = |row: &Row| may_read(u, app, repo, row);
    match change {
        Change::Insert(row) => sees(row).then_some((channel, "db_created", row.id, row.v)),
        Change::Delete(row) => sees(row).then_some((channel, "db_deleted", row.id, 0)),
        Change::Update { old, new } => match (sees(old), sees(new)) {
            (true, true) => Some((channel, "db_updated", new.id, new.v)),
            (true, false) => Some((channel, "db_deleted", old.id, 0)),
            (false, true) => Some((channel, "db_created", new.id, new.v)),
            (false, false) => None,
        },
    }
}

/// A received event message as [`Seen`].
pub fn seen(msg: &serde_json::Value) -> Seen {
    let kind = match msg["type"].as_str() {
        Some("db_created") => "db_created",
        Some("db_updated") => "db_updated",
        Some("db_deleted") => "db_deleted",
        other => panic!("not a db event: {other:?} in {msg}"),
    };
    let channel = msg["channel"].as_str().expect("channel").to_owned();
    let data: serde_json::Value =
        serde_json::from_str(msg["data"].as_str().expect("data")).expect("data is JSON");
    if kind == "db_deleted" {
        let id = Uuid::parse_str(data.as_str().expect("deleted id")).expect("uuid");
        return (channel, kind, id, 0);
    }
    let id = Uuid::parse_str(data["id"].as_str().expect("id")).expect("uuid");
    (channel, kind, id, data["v"].as_i64().expect("v"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(digits("tasks_760_"), [7, 6, 0]);
        assert_eq!(digits("tasks"), [7, 4, 0]);
        assert_eq!(digits("x_7a0_"), [7, 4, 0]);
    }
}
