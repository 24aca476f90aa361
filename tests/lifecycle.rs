//! `walcast serve` as a process: readiness, SIGTERM closes sockets with 1001, confirms the last
//! LSN to PostgreSQL and exits 0.

use crate::support::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop, so a failing test leaves no gateway behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn sigterm_closes_sockets_confirms_and_exits_zero() {
    let mut env = TestEnv::start().await;
    // The in-process gateway of TestEnv holds slot `walcast`; the process under test gets its own.
    env.shutdown().await;
    let app = env.create_app("acme").await;
    let account = env.create_account(&app).await;
    let user = env.create_user(&app, account, 0).await;
    env.create_repo(&app, "tasks_760_").await;

    let port = free_port();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--slot",
                "walcast_proc",
                // No resume window: everything dispatched can be confirmed at once.
                "--resume-window-secs",
                "0",
            ])
            .env("DATABASE_URL", &env.url)
            .env("JWT_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walcast serve"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(addr, "/readyz").await != Some(200) {
        assert!(Instant::now() < deadline, "gateway never became ready");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "gateway exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(addr, "/healthz").await, Some(200));

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

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(ws.closed().await, 1001);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let app = env.create_app("acme").await;
    let account = env.create_account(&app).await;
    let user = env.create_user(&app, account, 100).await;
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
