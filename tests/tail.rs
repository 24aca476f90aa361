//! `walcast tail` as a process: JSON lines for inserts, updates and deletes, filters, and clean
//! exits on SIGINT/SIGTERM and on a closed pipe. The tail reads PostgreSQL through its own
//! temporary slot, next to the gateway TestEnv starts.

use crate::support::*;
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, Command};
use walcast_replication::Lsn;

/// Next line of a child's output, bounded by [`WAIT`]; `None` at end of output.
async fn next_line<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>) -> Option<String> {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("timed out waiting for a line")
        .expect("reading child output")
}

/// Reads stderr until the "tailing from <lsn> (temporary slot <name>)" line; returns the start
/// position and slot name, then keeps draining stderr so the child never blocks on it.
async fn wait_tailing<R: AsyncRead + Unpin + Send + 'static>(
    mut stderr: Lines<BufReader<R>>,
) -> (Lsn, String) {
    loop {
        let line = next_line(&mut stderr)
            .await
            .expect("tail exited before streaming");
        let Some(rest) = line.strip_prefix("tailing from ") else {
            continue;
        };
        let (lsn, slot) = rest.split_once(" (temporary slot ").expect("slot in line");
        let lsn: Lsn = lsn.parse().expect("start LSN");
        let slot = slot.trim_end_matches(')').to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        return (lsn, slot);
    }
}

struct Tail {
    child: Child,
    stdout: Lines<BufReader<tokio::process::ChildStdout>>,
    start: Lsn,
    slot: String,
}

impl Tail {
    async fn spawn(url: &str, args: &[&str]) -> Tail {
        let mut child = walcast_command(["tail", "--database-url", url])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walcast tail");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (start, slot) = wait_tailing(stderr).await;
        Tail {
            child,
            stdout,
            start,
            slot,
        }
    }

    async fn line(&mut self) -> Value {
        let line = next_line(&mut self.stdout)
            .await
            .expect("tail ended its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next line, asserted to be about document `id` of `app`'s `repo`.
    async fn expect_line(&mut self, app: &str, repo: &str, id: uuid::Uuid) -> Value {
        let line = self.line().await;
        assert_eq!(
            (&line["app"], &line["repo"], &line["id"]),
            (&json!(app), &json!(repo), &json!(id.to_string()))
        );
        line
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("tail is running")
    }

    /// Sends `signal` and returns the exit code.
    async fn signal(mut self, signal: &str) -> Option<i32> {
        send_signal(self.pid(), signal);
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tail did not exit after the signal")
            .expect("wait for tail");
        status.code()
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The temporary slot is dropped by PostgreSQL when the walsender's session ends, which happens
/// after the client has gone; poll (bounded) until it has.
async fn assert_slot_dropped(env: &TestEnv, slot: &str) {
    for _ in 0..200 {
        let rows = env
            .db
            .query(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        if rows.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("temporary slot {slot} still exists");
}

fn lsn_of(line: &Value) -> Lsn {
    line["lsn"]
        .as_str()
        .expect("lsn is a string")
        .parse()
        .expect("lsn is X/Y")
}

/// `commit_time` is RFC 3339 in UTC that PostgreSQL itself accepts, not before the row was
/// written (`created` is the writing transaction's start time).
async fn assert_commit_time(env: &TestEnv, line: &Value, created_by: &str) {
    let time = line["commit_time"].as_str().expect("commit_time string");
    assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    let row = env
        .db
        .query_one(
            &format!("SELECT $1::text::timestamptz >= ({created_by})"),
            &[&time],
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL rejects {time}: {e}"));
    assert!(row.get::<_, bool>(0), "{time} before {created_by}");
}

#[tokio::test]
async fn tail_prints_inserts_updates_and_deletes_as_json_lines() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    let account = env.create_account(&app).await;
    env.create_repo(&app, "tasks_760_").await;
    let mut tail = Tail::spawn(&env.url, &[]).await;
    assert!(tail.slot.starts_with("walcast_tail_"), "{}", tail.slot);

    let owner = env.create_user(&app, account, 0).await.id;
    let id = env
        .insert(
            &app,
            "tasks_760_",
            Some(account),
            Some(owner),
            json!({"title": "write \"tail\"", "done": false}),
        )
        .await;
    let created = tail.line().await;
    let doc = json!({"accountId": account.to_string(), "done": false, "id": id.to_string(), "title": "write \"tail\""});
    assert_eq!(
        created.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "app",
            "commit_time",
            "document",
            "id",
            "lsn",
            "repo",
            "type"
        ],
    );
    assert_eq!(created["app"], "acme");
    assert_eq!(created["repo"], "tasks_760_");
    assert_eq!(created["type"], "db_created");
    assert_eq!(created["id"], id.to_string());
    assert_eq!(created["document"], doc);
    assert!(lsn_of(&created) >= tail.start);
    assert_commit_time(
        &env,
        &created,
        &format!("SELECT created FROM acme.tasks_760_ WHERE id = '{id}'"),
    )
    .await;

    env.sql(&format!(
        "UPDATE acme.tasks_760_ SET data = data || '{{\"done\": true}}' WHERE id = '{id}'"
    ))
    .await;
    let updated = tail.line().await;
    assert_eq!(updated["type"], "db_updated");
    assert_eq!(updated["app"], "acme");
    assert_eq!(updated["repo"], "tasks_760_");
    assert_eq!(updated["id"], id.to_string());
    assert_eq!(
        updated["document"],
        json!({"accountId": account.to_string(), "done": true, "id": id.to_string(), "title": "write \"tail\""})
    );
    assert!(lsn_of(&updated) > lsn_of(&created));

    env.sql(&format!("DELETE FROM acme.tasks_760_ WHERE id = '{id}'"))
        .await;
    let deleted = tail.line().await;
    assert_eq!(deleted["type"], "db_deleted");
    assert_eq!(deleted["id"], id.to_string());
    assert_eq!(deleted["repo"], "tasks_760_");
    assert_eq!(deleted["document"], Value::Null);
    assert!(lsn_of(&deleted) > lsn_of(&updated));

    // Several events of one transaction share its commit LSN and time.
    env.sql(
        "BEGIN; \
         INSERT INTO acme.tasks_760_ (account_id, data, created) VALUES (NULL, '{\"n\": 1}', now()); \
         INSERT INTO acme.tasks_760_ (account_id, data, created) VALUES (NULL, '{\"n\": 2}', now()); \
         COMMIT;",
    )
    .await;
    let (first, second) = (tail.line().await, tail.line().await);
    assert_eq!(first["document"]["n"], 1);
    assert_eq!(second["document"]["n"], 2);
    assert_eq!(first["lsn"], second["lsn"]);
    assert_eq!(first["commit_time"], second["commit_time"]);

    let slot = tail.slot.clone();
    assert_eq!(tail.signal("INT").await, Some(0));
    assert_slot_dropped(&env, &slot).await;
}

#[tokio::test]
async fn tail_filters_by_app_and_repo() {
    let env = TestEnv::start().await;
    let acme = env.create_app("acme").await;
    let beta = env.create_app("beta").await;
    for app in [&acme, &beta] {
        env.create_repo(app, "tasks").await;
        env.create_repo(app, "notes").await;
    }
    let mut only_notes = Tail::spawn(&env.url, &["--repo", "notes"]).await;
    let mut beta_notes = Tail::spawn(&env.url, &["--app", "beta", "--repo", "notes"]).await;

    let acme_task = env
        .insert(&acme, "tasks", None, None, json!({"k": "acme task"}))
        .await;
    let beta_task = env
        .insert(&beta, "tasks", None, None, json!({"k": "beta task"}))
        .await;
    let acme_note = env
        .insert(&acme, "notes", None, None, json!({"k": "acme note"}))
        .await;
    let beta_note = env
        .insert(&beta, "notes", None, None, json!({"k": "beta note"}))
        .await;
    assert_ne!(acme_task, beta_task);

    // Tasks were written first: the first lines being notes shows they were filtered out.
    only_notes.expect_line("acme", "notes", acme_note).await;
    only_notes.expect_line("beta", "notes", beta_note).await;
    let line = beta_notes.expect_line("beta", "notes", beta_note).await;
    assert_eq!(line["document"]["k"], "beta note");

    assert_eq!(only_notes.signal("TERM").await, Some(0));
    assert_eq!(beta_notes.signal("INT").await, Some(0));
}

#[tokio::test]
async fn tail_exits_zero_when_its_pipe_closes() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    env.create_repo(&app, "tasks").await;
    // The group reports tail's own exit status, which a pipeline would hide behind head's.
    let script = format!(
        "{{ '{BIN}' tail --database-url '{}'; echo \"tail exited $?\" >&2; }} | head -n 1",
        env.url
    );
    let mut shell = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sh");
    let mut stderr = BufReader::new(shell.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(shell.stdout.take().unwrap()).lines();
    let slot = loop {
        let line = next_line(&mut stderr)
            .await
            .expect("tail exited before streaming");
        if let Some((_, slot)) = line.split_once("(temporary slot ") {
            break slot.trim_end_matches(')').to_owned();
        }
    };
    // walcast_tail_<pid>_<random>
    let pid: u32 = slot.split('_').nth(2).unwrap().parse().unwrap();

    let id = env
        .insert(&app, "tasks", None, None, json!({"first": true}))
        .await;
    let line = next_line(&mut stdout).await.expect("head printed a line");
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["id"], id.to_string());
    assert_eq!(next_line(&mut stdout).await, None, "head prints one line");

    // No further change is written: tail must notice the closed pipe by itself.
    let status = tokio::time::timeout(WAIT, shell.wait())
        .await
        .expect("the pipeline did not end after head exited")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut exit = None;
    while let Some(line) = next_line(&mut stderr).await {
        if let Some(code) = line.strip_prefix("tail exited ") {
            exit = Some(code.to_owned());
        }
    }
    assert_eq!(exit.as_deref(), Some("0"));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "tail process {pid} is still there"
    );
    assert_slot_dropped(&env, &slot).await;
}

#[tokio::test]
async fn tail_exits_zero_on_sigint_and_sigterm() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    env.create_repo(&app, "tasks").await;
    for signal in ["INT", "TERM"] {
        let mut tail = Tail::spawn(&env.url, &[]).await;
        let id = env
            .insert(&app, "tasks", None, None, json!({ "signal": signal }))
            .await;
        assert_eq!(tail.line().await["id"], id.to_string());
        let slot = tail.slot.clone();
        assert_eq!(tail.signal(signal).await, Some(0), "exit after SIG{signal}");
        assert_slot_dropped(&env, &slot).await;
    }

    // A reader that never reads: ~500 KB of lines fill the pipe and the write blocks; SIGINT
    // must still end the process (the blocked write must not hold it).
    let tail = Tail::spawn(&env.url, &[]).await;
    env.sql(
        "INSERT INTO acme.tasks (data, created) \
         SELECT jsonb_build_object('pad', repeat('x', 1000), 'i', i), now() \
         FROM generate_series(1, 500) i",
    )
    .await;
    let slot = tail.slot.clone();
    assert_eq!(
        tail.signal("INT").await,
        Some(0),
        "exit with a stalled reader"
    );
    assert_slot_dropped(&env, &slot).await;
}
