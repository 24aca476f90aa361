//! `walcast serve` start-up and failure paths: the listener before the slot, a slot held by
//! someone else, concurrent preparation, permanent errors, addresses in connection errors.

use crate::support::*;
use std::time::Duration;
use walcast::config::Settings;
use walcast::db::Database;
use walcast::gateway::{prepare, Gateway, GatewayError, Prepared};

async fn slots(env: &TestEnv) -> Vec<String> {
    env.db
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_taken_port_fails_before_any_slot_exists() {
    let env = TestEnv::start().await;
    assert_eq!(slots(&env).await, ["walcast"]);
    let mut settings = env.settings.clone();
    settings.listen = env.addr;
    settings.slot = "second".into();
    let error = Gateway::start(settings).await.err().expect("port is taken");
    assert!(matches!(error, GatewayError::Listen { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("cannot listen on {}", env.addr));
    assert_eq!(slots(&env).await, ["walcast"], "no slot left behind");
}

#[tokio::test]
async fn a_slot_in_use_names_the_option_to_change() {
    let env = TestEnv::start().await;
    let mut settings = env.settings.clone();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let error = Gateway::start(settings.clone())
        .await
        .err()
        .expect("the slot is held by the first gateway");
    assert!(matches!(error, GatewayError::SlotInUse { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("`walcast`") && text.contains("--slot"),
        "{text}"
    );
    assert!(text.contains("active for PID"), "{text}");
    // With its own slot the second gateway starts.
    settings.slot = "second".into();
    Gateway::start(settings)
        .await
        .expect("own slot")
        .shutdown()
        .await;
}

#[tokio::test]
async fn concurrent_starts_prepare_under_one_lock() {
    let env = TestEnv::start().await;
    let fresh = env.postgres.create_database().await.unwrap();
    connect(&fresh)
        .await
        .batch_execute(walcast::schema::STATICBACKEND)
        .await
        .unwrap();
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let url = fresh.clone();
            tokio::spawn(async move { prepare(&Database::new(url)).await })
        })
        .collect();
    for start in starts {
        assert_eq!(start.await.unwrap().expect("prepare"), Prepared::Complete);
    }
}

/// The documented set-up: `walcast migrate` as a superuser, the gateway as a plain replication
/// user. The gateway may not re-apply the preparation; it says whether the trigger covers it.
#[tokio::test]
async fn a_plain_role_relies_on_the_trigger_migrate_installed() {
    let env = TestEnv::database_only().await;
    env.sql("CREATE ROLE plain LOGIN REPLICATION").await;
    let dbname = env.url.rsplit('/').next().unwrap();
    let url = format!(
        "postgres://plain@127.0.0.1:{}/{dbname}",
        env.postgres.port()
    );
    let prepared = prepare(&Database::new(url.clone())).await.expect("prepare");
    assert_eq!(prepared, Prepared::ByMigrate);
    env.sql("DROP EVENT TRIGGER walcast_prepare_repos").await;
    let prepared = prepare(&Database::new(url)).await.expect("prepare");
    assert_eq!(prepared, Prepared::WithoutEventTrigger);
}

#[tokio::test]
async fn refused_credentials_stop_the_gateway_with_the_cause() {
    let mut env = TestEnv::start().await;
    env.shutdown().await;
    env.sql("CREATE ROLE gw LOGIN SUPERUSER REPLICATION").await;
    let dbname = env.url.rsplit('/').next().unwrap();
    let url = format!("postgres://gw@127.0.0.1:{}/{dbname}", env.postgres.port());
    let mut settings = Settings::new(url, SECRET);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let mut gateway = Gateway::start(settings).await.expect("start as gw");
    // From now on the role may not log in: every reconnect is refused, which no retry fixes.
    env.sql(
        "ALTER ROLE gw NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE usename = 'gw'",
    )
    .await;
    let failure = tokio::time::timeout(Duration::from_secs(60), gateway.failure())
        .await
        .expect("a permanent error ends the gateway instead of retrying forever");
    let GatewayError::Stopped(cause) = &failure else {
        panic!("{failure:?}");
    };
    assert!(cause.is_permanent());
    assert_eq!(cause.sqlstate(), Some("28000"), "{cause}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn connection_errors_name_the_address_not_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there once the probe is dropped.
    let url = format!("postgres://someone:hunter2@127.0.0.1:{port}/db");
    let socket = "host=/nonexistent/pgsocket port=5999 user=u password=hunter2 dbname=db";
    for (args, expected) in [
        (
            vec![
                "serve",
                "--database-url",
                &url,
                "--jwt-secret",
                "s",
                "--listen",
                "127.0.0.1:0",
            ],
            format!("127.0.0.1:{port}"),
        ),
        (
            vec!["migrate", "--database-url", &url],
            format!("127.0.0.1:{port}"),
        ),
        (
            vec!["migrate", "--database-url", socket],
            "/nonexistent/pgsocket/.s.PGSQL.5999".to_owned(),
        ),
    ] {
        let out = walcast_command(&args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
}
