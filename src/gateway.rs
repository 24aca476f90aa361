//! Wiring and ordered shutdown: prepare the database, start replication, serve HTTP.
//!
//! Shutdown order: stop accepting → close every socket with 1001 → finish the transaction in
//! hand → make the window log durable, confirm the slot up to it and end the replication
//! stream → return.

use crate::auth::Authenticator;
use crate::cluster::{ClusterError, ClusterNode};
use crate::config::Settings;
use crate::db::{Database, DbError};
use crate::http::{route, DemoApi, HttpState, PublishApi};
use crate::hub::Hub;
use crate::journal::JournalError;
use crate::livequery::Snapshots;
use crate::pipeline::{Pipeline, Status};
use crate::publish::{ChannelSink, IdempotencyStore, MemoryIdempotency, Publisher};
use crate::sse::SseStreams;
use crate::telemetry::Telemetry;
use crate::tls::CertificateStore;
use crate::ws::{ConnectionLimits, WsContext};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use walcast_replication::{
    PublicationScope, ReplicationConfig, ReplicationError, ReplicationStream,
};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("database preparation failed")]
    Prepare(#[source] DbError),
    #[error("cannot set up the snapshot pool")]
    SnapshotPool(#[source] crate::livequery::PoolConfigError),
    #[error("cannot start replication")]
    Replication(#[source] ReplicationError),
    #[error(
        "replication slot `{slot}` is in use by another process ({message}); stop the other \
         gateway, or give this one its own slot with --slot"
    )]
    SlotInUse { slot: String, message: String },
    #[error("replication stopped for good")]
    Stopped(#[source] ReplicationError),
    #[error("cannot open the resume window log")]
    Journal(#[source] JournalError),
    #[error("cannot load the TLS certificate")]
    Tls(#[source] crate::tls::TlsError),
    #[error("cannot join the cluster")]
    Cluster(#[source] ClusterError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where committed transactions come from.
enum Mode {
    /// This process streams the slot (and keeps the window log on disk).
    Single(ReplicationStream, crate::pipeline::Opened),
    /// The cluster's stream (this node streams the slot while it holds the lease).
    Cluster(Box<ClusterNode>),
}

/// A running gateway.
pub struct Gateway {
    local_addr: SocketAddr,
    root: CancellationToken,
    accept_stop: CancellationToken,
    accept: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    fatal: Option<oneshot::Receiver<ReplicationError>>,
    sockets: TaskTracker,
    tls: Option<Arc<CertificateStore>>,
    pub hub: Arc<Hub>,
    /// The server publish entry point (custom channels, with idempotency keys).
    pub publisher: Arc<Publisher>,
    /// Open SSE streams.
    pub sse: Arc<SseStreams>,
}

impl Gateway {
    pub async fn start(settings: Settings) -> Result<Gateway, GatewayError> {
        // The listener first: a taken port must fail before a slot exists that would then
        // hold WAL on the server with nobody reading it.
        let listener = bind(settings.listen).await?;
        Self::start_on(listener, settings).await
    }

    /// Starts on a listener the caller bound (`walcast up` binds before it starts PostgreSQL);
    /// `settings.listen` is ignored.
    pub async fn start_on(
        listener: TcpListener,
        settings: Settings,
    ) -> Result<Gateway, GatewayError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Listen {
                addr: settings.listen,
                source,
            })?;
        // Bad certificate files are refused before a slot is created or anything starts.
        let tls = match &settings.tls {
            Some(files) => Some(CertificateStore::open(files.clone()).map_err(GatewayError::Tls)?),
            None => None,
        };
        let acceptor = match &tls {
            Some(store) => Some(store.acceptor().map_err(GatewayError::Tls)?),
            None => None,
        };
        let db = Arc::new(Database::new(settings.database_url.clone()));
        prepare(&db).await.map_err(GatewayError::Prepare)?;
        let status = Arc::new(Status::default());
        let mode = match &settings.cluster {
            None => {
                let stream = start_replication(&settings).await?;
                let opened = crate::pipeline::open(&settings, &stream).await?;
                Mode::Single(stream, opened)
            }
            Some(cluster) => Mode::Cluster(Box::new(
                ClusterNode::connect(&settings, cluster, &db, Arc::clone(&status))
                    .await
                    .map_err(GatewayError::Cluster)?,
            )),
        };

        let root = CancellationToken::new();
        let telemetry = Telemetry::new();
        let hub = match &mode {
            Mode::Single(_, opened) => Arc::clone(&opened.hub),
            // The cluster's window is the stream: each node rebuilds its memory from it.
            Mode::Cluster(node) => {
                Arc::new(Hub::new(settings.resume_window, node.window_start(), []))
            }
        };
        let auth = Arc::new(Authenticator::new(
            settings.jwt_secret.as_bytes(),
            Arc::clone(&db),
        ));
        // In cluster mode custom channels go through NATS to every node's hub, and every node
        // shares the idempotency keys.
        let (sink, keys): (Arc<dyn ChannelSink>, Arc<dyn IdempotencyStore>) = match &mode {
            Mode::Single(..) => (
                Arc::clone(&hub) as Arc<dyn ChannelSink>,
                Arc::new(MemoryIdempotency::new(settings.publish.idempotency)),
            ),
            Mode::Cluster(node) => (node.bridge(), node.idempotency()),
        };
        let max_message_bytes = match &mode {
            Mode::Single(..) => settings.publish.max_message_bytes,
            Mode::Cluster(node) => settings
                .publish
                .max_message_bytes
                .min(node.max_message_bytes()),
        };
        let publisher = Arc::new(Publisher::new(
            sink,
            keys,
            max_message_bytes,
            telemetry.clone(),
        ));
        let snapshots = Snapshots::new(&settings.database_url, settings.snapshot.clone())
            .map_err(GatewayError::SnapshotPool)?;
        let ws = Arc::new(WsContext {
            hub: Arc::clone(&hub),
            publisher: Arc::clone(&publisher),
            auth: auth.clone(),
            snapshots: Arc::new(snapshots),
            limits: ConnectionLimits::new(
                settings.max_connections,
                settings.max_connections_per_app,
            ),
            config: settings.ws.clone(),
            telemetry: telemetry.clone(),
            shutdown: root.child_token(),
        });
        let sockets = TaskTracker::new();
        let sse = SseStreams::new(Arc::clone(&ws), sockets.clone());
        let publish = PublishApi {
            publisher: Arc::clone(&publisher),
            auth: Arc::clone(&auth),
            key: settings.publish.key.clone(),
        };
        let demo = settings.demo.then(|| DemoApi {
            db: Arc::clone(&db),
            auth,
            jwt_secret: settings.jwt_secret.as_bytes().to_vec(),
        });
        let state = Arc::new(HttpState {
            ws,
            db,
            status: Arc::clone(&status),
            demo,
            sse: Arc::clone(&sse),
            publish,
            sockets: sockets.clone(),
        });

        let (fatal_tx, fatal) = oneshot::channel();
        let dispatcher = match mode {
            Mode::Single(stream, opened) => {
                // Transactions up to the server's WAL position at start were committed before
                // this process ran: replayed into the resume window, delivered only to resuming
                // members.
                let recovery_end = stream.identity().xlogpos;
                let pipeline = Pipeline::new(
                    settings.clone(),
                    &opened,
                    recovery_end,
                    telemetry.clone(),
                    status,
                );
                drop(opened);
                tokio::spawn(
                    pipeline
                        .run(stream, fatal_tx, root.child_token())
                        .instrument(tracing::info_span!("replication", slot = %settings.slot)),
                )
            }
            Mode::Cluster(node) => {
                node.spawn(Arc::clone(&hub), telemetry.clone(), root.child_token())
            }
        };
        crate::allocator::spawn_trim(root.child_token());
        let accept_stop = root.child_token();
        let accept = tokio::spawn(accept_loop(listener, acceptor, state, accept_stop.clone()));
        if let Some(store) = &tls {
            reload_on_hangup(Arc::clone(store), root.child_token());
        }
        tracing::info!(%local_addr, tls = tls.is_some(), "walcast listening");
        Ok(Gateway {
            local_addr,
            root,
            accept_stop,
            accept,
            dispatcher,
            fatal: Some(fatal),
            sockets,
            tls,
            hub,
            publisher,
            sse,
        })
    }

    /// Completes when replication stopped on an error that retrying cannot fix (credentials
    /// refused, privileges or the slot removed, WAL that cannot be decoded); transient ones are
    /// retried with backoff and never end here. Pending forever while the gateway is healthy.
    pub async fn failure(&mut self) -> GatewayError {
        match self.fatal.take() {
            Some(fatal) => match fatal.await {
                Ok(error) => GatewayError::Stopped(error),
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Re-reads the TLS certificate and key (what SIGHUP does). New handshakes get the new
    /// certificate; open connections are untouched.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        match &self.tls {
            Some(store) => store.reload(),
            None => Ok(()),
        }
    }

    /// Ordered shutdown (see the module doc). Sockets get `grace` to flush their close frames.
    pub async fn shutdown(self) {
        self.accept_stop.cancel();
        let _ = self.accept.await;
        self.root.cancel();
        self.sockets.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sockets.wait()).await;
        let _ = self.dispatcher.await;
        tracing::info!("walcast stopped");
    }
}

/// Binds the gateway's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { addr, source })
}

/// The first replication connection. A slot still held by another session is retried for a
/// few seconds (after a kill -9 the old walsender lingers until PostgreSQL notices), then
/// reported with the option to use.
async fn start_replication(settings: &Settings) -> Result<ReplicationStream, GatewayError> {
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match ReplicationStream::start(replication_config(settings)).await {
            Ok(stream) => return Ok(stream),
            Err(error) if error.sqlstate() == Some(OBJECT_IN_USE) => {
                if attempt >= SLOT_IN_USE_ATTEMPTS {
                    let message = match error {
                        ReplicationError::Server { message, .. } => message,
                        other => other.to_string(),
                    };
                    return Err(GatewayError::SlotInUse {
                        slot: settings.slot.clone(),
                        message,
                    });
                }
                tracing::info!(slot = %settings.slot, attempt, "replication slot in use, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(GatewayError::Replication(error)),
        }
    }
    unreachable!("the loop returns")
}

/// SQLSTATE 55006, e.g. `replication slot "walcast" is active for PID 4242`.
const OBJECT_IN_USE: &str = "55006";
/// 250 ms doubling to 2 s: about 8 s in all.
const SLOT_IN_USE_ATTEMPTS: u32 = 6;

/// Streams from the slot's confirmed position. With a resume window, idle positions are
/// confirmed by the pipeline once the window log recorded them.
pub(crate) fn replication_config(settings: &Settings) -> ReplicationConfig {
    ReplicationConfig {
        conninfo: settings.database_url.clone(),
        slot: settings.slot.clone(),
        publication: settings.publication.clone(),
        create_publication: PublicationScope::AllTables,
        // Snapshots emit a logical message to move the stream past their position.
        messages: true,
        status_interval: Duration::from_secs(1),
        confirm_idle: !settings.resume_window.enabled(),
        ..ReplicationConfig::default()
    }
}

/// What [`prepare`] could install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Complete,
    /// The role may not apply the preparation (a plain replication user), but the DDL event
    /// trigger is in place (`walcast migrate` ran as a superuser): tables created later are
    /// prepared by it, existing ones were when `migrate` ran.
    ByMigrate,
    /// The role may not create event triggers and none is installed: tables created later keep
    /// their replica identity and deletes there reach root users only (fail closed).
    WithoutEventTrigger,
}

/// The gateway's own schema objects (replica identity of repos, the DDL event trigger), under
/// the same advisory lock as `walcast migrate`. Every node of a cluster runs it at start.
pub async fn prepare(db: &Database) -> Result<Prepared, DbError> {
    let client = db.client().await?;
    let error = match crate::schema::apply(&client, crate::schema::WALCAST).await {
        Ok(()) => return Ok(Prepared::Complete),
        Err(DbError::Query(error))
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            error
        }
        Err(error) => return Err(error),
    };
    // The whole script was rolled back; what matters is whether the trigger exists already.
    let installed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger \
             WHERE evtname = 'walcast_prepare_repos' AND evtenabled <> 'D')",
            &[],
        )
        .await?
        .get(0);
    if installed {
        tracing::info!(
            error = &error as &dyn std::error::Error,
            "this role may not apply walcast's database preparation; using what `walcast migrate` \
             installed (the event trigger prepares new document tables)"
        );
        Ok(Prepared::ByMigrate)
    } else {
        tracing::warn!(
            error = &error as &dyn std::error::Error,
            "this role may not apply walcast's database preparation and no event trigger is \
             installed: document tables created from now on keep their default replica identity \
             (their deletes reach root users only); run `walcast migrate` as a superuser"
        );
        Ok(Prepared::WithoutEventTrigger)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<HttpState>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let stop = stop.clone();
        let tls = tls.clone();
        state.sockets.clone().spawn(async move {
            let Some(tls) = tls else {
                return serve_http(stream, state, stop).await;
            };
            // The TLS handshake is bounded like the request headers that follow it: a client
            // that opens a socket and says nothing must not hold it.
            let limit = state.ws.config.handshake_timeout;
            let handshake = tokio::select! {
                _ = stop.cancelled() => return,
                done = tokio::time::timeout(limit, tls.accept(stream)) => done,
            };
            match handshake {
                Ok(Ok(stream)) => serve_http(stream, state, stop).await,
                Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
}

/// HTTP/1.1 with upgrades on one connection, plain or TLS, until it ends or the gateway stops.
async fn serve_http<S>(stream: S, state: Arc<HttpState>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = state.ws.config.handshake_timeout;
    let service = service_fn(move |req| route(Arc::clone(&state), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// SIGHUP re-reads the certificate; a failed reload is logged and the current one kept.
fn reload_on_hangup(store: Arc<CertificateStore>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS reload disabled");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            match store.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(error) => tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "TLS certificate reload failed; keeping the current one"
                ),
            }
        }
    });
}
