//! `walcast up` from an empty directory: embedded PostgreSQL initialised, demo app, gateway, a
//! todo created over the demo API arrives live on a WebSocket; Ctrl-C stops everything, the
//! embedded PostgreSQL included; a second run reuses the data directory, as does a run on a
//! directory `serve` has used or one an earlier `up` kept its cluster at the top of.

use crate::support::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// initdb on a loaded machine takes a while; still bounded.
const START_WAIT: Duration = Duration::from_secs(120);

struct Up {
    child: Child,
    addr: SocketAddr,
    /// The session tokens `up` printed, one per demo user.
    printed_tokens: Vec<String>,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Up {
    /// Runs `walcast up` in `dir` with data directory `dir/data` and reads stdout up to "Press
    /// Ctrl-C to stop.".
    async fn start(dir: &Path) -> Up {
        Self::start_with_env(dir, &[]).await
    }

    /// [`Up::start`] with extra environment variables.
    async fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Up {
        let mut command = walcast_command(["up"]);
        // After the isolation: these are what the test means the developer exported.
        command.envs(env.iter().copied());
        let mut child = command
            .current_dir(dir)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walcast up");
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[walcast up] {line}");
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut printed_tokens = Vec::new();
        loop {
            let line = tokio::time::timeout(START_WAIT, stdout.next_line())
                .await
                .expect("walcast up did not get ready")
                .unwrap()
                .expect("walcast up ended before it was ready");
            if let Some(url) = line.trim().strip_prefix("demo page:") {
                let url = url.trim();
                let host = url
                    .strip_prefix("http://")
                    .and_then(|u| u.strip_suffix('/'))
                    .unwrap_or_else(|| panic!("demo page URL: {url}"));
                addr = Some(host.parse().expect("demo page address"));
            }
            // "    Alice  alice@demo.test Account A: <jwt>"
            if line.contains("@demo.test") {
                let jwt = line.rsplit(": ").next().unwrap().trim().to_owned();
                assert_eq!(jwt.split('.').count(), 3, "{line}");
                printed_tokens.push(jwt);
            }
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        Up {
            child,
            addr: addr.expect("up printed the demo page URL"),
            printed_tokens,
            _stdout: stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("up is running")
    }

    /// SIGINT, then the exit code. Bounded above `pg_ctl stop`'s own 60 s, so that a slow stop
    /// shows up as walcast's error rather than as this timeout.
    async fn interrupt(mut self, pgdata: &Path) -> Option<i32> {
        let pid = self.child.id().expect("up is running");
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        match tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await {
            Ok(status) => status.unwrap().code(),
            Err(_) => {
                let log = std::fs::read_to_string(pgdata.join("walcast-postgres.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "walcast up did not exit after SIGINT; PostgreSQL log ends with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// An empty directory the `postgres` user can reach (the embedded server runs as `postgres`
/// when the tests run as root; `up` itself hands the data directory over).
fn empty_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("walcast-up-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    dir
}

#[tokio::test]
async fn up_from_an_empty_directory_serves_the_demo_and_stops_cleanly() {
    let dir = empty_dir();
    let pgdata = dir.path().join("data").join("postgres");

    let up = Up::start(dir.path()).await;
    assert_eq!(up.printed_tokens.len(), 3, "one token per demo user");
    assert!(pgdata.join("postmaster.pid").exists());
    // The window log beside the cluster, where `serve` keeps it.
    assert!(dir.path().join("data").join("window").is_dir());

    let page = http_get(up.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("todo-list"), "{}", page.body);
    let users = http_get(up.addr, "/demo/users").await;
    assert_eq!(users.status, 200);
    let users: Value = serde_json::from_str(&users.body).unwrap();
    let users = users.as_array().expect("array of users");
    assert_eq!(users.len(), 3);
    let alice = &users[0];
    assert_eq!(alice["name"], "Alice");
    let token = alice["token"].as_str().expect("token");

    // A printed token is a valid session too.
    let mut printed = Ws::connect(up.addr, "").await;
    printed.auth(&up.printed_tokens[0]).await;

    let mut ws = Ws::connect(up.addr, "").await;
    ws.auth(token).await;
    ws.join("db-tasks_760_").await;
    let bearer = format!("Bearer {token}");
    let created = http(
        up.addr,
        "POST",
        "/demo/tasks",
        &[("Authorization", &bearer)],
        &json!({"title": "from the up test"}).to_string(),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = serde_json::from_str::<Value>(&created.body).unwrap()["id"]
        .as_str()
        .expect("created id")
        .to_owned();
    let doc = event(&ws.recv().await, "db_created", "db-tasks_760_");
    assert_eq!(doc["id"], id);
    assert_eq!(doc["title"], "from the up test");
    assert_eq!(doc["accountId"], alice["accountId"]);
    drop(ws);
    drop(printed);

    assert_eq!(up.interrupt(&pgdata).await, Some(0));
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "the embedded PostgreSQL is still running"
    );

    // Second run: same data directory, nothing initialised again, the todo is still there.
    let up = Up::start(dir.path()).await;
    let listed = http(
        up.addr,
        "GET",
        "/demo/tasks",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed: Value = serde_json::from_str(&listed.body).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "{listed}"
    );
    assert_eq!(up.interrupt(&pgdata).await, Some(0));
    assert!(!pgdata.join("postmaster.pid").exists());
}

/// `walcast up` run to completion with `args`: (exit success, stderr).
async fn up_once(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        START_WAIT,
        walcast_command(["up"])
            .current_dir(dir)
            .args(args)
            // As a user sees it: no backtrace under the message.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output(),
    )
    .await
    .expect("walcast up did not finish")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn up_ignores_exported_settings_and_says_why_a_second_up_cannot_start() {
    let dir = empty_dir();
    let data = dir.path().join("data");
    let pgdata = data.join("postgres");
    // A developer's shell exporting their own app's settings: `up` must not touch that
    // database (it would fail to start here, since nothing listens on port 1).
    let up = Up::start_with_env(
        dir.path(),
        &[
            ("DATABASE_URL", "postgres://app:pw@127.0.0.1:1/myapp"),
            ("JWT_SECRET", "my-apps-secret"),
        ],
    )
    .await;
    let mut ws = Ws::connect(up.addr, "").await;
    let demo_signed = &up.printed_tokens[0];
    ws.auth(demo_signed).await;
    let claims = jsonwebtoken::decode::<Value>(
        demo_signed,
        &jsonwebtoken::DecodingKey::from_secret(b"walcast-demo-secret"),
        &{
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.validate_nbf = true;
            v
        },
    );
    assert!(
        claims.is_ok(),
        "tokens are signed with the demo secret: {claims:?}"
    );

    // Second `up` in the same directory: one clear line, not PostgreSQL's log.
    let data_arg = data.to_str().unwrap();
    let (ok, stderr) = up_once(
        dir.path(),
        &["--data-dir", data_arg, "--listen", "127.0.0.1:0"],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("already running (PID {})", up.pid())),
        "{stderr}"
    );
    assert!(stderr.lines().count() <= 3, "{stderr}");

    // Second `up` elsewhere on the same port: suggests --listen, and initialises nothing.
    let other = empty_dir();
    let taken = up.addr.to_string();
    let (ok, stderr) = up_once(
        other.path(),
        &[
            "--data-dir",
            other.path().join("data").to_str().unwrap(),
            "--listen",
            &taken,
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(stderr.contains(&taken), "{stderr}");
    assert!(!other.path().join("data").join("postgres").exists());

    drop(ws);
    assert_eq!(up.interrupt(&pgdata).await, Some(0));
}

#[tokio::test]
async fn up_starts_in_a_data_directory_serve_has_used() {
    let dir = empty_dir();
    // What `walcast serve` leaves in its data directory: a window log, no PostgreSQL.
    let log = dir.path().join("data").join("window").join("1-app-walcast");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("0000000000000001.seg"), b"kept").unwrap();

    let up = Up::start(dir.path()).await;
    let pgdata = dir.path().join("data").join("postgres");
    assert!(pgdata.join("PG_VERSION").exists());
    assert_eq!(
        std::fs::read(log.join("0000000000000001.seg")).unwrap(),
        b"kept"
    );
    assert_eq!(up.interrupt(&pgdata).await, Some(0));
}

#[tokio::test]
async fn up_keeps_using_a_data_directory_with_the_cluster_at_its_top() {
    let dir = empty_dir();
    let data = dir.path().join("data");
    // What an earlier `up` left: the cluster directly in the data directory, a mark in it.
    let earlier = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: Some(data.clone()),
        ..EmbeddedOptions::default()
    })
    .await
    .expect("start the earlier cluster");
    connect(&earlier.url("postgres"))
        .await
        .batch_execute("CREATE TABLE made_earlier (id int)")
        .await
        .unwrap();
    earlier.stop().await.unwrap();

    let up = Up::start(dir.path()).await;
    assert!(
        data.join("postmaster.pid").exists(),
        "the earlier cluster runs"
    );
    assert!(
        !data.join("postgres").exists(),
        "no second cluster beside it"
    );
    let tables = connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        postmaster_port(&data)
    ))
    .await
    .query(
        "SELECT 1 FROM pg_tables WHERE tablename = 'made_earlier'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(up.interrupt(&data).await, Some(0));
    assert!(!data.join("postmaster.pid").exists());
}

/// The port a running cluster in `pgdata` listens on (line 4 of `postmaster.pid`).
fn postmaster_port(pgdata: &Path) -> u16 {
    let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    pid_file.lines().nth(3).unwrap().trim().parse().unwrap()
}
