//! The assembler on hand-built transactions: which tables make events, what each change
//! becomes, and which rows are skipped and counted.

use super::{AssembleStats, Assembler};
use crate::event::{DocumentChange, DocumentEvent};
use crate::permission::RowAccess;
use bytes::Bytes;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;
use walcast_replication::{
    Change, Column, Lsn, OldTuple, Relation, ReplicaIdentity, Transaction, Tuple, Value,
};

const ID: &str = "11111111-1111-4111-8111-111111111111";
const ACCOUNT: &str = "a0000000-0000-4000-8000-00000000000a";
const OWNER: &str = "a1000000-0000-4000-8000-0000000000a1";
const OTHER_ACCOUNT: &str = "b0000000-0000-4000-8000-00000000000b";

fn relation(oid: u32, schema: &str, name: &str, columns: &[&str]) -> Arc<Relation> {
    Arc::new(Relation {
        oid,
        schema: schema.into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Full,
        columns: columns
            .iter()
            .map(|c| Column {
                name: (*c).into(),
                type_oid: 25,
                type_modifier: -1,
                is_key: *c == "id",
            })
            .collect(),
    })
}

/// `acme.tasks_760_` with the repo columns in an unusual order and one extra.
fn tasks() -> Arc<Relation> {
    relation(
        1,
        "acme",
        "tasks_760_",
        &["data", "created", "owner_id", "id", "account_id"],
    )
}

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A row of [`tasks`]: (data, created, owner_id, id, account_id).
fn row(data: Value, owner: Value, id: Value, account: Value) -> Tuple {
    Tuple(vec![data, text("2024-05-01"), owner, id, account])
}

fn task_row(data: &str, account: &str) -> Tuple {
    row(text(data), text(OWNER), text(ID), text(account))
}

fn access(account: &str) -> RowAccess {
    RowAccess {
        account_id: Some(Uuid::parse_str(account).unwrap()),
        owner_id: Some(Uuid::parse_str(OWNER).unwrap()),
    }
}

fn tx(changes: Vec<Change>) -> Transaction {
    Transaction {
        xid: 7,
        final_lsn: Lsn(0x100),
        commit_lsn: Lsn(0x100),
        end_lsn: Lsn(0x180),
        commit_time: SystemTime::UNIX_EPOCH,
        changes,
    }
}

fn events(assembler: &mut Assembler, changes: Vec<Change>) -> Vec<DocumentEvent> {
    assembler.assemble(&tx(changes)).events
}

fn document(data: &str, account: &str) -> String {
    crate::event::build_document(data, ID, Some(account)).unwrap()
}

#[test]
fn insert_becomes_created_with_the_document() {
    let mut assembler = Assembler::new();
    let committed = assembler.assemble(&tx(vec![Change::Insert {
        relation: tasks(),
        new: task_row(r#"{"title":"x"}"#, ACCOUNT),
    }]));
    assert_eq!(committed.commit_lsn, Lsn(0x100));
    assert_eq!(committed.end_lsn, Lsn(0x180));
    assert_eq!(
        committed.events,
        vec![DocumentEvent {
            app: "acme".into(),
            repo: "tasks_760_".into(),
            id: ID.into(),
            change: DocumentChange::Created {
                row: access(ACCOUNT),
                document: document(r#"{"title":"x"}"#, ACCOUNT),
            },
        }]
    );
    assert_eq!(assembler.stats, AssembleStats::default());
}

#[test]
fn tables_that_are_not_repos_make_nothing() {
    let repo_columns = ["id", "account_id", "owner_id", "data"];
    let others = [
        relation(2, "acme", "sb_tokens", &repo_columns),
        relation(3, "public", "tasks", &repo_columns),
        relation(4, "sb", "apps", &repo_columns),
        relation(5, "acme", "no_owner", &["id", "account_id", "data"]),
    ];
    let mut assembler = Assembler::new();
    for relation in others {
        let new = Tuple(vec![text(ID); relation.columns.len()]);
        assert!(events(&mut assembler, vec![Change::Insert { relation, new }]).is_empty());
    }
    assert_eq!(assembler.stats, AssembleStats::default());
}

#[test]
fn update_carries_the_previous_access_when_the_wal_has_it() {
    let mut assembler = Assembler::new();
    let moved = events(
        &mut assembler,
        vec![
            Change::Update {
                relation: tasks(),
                old: Some(OldTuple::Full(task_row("{}", ACCOUNT))),
                new: task_row(r#"{"v":2}"#, OTHER_ACCOUNT),
            },
            Change::Update {
                relation: tasks(),
                old: None,
                new: task_row(r#"{"v":3}"#, ACCOUNT),
            },
        ],
    );
    assert_eq!(
        moved[0].change,
        DocumentChange::Updated {
            row: access(OTHER_ACCOUNT),
            previous: Some(access(ACCOUNT)),
            previous_data: Some("{}".into()),
            document: document(r#"{"v":2}"#, OTHER_ACCOUNT),
        }
    );
    assert_eq!(
        moved[1].change,
        DocumentChange::Updated {
            row: access(ACCOUNT),
            previous: None,
            previous_data: None,
            document: document(r#"{"v":3}"#, ACCOUNT),
        }
    );
}

#[test]
fn unchanged_toast_data_comes_from_the_old_row_or_is_counted_missing() {
    let mut assembler = Assembler::new();
    let unchanged = row(Value::UnchangedToast, text(OWNER), text(ID), text(ACCOUNT));
    let made = events(
        &mut assembler,
        vec![
            Change::Update {
                relation: tasks(),
                old: Some(OldTuple::Full(task_row(r#"{"big":true}"#, ACCOUNT))),
                new: unchanged.clone(),
            },
            Change::Update {
                relation: tasks(),
                old: None,
                new: unchanged,
            },
        ],
    );
    assert_eq!(made.len(), 1);
    assert_eq!(
        made[0].change,
        DocumentChange::Updated {
            row: access(ACCOUNT),
            previous: Some(access(ACCOUNT)),
            previous_data: Some(r#"{"big":true}"#.into()),
            document: document(r#"{"big":true}"#, ACCOUNT),
        }
    );
    assert_eq!(assembler.stats.missing_document, 1);
}

#[test]
fn delete_with_full_or_key_only_old_row() {
    let mut assembler = Assembler::new();
    let key_only = row(Value::Null, Value::Null, text(ID), Value::Null);
    let made = events(
        &mut assembler,
        vec![
            Change::Delete {
                relation: tasks(),
                old: OldTuple::Full(task_row("{}", ACCOUNT)),
            },
            Change::Delete {
                relation: tasks(),
                old: OldTuple::Key(key_only),
            },
        ],
    );
    let changes: Vec<_> = made.iter().map(|e| (e.id.as_str(), &e.change)).collect();
    assert_eq!(
        changes,
        vec![
            (
                ID,
                &DocumentChange::Deleted {
                    previous: Some(access(ACCOUNT)),
                    previous_data: Some("{}".into()),
                }
            ),
            (
                ID,
                &DocumentChange::Deleted {
                    previous: None,
                    previous_data: None,
                },
            ),
        ]
    );
}

#[test]
fn null_account_and_owner_are_sql_nulls_not_unknowns() {
    let mut assembler = Assembler::new();
    let made = events(
        &mut assembler,
        vec![Change::Insert {
            relation: tasks(),
            new: row(text("{}"), Value::Null, text(ID), Value::Null),
        }],
    );
    let DocumentChange::Created { row, document } = &made[0].change else {
        panic!("{made:?}");
    };
    assert_eq!(*row, RowAccess::default());
    assert_eq!(
        *document,
        crate::event::build_document("{}", ID, None).unwrap()
    );
}

#[test]
fn unusable_rows_are_counted_invalid() {
    let bad = [
        task_row("[1,2]", ACCOUNT),
        task_row("not json", ACCOUNT),
        row(text("{}"), text(OWNER), Value::Null, text(ACCOUNT)),
        row(text("{}"), text(OWNER), text(ID), text("not-a-uuid")),
        row(Value::Null, text(OWNER), text(ID), text(ACCOUNT)),
    ];
    let mut assembler = Assembler::new();
    let changes = bad
        .into_iter()
        .map(|new| Change::Insert {
            relation: tasks(),
            new,
        })
        .collect();
    assert!(events(&mut assembler, changes).is_empty());
    assert_eq!(assembler.stats.invalid_rows, 5);
}

#[test]
fn truncate_counts_repos_only() {
    let mut assembler = Assembler::new();
    let made = events(
        &mut assembler,
        vec![Change::Truncate {
            relations: vec![
                tasks(),
                relation(
                    9,
                    "acme",
                    "sb_tokens",
                    &["id", "account_id", "owner_id", "data"],
                ),
            ],
            cascade: false,
            restart_identity: false,
        }],
    );
    assert!(made.is_empty());
    assert_eq!(assembler.stats.truncates, 1);
}

#[test]
fn a_new_relation_version_replaces_the_cached_columns() {
    let mut assembler = Assembler::new();
    let first = events(
        &mut assembler,
        vec![Change::Insert {
            relation: tasks(),
            new: task_row(r#"{"n":1}"#, ACCOUNT),
        }],
    );
    assert_eq!(first.len(), 1);
    // Same table (oid 1) after DDL: columns reordered, as a new Relation message would say.
    let altered = relation(
        1,
        "acme",
        "tasks_760_",
        &["id", "account_id", "owner_id", "data"],
    );
    let new = Tuple(vec![
        text(ID),
        text(ACCOUNT),
        text(OWNER),
        text(r#"{"n":2}"#),
    ]);
    let second = events(
        &mut assembler,
        vec![Change::Insert {
            relation: altered,
            new,
        }],
    );
    assert_eq!(
        second[0].change,
        DocumentChange::Created {
            row: access(ACCOUNT),
            document: document(r#"{"n":2}"#, ACCOUNT),
        }
    );
    // A column dropped by DDL: the table is no longer a repo.
    let dropped = Change::Insert {
        relation: relation(1, "acme", "tasks_760_", &["id", "account_id", "data"]),
        new: Tuple(vec![text(ID), text(ACCOUNT), text("{}")]),
    };
    assert!(events(&mut assembler, vec![dropped]).is_empty());
}
