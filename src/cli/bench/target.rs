//! The server under test: by default a private PostgreSQL plus `walcast serve` as a child
//! process (so its CPU time and memory can be read apart from the load generator's), or N such
//! children in cluster mode over a private nats-server, or any server reachable at a `ws://` URL.

use super::cluster::{self, Nats};
use super::{process, BenchError, Transport};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// How the child gateway is started.
#[derive(Debug, Clone)]
pub struct GatewayLaunch {
    /// The `walcast` binary (normally the running one).
    pub exe: PathBuf,
    pub jwt_secret: String,
    pub max_outbound_bytes: usize,
    /// `--compression on` (else `off`, so that a plain run compresses nothing).
    pub compression: bool,
    pub tls: Option<walcast::tls::TlsFiles>,
    /// Nodes of a cluster over a private nats-server; 0 = one gateway without `--cluster`.
    pub cluster_nodes: usize,
}

pub struct Target {
    pub path: String,
    /// The process whose CPU and memory are reported, when known.
    pub server_pid: Option<u32>,
    /// For setting up users and writing rows.
    pub database_url: Option<String>,
    pub description: String,
    /// How clients reach it.
    pub transport: Transport,
    child: Option<Child>,
    postgres: Option<EmbeddedPostgres>,
    /// Every node's address (one unless in cluster mode): subscribers are spread over them
    /// round robin.
    pub addrs: Vec<SocketAddr>,
    /// Every node process: the server's CPU and memory are their sum.
    pub server_pids: Vec<u32>,
    /// Cluster mode: the nodes after the first, and the private nats-server.
    nodes: Vec<Child>,
    nats: Option<Nats>,
    /// The child gateways' data directories (resume window logs), removed with the target.
    data_dir: Option<tempfile::TempDir>,
}

/// `ws://host:port/path` → (address, path).
pub fn parse_ws_url(url: &str) -> Result<(SocketAddr, String), BenchError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| BenchError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_owned()),
        None => (rest, "/ws".to_owned()),
    };
    let addr = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .ok_or_else(|| BenchError::Url(url.to_owned()))?;
    Ok((addr, path))
}

impl Target {
    pub fn external(
        url: &str,
        server_pid: Option<u32>,
        database_url: Option<String>,
        transport: Transport,
    ) -> Result<Target, BenchError> {
        let (addr, path) = parse_ws_url(url)?;
        Ok(Target {
            path,
            server_pid,
            database_url,
            description: format!("external server at {url}"),
            transport,
            child: None,
            postgres: None,
            addrs: vec![addr],
            server_pids: server_pid.into_iter().collect(),
            nodes: Vec::new(),
            nats: None,
            data_dir: None,
        })
    }

    /// Starts PostgreSQL (unless `database_url` is given) and a gateway child process.
    pub async fn child_gateway(
        launch: &GatewayLaunch,
        database_url: Option<String>,
        transport: Transport,
    ) -> Result<Target, BenchError> {
        let (postgres, url) = match database_url {
            Some(url) => (None, url),
            None => {
                let postgres = EmbeddedPostgres::start(EmbeddedOptions {
                    // Temporary clusters run with fsync off. synchronous_commit stays on: with it
                    // off, WAL reaches the walsender only at the WAL writer's next flush
                    // (wal_writer_delay, 200 ms), which would dominate commit→client latency.
                    extra_conf: vec![("max_connections".into(), "200".into())],
                    ..EmbeddedOptions::default()
                })
                .await
                .map_err(BenchError::EmbeddedPostgres)?;
                let url = postgres
                    .create_database()
                    .await
                    .map_err(BenchError::EmbeddedPostgres)?;
                (Some(postgres), url)
            }
        };
        walcast::schema::migrate_url(&url, false)
            .await
            .map_err(BenchError::Schema)?;

        let nats = match launch.cluster_nodes {
            0 => None,
            _ => Some(Nats::start().await?),
        };
        // Not the current directory: a run must leave nothing behind.
        let data_dir = tempfile::Builder::new()
            .prefix("walcast-bench-data-")
            .tempdir()
            .map_err(BenchError::Io)?;
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for node in 0..launch.cluster_nodes.max(1) {
            let cluster = nats.as_ref().map(|n| (n.url.as_str(), node + 1));
            let dir = data_dir.path().join(format!("node-{}", node + 1));
            let (child, addr) = spawn_gateway(launch, &url, &dir, cluster)?;
            children.push(child);
            addrs.push(addr);
        }
        let server_pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
        let mut nodes = children.into_iter();
        let child = nodes.next();
        let description = match &nats {
            None => format!("walcast serve (child process, pid {})", server_pids[0]),
            Some(_) => format!(
                "walcast serve --cluster, {} nodes (child processes, pids {server_pids:?}) over a private nats-server",
                addrs.len()
            ),
        };
        let mut target = Target {
            path: "/ws".into(),
            server_pid: server_pids.first().copied(),
            database_url: Some(url),
            description,
            transport,
            child,
            postgres,
            addrs,
            server_pids,
            nodes: nodes.collect(),
            nats,
            data_dir: Some(data_dir),
        };
        target.wait_ready(Duration::from_secs(30)).await?;
        Ok(target)
    }

    /// The nats-server's pid in cluster mode (its CPU is reported beside the nodes').
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().and_then(Nats::pid)
    }

    /// The server's CPU time and memory: the sum over its node processes.
    pub fn sample(&self) -> Option<process::Sample> {
        process::sample_sum(&self.server_pids)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            for child in self.child.iter_mut().chain(self.nodes.iter_mut()) {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::GatewayExited(status.to_string()));
                }
            }
            if self.all_ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node answers `/readyz`; in cluster mode one of them also holds the slot (before
    /// that, PostgreSQL keeps no WAL for the cluster and rows would not be streamed).
    async fn all_ready(&self) -> bool {
        for addr in &self.addrs {
            if !ready(*addr, &self.transport).await {
                return false;
            }
        }
        if self.nats.is_none() {
            return true;
        }
        for addr in &self.addrs {
            if cluster::is_holder(*addr).await {
                return true;
            }
        }
        false
    }

    /// Stops the child gateways (SIGTERM, then kill), the nats-server and the private
    /// PostgreSQL.
    pub async fn stop(mut self) {
        for mut child in self.child.take().into_iter().chain(self.nodes.drain(..)) {
            terminate(&mut child).await;
        }
        if let Some(nats) = self.nats.take() {
            nats.stop().await;
        }
        if let Some(postgres) = self.postgres.take() {
            let _ = postgres.stop().await;
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = dir.close();
        }
    }
}

/// SIGTERM, then kill after 10 s.
pub(super) async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Starts one gateway on a free port with its data in `data_dir`; `cluster`: the NATS URL and
/// this node's number.
fn spawn_gateway(
    launch: &GatewayLaunch,
    url: &str,
    data_dir: &std::path::Path,
    cluster: Option<(&str, usize)>,
) -> Result<(Child, SocketAddr), BenchError> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(&launch.exe);
    command
        .arg("serve")
        .args(["--database-url", url])
        .args(["--jwt-secret", &launch.jwt_secret])
        .args(["--listen", &addr.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--rate-limit", "0"])
        .args(["--max-connections", "1000000"])
        .args(["--max-connections-per-app", "1000000"])
        .args(["--snapshot-max-rows", "10000000"])
        .args([
            "--max-outbound-bytes",
            &launch.max_outbound_bytes.to_string(),
        ])
        .args([
            "--compression",
            if launch.compression { "on" } else { "off" },
        ])
        .env(
            "WALCAST_LOG",
            std::env::var("WALCAST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if let Some(tls) = &launch.tls {
        command.arg("--tls-cert").arg(&tls.cert);
        command.arg("--tls-key").arg(&tls.key);
    }
    if let Some((nats, node)) = cluster {
        command
            .args(["--cluster", nats])
            .args(["--node-id", &format!("bench-{node}")]);
    }
    let child = command.spawn().map_err(BenchError::Spawn)?;
    Ok((child, addr))
}

async fn ready(addr: SocketAddr, transport: &Transport) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok(mut stream) = transport.wrap(stream).await else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/1.1 200"
}

fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BenchError::Io)?;
    Ok(listener.local_addr().map_err(BenchError::Io)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        let (addr, path) = parse_ws_url("ws://127.0.0.1:8098/ws").unwrap();
        assert_eq!(addr.port(), 8098);
        assert_eq!(path, "/ws");
        assert_eq!(parse_ws_url("ws://127.0.0.1:1").unwrap().1, "/ws");
        assert!(parse_ws_url("http://x").is_err());
    }
}
