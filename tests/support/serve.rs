//! `walcast` as a child process: any command isolated from the developer's environment, and
//! `walcast serve` for tests that kill it, measure it or flood it.

use super::{http_get, SECRET};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_walcast");

/// `walcast` with `args` as a child of the test: without the developer's `DATABASE_URL` and
/// `JWT_SECRET` (a test passes what it means), stdin closed, killed when dropped. Its output is
/// the caller's choice.
pub fn walcast_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A loopback address nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Spawns `walcast serve` on `url` at `addr` with slot `slot` and `extra` flags; killed on drop.
/// Logs only `level` and above, to stderr.
pub fn spawn(url: &str, addr: SocketAddr, slot: &str, extra: &[&str], level: &str) -> Child {
    walcast_command(["serve", "--database-url", url, "--jwt-secret", SECRET])
        .args(["--listen", &addr.to_string(), "--slot", slot])
        .args(extra)
        .env("WALCAST_LOG", level)
        // walcast's own state (the resume window log) outside the source tree; kept per
        // server, database and slot below it, so a restarted gateway finds its own.
        .env(
            "WALCAST_DATA_DIR",
            std::env::temp_dir().join("walcast-test-serve"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn walcast serve")
}

/// Waits until `/readyz` answers 200; panics if the child exits or a minute passes.
pub async fn wait_ready(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reachable =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|connected| connected.is_ok());
        if reachable && http_get(addr, "/readyz").await.status == 200 {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "gateway exited early");
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
