//! The repo rule's SQL twin (`walcast.is_repo_name`, used by the DDL event trigger) gives the
//! Rust rule's answer on every case of the shared table, and `walcast.is_repo` reads real
//! tables' names and live columns the way the replication stream presents them.

use crate::support::connect;
use walcast::event::repo::{is_repo, REPO_RULE_CASES};
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

#[tokio::test]
async fn sql_predicate_agrees_with_the_rust_rule() {
    let postgres = EmbeddedPostgres::start(EmbeddedOptions::default())
        .await
        .expect("start private PostgreSQL");
    let url = postgres.create_database().await.expect("create database");
    walcast::schema::migrate_url(&url, false)
        .await
        .expect("migrate");
    let db = connect(&url).await;

    for (schema, table, columns, want) in REPO_RULE_CASES {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let row = db
            .query_one(
                "SELECT walcast.is_repo_name($1, $2, $3)",
                &[schema, table, &columns],
            )
            .await
            .expect("is_repo_name");
        let sql: bool = row.get(0);
        assert_eq!(sql, *want, "SQL on {schema}.{table} {columns:?}");
    }

    db.batch_execute(
        "CREATE SCHEMA acme;
         CREATE TABLE acme.tasks_760_ (id uuid, account_id uuid, owner_id uuid, data jsonb);
         CREATE TABLE acme.sb_notes (id uuid, account_id uuid, owner_id uuid, data jsonb);
         CREATE TABLE acme.half (id uuid, account_id uuid, data jsonb, owner_id uuid);
         ALTER TABLE acme.half DROP COLUMN owner_id;
         CREATE TABLE acme.parted (id uuid, account_id uuid, owner_id uuid, data jsonb)
             PARTITION BY HASH (id);
         CREATE VIEW acme.tasks_view AS SELECT * FROM acme.tasks_760_;
         CREATE TABLE public.tasks (id uuid, account_id uuid, owner_id uuid, data jsonb);",
    )
    .await
    .expect("create tables");
    let rows = db
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text = ANY('{r,p}'),
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                    walcast.is_repo(c.oid::regclass)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('acme', 'public') AND c.relkind IN ('r', 'p', 'v')",
            &[],
        )
        .await
        .expect("catalog");
    assert_eq!(rows.len(), 6);
    for row in rows {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let is_table: bool = row.get(2);
        let columns: Vec<String> = row.get(3);
        let sql: bool = row.get(4);
        let rust = is_table && is_repo(&schema, &table, columns.iter().map(String::as_str));
        assert_eq!(sql, rust, "{schema}.{table} {columns:?}");
        let want = matches!(table.as_str(), "tasks_760_" | "parted") && schema == "acme";
        assert_eq!(sql, want, "{schema}.{table}");
    }
    postgres.stop().await.expect("stop PostgreSQL");
}
