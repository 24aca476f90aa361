//! One connection's outbound queue, bounded in bytes: producers never wait; past the bound the
//! connection closes as a slow consumer.

use crate::protocol::{CloseReason, Outgoing};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Queue slots a connection keeps while idle (8 bytes each: at most 1 KiB, and only once a burst
/// grew it); a burst grows the queue (and the writer's batch) past this, and the writer gives
/// the rest back once it has written the burst. As large as a usual fanout burst: a queue
/// shrunk below that regrows (a reallocation and a copy) on every burst.
const KEPT_FRAMES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue passed its byte bound: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection was already closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    closing: Option<CloseReason>,
    /// Frames were queued without waking the writer; a [`Wakes`] holds this outbox and wakes
    /// it once.
    unwoken: bool,
    /// A producer waits in [`Outbox::wait_for_room`]: the writer signals `drained` only then.
    wants_room: bool,
}

/// One connection's outbound queue, bounded in bytes. Producers (hub, session) never wait on
/// it: a connection that cannot keep up is closed instead of slowing anyone else.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// Signalled once when closing is first requested, for the connection's reader.
    closed: Notify,
    /// Signalled when the writer takes the queue, for producers that wait for room.
    drained: Notify,
    limit: usize,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: Notify::new(),
            drained: Notify::new(),
            limit: limit_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update is a
        // single push/clear), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, frame: impl Into<Outgoing>) -> Push {
        let (outcome, wake) = self.queue(frame.into(), false);
        if wake || outcome == Push::Overflow {
            self.wake.notify_one();
        }
        if outcome == Push::Overflow {
            self.closed.notify_waiters();
        }
        outcome
    }

    /// Queues `frame` under the lock. `hold`: leave the writer asleep and mark the outbox
    /// unwoken; the second value says whether it was not marked yet (the caller must wake it).
    /// Without `hold`, the second value says whether the writer needs a wake-up: only for the
    /// first frame of a batch (the queue was empty). Until the writer takes the queue, later
    /// frames ride along (it takes everything queued under the same lock), so a fanout burst
    /// costs one wake-up per connection rather than one per frame.
    fn queue(&self, frame: Outgoing, hold: bool) -> (Push, bool) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return (Push::Closed, false);
        }
        if state.bytes + frame.len() > self.limit {
            state.frames.clear();
            state.bytes = 0;
            state.closing = Some(CloseReason::SlowConsumer);
            return (Push::Overflow, false);
        }
        let was_empty = state.frames.is_empty();
        state.bytes += frame.len();
        state.frames.push_back(frame);
        if !hold {
            return (Push::Queued, was_empty);
        }
        let first = !state.unwoken;
        state.unwoken = true;
        (Push::Queued, first)
    }

    /// Wakes the writer for frames queued through a [`Wakes`].
    fn wake_held(&self) {
        self.lock().unwoken = false;
        self.wake.notify_one();
    }

    /// Control frames (pong, ping) are tiny and must not be refused for a full data queue.
    pub fn push_control(&self, frame: Bytes) {
        {
            let mut state = self.lock();
            if state.closing.is_some() {
                return;
            }
            state.frames.push_back(Outgoing::from(frame));
        }
        self.wake.notify_one();
    }

    /// Asks the writer to send a close frame after what is already queued (a clean close) —
    /// except for a slow consumer, whose queue is dropped.
    pub fn close(&self, closing: CloseReason) {
        let first = {
            let mut state = self.lock();
            let first = state.closing.is_none();
            if first {
                state.closing = Some(closing);
            }
            first
        };
        self.wake.notify_one();
        if first {
            self.closed.notify_waiters();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Resolves once closing has been requested (by anyone, for any reason). No polling: a
    /// timer per connection would wake every idle connection several times a second.
    pub async fn closing(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the check and the await is seen.
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `bytes` more fit in the first half of the queue (or the connection is
    /// closing): for a producer of bulk data (snapshot pages) that must not overflow a reader
    /// that is merely slower than PostgreSQL.
    pub async fn wait_for_room(&self, bytes: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closing.is_some()
                    || state.bytes == 0
                    || state.bytes + bytes <= self.limit / 2
                {
                    return;
                }
                state.wants_room = true;
            }
            drained.await;
        }
    }

    /// Waits until frames are queued or the connection is closing; moves all queued frames into
    /// `batch` so the writer can send them in one write. Returns the close reason once the queue
    /// is empty and closing was requested.
    ///
    /// Before waiting on an empty queue, capacity a burst grew past [`KEPT_FRAMES`] (the queue's
    /// and `batch`'s) is given back.
    pub async fn next_batch(&self, batch: &mut Vec<Outgoing>) -> Option<CloseReason> {
        self.next_batch_up_to(batch, usize::MAX).await
    }

    /// [`Outbox::next_batch`], taking at most `max` of the oldest frames: the rest stay queued
    /// (and counted against the bound) for the next call, which then returns at once. A writer
    /// that takes a bounded slice keeps no second copy of a burst's queue.
    pub async fn next_batch_up_to(
        &self,
        batch: &mut Vec<Outgoing>,
        max: usize,
    ) -> Option<CloseReason> {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() {
                    let take = state.frames.len().min(max);
                    let mut taken = 0;
                    for frame in state.frames.drain(..take) {
                        taken += frame.len();
                        batch.push(frame);
                    }
                    // Control frames are queued without being counted (`push_control`).
                    state.bytes = state.bytes.saturating_sub(taken);
                    if state.frames.is_empty() {
                        state.bytes = 0;
                    }
                    let wants_room = std::mem::take(&mut state.wants_room);
                    drop(state);
                    if wants_room {
                        self.drained.notify_waiters();
                    }
                    return None;
                }
                if let Some(closing) = state.closing {
                    return Some(closing);
                }
                // Going idle: a burst's queue capacity is not kept for the connection's life.
                if state.frames.capacity() > KEPT_FRAMES {
                    state.frames.shrink_to(KEPT_FRAMES);
                }
            }
            if batch.capacity() > KEPT_FRAMES {
                batch.shrink_to(KEPT_FRAMES);
            }
            self.wake.notified().await;
        }
    }
}

/// Outboxes given frames without waking their writers, each woken once by [`Wakes::flush`] (or
/// on drop): a producer pushing a batch of events to many connections wakes each writer once
/// per batch instead of once per frame, so the writer finds the batch's frames together and
/// sends them in one write. Per-outbox order is push order, as with [`Outbox::push`]; a push
/// that overflows the bound closes the connection at once, as there.
#[derive(Debug, Default)]
pub struct Wakes {
    pending: Vec<Arc<Outbox>>,
}

impl Wakes {
    pub fn push(&mut self, outbox: &Arc<Outbox>, frame: impl Into<Outgoing>) -> Push {
        let (outcome, first) = outbox.queue(frame.into(), true);
        match outcome {
            Push::Queued if first => self.pending.push(Arc::clone(outbox)),
            Push::Overflow => {
                outbox.wake.notify_one();
                outbox.closed.notify_waiters();
            }
            Push::Queued | Push::Closed => {}
        }
        outcome
    }

    /// Outboxes waiting for their wake.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Wakes every outbox pushed to since the last flush, once each.
    pub fn flush(&mut self) {
        for outbox in self.pending.drain(..) {
            outbox.wake_held();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A writer task parked in `next_batch`; it returns the first batch it takes.
    async fn waiting_writer(outbox: &Arc<Outbox>) -> tokio::task::JoinHandle<Vec<Outgoing>> {
        let outbox = Arc::clone(outbox);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            outbox.next_batch(&mut batch).await;
            batch
        });
        tokio::task::yield_now().await;
        writer
    }

    #[tokio::test]
    async fn batches_and_bounds() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(Bytes::from_static(b"1234")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"5678")), Push::Queued);
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Overflow);
        assert_eq!(outbox.push(Bytes::from_static(b"1")), Push::Closed);
        batch.clear();
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Some(CloseReason::SlowConsumer)
        );
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn clean_close_flushes_first() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from_static(b"a"));
        outbox.close(CloseReason::ShuttingDown);
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Some(CloseReason::ShuttingDown)
        );
    }

    #[tokio::test]
    async fn closing_wakes_a_waiting_reader() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.closing().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(outbox.push(Bytes::from_static(b"12345")), Push::Overflow);
        reader.await.unwrap();
        // Already closing: returns at once.
        outbox.closing().await;
    }

    #[tokio::test]
    async fn an_idle_queue_gives_back_what_a_burst_grew() {
        let outbox = Outbox::new(1 << 20);
        for _ in 0..1000 {
            outbox.push(Bytes::from_static(b"x"));
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 1000);
        assert!(outbox.lock().frames.capacity() >= 1000);
        batch.clear();
        // Nothing queued: the writer would now wait, so both buffers shrink first.
        assert!(outbox.next_batch(&mut batch).now_or_never().is_none());
        assert!(batch.capacity() <= KEPT_FRAMES);
        assert!(outbox.lock().frames.capacity() <= KEPT_FRAMES);
    }

    /// A bounded take leaves the rest queued, in order and still counted against the bound;
    /// the next take returns at once without a wake-up.
    #[tokio::test]
    async fn a_bounded_take_leaves_the_rest_queued() {
        let outbox = Outbox::new(10);
        for frame in [&b"123"[..], b"456", b"789"] {
            assert_eq!(outbox.push(Bytes::copy_from_slice(frame)), Push::Queued);
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch_up_to(&mut batch, 2).await, None);
        assert_eq!(
            batch,
            [Bytes::from_static(b"123"), Bytes::from_static(b"456")]
        );
        // 3 bytes still queued: 7 more fit.
        assert_eq!(outbox.push(Bytes::from_static(b"abcdefg")), Push::Queued);
        batch.clear();
        assert_eq!(
            outbox.next_batch_up_to(&mut batch, 2).now_or_never(),
            Some(None)
        );
        assert_eq!(
            batch,
            [Bytes::from_static(b"789"), Bytes::from_static(b"abcdefg")]
        );
        assert_eq!(outbox.lock().bytes, 0);
    }

    /// A producer waiting for room is woken when the writer takes frames.
    #[tokio::test]
    async fn taking_frames_wakes_a_producer_waiting_for_room() {
        let outbox = Arc::new(Outbox::new(10));
        outbox.push(Bytes::from_static(b"123456"));
        let producer = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move { outbox.wait_for_room(4).await })
        };
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        producer.await.unwrap();
    }

    #[test]
    fn only_the_first_frame_of_a_batch_asks_for_a_wake() {
        let outbox = Outbox::new(10);
        assert_eq!(
            outbox.queue(Outgoing::from(Bytes::from_static(b"1")), false),
            (Push::Queued, true)
        );
        assert_eq!(
            outbox.queue(Outgoing::from(Bytes::from_static(b"2")), false),
            (Push::Queued, false)
        );
        assert_eq!(
            outbox.queue(Outgoing::from(Bytes::from_static(b"123456789")), false),
            (Push::Overflow, false)
        );
        assert_eq!(
            outbox.queue(Outgoing::from(Bytes::from_static(b"3")), false),
            (Push::Closed, false)
        );
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        let writer = waiting_writer(&outbox).await;
        outbox.push(Bytes::from_static(b"x"));
        assert_eq!(writer.await.unwrap(), [Bytes::from_static(b"x")]);
    }

    /// A held push leaves a waiting writer asleep until the flush; each outbox is registered
    /// once however many frames it got, and its writer finds them in push order.
    #[tokio::test]
    async fn held_pushes_wake_once_at_flush() {
        let a = Arc::new(Outbox::new(100));
        let b = Arc::new(Outbox::new(100));
        let writer = waiting_writer(&a).await;
        let mut wakes = Wakes::default();
        assert_eq!(wakes.push(&a, Bytes::from_static(b"1")), Push::Queued);
        assert_eq!(wakes.push(&b, Bytes::from_static(b"x")), Push::Queued);
        assert_eq!(wakes.push(&a, Bytes::from_static(b"2")), Push::Queued);
        assert_eq!(wakes.len(), 2);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "woken before the flush");
        wakes.flush();
        assert!(wakes.is_empty());
        assert_eq!(
            writer.await.unwrap(),
            [Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        let mut batch = Vec::new();
        assert_eq!(b.next_batch(&mut batch).now_or_never(), Some(None));
        assert_eq!(batch, [Bytes::from_static(b"x")]);
        // Flushed: the next held push registers the outbox again.
        assert_eq!(wakes.push(&a, Bytes::from_static(b"3")), Push::Queued);
        assert_eq!(wakes.len(), 1);
    }

    /// Dropping the wakes wakes what they hold: no frame is left with a sleeping writer.
    #[tokio::test]
    async fn dropped_wakes_wake() {
        let a = Arc::new(Outbox::new(100));
        let writer = waiting_writer(&a).await;
        {
            let mut wakes = Wakes::default();
            wakes.push(&a, Bytes::from_static(b"1"));
            wakes.push(&a, Bytes::from_static(b"2"));
        }
        assert_eq!(
            writer.await.unwrap(),
            [Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
    }

    /// The byte bound holds for held pushes: the overflowing push closes the connection at
    /// once (reader and writer woken, queue dropped), later pushes are refused.
    #[tokio::test]
    async fn held_push_overflow_closes_at_once() {
        let a = Arc::new(Outbox::new(10));
        let mut wakes = Wakes::default();
        assert_eq!(wakes.push(&a, Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(
            wakes.push(&a, Bytes::from_static(b"123456")),
            Push::Overflow
        );
        assert_eq!(wakes.push(&a, Bytes::from_static(b"1")), Push::Closed);
        a.closing().now_or_never().expect("reader woken");
        let mut batch = Vec::new();
        assert_eq!(
            a.next_batch(&mut batch).now_or_never(),
            Some(Some(CloseReason::SlowConsumer))
        );
        assert!(batch.is_empty());
    }

    /// A plain push between held ones wakes the writer for everything queued so far, in order.
    #[tokio::test]
    async fn plain_push_keeps_order_with_held_ones() {
        let a = Arc::new(Outbox::new(100));
        let mut wakes = Wakes::default();
        wakes.push(&a, Bytes::from_static(b"1"));
        a.push(Bytes::from_static(b"2"));
        wakes.push(&a, Bytes::from_static(b"3"));
        let mut batch = Vec::new();
        assert_eq!(a.next_batch(&mut batch).now_or_never(), Some(None));
        assert_eq!(
            batch,
            [
                Bytes::from_static(b"1"),
                Bytes::from_static(b"2"),
                Bytes::from_static(b"3")
            ]
        );
        wakes.flush();
    }
}
