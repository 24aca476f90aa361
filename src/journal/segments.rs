//! [`SegmentLog`]: the window log as checksummed segment files in one directory.
//!
//! Layout: `<dir>/LOCK` (held with `flock` while a process owns the log) and numbered segment
//! files `<dir>/<seq:016x>.seg`. A segment starts with a header (magic, the position its
//! records continue from, CRC) followed by framed records ([`super::record`]).
//!
//! One writer thread owns the files. It takes every queued entry, writes them, then makes them
//! durable with one `fdatasync` for the whole batch (group commit: while it syncs, the next
//! batch queues) and publishes the new durable position. Retention removes whole segments from
//! the front. At open, every segment is read back; the first torn or corrupt record ends the
//! log: its file is truncated there and later segments are removed, with a warning.

use super::record::{self, Malformed};
use super::{Entry, JournalError, LogStats, Replay, WindowLog};
use crate::hub::WindowConfig;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot, watch};
use walcast_replication::Lsn;

const MAGIC: &[u8; 8] = b"WCWINLG1";
const HEADER: usize = 20;
/// Entries queued for the writer at most (backpressure on the replication reader beyond).
const QUEUE: usize = 4096;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn header(start: Lsn) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&start.0.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_header(bytes: &[u8]) -> Option<Lsn> {
    let h = bytes.get(..HEADER)?;
    if &h[..8] != MAGIC || crc32fast::hash(&h[..16]).to_le_bytes() != h[16..] {
        return None;
    }
    Some(Lsn(u64::from_le_bytes(h[8..16].try_into().ok()?)))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

/// Segment sequence numbers in `dir`, ascending.
fn list(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut seqs = Vec::new();
    for item in fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// One segment as the writer tracks it.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    first_commit: Option<Lsn>,
    newest_at: Option<SystemTime>,
}

impl Segment {
    fn note(&mut self, entry: &Entry) {
        if let Entry::Transaction { tx, at } = entry {
            if !tx.events.is_empty() {
                self.first_commit.get_or_insert(tx.commit_lsn);
                self.newest_at = Some(self.newest_at.map_or(*at, |t| t.max(*at)));
            }
        }
    }
}

/// The records of one segment file read back, up to the first bad one.
struct Scan {
    start: Option<Lsn>,
    entries: Vec<Entry>,
    good_bytes: usize,
    bad: Option<Malformed>,
}

fn scan(bytes: &[u8]) -> Scan {
    let Some(start) = parse_header(bytes) else {
        return Scan {
            start: None,
            entries: Vec::new(),
            good_bytes: 0,
            bad: Some(Malformed::Invalid),
        };
    };
    let mut at = HEADER;
    let mut entries = Vec::new();
    let mut bad = None;
    while at < bytes.len() {
        match record::decode(&bytes[at..]) {
            Ok((entry, len)) => {
                entries.push(entry);
                at += len;
            }
            Err(m) => {
                bad = Some(m);
                break;
            }
        }
    }
    Scan {
        start: Some(start),
        entries,
        good_bytes: at,
        bad,
    }
}

/// The window log in a directory. See the module documentation.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<Lsn>,
    stats: Arc<Mutex<LogStats>>,
    _lock: File,
}

#[derive(Debug)]
enum Command {
    Append(Entry),
    Expire(SystemTime),
    Close(oneshot::Sender<Result<Lsn, JournalError>>),
}

impl SegmentLog {
    /// Opens (creating) the log in `dir`, repairs a torn or corrupt tail, and reconciles it with
    /// `slot`, the position the replication slot will stream from: a slot ahead of everything
    /// the log covers means entries were lost (the directory was wiped or damaged), so the log
    /// restarts there and older positions are refused rather than replayed with a hole.
    pub async fn open(
        dir: PathBuf,
        config: WindowConfig,
        slot: Lsn,
    ) -> Result<SegmentLog, JournalError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(dir, config, slot))
            .await
            .map_err(|_| JournalError::Stopped)?
    }

    fn open_blocking(
        dir: PathBuf,
        config: WindowConfig,
        slot: Lsn,
    ) -> Result<SegmentLog, JournalError> {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::Locked(dir));
        }

        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut tail = Lsn::ZERO;
        let seqs = list(&dir)?;
        let mut damaged = false;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(&dir, seq);
            if damaged {
                tracing::warn!(path = %path.display(), "window log: removing a segment after a damaged one");
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            let scan = scan(&bytes);
            let Some(start) = scan.start else {
                tracing::warn!(path = %path.display(), "window log: segment header unreadable; removing it and what follows");
                fs::remove_file(&path).map_err(io(&path))?;
                damaged = true;
                continue;
            };
            if let Some(bad) = scan.bad {
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.good_bytes,
                    dropped_bytes = bytes.len() - scan.good_bytes,
                    reason = %bad,
                    "window log: torn or corrupt record; truncating to the last good record"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                file.set_len(scan.good_bytes as u64).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                damaged = i + 1 < seqs.len();
            }
            let mut segment = Segment {
                seq,
                bytes: scan.good_bytes as u64,
                first_commit: None,
                newest_at: None,
            };
            tail = tail.max(start);
            for entry in &scan.entries {
                segment.note(entry);
                tail = tail.max(entry.end());
            }
            segments.push_back(segment);
        }

        if !segments.is_empty() && slot > tail {
            tracing::warn!(
                dir = %dir.display(),
                log_tail = %tail,
                slot = %slot,
                "window log: the replication slot is ahead of the log (entries were lost); starting a new window at the slot"
            );
            for s in segments.drain(..) {
                let path = segment_path(&dir, s.seq);
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let next_seq = segments.back().map_or(1, |s| s.seq + 1);
        let file = match segments.back() {
            Some(last) => {
                let path = segment_path(&dir, last.seq);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                // Records written before a crash may sit in the page cache only: they become
                // durable before anything is confirmed from them.
                file.sync_data().map_err(io(&path))?;
                file
            }
            None => {
                tail = slot;
                let (segment, file) = create_segment(&dir, next_seq, slot)?;
                segments.push_back(segment);
                file
            }
        };
        sync_dir(&dir)?;

        let (durable_tx, durable) = watch::channel(tail);
        let stats = Arc::new(Mutex::new(LogStats {
            location: dir.display().to_string(),
            durable: tail,
            ..LogStats::default()
        }));
        let (commands, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            dir: dir.clone(),
            config,
            segment_bytes: (config.max_bytes as u64 / 8).clamp(64 << 10, 64 << 20),
            segments,
            file,
            tail,
            buf: Vec::with_capacity(1 << 16),
            durable: durable_tx,
            stats: Arc::clone(&stats),
        };
        writer.publish_stats();
        std::thread::Builder::new()
            .name("walcast-window-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io(&dir))?;
        Ok(SegmentLog {
            dir,
            commands,
            durable,
            stats,
            _lock: lock,
        })
    }

    fn replay_blocking(dir: &Path, after: Lsn) -> Result<Replay, JournalError> {
        // Retention may remove a segment while this reads: start over (bounded).
        'attempt: for _ in 0..5 {
            let mut replay = Replay::default();
            for (i, seq) in list(dir)?.into_iter().enumerate() {
                let path = segment_path(dir, seq);
                let bytes = match fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'attempt,
                    Err(e) => return Err(io(&path)(e)),
                };
                let scan = scan(&bytes);
                let Some(start) = scan.start else { break };
                if i == 0 {
                    replay.start = start;
                }
                replay.tail = replay.tail.max(start);
                for entry in scan.entries {
                    replay.tail = replay.tail.max(entry.end());
                    if let Entry::Transaction { tx, at } = entry {
                        if tx.end_lsn > after && !tx.events.is_empty() {
                            replay.transactions.push((tx, at));
                        }
                    }
                }
                // A record being written right now ends what can be read.
                if scan.bad.is_some() {
                    break;
                }
            }
            replay.start = replay.start.max(after.min(replay.tail));
            return Ok(replay);
        }
        Err(JournalError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other("segments kept changing while being read"),
        })
    }
}

fn create_segment(dir: &Path, seq: u64, start: Lsn) -> Result<(Segment, File), JournalError> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(&header(start)).map_err(io(&path))?;
    file.sync_data().map_err(io(&path))?;
    Ok((
        Segment {
            seq,
            bytes: HEADER as u64,
            first_commit: None,
            newest_at: None,
        },
        file,
    ))
}

impl WindowLog for SegmentLog {
    fn append(&self, entry: Entry) -> BoxFuture<'_, Result<(), JournalError>> {
        async move {
            self.commands
                .send(Command::Append(entry))
                .await
                .map_err(|_| JournalError::Stopped)
        }
        .boxed()
    }

    fn durable(&self) -> watch::Receiver<Lsn> {
        self.durable.clone()
    }

    fn replay(&self, after: Lsn) -> BoxFuture<'_, Result<Replay, JournalError>> {
        let dir = self.dir.clone();
        async move {
            tokio::task::spawn_blocking(move || Self::replay_blocking(&dir, after))
                .await
                .map_err(|_| JournalError::Stopped)?
        }
        .boxed()
    }

    fn expire(&self, now: SystemTime) {
        // Skipped when the queue is full: the next tick retries.
        let _ = self.commands.try_send(Command::Expire(now));
    }

    fn stats(&self) -> LogStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn close(&self) -> BoxFuture<'_, Result<Lsn, JournalError>> {
        async move {
            let (reply, done) = oneshot::channel();
            self.commands
                .send(Command::Close(reply))
                .await
                .map_err(|_| JournalError::Stopped)?;
            done.await.map_err(|_| JournalError::Stopped)?
        }
        .boxed()
    }
}

struct Writer {
    dir: PathBuf,
    config: WindowConfig,
    segment_bytes: u64,
    /// Oldest first; the last one is open for appending as `file`.
    segments: VecDeque<Segment>,
    file: File,
    /// Highest position covered by what is written (durable or not).
    tail: Lsn,
    buf: Vec<u8>,
    durable: watch::Sender<Lsn>,
    stats: Arc<Mutex<LogStats>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                let _ = self.sync();
                return;
            };
            batch.push(first);
            while batch.len() < QUEUE {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut covered = Lsn::ZERO;
            let mut expire = None;
            let mut close = None;
            let mut result = Ok(());
            for command in batch.drain(..) {
                match command {
                    Command::Append(Entry::Covered(lsn)) => covered = covered.max(lsn),
                    Command::Append(entry) => {
                        if result.is_ok() {
                            result = self.write(&entry);
                        }
                    }
                    Command::Expire(now) => expire = Some(now),
                    Command::Close(reply) => close = Some(reply),
                }
            }
            if result.is_ok() && covered > self.tail {
                result = self.write(&Entry::Covered(covered));
            }
            if let (Ok(()), Some(now)) = (&result, expire) {
                result = self.expire(now);
            }
            self.publish_stats();
            if result.is_ok() {
                result = self.sync();
            }
            match (result, close) {
                (Ok(()), Some(reply)) => {
                    let _ = reply.send(Ok(self.tail));
                    return;
                }
                (Ok(()), None) => {}
                (Err(error), reply) => {
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "window log write failed; the replication slot is no longer confirmed"
                    );
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(error));
                    }
                    return;
                }
            }
        }
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.back().map_or(0, |s| s.seq))
    }

    fn write(&mut self, entry: &Entry) -> Result<(), JournalError> {
        if entry.end() <= self.tail {
            return Ok(());
        }
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.segment_bytes);
        if full {
            self.sync()?;
            let seq = self.segments.back().map_or(1, |s| s.seq + 1);
            let (segment, file) = create_segment(&self.dir, seq, self.tail)?;
            sync_dir(&self.dir)?;
            self.segments.push_back(segment);
            self.file = file;
        }
        self.buf.clear();
        record::encode(entry, &mut self.buf);
        let path = self.current_path();
        self.file.write_all(&self.buf).map_err(io(&path))?;
        if let Some(segment) = self.segments.back_mut() {
            segment.bytes += self.buf.len() as u64;
            segment.note(entry);
        }
        self.tail = entry.end();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        if *self.durable.borrow() >= self.tail {
            return Ok(());
        }
        let path = self.current_path();
        self.file.sync_data().map_err(io(&path))?;
        if let Ok(mut stats) = self.stats.lock() {
            stats.durable = self.tail;
        }
        self.durable.send_replace(self.tail);
        Ok(())
    }

    /// Removes whole segments from the front while the next one still starts inside the
    /// window: the front is past the age bound, or the log is past its byte bound.
    fn expire(&mut self, now: SystemTime) -> Result<(), JournalError> {
        let mut removed = false;
        while self.segments.len() > 1 {
            let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
            let front = &self.segments[0];
            let old = front
                .newest_at
                .is_none_or(|at| self.config.too_old(at, now));
            if !(old || total > self.config.max_bytes as u64) {
                break;
            }
            let path = segment_path(&self.dir, front.seq);
            fs::remove_file(&path).map_err(io(&path))?;
            self.segments.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn publish_stats(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            stats.bytes = self.segments.iter().map(|s| s.bytes).sum();
            stats.segments = self.segments.len() as u64;
            stats.oldest = self.segments.iter().find_map(|s| s.first_commit);
            stats.durable = *self.durable.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tx(commit: u64, events: usize) -> Entry {
        Entry::Transaction {
            tx: crate::event::deletes(commit, events),
            at: SystemTime::now(),
        }
    }

    async fn wait_durable(log: &SegmentLog, lsn: Lsn) {
        let mut durable = log.durable();
        durable.wait_for(|d| *d >= lsn).await.unwrap();
    }

    fn ends(replay: &Replay) -> Vec<u64> {
        replay
            .transactions
            .iter()
            .map(|(t, _)| t.end_lsn.0)
            .collect()
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_covered_positions_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let log = SegmentLog::open(path.clone(), WindowConfig::default(), Lsn(50))
            .await
            .unwrap();
        assert!(matches!(
            SegmentLog::open(path.clone(), WindowConfig::default(), Lsn(50)).await,
            Err(JournalError::Locked(_))
        ));
        log.append(tx(100, 2)).await.unwrap();
        log.append(tx(200, 0)).await.unwrap();
        log.append(Entry::Covered(Lsn(300))).await.unwrap();
        wait_durable(&log, Lsn(300)).await;
        assert_eq!(log.close().await.unwrap(), Lsn(300));
        drop(log);

        let log = SegmentLog::open(path, WindowConfig::default(), Lsn(300))
            .await
            .unwrap();
        let replay = log.replay(Lsn::ZERO).await.unwrap();
        assert_eq!((replay.start, replay.tail), (Lsn(50), Lsn(300)));
        assert_eq!(
            ends(&replay),
            vec![108],
            "empty transactions are not replayed"
        );
        assert_eq!(log.stats().oldest, Some(Lsn(100)));
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_a_slot_ahead_restarts_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let log = SegmentLog::open(path.clone(), WindowConfig::default(), Lsn(50))
            .await
            .unwrap();
        log.append(tx(100, 1)).await.unwrap();
        log.append(tx(200, 1)).await.unwrap();
        wait_durable(&log, Lsn(208)).await;
        log.close().await.unwrap();
        drop(log);
        let seg = segment_path(&path, 1);
        let len = fs::metadata(&seg).unwrap().len();
        // Tear the last record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let log = SegmentLog::open(path.clone(), WindowConfig::default(), Lsn(108))
            .await
            .unwrap();
        let replay = log.replay(Lsn::ZERO).await.unwrap();
        assert_eq!(ends(&replay), vec![108]);
        assert_eq!(replay.tail, Lsn(108));
        log.append(tx(200, 1)).await.unwrap();
        wait_durable(&log, Lsn(208)).await;
        log.close().await.unwrap();
        drop(log);

        // The slot confirmed past everything the log has: something durable was lost.
        let log = SegmentLog::open(path, WindowConfig::default(), Lsn(500))
            .await
            .unwrap();
        let replay = log.replay(Lsn::ZERO).await.unwrap();
        assert_eq!((replay.start, replay.tail), (Lsn(500), Lsn(500)));
        assert!(replay.transactions.is_empty());
    }

    #[tokio::test]
    async fn retention_removes_whole_segments_by_bytes_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let config = WindowConfig {
            max_age: Duration::from_secs(60),
            max_bytes: 1 << 19,
        };
        let log = SegmentLog::open(dir.path().join("w"), config, Lsn(1))
            .await
            .unwrap();
        for i in 0..2000u64 {
            log.append(tx(100 + i * 10, 10)).await.unwrap();
        }
        wait_durable(&log, Lsn(100 + 1999 * 10 + 8)).await;
        log.expire(SystemTime::now());
        log.append(Entry::Covered(Lsn(1_000_000))).await.unwrap();
        wait_durable(&log, Lsn(1_000_000)).await;
        let stats = log.stats();
        assert!(stats.segments > 1);
        assert!(stats.bytes <= 1 << 19, "{stats:?}");
        let replay = log.replay(Lsn::ZERO).await.unwrap();
        let first = replay.transactions[0].0.commit_lsn;
        assert!(first > Lsn(100) && replay.start < first && replay.start > Lsn(100));
        assert_eq!(stats.oldest, Some(first));

        log.expire(SystemTime::now() + Duration::from_secs(120));
        log.append(Entry::Covered(Lsn(1_000_001))).await.unwrap();
        wait_durable(&log, Lsn(1_000_001)).await;
        assert_eq!(log.stats().segments, 1, "only the open segment is kept");
    }
}
