//! The cluster target (`--cluster-nodes N`): a private `nats-server -js` (free port, own store
//! directory, stopped afterwards) for N child gateways started with `--cluster`.
//!
//! The binary is `$WALCAST_NATS_SERVER` when set, else Debian's `/usr/sbin/nats-server`.

use super::BenchError;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub struct Nats {
    pub url: String,
    child: Child,
    store: PathBuf,
}

impl Nats {
    pub async fn start() -> Result<Nats, BenchError> {
        let binary = std::env::var_os("WALCAST_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BenchError::Io)?
            .port();
        let store =
            std::env::temp_dir().join(format!("walcast-bench-nats-{}-{port}", std::process::id()));
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::Spawn)?;
        let mut nats = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            child,
            store,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(BenchError::GatewayExited(format!("nats-server: {status}")));
            }
            if Instant::now() > deadline {
                return Err(BenchError::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nats)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then kill after 10 s; removes the store directory.
    pub async fn stop(mut self) {
        super::target::terminate(&mut self.child).await;
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Whether the node at `addr` holds the slot lease (its `/metrics` says so).
pub async fn is_holder(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = Vec::new();
    if stream.read_to_end(&mut body).await.is_err() {
        return false;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .any(|l| l.trim() == "walcast_cluster_holder 1")
}
