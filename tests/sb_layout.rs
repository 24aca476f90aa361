//! A database StaticBackend itself laid out (its `sb.apps` has more NOT NULL columns, its
//! tables' `created` columns have no default): `migrate --demo`, `bench --url` and
//! `up --database-url` work on it; a database never migrated gets a clear message from bench;
//! bench against a default gateway reports rate-limit refusals and the flag to change.

use crate::support::*;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use walcast::config::Settings;
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// StaticBackend's own bootstrap and one tenant, as its PostgreSQL data store creates them.
const STATICBACKEND_OWN: &str = r#"
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE SCHEMA sb;
CREATE TABLE sb.customers (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    email text UNIQUE NOT NULL,
    stripe_id text NOT NULL,
    sub_id text NOT NULL,
    is_active boolean NOT NULL,
    created timestamp NOT NULL
);
CREATE TABLE sb.apps (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    customer_id uuid REFERENCES sb.customers(id) ON DELETE CASCADE,
    name text UNIQUE NOT NULL,
    allowed_domain text[],
    is_active boolean NOT NULL,
    monthly_email_sent integer NOT NULL,
    created timestamp NOT NULL
);
CREATE SCHEMA shop;
CREATE TABLE shop.sb_accounts (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    email text UNIQUE NOT NULL,
    created timestamp NOT NULL
);
CREATE TABLE shop.sb_tokens (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    account_id uuid REFERENCES shop.sb_accounts(id) ON DELETE CASCADE,
    token text UNIQUE NOT NULL,
    email text UNIQUE NOT NULL,
    password text NOT NULL,
    role integer NOT NULL,
    reset_code text NOT NULL,
    created timestamp NOT NULL
);
INSERT INTO sb.customers (email, stripe_id, sub_id, is_active, created)
    VALUES ('owner@shop.test', '', '', true, now());
INSERT INTO sb.apps (customer_id, name, is_active, monthly_email_sent, created)
    SELECT id, 'shop', true, 0, now() FROM sb.customers;
"#;

async fn walcast(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(180), walcast_command(args).output())
        .await
        .expect("walcast finished")
        .expect("walcast ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bench_args<'a>(ws_url: &'a str, database_url: &'a str, rate: &'a str) -> Vec<&'a str> {
    vec![
        "bench",
        "--scenario",
        "channel",
        "--connections",
        "4",
        "--rate",
        rate,
        "--duration",
        "2",
        "--drain",
        "30",
        "--url",
        ws_url,
        "--database-url",
        database_url,
        "--jwt-secret",
        SECRET,
        "--json",
    ]
}

#[tokio::test]
async fn staticbackends_own_layout_migrate_bench_and_rate_limits() {
    // Its own server: `up` uses the default slot name, which must be free cluster-wide.
    let postgres = EmbeddedPostgres::start(EmbeddedOptions::default())
        .await
        .expect("start private PostgreSQL");
    let url = postgres.create_database().await.unwrap();
    connect(&url)
        .await
        .batch_execute(STATICBACKEND_OWN)
        .await
        .unwrap();

    // A gateway on the not yet migrated database serves (it needs no helpers), but bench
    // cannot create its users there and says what to run.
    let mut settings = Settings::new(url.clone(), SECRET);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.slot = "sb_layout".into();
    let gateway = Gateway::start(settings).await.expect("gateway");
    let ws_url = format!("ws://{}/ws", gateway.local_addr());
    let (ok, _, stderr) = walcast(&bench_args(&ws_url, &url, "50")).await;
    assert!(!ok);
    assert!(stderr.contains("walcast migrate"), "{stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");

    let (ok, _, stderr) = walcast(&["migrate", "--demo", "--database-url", &url]).await;
    assert!(ok, "{stderr}");
    let db = connect(&url).await;
    let row = db
        .query_one(
            "SELECT is_active, monthly_email_sent FROM sb.apps WHERE name = 'demo'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "a created app is active");
    assert_eq!(row.get::<_, i32>(1), 0);
    let users: i64 = db
        .query_one("SELECT count(*) FROM demo.sb_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 3);

    // bench --url now works; 50 messages/s stay under the default rate limit.
    let (ok, stdout, stderr) = walcast(&bench_args(&ws_url, &url, "50")).await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["sent"].as_u64().unwrap() > 0);
    assert_eq!(report["rate_limited"], 0, "{report}");
    assert_eq!(report["deliveries"], report["expected_deliveries"]);

    // 1,000 messages/s against the default limit (100/s, burst 200): refusals are counted,
    // only published messages are expected to arrive, and the flag to change is named.
    let (ok, stdout, stderr) = walcast(&bench_args(&ws_url, &url, "1000")).await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let refused = report["rate_limited"].as_u64().unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(refused > 0, "{report}");
    assert_eq!(
        report["expected_deliveries"].as_u64().unwrap(),
        (sent - refused) * 4,
        "{report}"
    );
    assert!(stderr.contains("--rate-limit"), "{stderr}");
    gateway.shutdown().await;

    // up --database-url on it (port 0, no embedded PostgreSQL); its window log in a temporary
    // directory, not the working directory.
    let data_dir = tempfile::tempdir().unwrap();
    let mut up = walcast_command(["up", "--database-url", &url, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = up.kill().await;
        let out = up.wait_with_output().await.unwrap();
        panic!(
            "up --database-url: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = up.kill().await;
}
