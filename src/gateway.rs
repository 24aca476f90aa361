//! Wiring and ordered shutdown: prepare the database, start replication, serve HTTP.
//!
//! Shutdown order: stop accepting → close every socket with 1001 → finish the transaction in
//! hand → confirm the last dispatched LSN and end the replication stream → return.

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::db::{Database, DbError};
use crate::event::Assembler;
use crate::http::{route, DemoApi, HttpState, PublishApi};
use crate::hub::Hub;
use crate::livequery::Snapshots;
use crate::publish::{ChannelSink, MemoryIdempotency, Publisher};
use crate::sse::SseStreams;
use crate::telemetry::Telemetry;
use crate::tls::CertificateStore;
use crate::ws::{ConnectionLimits, WsContext};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use walcast_replication::{
    Confirmer, Lsn, PublicationScope, ReplicationConfig, ReplicationError, ReplicationStream,
};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("database preparation failed")]
    Prepare(#[source] DbError),
    #[error("cannot set up the snapshot pool")]
    SnapshotPool(#[source] crate::livequery::snapshot::PoolConfigError),
    #[error("cannot start replication")]
    Replication(#[source] ReplicationError),
    #[error(
        "replication slot `{slot}` is in use by another process ({message}); stop the other \
         gateway, or give this one its own slot with --slot"
    )]
    SlotInUse { slot: String, message: String },
    #[error("replication stopped for good")]
    Stopped(#[source] ReplicationError),
    #[error("cannot load the TLS certificate")]
    Tls(#[source] crate::tls::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    pub telemetry: Telemetry,
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
        let stream = start_replication(&settings).await?;

        let root = CancellationToken::new();
        let telemetry = Telemetry::new();
        let hub = Arc::new(Hub::new(settings.resume_window, stream.start_lsn()));
        // Transactions up to the server's WAL position at start were committed before this
        // process ran: replayed into the resume window, delivered only to resuming members.
        let recovery_end = stream.identity().xlogpos;
        let auth = Arc::new(Authenticator::new(
            settings.jwt_secret.as_bytes(),
            Arc::clone(&db),
        ));
        let publisher = Arc::new(Publisher::new(
            Arc::clone(&hub) as Arc<dyn ChannelSink>,
            Arc::new(MemoryIdempotency::new(settings.publish.idempotency)),
            settings.publish.max_message_bytes,
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
        let streaming = Arc::new(AtomicBool::new(true));
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
            streaming: Arc::clone(&streaming),
            demo,
            sse: Arc::clone(&sse),
            publish,
            sockets: sockets.clone(),
        });

        let (fatal_tx, fatal) = oneshot::channel();
        let dispatcher = tokio::spawn(
            dispatch_loop(
                stream,
                fatal_tx,
                recovery_end,
                settings.clone(),
                Arc::clone(&hub),
                telemetry.clone(),
                streaming,
                root.child_token(),
            )
            .instrument(tracing::info_span!("replication", slot = %settings.slot)),
        );
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
            telemetry,
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
        match ReplicationStream::start(replication_config(settings, None)).await {
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

pub fn replication_config(settings: &Settings, start: Option<Lsn>) -> ReplicationConfig {
    ReplicationConfig {
        conninfo: settings.database_url.clone(),
        slot: settings.slot.clone(),
        publication: settings.publication.clone(),
        create_publication: PublicationScope::AllTables,
        start_lsn: start,
        // Snapshots emit a logical message to move the stream past their position.
        messages: true,
        ..ReplicationConfig::default()
    }
}

/// What [`prepare`] could install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Complete,
    /// The role may not create event triggers: tables created later keep their replica
    /// identity and deletes there reach root users only (fail closed).
    WithoutEventTrigger,
}

/// The gateway's own schema objects (replica identity of repos, the DDL event trigger), under
/// the same advisory lock as `walcast migrate`.
pub async fn prepare(db: &Database) -> Result<Prepared, DbError> {
    let client = db.client().await?;
    match crate::schema::apply(&client, crate::schema::WALCAST).await {
        Ok(()) => Ok(Prepared::Complete),
        Err(DbError::Query(error))
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not install the walcast event trigger; run `walcast migrate` as a superuser"
            );
            Ok(Prepared::WithoutEventTrigger)
        }
        Err(error) => Err(error),
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

/// Reads committed transactions, turns them into events, hands them to the hub and only then
/// confirms their end LSN. Reconnects with backoff when the stream fails, resuming after the
/// last dispatched transaction (never re-sending one).
#[allow(clippy::too_many_arguments)]
async fn dispatch_loop(
    mut stream: ReplicationStream,
    fatal: oneshot::Sender<ReplicationError>,
    recovery_end: Lsn,
    settings: Settings,
    hub: Arc<Hub>,
    telemetry: Telemetry,
    streaming: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut assembler = Assembler::new();
    let mut last_dispatched = Lsn::ZERO;
    let mut backoff = Duration::from_millis(200);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let confirmer: Confirmer = stream.confirmer();
        confirmer.confirm(hub.expire_history(Instant::now()));
        let progress = stream.progress();
        let mut last_commit: Option<SystemTime> = None;
        let failed = loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                _ = ticker.tick() => {
                    report(&telemetry, &hub, &progress, last_commit);
                    record_assembler(&telemetry, &mut assembler);
                    confirmer.confirm(hub.expire_history(Instant::now()));
                    continue;
                }
                next = stream.recv() => next,
            };
            let tx = match next {
                Some(Ok(tx)) => tx,
                Some(Err(error)) if error.is_permanent() => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "replication failed for good"
                    );
                    streaming.store(false, Ordering::Release);
                    let _ = fatal.send(error);
                    return;
                }
                Some(Err(error)) => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "replication failed"
                    );
                    break true;
                }
                None => break true,
            };
            // Already dispatched (and held for resume) before the stream reconnected.
            if tx.end_lsn <= last_dispatched {
                continue;
            }
            let events = Arc::new(assembler.assemble(&tx));
            let stats = hub.dispatch(events, tx.end_lsn <= recovery_end);
            telemetry.transaction_in(stats.events);
            telemetry.delivered(stats.delivered);
            telemetry.drop_reason("slow_consumer", stats.slow_consumers);
            telemetry.drop_reason("fail_closed", stats.fail_closed);
            last_dispatched = tx.end_lsn;
            last_commit = Some(tx.commit_time);
            confirmer.confirm(stats.confirmable);
            backoff = Duration::from_millis(200);
        };
        record_assembler(&telemetry, &mut assembler);
        if !failed {
            if let Err(error) = stream.stop().await {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "replication stop failed"
                );
            }
            streaming.store(false, Ordering::Release);
            return;
        }
        streaming.store(false, Ordering::Release);
        drop(stream);
        stream = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            let start = (last_dispatched > Lsn::ZERO).then_some(last_dispatched);
            match ReplicationStream::start(replication_config(&settings, start)).await {
                Ok(stream) => break stream,
                Err(error) if error.is_permanent() => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "replication cannot restart"
                    );
                    let _ = fatal.send(error);
                    return;
                }
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    ?backoff,
                    "replication restart failed, retrying"
                ),
            }
        };
        streaming.store(true, Ordering::Release);
    }
}

fn record_assembler(telemetry: &Telemetry, assembler: &mut Assembler) {
    let stats = std::mem::take(&mut assembler.stats);
    telemetry.drop_reason("invalid_row", stats.invalid_rows as usize);
    telemetry.drop_reason("missing_document", stats.missing_document as usize);
    telemetry.drop_reason("truncate", stats.truncates as usize);
}

fn report(
    telemetry: &Telemetry,
    hub: &Hub,
    progress: &walcast_replication::ProgressHandle,
    last_commit: Option<SystemTime>,
) {
    let confirmed = progress.confirmed();
    let lag_bytes = progress.server_wal_end().0.saturating_sub(confirmed.0);
    let lag_seconds = match last_commit {
        Some(at) if lag_bytes > 0 => SystemTime::now()
            .duration_since(at)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        _ => 0.0,
    };
    telemetry.replication(lag_bytes, lag_seconds, confirmed.0);
    telemetry.channels(hub.channel_count());
}
