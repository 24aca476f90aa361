//! `walcast serve` as a process: readiness, SIGTERM closes sockets with 1001, confirms the last
//! LSN to PostgreSQL and exits 0.

use crate::support::serve;
use crate::support::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn sigterm_closes_sockets_confirms_and_exits_zero() {
    let mut env = TestEnv::start().await;
    // The in-process gateway of TestEnv holds slot `walcast`; the process under test gets its own.
    env.shutdown().await;
    let (app, account, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks_760_").await;

    let addr = serve::free_addr();
    // No resume window: everything dispatched can be confirmed at once.
    let extra = ["--resume-window-secs", "0"];
    let mut child = serve::spawn(&env.url, addr, "walcast_proc", &extra, "error");
    serve::wait_ready(addr, &mut child).await;
    assert_eq!(http_get(addr, "/healthz").await.status, 200);

    let mut ws = Ws::connect(addr, "").await;
    ws.auth(&user.jwt).await;
    ws.join("db-tasks_760_").await;
    env.insert(
        &app,
        "tasks_760_",
        Some(account),
        None,
        json!({"last": true}),
    )
    .await;
    let delivered = ws.recv().await;
    assert_eq!(delivered["type"], "db_created");
    let commit_lsn = delivered["lsn"].as_str().unwrap().to_owned();

    let pid = child.id().expect("gateway running").to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(ws.closed().await, 1001);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("gateway did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    // The slot's confirmed position is at or past the delivered commit: a restart will not
    // send it again.
    let row = env
        .db
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, active FROM pg_replication_slots WHERE slot_name = 'walcast_proc'",
            &[&commit_lsn],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "confirmed_flush_lsn is behind {commit_lsn}"
    );
    assert!(!row.get::<_, bool>(1), "the walsender is gone");
}

#[tokio::test]
async fn gateway_restart_resumes_without_loss_or_repeat() {
    let mut env = TestEnv::start().await;
    let (app, account, user) = env.app_with_user("acme", 100).await;
    env.create_repo(&app, "log_760_").await;
    {
        let mut ws = env.ws_as(&user).await;
        ws.join("db-log_760_").await;
        env.insert(&app, "log_760_", Some(account), None, json!({"n": 1}))
            .await;
        assert_eq!(event(&ws.recv().await, "db_created", "db-log_760_")["n"], 1);
    }
    env.shutdown().await;
    // Written while no gateway runs: kept in the WAL by the slot.
    env.insert(&app, "log_760_", Some(account), None, json!({"n": 2}))
        .await;

    let gateway = walcast::gateway::Gateway::start(env.settings.clone())
        .await
        .unwrap();
    let mut ws = Ws::connect(gateway.local_addr(), "").await;
    ws.auth(&user.jwt).await;
    ws.join("db-log_760_").await;
    env.insert(&app, "log_760_", Some(account), None, json!({"n": 3}))
        .await;
    // Row 1 was delivered before the restart and row 2 committed before this subscriber
    // joined (it loads such rows itself): the first event it gets is row 3.
    let first = event(&ws.recv().await, "db_created", "db-log_760_");
    assert_eq!(first["n"], 3);
    gateway.shutdown().await;
}
