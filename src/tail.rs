//! `walcast tail`: document events as JSON lines, read straight from PostgreSQL.
//!
//! The tail has its own temporary logical slot (created at the current WAL position, dropped by
//! PostgreSQL when the connection ends), so it needs no gateway and leaves nothing behind.
//!
//! One line per document event, keys in this order:
//! `{"app","repo","type","id","lsn","commit_time","document"}` — `lsn` is the commit LSN
//! (`X/Y`), `commit_time` RFC 3339 UTC with microseconds, `document` the StaticBackend document
//! object (`null` for deletes).
//!
//! Invariants: a transaction's lines are written and flushed together, and only then is its end
//! LSN confirmed. A closed output (EPIPE, or the reader of a pipe gone) ends the tail cleanly.

use crate::event::{Assembler, CommittedEvents, DocumentEvent};
use std::future::Future;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use walcast_replication::{
    PublicationScope, ReplicationConfig, ReplicationError, ReplicationStream,
};

/// Which events to print. An empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailFilter {
    /// App schemas.
    pub apps: Vec<String>,
    /// Repo (table) names.
    pub repos: Vec<String>,
}

impl TailFilter {
    pub fn matches(&self, event: &DocumentEvent) -> bool {
        let listed =
            |names: &[String], name: &str| names.is_empty() || names.iter().any(|n| n == name);
        listed(&self.apps, &event.app) && listed(&self.repos, &event.repo)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("replication stream failed")]
    Replication(#[source] ReplicationError),
    #[error("writing the output failed")]
    Output(#[source] io::Error),
    #[error("formatting an event failed")]
    Format(#[source] serde_json::Error),
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The `stop` future completed (a signal).
    Stopped,
    /// The output was closed (`walcast tail | head`).
    OutputClosed,
    /// PostgreSQL ended the stream.
    StreamEnded,
}

/// `walcast_tail_<pid>_<random>`: unique per process and run, a valid slot name (lower case,
/// digits, underscore, at most 63 bytes).
pub fn temporary_slot_name() -> String {
    format!(
        "walcast_tail_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A temporary slot on the `walcast` publication (created `FOR ALL TABLES` when missing).
pub fn replication_config(conninfo: &str, slot: String) -> ReplicationConfig {
    ReplicationConfig {
        conninfo: conninfo.to_owned(),
        slot,
        publication: "walcast".to_owned(),
        create_publication: PublicationScope::AllTables,
        temporary_slot: true,
        application_name: "walcast tail".to_owned(),
        ..ReplicationConfig::default()
    }
}

/// Streams until `stop` completes, `closed` completes (the output's reader went away), the
/// output refuses a write with `BrokenPipe`, or the stream ends; then stops the stream.
pub async fn run(
    mut stream: ReplicationStream,
    out: &mut StdoutWriter,
    filter: &TailFilter,
    stop: impl Future<Output = ()>,
    closed: impl Future<Output = ()>,
) -> Result<TailEnd, TailError> {
    let confirmer = stream.confirmer();
    let mut assembler = Assembler::new();
    tokio::pin!(stop);
    tokio::pin!(closed);
    let result = loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => break Ok(TailEnd::Stopped),
            _ = &mut closed => break Ok(TailEnd::OutputClosed),
            next = stream.recv() => next,
        };
        let tx = match next {
            Some(Ok(tx)) => tx,
            Some(Err(e)) => break Err(TailError::Replication(e)),
            None => break Ok(TailEnd::StreamEnded),
        };
        let mut buf = Vec::new();
        if let Err(e) = format_transaction(&assembler.assemble(&tx), filter, &mut buf) {
            break Err(TailError::Format(e));
        }
        if !buf.is_empty() {
            let written = tokio::select! {
                biased;
                _ = &mut stop => break Ok(TailEnd::Stopped),
                written = out.write(buf) => written,
            };
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Ok(TailEnd::OutputClosed),
                Err(e) => break Err(TailError::Output(e)),
            }
        }
        confirmer.confirm(tx.end_lsn);
    };
    match stream.stop().await {
        // A failed stop after a clean end is worth reporting; after a failure, the first error
        // is the one that matters.
        Err(e) if result.is_ok() => Err(TailError::Replication(e)),
        _ => result,
    }
}

/// Writes each transaction's lines to stdout, and flushes them, from a thread of its own.
///
/// Not tokio's stdout: that writes on the runtime's blocking pool, which the runtime waits for
/// when it shuts down, so a reader that stopped reading (a full pipe) would keep the process
/// from exiting on SIGINT. A plain thread does not hold the process back.
#[derive(Debug)]
pub struct StdoutWriter {
    batches: std::sync::mpsc::SyncSender<Batch>,
}

type Batch = (Vec<u8>, oneshot::Sender<io::Result<()>>);

impl StdoutWriter {
    pub fn spawn() -> io::Result<StdoutWriter> {
        let (batches, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        std::thread::Builder::new()
            .name("tail-stdout".into())
            .spawn(move || {
                use std::io::Write;
                let stdout = io::stdout();
                for (buf, done) in rx {
                    let mut out = stdout.lock();
                    let _ = done.send(out.write_all(&buf).and_then(|()| out.flush()));
                }
            })?;
        Ok(StdoutWriter { batches })
    }

    /// Writes and flushes `buf`; returns once done. Cancel-safe in the sense that matters
    /// here: abandoning it leaves the write to finish (or block) on the thread alone.
    pub async fn write(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let gone = || io::Error::other("the stdout writer thread ended");
        let (done, result) = oneshot::channel();
        // One batch in flight at a time, so the channel always has room.
        self.batches.try_send((buf, done)).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// Appends one line per matching event of the transaction; returns how many.
fn format_transaction(
    committed: &CommittedEvents,
    filter: &TailFilter,
    buf: &mut Vec<u8>,
) -> Result<usize, serde_json::Error> {
    let lsn = committed.commit_lsn.to_string();
    let time = rfc3339(committed.commit_time);
    let mut n = 0;
    for event in committed.events.iter().filter(|e| filter.matches(e)) {
        format_event(event, &lsn, &time, buf)?;
        n += 1;
    }
    Ok(n)
}

/// One JSON line. `document` is already JSON text (built from the row's `jsonb`), so it is
/// embedded as is rather than parsed and re-serialised.
fn format_event(
    event: &DocumentEvent,
    lsn: &str,
    commit_time: &str,
    buf: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let kind = event.change.kind().as_str();
    let document = event.change.document();
    let fields: [(&str, &str); 6] = [
        ("app", &event.app),
        ("repo", &event.repo),
        ("type", kind),
        ("id", &event.id),
        ("lsn", lsn),
        ("commit_time", commit_time),
    ];
    let mut sep = b'{';
    for (key, value) in fields {
        buf.push(sep);
        sep = b',';
        buf.push(b'"');
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *buf, value)?;
    }
    buf.extend_from_slice(b",\"document\":");
    buf.extend_from_slice(document.unwrap_or("null").as_bytes());
    buf.extend_from_slice(b"}\n");
    Ok(())
}

/// RFC 3339 in UTC with microseconds (PostgreSQL's commit time precision), e.g.
/// `2024-05-01T09:30:00.123456Z`. Times before 1970 print as the epoch: commits cannot be.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Completes when the reader of stdout is gone (a pipe whose read end closed, a hung-up
/// terminal), so that `walcast tail | head` ends even when no further change arrives to write.
/// Never completes when stdout cannot be watched (a regular file, `/dev/null`): there the write
/// itself is the only signal, and files do not close under a writer.
pub async fn stdout_closed() {
    use std::os::fd::AsFd;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    // A duplicate of fd 1 that this function owns: registering it leaves stdout itself (its
    // blocking mode included) untouched. epoll reports EPOLLERR on a pipe's write end once the
    // read end is closed, whatever interest was registered.
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return std::future::pending().await;
    };
    // SAFETY: `fd` is an open descriptor owned by the `AsyncFd` for its whole lifetime, and
    // `OwnedFd::as_raw_fd` always returns that same descriptor.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::ERROR) };
    match registered {
        Ok(fd) => match fd.ready(Interest::ERROR).await {
            Ok(_) => {}
            Err(_) => std::future::pending().await,
        },
        // Not pollable (a regular file, /dev/null).
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DocumentChange;
    use crate::permission::RowAccess;
    use serde_json::{json, Value};
    use std::sync::Arc;
    use std::time::Duration;
    use walcast_replication::Lsn;

    fn event(app: &str, repo: &str, id: &str, change: DocumentChange) -> DocumentEvent {
        DocumentEvent {
            app: Arc::from(app),
            repo: Arc::from(repo),
            id: id.to_owned(),
            change,
        }
    }

    fn created(doc: &str) -> DocumentChange {
        DocumentChange::Created {
            row: RowAccess {
                account_id: None,
                owner_id: None,
            },
            document: doc.to_owned(),
        }
    }

    fn committed(events: Vec<DocumentEvent>) -> CommittedEvents {
        CommittedEvents {
            xid: 0,
            commit_lsn: Lsn(0x1_0000_2A00),
            end_lsn: Lsn(0x1_0000_2A30),
            commit_time: UNIX_EPOCH + Duration::from_micros(1_714_555_800_123_456),
            events,
        }
    }

    fn lines(buf: &[u8]) -> Vec<Value> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_carry_every_field_in_order() {
        let doc = r#"{"accountId":"a","id":"1","title":"say \"hi\""}"#;
        let tx = committed(vec![
            event("acme", "tasks_760_", "1", created(doc)),
            event(
                "acme",
                "tasks_760_",
                "1",
                DocumentChange::Updated {
                    row: RowAccess {
                        account_id: None,
                        owner_id: None,
                    },
                    previous: None,
                    previous_data: None,
                    document: doc.to_owned(),
                },
            ),
            event(
                "acme",
                "notes",
                "2",
                DocumentChange::Deleted {
                    previous: None,
                    previous_data: None,
                },
            ),
        ]);
        let mut buf = Vec::new();
        assert_eq!(
            format_transaction(&tx, &TailFilter::default(), &mut buf).unwrap(),
            3
        );
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.ends_with('\n'));
        assert!(text.starts_with(
            r#"{"app":"acme","repo":"tasks_760_","type":"db_created","id":"1","lsn":"1/2A00","commit_time":"2024-05-01T09:30:00.123456Z","document":{"#
        ), "{text}");
        let parsed = lines(&buf);
        assert_eq!(
            parsed[0],
            json!({"app": "acme", "repo": "tasks_760_", "type": "db_created", "id": "1",
                   "lsn": "1/2A00", "commit_time": "2024-05-01T09:30:00.123456Z",
                   "document": {"accountId": "a", "id": "1", "title": "say \"hi\""}})
        );
        assert_eq!(parsed[1]["type"], "db_updated");
        assert_eq!(parsed[1]["document"]["title"], "say \"hi\"");
        assert_eq!(
            parsed[2],
            json!({"app": "acme", "repo": "notes", "type": "db_deleted", "id": "2",
                   "lsn": "1/2A00", "commit_time": "2024-05-01T09:30:00.123456Z",
                   "document": null})
        );
    }

    #[test]
    fn strings_are_escaped() {
        let tx = committed(vec![event("a\"pp", "r\\epo", "line\nbreak", created("{}"))]);
        let mut buf = Vec::new();
        format_transaction(&tx, &TailFilter::default(), &mut buf).unwrap();
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let parsed = lines(&buf);
        assert_eq!(parsed[0]["app"], "a\"pp");
        assert_eq!(parsed[0]["repo"], "r\\epo");
        assert_eq!(parsed[0]["id"], "line\nbreak");
    }

    #[test]
    fn filters_by_app_and_repo() {
        let tx = committed(vec![
            event("acme", "tasks", "1", created("{}")),
            event("acme", "notes", "2", created("{}")),
            event("other", "tasks", "3", created("{}")),
        ]);
        let ids = |filter: TailFilter| {
            let mut buf = Vec::new();
            format_transaction(&tx, &filter, &mut buf).unwrap();
            lines(&buf)
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(TailFilter::default()), ["1", "2", "3"]);
        let apps = TailFilter {
            apps: names(&["acme"]),
            repos: vec![],
        };
        assert_eq!(ids(apps), ["1", "2"]);
        let repos = TailFilter {
            apps: vec![],
            repos: names(&["tasks"]),
        };
        assert_eq!(ids(repos), ["1", "3"]);
        let both = TailFilter {
            apps: names(&["other"]),
            repos: names(&["tasks", "notes"]),
        };
        assert_eq!(ids(both), ["3"]);
        let none = TailFilter {
            apps: names(&["nope"]),
            repos: vec![],
        };
        assert!(ids(none).is_empty());
    }

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64, micros: u32| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn slot_names_are_valid_and_distinct() {
        let a = temporary_slot_name();
        let b = temporary_slot_name();
        assert_ne!(a, b);
        assert!(a.len() <= 63);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
        let config = replication_config("postgres://x@h/db", a.clone());
        assert!(config.temporary_slot);
        assert_eq!(config.slot, a);
        assert_eq!(config.publication, "walcast");
        assert_eq!(config.create_publication, PublicationScope::AllTables);
    }
}
