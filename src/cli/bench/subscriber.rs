//! Subscriber connections: connect, authenticate, join, then read deliveries until told to stop.
//! One task per connection; the delivery path parses frames in place and records latency into a
//! local batch.

use super::client::{close_code, WsConn, OP_CLOSE, OP_TEXT};
use super::latency::{now_us, read_stamp, Recorder};
use super::target::Target;
use super::{BenchError, Options};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walcast::protocol::CloseReason;

/// What every subscriber task shares.
pub struct Shared {
    pub delivered: AtomicU64,
    pub recorder: Arc<Recorder>,
    pub stop: CancellationToken,
    /// Bounds concurrent handshakes so the listen backlog never overflows (a dropped SYN costs a
    /// one-second retransmit).
    pub setup: Semaphore,
}

impl Shared {
    pub fn new(setup_concurrency: usize) -> Arc<Shared> {
        Arc::new(Shared {
            delivered: AtomicU64::new(0),
            recorder: Arc::new(Recorder::default()),
            stop: CancellationToken::new(),
            setup: Semaphore::new(setup_concurrency.max(1)),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub id: usize,
    pub server: SocketAddr,
    pub path: Arc<str>,
    pub source: IpAddr,
    pub jwt: Arc<str>,
    pub channel: Arc<str>,
    pub transport: super::Transport,
    /// A subscription filter for the join (JSON), if any.
    pub filter: Option<Arc<str>>,
}

/// How the subscribers of one run connect: subscriber `id` spreads over the loopback source
/// addresses, the target's nodes and takes the JWTs round robin (one user per account in `db`
/// and `idle`).
pub struct Fleet {
    servers: Vec<SocketAddr>,
    path: Arc<str>,
    source_addrs: usize,
    jwts: Vec<Arc<str>>,
    channel: Arc<str>,
    transport: super::Transport,
    filters: Vec<Arc<str>>,
}

impl Fleet {
    /// `jwts` must not be empty.
    pub fn new(target: &Target, options: &Options, jwts: Vec<Arc<str>>, channel: &str) -> Fleet {
        Fleet {
            servers: target.addrs.clone(),
            path: target.path.as_str().into(),
            source_addrs: options.source_addrs,
            jwts,
            channel: channel.into(),
            transport: target.transport.clone(),
            filters: Vec::new(),
        }
    }

    /// Subscriber `id` joins with filter `id % filters.len()`.
    pub fn with_filters(mut self, filters: Vec<Arc<str>>) -> Fleet {
        self.filters = filters;
        self
    }

    pub fn spec(&self, id: usize) -> Spec {
        let server = self.servers[id % self.servers.len()];
        Spec {
            id,
            server,
            path: Arc::clone(&self.path),
            source: source_for(server, id, self.source_addrs),
            jwt: Arc::clone(&self.jwts[id % self.jwts.len()]),
            channel: Arc::clone(&self.channel),
            transport: self.transport.clone(),
            filter: (!self.filters.is_empty())
                .then(|| Arc::clone(&self.filters[id % self.filters.len()])),
        }
    }

    /// Subscribers `0..count`.
    pub fn specs(&self, count: usize) -> Vec<Spec> {
        (0..count).map(|id| self.spec(id)).collect()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub delivered: u64,
    /// Sequence numbers skipped (each subscriber sees one increasing sequence).
    pub missed: u64,
    pub slow_consumer_closed: bool,
    /// Bytes read from the socket after setup.
    pub wire_bytes: u64,
    /// Any other close or error after setup.
    pub lost: bool,
}

/// Opens the connection; sends `Ok(())` or the setup error on `ready`, then reads until stopped.
pub fn spawn(
    spec: Spec,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(), BenchError>>,
) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let conn = {
            let _permit = shared.setup.acquire().await;
            setup(&spec).await
        };
        let mut conn = match conn {
            Ok(conn) => {
                let _ = ready.send(Ok(())).await;
                conn
            }
            Err(error) => {
                let _ = ready.send(Err(error)).await;
                return Outcome::default();
            }
        };
        drop(ready);
        read_loop(&mut conn, &spec, &shared).await
    })
}

/// Connects and authenticates; returns the connection, its sid and its websocket token.
pub async fn login(spec: &Spec) -> Result<(WsConn, String, String), BenchError> {
    let mut conn = WsConn::connect(spec.server, spec.source, &spec.path, &spec.transport).await?;
    let sid = conn.expect("init").await?.data;
    conn.send_text(&message(&sid, "auth", &spec.jwt, "", ""))
        .await?;
    let token = conn.expect("token").await?.data;
    Ok((conn, sid, token))
}

/// Connects, authenticates and joins the spec's channel.
pub async fn setup(spec: &Spec) -> Result<WsConn, BenchError> {
    let (mut conn, sid, token) = login(spec).await?;
    let join = match &spec.filter {
        None => message(&sid, "join", &spec.channel, "", &token),
        Some(filter) => {
            let filter: serde_json::Value =
                serde_json::from_str(filter).map_err(|_| BenchError::Protocol("bad filter"))?;
            serde_json::to_vec(&serde_json::json!({
                "sid": sid, "type": "join", "data": &*spec.channel, "token": token,
                "filter": filter,
            }))
            .map_err(|_| BenchError::Protocol("bad filter"))?
        }
    };
    conn.send_text(&join).await?;
    conn.expect("joined").await?;
    Ok(conn)
}

/// A client envelope; the values are ours (ids, tokens, channel names), but escape anyway.
pub fn message(sid: &str, kind: &str, data: &str, channel: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "sid": sid, "type": kind, "data": data, "channel": channel, "token": token,
    }))
    .unwrap_or_default()
}

async fn read_loop(conn: &mut WsConn, spec: &Spec, shared: &Shared) -> Outcome {
    let mut outcome = Outcome::default();
    let mut samples = shared.recorder.local(spec.id);
    let mut next_seq: Option<u64> = None;
    // Registered once: a `cancelled()` per read would lock the token every subscriber shares.
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        let filled = tokio::select! {
            biased;
            _ = &mut stop => break,
            filled = conn.fill() => filled,
        };
        match filled {
            Ok(n) if n > 0 => outcome.wire_bytes += n as u64,
            _ => {
                outcome.lost = true;
                break;
            }
        }
        let now = now_us();
        let mut count = 0u64;
        let mut closed = None;
        let drained = conn.drain(|opcode, payload| match opcode {
            OP_TEXT => {
                if let Some((sent, seq)) = read_stamp(payload) {
                    count += 1;
                    samples.record(now.saturating_sub(sent));
                    match next_seq {
                        Some(expected) if seq > expected => outcome.missed += seq - expected,
                        None if seq > 0 => outcome.missed += seq,
                        _ => {}
                    }
                    next_seq = Some(seq + 1);
                }
            }
            OP_CLOSE => closed = Some(close_code(payload)),
            _ => {}
        });
        if count > 0 {
            outcome.delivered += count;
            shared.delivered.fetch_add(count, Ordering::Relaxed);
        }
        match closed {
            Some(code) if code == CloseReason::SlowConsumer.code() => {
                outcome.slow_consumer_closed = true;
                break;
            }
            Some(_) => {
                outcome.lost = true;
                break;
            }
            None => {}
        }
        if drained.is_err() || conn.flush().await.is_err() {
            outcome.lost = true;
            break;
        }
    }
    outcome
}

/// Totals over all subscribers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub delivered: u64,
    pub missed: u64,
    pub slow_consumer_closes: u64,
    pub lost: u64,
    pub wire_bytes: u64,
}

pub async fn collect(handles: Vec<JoinHandle<Outcome>>) -> Totals {
    let mut totals = Totals::default();
    for handle in handles {
        let Ok(o) = handle.await else { continue };
        totals.delivered += o.delivered;
        totals.missed += o.missed;
        totals.slow_consumer_closes += u64::from(o.slow_consumer_closed);
        totals.lost += u64::from(o.lost);
        totals.wire_bytes += o.wire_bytes;
    }
    totals
}

/// Source address `k` of `count` (127.0.0.1 ..= 127.0.0.count) for loopback targets, so that
/// each address has its own ephemeral port range.
pub fn source_for(server: SocketAddr, k: usize, count: usize) -> IpAddr {
    if server.ip().is_loopback() && count > 0 {
        IpAddr::from([127, 0, 0, 1 + (k % count.min(254)) as u8])
    } else {
        IpAddr::from([0, 0, 0, 0])
    }
}

/// Starts `specs.len()` subscribers and waits until each is joined or failed.
pub async fn start_all(
    specs: Vec<Spec>,
    shared: &Arc<Shared>,
) -> (Vec<JoinHandle<Outcome>>, usize, Option<BenchError>) {
    let count = specs.len();
    // Every task sends exactly one setup result: this bound never makes one wait.
    let (tx, mut rx) = mpsc::channel(count.max(1));
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| spawn(spec, Arc::clone(shared), tx.clone()))
        .collect();
    drop(tx);
    let mut joined = 0;
    let mut first_error = None;
    for _ in 0..count {
        match rx.recv().await {
            Some(Ok(())) => joined += 1,
            Some(Err(error)) => {
                first_error.get_or_insert(error);
            }
            None => break,
        }
    }
    (handles, joined, first_error)
}
