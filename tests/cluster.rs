//! Cluster mode (issue 10): three `walcast serve` processes on loopback over one private
//! PostgreSQL and one private nats-server. Every check compares what clients received with the
//! writer's own log: the same ids, each once, in commit order.

use crate::support::nats::NatsServer;
use crate::support::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_walcast");
/// Short lease so that failover stays well inside the promised 5 s.
const LEASE_SECS: &str = "2";
const REPO: &str = "tasks";
const CH: &str = "db-tasks";

pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Node {
    fn spawn(env: &TestEnv, nats: &NatsServer, id: &str, dir: &std::path::Path) -> Node {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join(format!("{id}.log"));
        let stderr = std::fs::File::create(&log).expect("node log");
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--database-url", &env.url, "--jwt-secret", SECRET])
            .args(["--listen", &addr.to_string()])
            .args(["--cluster", &nats.url(), "--node-id", id])
            .args(["--cluster-lease-secs", LEASE_SECS, "--rate-limit", "0"])
            .env("WALCAST_LOG", "info,tokio_postgres=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn walcast serve");
        Node {
            id: id.to_owned(),
            addr,
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node {} exited ({status}):\n{}", self.id, self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && http_get(self.addr, "/readyz").await.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn is_holder(&self) -> bool {
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return false;
        }
        let holds = http_get(self.addr, "/metrics")
            .await
            .body
            .lines()
            .any(|l| l.trim() == "walcast_cluster_holder 1");
        // A holder is ready only once it streams the slot.
        holds && http_get(self.addr, "/readyz").await.status == 200
    }

    /// SIGKILL: no lease release, no final confirmation.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; it is reaped below.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes, one database, one NATS; an app with a repo, an account and its users.
pub struct ClusterEnv {
    pub nodes: Vec<Node>,
    pub writer: Arc<Writer>,
    pub user: User,
    pub other_account: Uuid,
    pub nats: NatsServer,
    _dir: tempfile::TempDir,
    _env: Arc<TestEnv>,
}

/// The writer's own log: ids of the documents it committed (account A), in commit order.
pub struct Writer {
    env: Arc<TestEnv>,
    app: App,
    account: Uuid,
    other: Uuid,
    pub log: Mutex<Vec<Uuid>>,
}

impl Writer {
    /// Two transactions: a row readable by the subscribers, then one they may not read.
    pub async fn write(&self, n: u64) -> Uuid {
        let id = self.write_readable(json!({"n": n})).await;
        self.env
            .insert(
                &self.app,
                REPO,
                Some(self.other),
                None,
                json!({"hidden": n}),
            )
            .await;
        id
    }

    /// One row the subscribers may read, logged.
    pub async fn write_readable(&self, data: Value) -> Uuid {
        let id = self
            .env
            .insert(&self.app, REPO, Some(self.account), None, data)
            .await;
        self.log.lock().unwrap().push(id);
        id
    }
}

impl ClusterEnv {
    pub async fn start(nodes: usize) -> ClusterEnv {
        Self::start_on(nodes, NatsServer::start()).await
    }

    pub async fn start_on(nodes: usize, nats: NatsServer) -> ClusterEnv {
        let env = TestEnv::database_only().await;
        let app = env.create_app("acme").await;
        let account = env.create_account(&app).await;
        let other_account = env.create_account(&app).await;
        let user = env.create_user(&app, account, 0).await;
        env.create_repo(&app, REPO).await;
        let dir = tempfile::tempdir().expect("node dir");
        // WALCAST_CLUSTER_TEST_LOGS=<dir> keeps the nodes' logs there after the test.
        let logs = std::env::var_os("WALCAST_CLUSTER_TEST_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().to_owned());
        let mut spawned = Vec::new();
        for i in 1..=nodes {
            spawned.push(Node::spawn(&env, &nats, &format!("n{i}"), &logs));
        }
        for node in &mut spawned {
            node.wait_ready().await;
        }
        let env = Arc::new(env);
        let cluster = ClusterEnv {
            nodes: spawned,
            writer: Arc::new(Writer {
                env: Arc::clone(&env),
                app,
                account,
                other: other_account,
                log: Mutex::new(Vec::new()),
            }),
            user,
            other_account,
            nats,
            _dir: dir,
            _env: env,
        };
        // Until a holder has created the slot, PostgreSQL keeps no WAL for the cluster.
        cluster.holder().await;
        cluster
    }

    pub async fn subscriber(&self, node: usize) -> Ws {
        let mut ws = Ws::connect(self.nodes[node].addr, "").await;
        ws.auth(&self.user.jwt).await;
        ws.join(CH).await;
        ws
    }

    /// One db subscriber on each of `nodes`.
    pub async fn subscribers(&self, nodes: impl IntoIterator<Item = usize>) -> Vec<Ws> {
        let mut subs = Vec::new();
        for i in nodes {
            subs.push(self.subscriber(i).await);
        }
        subs
    }

    /// The node holding the slot and streaming it, once one does.
    pub async fn holder(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.is_holder().await {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no node took the slot lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts node `i` again (same id, new port) after it was killed.
    pub async fn respawn(&mut self, i: usize) {
        let id = self.nodes[i].id.clone();
        let dir = self.nodes[i]
            .log
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut node = Node::spawn(&self._env, &self.nats, &format!("{id}r"), &dir);
        node.wait_ready().await;
        self.nodes[i] = node;
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.id, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads db events until the document `end`; returns every created id in arrival order.
pub async fn collect_until(ws: &mut Ws, end: Uuid) -> Vec<Uuid> {
    let mut ids = Vec::new();
    loop {
        let doc = event(&ws.recv().await, "db_created", CH);
        let id: Uuid = doc["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
        ids.push(id);
        if id == end {
            return ids;
        }
    }
}

/// Kills the holder and waits for another node to stream the slot; returns the new holder and
/// the time from the kill to its first `/readyz` as holder.
async fn kill_holder(cluster: &mut ClusterEnv, holder: usize) -> (usize, Duration) {
    let killed = Instant::now();
    cluster.nodes[holder].kill9();
    loop {
        for i in (0..cluster.nodes.len()).filter(|i| *i != holder) {
            if cluster.nodes[i].is_holder().await {
                return (i, killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no takeover:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer committing one transaction every 10 ms in the background.
struct SteadyWrites {
    writer: Arc<Writer>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl SteadyWrites {
    fn start(writer: &Arc<Writer>) -> SteadyWrites {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (writer, stop) = (Arc::clone(writer), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    writer.write(n).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n
            })
        };
        SteadyWrites {
            writer: Arc::clone(writer),
            stop,
            task,
        }
    }

    /// Stops, then writes a last transaction marking the end; returns how many were written
    /// before it, and its id.
    async fn finish(self) -> (u64, Uuid) {
        self.stop.store(true, Ordering::Release);
        let written = self.task.await.expect("writer");
        (written, self.writer.write(u64::MAX / 2).await)
    }
}

async fn join_since(ws: &mut Ws, channel: &str, since: &str) -> Value {
    let msg =
        json!({"sid": ws.sid, "type": "join", "data": channel, "token": ws.token, "since": since});
    ws.send_text(msg.to_string()).await;
    ws.recv().await
}

#[tokio::test]
async fn every_node_delivers_every_db_event_and_chan_out_once_in_order() {
    let cluster = ClusterEnv::start(3).await;
    let mut subs = cluster.subscribers(0..3).await;
    // Custom channel members on every node; two senders on different nodes.
    let mut members = Vec::new();
    for i in 0..3 {
        let mut ws = Ws::connect(cluster.nodes[i].addr, "").await;
        ws.auth(&cluster.user.jwt).await;
        ws.join("room").await;
        members.push(ws);
    }
    let mut senders = Vec::new();
    for i in [0, 2] {
        let mut ws = Ws::connect(cluster.nodes[i].addr, "").await;
        ws.auth(&cluster.user.jwt).await;
        senders.push(ws);
    }

    for n in 0..50 {
        cluster.writer.write(n).await;
    }
    let end = cluster.writer.write(999).await;
    let expected = cluster.writer.log.lock().unwrap().clone();
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = collect_until(ws, end).await;
        assert_eq!(
            got, expected,
            "node {i}: every permitted event, once, in commit order"
        );
    }

    for n in 0..20 {
        for (s, sender) in senders.iter_mut().enumerate() {
            let reply = sender.request("chan_in", &format!("{s}:{n}"), "room").await;
            assert_eq!(reply["type"], "ok", "{reply}");
        }
    }
    for (s, sender) in senders.iter_mut().enumerate() {
        let reply = sender.request("chan_in", &format!("{s}:end"), "room").await;
        assert_eq!(reply["type"], "ok", "{reply}");
    }
    for (i, member) in members.iter_mut().enumerate() {
        let mut per_sender: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
        while per_sender
            .iter()
            .any(|m| m.last().is_none_or(|l| !l.ends_with(":end")))
        {
            let msg = member.recv().await;
            assert_eq!(msg["type"], "chan_out", "{msg}");
            assert_eq!(msg["channel"], "room");
            let data = msg["data"].as_str().expect("data").to_owned();
            let s: usize = data[..1].parse().expect("sender index");
            per_sender[s].push(data);
        }
        for (s, got) in per_sender.iter().enumerate() {
            let mut want: Vec<String> = (0..20).map(|n| format!("{s}:{n}")).collect();
            want.push(format!("{s}:end"));
            assert_eq!(
                got, &want,
                "member on node {i}, sender {s}: once each, in order"
            );
        }
    }
    // Nothing beyond: the next db event is the next one written.
    let after = cluster.writer.write(1000).await;
    for ws in subs.iter_mut() {
        ws.expect_id("db_created", CH, after, "no duplicate after the end")
            .await;
    }
}

#[tokio::test]
async fn killing_the_slot_holder_loses_and_repeats_nothing() {
    let mut cluster = ClusterEnv::start(3).await;
    let holder = cluster.holder().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let mut subs = cluster.subscribers(survivors.iter().copied()).await;
    let writes = SteadyWrites::start(&cluster.writer);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (new_holder, takeover) = kill_holder(&mut cluster, holder).await;
    eprintln!(
        "takeover by {} after {takeover:?}",
        cluster.nodes[new_holder].id
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (written, end) = writes.finish().await;
    let expected = cluster.writer.log.lock().unwrap().clone();
    assert!(written > 20, "the writer kept writing ({written})");
    for (k, ws) in subs.iter_mut().enumerate() {
        let got = collect_until(ws, end).await;
        assert_eq!(
            got.len(),
            expected.len(),
            "node {}: no gap, no duplicate",
            survivors[k]
        );
        assert_eq!(got, expected, "node {}: commit order", survivors[k]);
    }
}

#[tokio::test]
async fn nats_restart_mid_stream_loses_nothing() {
    let mut cluster = ClusterEnv::start(3).await;
    let mut subs = cluster.subscribers(0..3).await;
    let writes = SteadyWrites::start(&cluster.writer);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nats.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, end) = writes.finish().await;
    let expected = cluster.writer.log.lock().unwrap().clone();
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = collect_until(ws, end).await;
        assert_eq!(got, expected, "node {i}: nothing lost or repeated");
    }
    for node in &mut cluster.nodes {
        node.wait_ready().await;
    }
}

#[tokio::test]
async fn a_client_moving_to_another_node_resumes_with_since() {
    let cluster = ClusterEnv::start(3).await;
    let mut first = cluster.subscriber(0).await;
    for n in 0..5 {
        cluster.writer.write(n).await;
    }
    let seen = cluster.writer.log.lock().unwrap().clone();
    let mut since = String::new();
    for id in &seen {
        let msg = first.recv().await;
        assert_eq!(event(&msg, "db_created", CH)["id"], id.to_string());
        since = msg["lsn"].as_str().expect("lsn").to_owned();
    }
    drop(first);
    for n in 5..15 {
        cluster.writer.write(n).await;
    }
    let missed: Vec<Uuid> = cluster.writer.log.lock().unwrap()[seen.len()..].to_vec();

    let mut moved = Ws::connect(cluster.nodes[2].addr, "").await;
    moved.auth(&cluster.user.jwt).await;
    let reply = join_since(&mut moved, CH, &since).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    for id in &missed {
        moved
            .expect_id("db_created", CH, *id, "exactly what it missed")
            .await;
    }
    let live = cluster.writer.write(100).await;
    moved
        .expect_id("db_created", CH, live, "then live, nothing repeated")
        .await;
    let _ = cluster.other_account;
}

#[tokio::test]
async fn an_event_larger_than_the_nats_max_payload_arrives_whole_on_every_node() {
    const MAX_PAYLOAD: usize = 65_536;
    let nats = NatsServer::start_with_config(&format!("max_payload: {MAX_PAYLOAD}\n"));
    let cluster = ClusterEnv::start_on(3, nats).await;
    let mut subs = cluster.subscribers(0..3).await;
    let writer = &cluster.writer;
    writer.write(0).await;
    // One document over three times the server's limit, with text JSON must escape.
    let blob = "é\"\\\n".repeat(MAX_PAYLOAD);
    let big = writer.write_readable(json!({"blob": blob})).await;
    // The slot goes on: what follows arrives after it.
    writer.write(1).await;
    let end = writer.write(2).await;
    let expected = writer.log.lock().unwrap().clone();
    for (i, ws) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        loop {
            let doc = event(&ws.recv().await, "db_created", CH);
            let id: Uuid = doc["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
            if id == big {
                assert_eq!(doc["blob"], blob, "node {i}: the document, whole");
            }
            got.push(id);
            if id == end {
                break;
            }
        }
        assert_eq!(got, expected, "node {i}: once each, in commit order");
    }
    // A custom-channel message NATS could not carry is refused before it is accepted; one
    // that fits goes through.
    let mut sender = Ws::connect(cluster.nodes[0].addr, "").await;
    sender.auth(&cluster.user.jwt).await;
    let reply = sender.request("chan_in", &"x".repeat(64_800), "room").await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["data"], "message too large", "{reply}");
    let reply = sender.request("chan_in", &"x".repeat(60_000), "room").await;
    assert_eq!(reply["type"], "ok", "{reply}");
}

#[tokio::test]
async fn an_idempotency_key_counts_on_every_node() {
    let cluster = ClusterEnv::start(3).await;
    let mut member = Ws::connect(cluster.nodes[2].addr, "").await;
    member.auth(&cluster.user.jwt).await;
    member.join("room").await;
    for node in [0, 1] {
        let mut sender = Ws::connect(cluster.nodes[node].addr, "").await;
        sender.auth(&cluster.user.jwt).await;
        let keyed = json!({"sid": sender.sid, "token": sender.token, "type": "chan_in",
                           "channel": "room", "data": format!("from {node}"),
                           "idempotency_key": "retried-1"});
        sender.send_text(keyed.to_string()).await;
        let reply = sender.recv().await;
        assert_eq!(reply["type"], "ok", "node {node}: {reply}");
    }
    let mut sender = Ws::connect(cluster.nodes[1].addr, "").await;
    sender.auth(&cluster.user.jwt).await;
    let reply = sender.request("chan_in", "end", "room").await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(member.recv().await["data"], "from 0", "the first copy");
    assert_eq!(
        member.recv().await["data"],
        "end",
        "the key sent again to another node was not delivered again"
    );
}

/// Soak: the holder kill repeated (`WALCAST_SOAK_ROUNDS`, default 20), the killed node started
/// again each round. Outside the default run:
/// `cargo test --test main cluster::soak -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn soak_repeated_holder_kills() {
    let rounds: usize = std::env::var("WALCAST_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut cluster = ClusterEnv::start(3).await;
    let (mut written, mut delivered, mut gaps, mut duplicates) = (0usize, 0usize, 0usize, 0usize);
    let mut takeovers = Vec::new();
    let mut out_of_order = 0;
    for round in 1..=rounds {
        let holder = cluster.holder().await;
        let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
        let mut subs = cluster.subscribers(survivors.iter().copied()).await;
        let from = cluster.writer.log.lock().unwrap().len();
        let writes = SteadyWrites::start(&cluster.writer);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, takeover) = kill_holder(&mut cluster, holder).await;
        takeovers.push(takeover);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, end) = writes.finish().await;
        let expected: Vec<Uuid> = cluster.writer.log.lock().unwrap()[from..].to_vec();
        written += expected.len();
        for ws in subs.iter_mut() {
            let got = collect_until(ws, end).await;
            delivered += got.len();
            let unique: std::collections::HashSet<&Uuid> = got.iter().collect();
            duplicates += got.len() - unique.len();
            gaps += expected.iter().filter(|id| !unique.contains(id)).count();
            if got != expected {
                out_of_order += 1;
            }
        }
        println!(
            "round {round}: holder {} killed, takeover {takeover:?}, {} written, {} subscribers",
            cluster.nodes[holder].id,
            expected.len(),
            subs.len()
        );
        drop(subs);
        cluster.respawn(holder).await;
    }
    takeovers.sort();
    println!(
        "soak: {rounds} holder kills; {written} transactions written, {delivered} deliveries \
         (2 subscribers each), {gaps} missing, {duplicates} duplicated; takeover min {:?} \
         median {:?} max {:?}",
        takeovers[0],
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1]
    );
    assert_eq!(
        (gaps, duplicates, out_of_order),
        (0, 0, 0),
        "gaps, duplicates, subscribers with another order"
    );
}
