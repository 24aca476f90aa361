//! The socket's write side: drains the connection's outbox into the socket, sends pings, closes
//! idle connections and, at shutdown or any close, the close frame.

use super::deflate::{self, Deflate};
use super::WsContext;
use crate::hub::Outbox;
use crate::protocol::{frame, CloseReason, Outgoing};
use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

/// Last inbound traffic, as milliseconds since the connection started: written by the reader,
/// read by the writer's idle check.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One connection's writer task.
pub(super) struct Writer<W> {
    ctx: Arc<WsContext>,
    outbox: Arc<Outbox>,
    out: WriteHalf<W>,
    activity: Arc<Activity>,
    /// What the handshake agreed for permessage-deflate.
    deflate: Option<Deflate>,
    /// At most [`MAX_BATCH`] frames taken from the outbox, being written.
    batch: Vec<Outgoing>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(
        ctx: Arc<WsContext>,
        outbox: Arc<Outbox>,
        out: WriteHalf<W>,
        activity: Arc<Activity>,
        deflate: Option<Deflate>,
    ) -> Self {
        Writer {
            ctx,
            outbox,
            out,
            activity,
            deflate,
            batch: Vec::new(),
        }
    }

    /// Runs until the connection closes; the reader learns of the end through the outbox.
    pub(super) async fn run(mut self) {
        if let Some(closing) = self.drain().await {
            if closing == CloseReason::SlowConsumer {
                self.ctx.telemetry.drop_reason("slow_consumer_close", 1);
            }
            let _ = self.out.write_all(&closing.frame()).await;
            let _ = self.out.flush().await;
        }
        let _ = self.out.shutdown().await;
        self.outbox.close(CloseReason::Normal);
    }

    /// Writes what is queued until closing is asked for (its reason returned) or the socket
    /// fails (`None`).
    async fn drain(&mut self) -> Option<CloseReason> {
        let mut ping = tokio::time::interval(self.ctx.config.ping_interval);
        ping.tick().await;
        let idle_limit = self.ctx.config.idle_timeout.as_millis() as u64;
        let mut shutting_down = false;
        // Registered once for the connection's life: a `cancelled()` made per turn would take
        // and release the token's lock, which every connection shares, on every write.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown, if !shutting_down => {
                    shutting_down = true;
                    self.outbox.close(CloseReason::ShuttingDown);
                }
                _ = ping.tick() => {
                    if self.activity.idle_ms() > idle_limit {
                        self.outbox.close(CloseReason::IdleTimeout);
                    } else {
                        self.outbox.push_control(frame::ping(b""));
                    }
                }
                closing = self.outbox.next_batch_up_to(&mut self.batch, MAX_BATCH) => {
                    if closing.is_some() {
                        return closing;
                    }
                    // A client that accepts nothing for a whole idle period is gone or stalled:
                    // drop it rather than hold its buffers forever.
                    let written =
                        tokio::time::timeout(self.ctx.config.idle_timeout, self.write_batch());
                    if !matches!(written.await, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// The taken frames in one write: the syscall per message is what limits fanout
    /// throughput. The frames are gathered into the runtime thread's buffer (vectored beyond
    /// [`GATHER_MAX`]), so no per-connection buffer grows with a burst.
    async fn write_batch(&mut self) -> std::io::Result<()> {
        let result = write_all_frames(&mut self.out, &self.batch, self.deflate).await;
        self.batch.clear();
        result
    }
}

/// Frames the writer takes from its queue at a time, and so the most buffers one `writev` is
/// handed (Linux's IOV_MAX is 1024). The rest of a burst waits in the queue, not in a second
/// per-connection copy; the buffer list lives on the stack only while a write is polled.
const MAX_BATCH: usize = 64;

/// The frame as this connection takes it: its permessage-deflate form where the handshake
/// agreed one and the payload is worth compressing (computed once per message, kept with it).
fn wire(frame: &Outgoing, deflate: Option<Deflate>) -> &[u8] {
    match deflate {
        Some(deflate) => frame.for_connection(
            |len| deflate.compresses(len),
            deflate::compressed_text_frame,
        ),
        None => frame.frame(),
    }
}

thread_local! {
    /// Shared by every writer on a runtime thread (none holds it across an await): the frames of
    /// one write gathered into one buffer, which the kernel copies from in one piece instead of
    /// one small copy per frame. No per-connection buffer grows with a burst.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The most bytes gathered for one write; a larger batch goes out as a vectored write.
const GATHER_MAX: usize = 64 << 10;

/// Writes every frame, in order, with as few writes as the stream allows (gathered into one
/// buffer up to [`GATHER_MAX`] bytes, vectored beyond: a stream without vectored writes takes
/// one frame per write there); a partial write resumes mid-frame.
async fn write_all_frames<W>(
    out: &mut W,
    frames: &[Outgoing],
    deflate: Option<Deflate>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    // The first frame not completely written, and how much of it was.
    let (mut next, mut offset) = (0, 0);
    let mut written = 0;
    loop {
        // Past what was written, and past empty frames (a write of nothing proves nothing).
        while next < frames.len() {
            let rest = wire(&frames[next], deflate).len() - offset;
            if written < rest {
                offset += written;
                break;
            }
            written -= rest;
            next += 1;
            offset = 0;
        }
        if next == frames.len() {
            return Ok(());
        }
        written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_BATCH];
            let mut count = 0;
            for (i, frame) in frames[next..].iter().enumerate() {
                if count == MAX_BATCH {
                    break;
                }
                let bytes = wire(frame, deflate);
                let bytes = if i == 0 { &bytes[offset..] } else { bytes };
                if !bytes.is_empty() {
                    slices[count] = IoSlice::new(bytes);
                    count += 1;
                }
            }
            match &slices[..count] {
                // One buffer: a plain write, which costs the kernel less than a one-entry writev.
                [one] => Pin::new(&mut *out).poll_write(cx, one),
                many if many.iter().map(|s| s.len()).sum::<usize>() <= GATHER_MAX => GATHER
                    .with_borrow_mut(|gathered| {
                        gathered.clear();
                        for slice in many {
                            gathered.extend_from_slice(slice);
                        }
                        Pin::new(&mut *out).poll_write(cx, gathered)
                    }),
                many => Pin::new(&mut *out).poll_write_vectored(cx, many),
            }
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    /// Takes at most `chunk` bytes per write, vectored or not.
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
        writes: usize,
    }

    impl Trickle {
        fn taking(chunk: usize) -> Trickle {
            Trickle {
                written: Vec::new(),
                chunk,
                writes: 0,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.written.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.chunk;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                self.written.extend_from_slice(&buf[..take]);
                room -= take;
                n += take;
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_resume_mid_frame_in_order() {
        let frames: Vec<Outgoing> = [&b"abc"[..], b"", b"defgh", b"i", b"jklmnop"]
            .into_iter()
            .map(|f| Outgoing::shared(bytes::Bytes::copy_from_slice(f)))
            .collect();
        for chunk in [1, 2, 4, 7, 100] {
            let mut out = Trickle::taking(chunk);
            write_all_frames(&mut out, &frames, None).await.unwrap();
            assert_eq!(out.written, b"abcdefghijklmnop");
            assert_eq!(out.writes, 16_usize.div_ceil(chunk));
        }
    }

    /// More frames than one write is handed: still all written, in order, with each write
    /// given at most `MAX_BATCH` buffers.
    #[tokio::test]
    async fn long_batches_go_out_in_bounded_writes() {
        let frames: Vec<Outgoing> = (0..3 * MAX_BATCH)
            .map(|i| Outgoing::from(bytes::Bytes::from(vec![i as u8; 3])))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.frame().to_vec()).collect();
        for chunk in [5, 3 * MAX_BATCH, usize::MAX] {
            let mut out = Trickle::taking(chunk);
            write_all_frames(&mut out, &frames, None).await.unwrap();
            assert_eq!(out.written, expected);
            assert!(out.writes >= 3);
        }
    }

    /// A batch over [`GATHER_MAX`] bytes goes out vectored, one under it gathered: either way
    /// every byte, in order, across partial writes.
    #[tokio::test]
    async fn batches_over_and_under_the_gather_bound_are_written_whole() {
        for size in [GATHER_MAX / 8, GATHER_MAX / 2 + 1] {
            let frames: Vec<Outgoing> = (0..4u8)
                .map(|i| Outgoing::from(bytes::Bytes::from(vec![i; size])))
                .collect();
            let expected: Vec<u8> = frames.iter().flat_map(|f| f.frame().to_vec()).collect();
            for chunk in [size / 3 + 1, usize::MAX] {
                let mut out = Trickle::taking(chunk);
                write_all_frames(&mut out, &frames, None).await.unwrap();
                assert_eq!(out.written, expected);
            }
        }
    }

    #[tokio::test]
    async fn a_stream_that_takes_nothing_is_an_error() {
        let mut out = Trickle::taking(0);
        let frame = |f: &'static [u8]| [Outgoing::from(bytes::Bytes::from_static(f))];
        let err = write_all_frames(&mut out, &frame(b"x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
        write_all_frames(&mut out, &frame(b""), None).await.unwrap();
    }
}
