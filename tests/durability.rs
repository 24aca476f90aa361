//! PROTOCOL.md §8 resume, exact and durable: a cut transaction resumed at the exact event;
//! PostgreSQL restarted (`-m fast`, `-m immediate`) under a gateway with subscribed clients;
//! `kill -9` of a `walcast serve` process under writes; a damaged window log; the slot confirmed
//! as soon as transactions are durable; lag metrics that stay at zero on a quiet database.
//! Every check compares what clients received with the writer's own log of committed rows.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use uuid::Uuid;
use walcast_replication::embedded::EmbeddedPostgres;

const REPO: &str = "log_760_";
const CH: &str = "db-log_760_";

/// Event id and position of a db event.
fn id_pos(msg: &Value) -> (String, String) {
    let doc = event(msg, "db_created", CH);
    let pos = msg["pos"].as_str().expect("pos").to_owned();
    (doc["id"].as_str().expect("id").to_owned(), pos)
}

/// `0/15EB7C8:9` → (lsn, index), for order checks.
fn pos_key(pos: &str) -> (u64, u32) {
    let (lsn, index) = pos.split_once(':').expect("X/Y:index");
    let (hi, lo) = lsn.split_once('/').unwrap();
    (
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap(),
        index.parse().unwrap(),
    )
}

#[tokio::test]
async fn a_cut_transaction_resumes_at_the_exact_event() {
    let env = TestEnv::start().await;
    let (app, a, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, REPO).await;

    let mut first = env.ws_as(&user).await;
    first.join(CH).await;
    env.sql(&format!(
        "INSERT INTO acme.{REPO} (account_id, data, created) \
         SELECT '{a}', jsonb_build_object('n', g), now() FROM generate_series(1, 2000) g"
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(id_pos(&first.recv().await));
    }
    drop(first);
    let lsn_only = seen[9].1.split_once(':').unwrap().0.to_owned();

    let mut back = env.ws_as(&user).await;
    assert!(back.join_since(CH, &seen[9].1).await);
    let mut rest = Vec::new();
    for _ in 0..1990 {
        rest.push(id_pos(&back.recv().await));
    }
    let all: Vec<&(String, String)> = seen.iter().chain(&rest).collect();
    for pair in all.windows(2) {
        assert!(pos_key(&pair[0].1) < pos_key(&pair[1].1), "{pair:?}");
    }
    let ids: HashSet<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 2000, "no duplicate");
    let rows = env
        .db
        .query(&format!("SELECT id::text FROM acme.{REPO}"), &[])
        .await
        .unwrap();
    let stored: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        stored,
        ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>()
    );
    // Nothing more: the next event is live.
    let live = env
        .insert(&app, REPO, Some(a), None, json!({"n": "live"}))
        .await;
    back.expect_id("db_created", CH, live, "live after the 1,990")
        .await;

    // A bare LSN keeps its meaning: after the whole transaction.
    let mut whole = env.ws_as(&user).await;
    assert!(whole.join_since(CH, &lsn_only).await);
    whole
        .expect_id(
            "db_created",
            CH,
            live,
            "the 2,000-row transaction is not replayed",
        )
        .await;
    // A position of a transaction the window does not hold is refused, not skipped.
    let mut old = env.ws_as(&user).await;
    assert!(!old.join_since(CH, "0/10:3").await);
}

/// Writes one row per transaction until stopped, surviving server restarts; keeps the ids of
/// the rows that are committed, in commit order (rows whose commit outcome was lost with the
/// connection are looked up after reconnecting).
struct Writer {
    log: Arc<Mutex<Vec<String>>>,
    /// Rows of one large transaction to write next (0: none asked).
    big: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(url: String, account: Uuid, pause: Duration) -> Writer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let big = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let (log, stop, big) = (Arc::clone(&log), stop.clone(), Arc::clone(&big));
            async move {
                let mut client = None;
                let mut uncertain: Option<Uuid> = None;
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let db = match &client {
                        Some(c) => c,
                        None => match tokio_postgres::connect(&url, NoTls).await {
                            Ok((c, conn)) => {
                                tokio::spawn(conn);
                                client.insert(c)
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    if let Some(id) = uncertain {
                        let sql = format!("SELECT count(*) FROM acme.{REPO} WHERE id = $1");
                        match db.query_one(&sql, &[&id]).await {
                            Ok(row) => {
                                if row.get::<_, i64>(0) == 1 {
                                    log.lock().unwrap().push(id.to_string());
                                }
                                uncertain = None;
                            }
                            Err(_) => {
                                client = None;
                                continue;
                            }
                        }
                    }
                    let rows = big.swap(0, std::sync::atomic::Ordering::AcqRel);
                    if rows > 0 {
                        let sql = format!(
                            "INSERT INTO acme.{REPO} (account_id, data, created) \
                             SELECT $1, jsonb_build_object('big', g), now() \
                             FROM generate_series(1, {rows}) g RETURNING id::text"
                        );
                        let ids = db.query(&sql, &[&account]).await.expect("large insert");
                        log.lock()
                            .unwrap()
                            .extend(ids.iter().map(|r| r.get::<_, String>(0)));
                        continue;
                    }
                    let id = Uuid::new_v4();
                    n += 1;
                    let sql = format!(
                        "INSERT INTO acme.{REPO} (id, account_id, data, created) \
                         VALUES ($1, $2, jsonb_build_object('n', {n}::bigint), now())"
                    );
                    match db.execute(&sql, &[&id, &account]).await {
                        Ok(_) => log.lock().unwrap().push(id.to_string()),
                        Err(_) => {
                            uncertain = Some(id);
                            client = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Writer {
            log,
            big,
            stop,
            task,
        }
    }

    fn committed(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.cancel();
        self.task.await.unwrap();
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// A subscriber that records every db event id it receives, across reconnects: on a lost
/// connection it rejoins with `since` = the last position it saw.
struct Subscriber {
    ids: Arc<Mutex<Vec<String>>>,
    last_pos: Arc<Mutex<String>>,
}

impl Subscriber {
    fn new() -> Subscriber {
        Subscriber {
            ids: Arc::default(),
            last_pos: Arc::default(),
        }
    }

    /// Reads until the connection ends (or `until` ids are held).
    async fn read(&self, ws: &mut Ws, until: Option<usize>) {
        loop {
            if until.is_some_and(|n| self.ids.lock().unwrap().len() >= n) {
                return;
            }
            let Some(msg) = ws.try_recv().await else {
                return;
            };
            let (id, pos) = id_pos(&msg);
            self.ids.lock().unwrap().push(id);
            *self.last_pos.lock().unwrap() = pos;
        }
    }

    async fn join(&self, addr: SocketAddr, user: &User) -> Ws {
        let mut ws = Ws::connect(addr, "").await;
        ws.auth(&user.jwt).await;
        let since = self.last_pos.lock().unwrap().clone();
        if since.is_empty() {
            ws.join(CH).await;
        } else {
            assert!(ws.join_since(CH, &since).await, "resumable");
        }
        ws
    }

    fn assert_exactly(&self, writer: &[String], who: &str) {
        let ids = self.ids.lock().unwrap();
        if *ids == writer {
            return;
        }
        let at = ids.iter().zip(writer).take_while(|(a, b)| a == b).count();
        let got: HashSet<&String> = ids.iter().collect();
        let want: HashSet<&String> = writer.iter().collect();
        let lost: Vec<usize> = (0..writer.len())
            .filter(|&i| !got.contains(&writer[i]))
            .collect();
        let extra = ids.iter().filter(|id| !want.contains(id)).count();
        panic!(
            "{who}: every committed row exactly once, in commit order: received {}, committed {}, \
             first difference at {at}, lost at writer indexes {lost:?}, {extra} not committed, \
             {} duplicates",
            ids.len(),
            writer.len(),
            ids.len() - got.len()
        );
    }
}

/// Runs pg_ctl on the test's server; the restarted server logs to its usual file (a server
/// inheriting our pipes would keep them open).
fn pg_ctl(cluster: &EmbeddedPostgres, args: &[&str]) -> std::process::ExitStatus {
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    cmd.args(args)
        .arg("-D")
        .arg(cluster.data_dir())
        .arg("-l")
        .arg(cluster.log_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pg_ctl")
}

async fn restart_postgres_under_a_gateway(mode: &str) {
    let env = TestEnv::start().await;
    let (app, a, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, REPO).await;
    let subscriber = Subscriber::new();
    let mut ws = subscriber.join(env.addr, &user).await;

    let writer = Writer::start(env.url.clone(), a, Duration::from_millis(5));
    while writer.committed() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Readiness polled throughout the restart.
    let watching = tokio_util::sync::CancellationToken::new();
    let readiness = tokio::spawn({
        let (addr, watching) = (env.addr, watching.clone());
        async move {
            let mut saw_unready = false;
            while !watching.is_cancelled() {
                saw_unready |= http_get(addr, "/readyz").await.status == 503;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            saw_unready
        }
    });
    let began = Instant::now();
    let cluster = &env.postgres;
    let restart =
        tokio::task::block_in_place(|| pg_ctl(cluster, &["restart", "-w", "-t", "60", "-m", mode]));
    assert!(
        restart.success(),
        "pg_ctl restart -m {mode} failed: {}",
        std::fs::read_to_string(cluster.log_path()).unwrap_or_default()
    );
    eprintln!("pg_ctl restart -m {mode}: {:?}", began.elapsed());
    // Writes continue after the restart; the gateway reconnects by itself.
    let after = writer.committed() + 50;
    while writer.committed() < after {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(env.addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "gateway never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.cancel();
    assert!(
        readiness.await.unwrap(),
        "/readyz was false while PostgreSQL was down"
    );
    let committed = writer.finish().await;
    subscriber.read(&mut ws, Some(committed.len())).await;
    subscriber.assert_exactly(&committed, "the subscribed client");
    // And nothing after: a sentinel row is the next event.
    let (db, conn) = tokio_postgres::connect(&env.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let sentinel = Uuid::new_v4();
    db.execute(
        &format!("INSERT INTO acme.{REPO} (id, account_id, data, created) VALUES ($1, $2, '{{}}', now())"),
        &[&sentinel, &a],
    )
    .await
    .unwrap();
    ws.expect_id(
        "db_created",
        CH,
        sentinel,
        "no duplicate after the last row",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_restart_completes_and_clients_lose_nothing() {
    restart_postgres_under_a_gateway("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immediate_restart_clients_lose_nothing_and_see_no_duplicate() {
    restart_postgres_under_a_gateway("immediate").await;
}

/// A `walcast serve` child process, killed on drop.
struct Serve {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Serve {
    async fn start(url: &str, data_dir: &Path, port: u16, extra: &[&str]) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--slot", "walcast_proc"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("DATABASE_URL", url)
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walcast serve");
        let mut serve = Serve {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(serve.addr).await.is_ok()
                && http_get(serve.addr, "/readyz").await.status == 200
            {
                return serve;
            }
            assert!(Instant::now() < deadline, "gateway never became ready");
            assert!(
                serve.child.try_wait().unwrap().is_none(),
                "gateway exited early"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the ordered shutdown to finish.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A database with one app, account, user and repo, and no in-process gateway: the slot of
/// the `walcast serve` process under test is its own.
async fn for_a_process() -> (TestEnv, App, Uuid, User) {
    let mut env = TestEnv::start().await;
    env.shutdown().await;
    let (app, a, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, REPO).await;
    (env, app, a, user)
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for log in std::fs::read_dir(data_dir.join("window")).unwrap() {
        for f in std::fs::read_dir(log.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "seg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_gateway_loses_nothing_and_doubles_nothing() {
    let (env, _, a, user) = for_a_process().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = Serve::start(&env.url, data.path(), port, &[]).await;
    let subscribers: Vec<Subscriber> = (0..3).map(|_| Subscriber::new()).collect();
    let mut writing = None;

    for round in 0..3 {
        let mut readers = Vec::new();
        for s in &subscribers {
            let mut ws = s.join(serve.addr, &user).await;
            let ids = Arc::clone(&s.ids);
            let last = Arc::clone(&s.last_pos);
            readers.push(tokio::spawn(async move {
                let s = Subscriber {
                    ids,
                    last_pos: last,
                };
                s.read(&mut ws, None).await;
            }));
        }
        // Writes start once the first clients joined (they load what came before themselves).
        let writer = writing
            .get_or_insert_with(|| Writer::start(env.url.clone(), a, Duration::from_millis(2)));
        let target = writer.committed() + 100;
        while writer.committed() < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if round == 1 {
            // A large transaction, the gateway killed right after its commit: inside the
            // window between delivery and the log's fsync.
            let target = writer.committed() + 3000;
            writer.big.store(3000, std::sync::atomic::Ordering::Release);
            while writer.committed() < target {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        serve.kill9();
        for r in readers {
            r.await.unwrap();
        }
        serve = Serve::start(&env.url, data.path(), port, &[]).await;
    }
    let mut readers = Vec::new();
    let committed_now = writing.expect("writes started").finish().await;
    for s in &subscribers {
        let mut ws = s.join(serve.addr, &user).await;
        s.read(&mut ws, Some(committed_now.len())).await;
        readers.push(ws);
    }
    for (i, s) in subscribers.iter().enumerate() {
        s.assert_exactly(&committed_now, &format!("client {i}"));
    }
    drop(serve);
}

#[tokio::test]
async fn a_damaged_log_tail_is_truncated_and_the_gateway_starts() {
    let (env, app, a, user) = for_a_process().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();

    let serve = Serve::start(&env.url, data.path(), port, &[]).await;
    let mut ws = Ws::connect(serve.addr, "").await;
    ws.auth(&user.jwt).await;
    ws.join(CH).await;
    let mut positions = Vec::new();
    for n in 0..3 {
        env.insert(&app, REPO, Some(a), None, json!({"n": n})).await;
        positions.push(id_pos(&ws.recv().await).1);
    }
    // Stopped cleanly: everything durable and confirmed.
    serve.terminate();

    // A torn record at the end (a crash in the middle of a write): cut off, nothing lost.
    let seg = segments(data.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(&seg, &bytes).unwrap();
    let serve = Serve::start(&env.url, data.path(), port, &[]).await;
    // Cut at the last good record (a new run may have appended its own records after it).
    let now = std::fs::read(&seg).unwrap();
    assert_eq!(&now[..good], &bytes[..good]);
    assert_ne!(now.get(good), Some(&0x40), "the torn record was cut off");
    let mut back = Ws::connect(serve.addr, "").await;
    back.auth(&user.jwt).await;
    assert!(back.join_since(CH, &positions[0]).await);
    assert_eq!(id_pos(&back.recv().await).1, positions[1]);
    assert_eq!(id_pos(&back.recv().await).1, positions[2]);
    let ready = http_get(serve.addr, "/readyz").await;
    assert!(ready.body.contains("resume_log_dir: "), "{}", ready.body);
    serve.terminate();

    // A durable record corrupted (damaged disk): the window restarts at the slot, and an
    // older position is refused rather than replayed with a hole.
    let seg = segments(data.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    let serve = Serve::start(&env.url, data.path(), port, &[]).await;
    let mut stale = Ws::connect(serve.addr, "").await;
    stale.auth(&user.jwt).await;
    assert!(!stale.join_since(CH, &positions[0]).await);
    let mut live = Ws::connect(serve.addr, "").await;
    live.auth(&user.jwt).await;
    live.join(CH).await;
    let again = env
        .insert(&app, REPO, Some(a), None, json!({"n": "again"}))
        .await;
    live.expect_id("db_created", CH, again, "serving after the repair")
        .await;
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_follows_writes_and_lag_stays_zero_when_quiet() {
    let (env, _, a, _) = for_a_process().await;
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&env.url, data.path(), free_port(), &[]).await;
    async fn slot(db: &tokio_postgres::Client) -> (i64, i64) {
        let row = db
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint, \
                 (pg_current_wal_lsn() - '0/0')::bigint \
                 FROM pg_replication_slots WHERE slot_name = 'walcast_proc'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
    let (start, _) = slot(&env.db).await;

    // Under steady writes the slot keeps moving (with the window held in the slot, as before,
    // it stayed at the window's start).
    let writer = Writer::start(env.url.clone(), a, Duration::from_millis(5));
    let mut confirmed = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        confirmed.push(slot(&env.db).await.0);
    }
    let committed = writer.finish().await;
    assert!(!committed.is_empty());
    assert!(confirmed[0] > start, "{start} {confirmed:?}");
    assert!(confirmed.windows(2).all(|w| w[1] > w[0]), "{confirmed:?}");

    // Quiet: the slot reaches the server's WAL end, lag metrics fall to 0 and the confirmed
    // LSN metric equals the slot's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (slot_confirmed, wal_end) = slot(&env.db).await;
        let text = http_get(serve.addr, "/metrics").await.body;
        let settled = slot_confirmed == wal_end
            && sample(&text, "walcast_replication_lag_bytes") == Some(0.0)
            && sample(&text, "walcast_replication_lag_seconds") == Some(0.0)
            && sample(&text, "walcast_confirmed_lsn") == Some(slot_confirmed as f64);
        if settled {
            assert!(
                sample(&text, "walcast_resume_log_bytes").is_some_and(|b| b > 0.0),
                "{text}"
            );
            assert!(
                sample(&text, "walcast_resume_log_oldest_lsn").is_some_and(|b| b > 0.0),
                "{text}"
            );
            assert!(
                sample(&text, "walcast_slot_retained_bytes") == Some(0.0),
                "{text}"
            );
            assert!(text.contains("walcast_resume_log_info{dir=\""), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: slot {slot_confirmed} wal {wal_end}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it stays there while nothing happens.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let text = http_get(serve.addr, "/metrics").await.body;
        assert_eq!(
            sample(&text, "walcast_replication_lag_seconds"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "walcast_replication_lag_bytes"),
            Some(0.0),
            "{text}"
        );
    }
    drop(serve);
}
