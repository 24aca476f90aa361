//! A private PostgreSQL cluster started from the installed server binaries: for tests of every
//! crate and for embedded use (`walcast up`).
//!
//! `initdb` in a fresh temporary directory (or a persistent, reusable one), `wal_level=logical`,
//! a free port on 127.0.0.1 only, the Unix socket in the cluster's own directory. When the
//! process runs as root the server runs as the `postgres` user (PostgreSQL refuses root), via
//! `runuser`. [`Drop`] stops the server (immediately, synchronously) and removes a temporary
//! directory, so a panicking test leaves nothing behind; a watchdog process does the same if
//! the owning process dies without running `Drop`.
//!
//! From another crate's tests (dev-dependency `walcast-replication` with feature `embedded`),
//! one instance per test works the same under `cargo test` and `cargo nextest`:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use walcast_replication::embedded::{EmbeddedPostgres, EmbeddedOptions};
//!
//! let postgres = EmbeddedPostgres::start(EmbeddedOptions {
//!     extra_conf: vec![("wal_sender_timeout".into(), "5s".into())],
//!     ..EmbeddedOptions::default()
//! })
//! .await?;
//! let url = postgres.create_database().await?; // postgres://postgres@127.0.0.1:PORT/walcast_test_…
//! let client = postgres.client(url.rsplit('/').next().unwrap_or("postgres")).await?;
//! client.batch_execute("CREATE TABLE t (id int)").await?;
//! // … run the code under test against `url` …
//! postgres.stop().await?; // or just drop it
//! # Ok(()) }
//! ```

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, warn};

/// How to start a [`EmbeddedPostgres`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory holding `initdb`, `pg_ctl` and `postgres`. `None`: `$WALCAST_PG_BIN`, then the
    /// newest `/usr/lib/postgresql/*/bin`, then `$PATH`.
    pub bin_dir: Option<PathBuf>,
    /// `None`: a fresh directory under the system temp dir, removed on drop. `Some`: persistent,
    /// initialised when empty and reused otherwise. When running as root it must be reachable by
    /// the `postgres` user.
    pub data_dir: Option<PathBuf>,
    /// `None`: a free port.
    pub port: Option<u16>,
    /// Extra `postgresql.conf` settings, e.g. `("wal_sender_timeout", "2s")`.
    pub extra_conf: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, placed before the default trust lines (first match wins),
    /// e.g. `host all alice 127.0.0.1/32 scram-sha-256`. Applied when the cluster is initialised.
    pub extra_hba: Vec<String>,
    /// Bootstrap superuser name.
    pub superuser: String,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            bin_dir: None,
            data_dir: None,
            port: None,
            extra_conf: Vec::new(),
            extra_hba: Vec::new(),
            superuser: "postgres".to_owned(),
        }
    }
}

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; searched {searched:?}. \
         Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`), set WALCAST_PG_BIN to \
         its bin directory, or pass --database-url to use an existing server"
    )]
    MissingBinaries { searched: Vec<PathBuf> },
    #[error(
        "the server runs as the `postgres` user, which cannot enter {blocked} to reach {data_dir}; \
         choose a data directory under one every user may traverse (e.g. /var/tmp)"
    )]
    Unreachable { data_dir: PathBuf, blocked: PathBuf },
    #[error("running as root, but there is no `postgres` user to run the server as")]
    NoPostgresUser,
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("initdb failed: {stderr}")]
    InitDb { stderr: String },
    #[error("PostgreSQL did not start; server log:\n{log}")]
    Start { log: String },
    #[error("pg_ctl stop failed: {stderr}")]
    Stop { stderr: String },
    #[error("SQL on the private postgres failed")]
    Sql(#[source] tokio_postgres::Error),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// A running private PostgreSQL.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    superuser: String,
    /// `Some("postgres")` when we are root.
    run_as: Option<String>,
    /// Owns the temporary directory; dropped after the server is stopped.
    temp: Option<tempfile::TempDir>,
    /// Held for its Drop: the socket directory when the data directory path is too long.
    _socket_temp: Option<tempfile::TempDir>,
    running: bool,
    /// Stops the server if this process dies without running `Drop` (SIGKILL, `process::exit`,
    /// a cluster kept in a never-dropped static).
    watchdog: Option<std::process::Child>,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl EmbeddedPostgres {
    /// Initialises (when needed) and starts a cluster; returns once it accepts connections.
    pub async fn start(opts: EmbeddedOptions) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin_dir = match opts.bin_dir.clone() {
            Some(dir) => dir,
            None => find_bin_dir()?,
        };
        if !has_binaries(&bin_dir) {
            return Err(EmbeddedError::MissingBinaries {
                searched: vec![bin_dir],
            });
        }
        let owner = if is_root().await {
            Some(postgres_owner().await?)
        } else {
            None
        };
        let (temp, data_dir, socket_dir, log_path) = match &opts.data_dir {
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("walcast-pg-")
                    .tempdir_in(std::env::temp_dir())
                    .map_err(io_err("creating the postgres's temporary directory"))?;
                let base = temp.path().to_path_buf();
                if let Some((uid, gid)) = owner {
                    chown(&base, uid, gid)?;
                }
                (
                    Some(temp),
                    base.join("data"),
                    base.clone(),
                    base.join("postgres.log"),
                )
            }
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(io_err(format!("creating {}", dir.display())))?;
                // Absolute: the server resolves relative paths against its data directory,
                // not against our working directory.
                let dir = std::fs::canonicalize(dir)
                    .map_err(io_err(format!("resolving {}", dir.display())))?;
                if let Some((uid, gid)) = owner {
                    reachable_by_others(&dir)?;
                    chown(&dir, uid, gid)?;
                }
                let log = dir.join("walcast-postgres.log");
                (None, dir.clone(), dir.clone(), log)
            }
        };
        // Unix socket paths are limited to 107 bytes; a deep data directory gets its socket in
        // a short temporary directory instead.
        let mut socket_temp = None;
        let socket_dir = if socket_dir.as_os_str().len() + ".s.PGSQL.65535".len() + 1 > 100 {
            let t = tempfile::Builder::new()
                .prefix("walcast-sock-")
                .tempdir_in(std::env::temp_dir())
                .map_err(io_err("creating the socket directory"))?;
            if let Some((uid, gid)) = owner {
                chown(t.path(), uid, gid)?;
            }
            let path = t.path().to_path_buf();
            socket_temp = Some(t);
            path
        } else {
            socket_dir
        };
        let mut postgres = EmbeddedPostgres {
            bin_dir,
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            superuser: opts.superuser.clone(),
            run_as: owner.map(|_| "postgres".to_owned()),
            temp,
            _socket_temp: socket_temp,
            running: false,
            watchdog: None,
        };
        if !postgres.data_dir.join("PG_VERSION").exists() {
            postgres.initdb(&opts).await?;
        }
        // A free port can be taken between probing and binding; retry with another one.
        let attempts = if opts.port.is_some() { 1 } else { 3 };
        let mut last = None;
        for _ in 0..attempts {
            let port = match opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            postgres.port = port;
            postgres.write_conf(&opts)?;
            match postgres.pg_ctl_start().await {
                Ok(()) => {
                    postgres.running = true;
                    postgres.watchdog = postgres.spawn_watchdog();
                    debug!(port, data_dir = %postgres.data_dir.display(), "private PostgreSQL started");
                    return Ok(postgres);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EmbeddedError::Start { log: String::new() }))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://<superuser>@127.0.0.1:<port>/<dbname>`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.superuser, self.port, dbname
        )
    }

    /// Directory of the Unix socket (`.s.PGSQL.<port>`), usable as `host=` in a connection string.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// A tokio-postgres client on `dbname` as the superuser; its connection task is spawned.
    pub async fn client(&self, dbname: &str) -> Result<tokio_postgres::Client, EmbeddedError> {
        let (client, conn) = tokio_postgres::connect(&self.url(dbname), tokio_postgres::NoTls)
            .await
            .map_err(EmbeddedError::Sql)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "private postgres client connection ended");
            }
        });
        Ok(client)
    }

    /// Creates a fresh, uniquely named database and returns its URL.
    pub async fn create_database(&self) -> Result<String, EmbeddedError> {
        let name = format!(
            "walcast_test_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(EmbeddedError::Sql)?;
        Ok(self.url(&name))
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes a temporary directory.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        let out = self
            .command("pg_ctl")
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("running pg_ctl stop"))?;
        self.running = false;
        self.stop_watchdog();
        if !out.status.success() {
            return Err(EmbeddedError::Stop {
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// A detached shell that polls this process and, once it is gone, stops the server and
    /// removes a temporary directory. Best effort: without it a killed test run leaks servers.
    fn spawn_watchdog(&self) -> Option<std::process::Child> {
        let pg_ctl = sh_quote(&self.tool("pg_ctl").display().to_string());
        let data = sh_quote(&self.data_dir.display().to_string());
        let run_as = match &self.run_as {
            Some(user) => format!("runuser -u {} -- ", sh_quote(user)),
            None => String::new(),
        };
        let (mode, cleanup) = match &self.temp {
            Some(t) => (
                "immediate",
                format!("; rm -rf {}", sh_quote(&t.path().display().to_string())),
            ),
            None => ("fast", String::new()),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {run_as}{pg_ctl} stop -m {mode} -D {data} >/dev/null 2>&1{cleanup}",
            pid = std::process::id()
        );
        std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| warn!(error = %e, "could not start the postgres watchdog"))
            .ok()
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `name` from the bin dir, run as the server's owner.
    fn command(&self, name: &str) -> tokio::process::Command {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.tool(name));
                c
            }
            None => tokio::process::Command::new(self.tool(name)),
        };
        // Keep the caller's libpq settings from leaking into the tools.
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    async fn initdb(&self, opts: &EmbeddedOptions) -> Result<(), EmbeddedError> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                &opts.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("running initdb"))?;
        if !out.status.success() {
            return Err(EmbeddedError::InitDb {
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(io_err("reading postgresql.conf"))?;
        text.push_str(
            "\n# walcast: settings rewritten on every start\ninclude_if_exists = 'walcast.conf'\n",
        );
        std::fs::write(&conf, text).map_err(io_err("writing postgresql.conf"))?;
        if !opts.extra_hba.is_empty() {
            let hba = self.data_dir.join("pg_hba.conf");
            let defaults = std::fs::read_to_string(&hba).map_err(io_err("reading pg_hba.conf"))?;
            let mut text = opts.extra_hba.join("\n");
            text.push('\n');
            text.push_str(&defaults);
            std::fs::write(&hba, text).map_err(io_err("writing pg_hba.conf"))?;
        }
        Ok(())
    }

    fn write_conf(&self, opts: &EmbeddedOptions) -> Result<(), EmbeddedError> {
        let temporary = self.temp.is_some();
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("port".into(), self.port.to_string()),
            (
                "unix_socket_directories".into(),
                self.socket_dir.display().to_string(),
            ),
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "32".into()),
            ("max_wal_senders".into(), "32".into()),
        ];
        if temporary {
            // Throw-away data: durability costs time and buys nothing.
            settings.push(("fsync".into(), "off".into()));
            settings.push(("full_page_writes".into(), "off".into()));
        }
        settings.extend(opts.extra_conf.iter().cloned());
        let mut text = String::new();
        for (k, v) in settings {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let path = self.data_dir.join("walcast.conf");
        std::fs::write(&path, text).map_err(io_err("writing walcast.conf"))?;
        Ok(())
    }

    async fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        // The log lives outside PGDATA for temporary clusters; it must be writable by the owner.
        let status = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(io_err("running pg_ctl start"))?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        Err(EmbeddedError::Start { log })
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop_watchdog();
        if !self.running {
            return;
        }
        // Synchronous on purpose: Drop also runs while a panicking test unwinds, possibly with
        // no runtime left to drive async work. Temporary data needs no clean shutdown.
        let mode = if self.temp.is_some() {
            "immediate"
        } else {
            "fast"
        };
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.tool("pg_ctl"));
                c
            }
            None => std::process::Command::new(self.tool("pg_ctl")),
        };
        let result = cmd
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(result, Ok(s) if s.success()) {
            warn!(data_dir = %self.data_dir.display(), "could not stop the private PostgreSQL");
        }
    }
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn has_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// `$WALCAST_PG_BIN`, then the newest `/usr/lib/postgresql/<major>/bin`, then `$PATH`.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::var_os("WALCAST_PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    for (_, dir) in versions.into_iter().rev() {
        if has_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(dir);
    }
    searched.push(root.to_path_buf());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(dir);
        }
    }
    Err(EmbeddedError::MissingBinaries { searched })
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port();
    Ok(port)
}

async fn id(args: &[&str]) -> Option<u32> {
    let out = tokio::process::Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

async fn is_root() -> bool {
    id(&["-u"]).await == Some(0)
}

async fn postgres_owner() -> Result<(u32, u32), EmbeddedError> {
    match (id(&["-u", "postgres"]).await, id(&["-g", "postgres"]).await) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(EmbeddedError::NoPostgresUser),
    }
}

/// As root the server runs as `postgres`: every directory above `dir` must let others traverse
/// it, or initdb fails with a bare "Permission denied".
fn reachable_by_others(dir: &Path) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)
            .map_err(io_err(format!("reading {}", ancestor.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable {
                data_dir: dir.to_owned(),
                blocked: ancestor.to_owned(),
            });
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {} to postgres", path.display())))
}

#[cfg(test)]
mod reachability_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_ancestor_is_named() {
        let base = tempfile::tempdir().unwrap();
        let private = base.path().join("private");
        let data = private.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        match reachable_by_others(&data) {
            Err(EmbeddedError::Unreachable { blocked, .. }) => assert_eq!(blocked, private),
            other => panic!("expected Unreachable, got {other:?}"),
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        // Above the temp dir, the system's directories are traversable.
        assert!(reachable_by_others(&data).is_ok());
    }
}
