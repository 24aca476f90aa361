//! `walcast up`: a private PostgreSQL (reused across runs), the demo app, the gateway.
//!
//! `--data-dir` is walcast's data directory, as for `serve`: the window log under `window/`.
//! `up` keeps its PostgreSQL beside it, under `postgres/`, so a directory `serve` has used
//! takes a PostgreSQL too, and removing one never removes the other.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use walcast::config::{ServeArgs, DEFAULT_LISTEN};
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// walcast's data directory, as for `serve` (the window log, under `window/`); the embedded
    /// PostgreSQL keeps its data under `postgres/` in it (reused on the next run).
    #[arg(long, env = "WALCAST_DATA_DIR", default_value = "walcast-data")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL instead of starting one. Only this flag selects an outside database:
    /// an exported DATABASE_URL (your own app's, say) is never used by `up`, which applies the
    /// demo schema, publication, slot and event trigger to its database.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "WALCAST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Session JWT secret of the demo app (an exported JWT_SECRET is not used).
    #[arg(long, default_value = "walcast-demo-secret")]
    pub jwt_secret: String,
}

pub async fn run(args: UpArgs) -> Result<()> {
    for ignored in ["DATABASE_URL", "JWT_SECRET"] {
        if std::env::var_os(ignored).is_some() {
            eprintln!(
                "Note: {ignored} is set in your environment; `walcast up` ignores it (pass {} to use it).",
                if ignored == "DATABASE_URL" { "--database-url" } else { "--jwt-secret" }
            );
        }
    }
    let listen: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("invalid --listen address `{}`", args.listen))?;
    let data_dir = std::path::absolute(&args.data_dir).context("resolving --data-dir")?;
    let postgres_dir = postgres_dir(&data_dir);
    if args.database_url.is_none() {
        if let Some(running) = already_running(&data_dir, &postgres_dir) {
            anyhow::bail!("{running}");
        }
    }
    // Bound before PostgreSQL starts: a taken port fails in a second, not after initdb.
    let listener = match walcast::gateway::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            let next = std::net::SocketAddr::new(listen.ip(), listen.port().wrapping_add(1));
            return Err(anyhow::Error::new(error).context(format!(
                "another program (a second `walcast up`?) uses {listen}; choose another address with --listen {next}"
            )));
        }
    };

    let mut postgres = None;
    let database_url = match args.database_url.clone() {
        Some(url) => url,
        None => {
            let fresh = !postgres_dir.join("PG_VERSION").exists();
            eprint!(
                "{} PostgreSQL in {} ",
                if fresh { "Initialising" } else { "Starting" },
                postgres_dir.display()
            );
            let started = with_progress(EmbeddedPostgres::start(EmbeddedOptions {
                data_dir: Some(postgres_dir.clone()),
                ..EmbeddedOptions::default()
            }))
            .await
            .inspect_err(|_| eprintln!(" failed"))
            .context("starting the embedded PostgreSQL")?;
            eprintln!(" ready on port {}", started.port());
            let url = started.url("postgres");
            postgres = Some(started);
            url
        }
    };
    let pid_file = postgres.as_ref().map(|_| PidFile::create(&data_dir));
    eprint!("Applying schema and demo app … ");
    walcast::schema::migrate_url(&database_url, true)
        .await
        .context("applying schema")?;
    eprintln!("done");

    let mut settings = ServeArgs {
        database_url: Some(database_url),
        listen: Some(args.listen.clone()),
        jwt_secret: Some(args.jwt_secret.clone()),
        // The window log goes under `window/`, beside the embedded cluster's `postgres/`.
        data_dir: Some(args.data_dir.clone()),
        ..ServeArgs::default()
    }
    .resolve()?;
    settings.demo = true;
    let mut gateway = Gateway::start_on(listener, settings)
        .await
        .context("starting the gateway")?;
    let addr = gateway.local_addr();
    // Listening before the banner: a Ctrl-C right after it must not be lost.
    let signal = super::shutdown_signal()?;
    println!("walcast is up.");
    println!("  demo page:  http://{addr}/");
    println!("  dashboard:  http://{addr}/dashboard");
    println!("  websocket:  ws://{addr}/ws");
    println!(
        "  demo API:   http://{addr}/demo/users, http://{addr}/demo/tasks (Bearer <session token>)"
    );
    println!("  as a user:  http://{addr}/?user=bob%40demo.test (any demo email below)");
    match &postgres {
        Some(postgres) => {
            println!(
                "  database:   127.0.0.1:{port} (socket {socket}/.s.PGSQL.{port}), user {user}",
                port = postgres.port(),
                socket = postgres.socket_dir().display(),
                user = postgres.superuser(),
            );
            println!("  psql:       psql \"{}\"", postgres.url("postgres"));
        }
        None => println!("  database:   the one given with --database-url"),
    }
    println!("  session tokens (JWT secret {:?}):", args.jwt_secret);
    for (name, email, account, user_id, _, token) in walcast::schema::DEMO_USERS {
        let user = uuid::Uuid::parse_str(user_id)?;
        let jwt =
            walcast::auth::issue_token(args.jwt_secret.as_bytes(), user, token, 7 * 24 * 3600);
        println!("    {name:<6} {email:<16} {account}: {jwt}");
    }
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    let failure = tokio::select! {
        _ = signal => None,
        failure = gateway.failure() => Some(failure),
    };
    gateway.shutdown().await;
    if let Some(postgres) = postgres {
        eprint!("Stopping PostgreSQL … ");
        postgres.stop().await.context("stopping PostgreSQL")?;
        eprintln!("stopped");
    }
    drop(pid_file);
    match failure {
        Some(failure) => Err(anyhow::Error::new(failure)),
        None => Ok(()),
    }
}

/// `walcast-up.pid` in the data directory: which process runs `up` there, so that a second
/// `up` in the same directory says so at once (instead of PostgreSQL's lock-file error at
/// the end of its log). Removed on exit.
struct PidFile(PathBuf);

const PID_FILE: &str = "walcast-up.pid";

impl PidFile {
    fn create(data_dir: &Path) -> Option<PidFile> {
        let path = data_dir.join(PID_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id())).ok()?;
        Some(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the embedded PostgreSQL lives in `data_dir`: `postgres/`, except in a directory made
/// by an earlier walcast, which kept the cluster at its top (`PG_VERSION` there) and keeps it.
fn postgres_dir(data_dir: &Path) -> PathBuf {
    if data_dir.join("PG_VERSION").exists() {
        data_dir.to_path_buf()
    } else {
        data_dir.join("postgres")
    }
}

/// Who already runs in `data_dir`: a live `walcast up`, or a live PostgreSQL on its cluster
/// (`postmaster.pid` in `postgres_dir`, e.g. left by an `up` killed with -9).
fn already_running(data_dir: &Path, postgres_dir: &Path) -> Option<String> {
    let pid_in = |file: PathBuf| -> Option<i32> {
        let text = std::fs::read_to_string(file).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 0 && pid as u32 != std::process::id() && is_alive(pid)).then_some(pid)
    };
    if let Some(pid) = pid_in(data_dir.join(PID_FILE)) {
        return Some(format!(
            "walcast up is already running (PID {pid}) in {}: stop it first (Ctrl-C in its terminal), or use another --data-dir",
            data_dir.display()
        ));
    }
    pid_in(postgres_dir.join("postmaster.pid")).map(|pid| {
        let dir = postgres_dir.display();
        format!(
            "PostgreSQL is already running (PID {pid}) on {dir}, without its walcast up: stop it with `pg_ctl stop -D {dir}`, or use another --data-dir"
        )
    })
}

fn is_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists under another user.
    // SAFETY: kill(2) with signal 0 sends nothing and touches no memory.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Prints a dot every half second until `work` is done: initdb and the first start take a few
/// seconds, and a silent terminal looks hung.
async fn with_progress<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                eprint!(".");
                let _ = std::io::stderr().flush();
            }
        }
    }
}
