//! The server under test: by default a private PostgreSQL plus `walcast serve` as a child
//! process (so its CPU time and memory can be read apart from the load generator's), or any
//! server reachable at a `ws://` URL.

use super::{BenchError, Transport};
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
}

pub struct Target {
    pub addr: SocketAddr,
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
            addr,
            path,
            server_pid,
            database_url,
            description: format!("external server at {url}"),
            transport,
            child: None,
            postgres: None,
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

        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(&launch.exe);
        command
            .arg("serve")
            .args(["--database-url", &url])
            .args(["--jwt-secret", &launch.jwt_secret])
            .args(["--listen", &addr.to_string()])
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
        let child = command.spawn().map_err(BenchError::Spawn)?;
        let pid = child.id();
        let mut target = Target {
            addr,
            path: "/ws".into(),
            server_pid: pid,
            database_url: Some(url),
            description: format!("walcast serve (child process, pid {})", pid.unwrap_or(0)),
            transport,
            child: Some(child),
            postgres,
        };
        target.wait_ready(Duration::from_secs(30)).await?;
        Ok(target)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::GatewayExited(status.to_string()));
                }
            }
            if ready(self.addr, &self.transport).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the child gateway (SIGTERM, then kill) and the private PostgreSQL.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
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
        if let Some(postgres) = self.postgres.take() {
            let _ = postgres.stop().await;
        }
    }
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
