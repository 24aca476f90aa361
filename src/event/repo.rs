//! The one rule of what a document table ("repo") is (PROTOCOL.md §6). Rust decides; the SQL
//! twin `walcast.is_repo_name` in `schema/walcast.sql` exists only because PostgreSQL's DDL
//! event trigger must decide inside the database, and an integration test runs it over
//! [`REPO_RULE_CASES`] against the same answers.

/// Columns every repo has; others may follow.
const REPO_COLUMNS: [&str; 4] = ["id", "account_id", "owner_id", "data"];

/// Schemas that are never an app: PostgreSQL's own, StaticBackend's `sb`, the gateway's
/// `walcast`, and `public`. Every `pg_*` schema (temporary, toast) is PostgreSQL's too.
const NON_APP_SCHEMAS: [&str; 5] = [
    "pg_catalog",
    "information_schema",
    "sb",
    "walcast",
    "public",
];

/// StaticBackend's own tables in an app schema (`sb_tokens`, …) start with this.
const SYSTEM_TABLE_PREFIX: &str = "sb_";

/// Whether table `table` of schema `schema` with these columns is a repo.
pub fn is_repo<'a>(schema: &str, table: &str, columns: impl IntoIterator<Item = &'a str>) -> bool {
    if table.starts_with(SYSTEM_TABLE_PREFIX)
        || NON_APP_SCHEMAS.contains(&schema)
        || schema.starts_with("pg_")
    {
        return false;
    }
    let mut found = [false; REPO_COLUMNS.len()];
    for column in columns {
        if let Some(i) = REPO_COLUMNS.iter().position(|c| *c == column) {
            found[i] = true;
        }
    }
    found.iter().all(|f| *f)
}

/// Examples of the rule: (schema, table, columns, is a repo). Both the Rust rule and the SQL
/// predicate are tested against exactly these.
pub const REPO_RULE_CASES: &[(&str, &str, &[&str], bool)] = &[
    (
        "acme",
        "tasks_760_",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
    (
        "acme",
        "notes",
        &["data", "owner_id", "id", "account_id", "extra"],
        true,
    ),
    (
        "acme",
        "sb_tokens",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "acme",
        "sb_",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "acme",
        "sbtasks",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
    (
        "acme",
        "Sb_tasks",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
    ("acme", "no_owner", &["id", "account_id", "data"], false),
    ("acme", "no_data", &["id", "account_id", "owner_id"], false),
    (
        "acme",
        "renamed",
        &["id", "account_id", "owner_id", "Data"],
        false,
    ),
    ("acme", "empty", &[], false),
    (
        "public",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "sb",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "walcast",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "pg_catalog",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "information_schema",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "pg_temp_3",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "pg_toast",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        false,
    ),
    (
        "Public",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
    (
        "pgapp",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
    (
        "walcast_app",
        "tasks",
        &["id", "account_id", "owner_id", "data"],
        true,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_matches_every_case() {
        for (schema, table, columns, want) in REPO_RULE_CASES {
            assert_eq!(
                is_repo(schema, table, columns.iter().copied()),
                *want,
                "{schema}.{table} {columns:?}"
            );
        }
    }
}
