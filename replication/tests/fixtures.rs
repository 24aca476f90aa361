//! Golden pgoutput payloads captured from PostgreSQL 15 (`tests/fixtures/*.bin`, one message
//! per file, named `<scenario>_<index>_<tag>.bin`), decoded without a server.
//!
//! Regenerate with `cargo test -p walcast-replication --test fixtures -- --ignored capture`.
//! The bytes are what `pg_logical_slot_peek_binary_changes` returns for a pgoutput slot, which
//! is exactly the XLogData payload a walsender streams.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use walcast_replication::pgoutput::{decode_in_stream, LogicalMessage};
use walcast_replication::{Change, OldTuple, TransactionAssembler, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixtures(scenario: &str) -> Vec<(String, Bytes)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{scenario}_")) && n.ends_with(".bin"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures for {scenario}");
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, Bytes::from(std::fs::read(&p).unwrap()))
        })
        .collect()
}

/// Decodes a scenario, tracking v2 stream blocks as a client must.
fn decode_all(scenario: &str) -> Vec<LogicalMessage> {
    let mut in_stream = false;
    fixtures(scenario)
        .into_iter()
        .map(|(name, bytes)| {
            let tag = bytes[0];
            assert!(name.ends_with(&format!("_{}", tag_name(tag))), "{name}");
            let msg = decode_in_stream(bytes, in_stream).unwrap_or_else(|e| panic!("{name}: {e}"));
            match msg {
                LogicalMessage::StreamStart { .. } => in_stream = true,
                LogicalMessage::StreamStop => in_stream = false,
                _ => {}
            }
            msg
        })
        .collect()
}

/// File-name-safe tag: case matters for pgoutput (`C` commit vs `c` stream commit) but not on
/// every file system.
fn tag_name(tag: u8) -> String {
    if tag.is_ascii_lowercase() {
        format!("{}{}", tag as char, tag as char)
    } else {
        (tag as char).to_string()
    }
}

#[test]
fn v1_fixtures_decode_into_the_expected_transactions() {
    let mut assembler = TransactionAssembler::new();
    let mut txs = Vec::new();
    for msg in decode_all("v1") {
        if let Some(tx) = assembler.push(msg).unwrap() {
            txs.push(tx);
        }
    }
    let changes: Vec<&Change> = txs.iter().flat_map(|t| &t.changes).collect();
    let Change::Insert { relation, new } = changes[0] else {
        panic!()
    };
    assert_eq!(relation.name, "kinds");
    assert_eq!(
        new.by_name(relation, "name").and_then(Value::as_str),
        Some("first")
    );
    assert!(changes.iter().any(
        |c| matches!(c, Change::Update { new, .. } if new.0.contains(&Value::UnchangedToast))
    ));
    assert!(changes.iter().any(|c| matches!(
        c,
        Change::Update {
            old: Some(OldTuple::Key(_)),
            ..
        }
    )));
    assert!(changes.iter().any(|c| matches!(
        c,
        Change::Update {
            old: Some(OldTuple::Full(_)),
            ..
        }
    )));
    assert!(changes.iter().any(|c| matches!(c, Change::Delete { .. })));
    assert!(changes.iter().any(|c| matches!(c, Change::Truncate { .. })));
    assert!(changes
        .iter()
        .any(|c| matches!(c, Change::Message { prefix, .. } if prefix == "walcast")));
    for pair in txs.windows(2) {
        assert!(pair[0].end_lsn <= pair[1].commit_lsn);
    }
}

#[test]
fn v2_streamed_fixtures_decode() {
    let msgs = decode_all("v2");
    assert!(msgs.iter().any(|m| matches!(
        m,
        LogicalMessage::StreamStart {
            first_segment: true,
            ..
        }
    )));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, LogicalMessage::Insert { xid: Some(_), .. })));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, LogicalMessage::StreamCommit { .. })));
}

#[test]
fn truncated_fixtures_fail_cleanly() {
    for scenario in ["v1", "v2"] {
        for (_, bytes) in fixtures(scenario) {
            for cut in 0..bytes.len() {
                let _ = decode_in_stream(bytes.slice(..cut), false);
                let _ = decode_in_stream(bytes.slice(..cut), true);
            }
        }
    }
}

/// Captures the fixtures from a private PostgreSQL. Ignored: run on purpose, then commit.
#[tokio::test]
#[ignore]
async fn capture() {
    use walcast_replication::embedded::EmbeddedOptions;
    let db = support::Db::with(EmbeddedOptions {
        extra_conf: vec![("logical_decoding_work_mem".into(), "64kB".into())],
        ..EmbeddedOptions::default()
    })
    .await;
    db.exec(
        "CREATE TABLE kinds (id int PRIMARY KEY, name text, n bigint, ok bool, at timestamptz,
            doc jsonb, raw bytea);
         CREATE TABLE full_ident (id int, v text); ALTER TABLE full_ident REPLICA IDENTITY FULL;
         CREATE PUBLICATION fx FOR ALL TABLES;",
    )
    .await;
    // Slot creation must not share a transaction with writes.
    db.exec("SELECT pg_create_logical_replication_slot('fx1', 'pgoutput')")
        .await;
    db.exec("SELECT pg_create_logical_replication_slot('fx2', 'pgoutput')")
        .await;
    for sql in [
        "INSERT INTO kinds VALUES (1, 'first', 42, true, '2024-05-06 07:08:09+00', '{\"k\": [1, 2]}', '\\x00ff')",
        "INSERT INTO kinds VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO kinds SELECT 3, 'toast', 0, false, now(),
            jsonb_build_object('blob', string_agg(md5(g::text), '')), NULL FROM generate_series(1, 400) g",
        "UPDATE kinds SET n = 1 WHERE id = 3",
        "UPDATE kinds SET id = 4 WHERE id = 2",
        "BEGIN; INSERT INTO full_ident VALUES (1, 'a'); UPDATE full_ident SET v = 'b';
            DELETE FROM full_ident; COMMIT",
        "DELETE FROM kinds WHERE id = 1",
        "SELECT pg_logical_emit_message(true, 'walcast', 'in a transaction')",
        "TRUNCATE full_ident",
    ] {
        db.exec(sql).await;
    }
    let v1 = db
        .client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('fx1', NULL, NULL,
                'proto_version', '1', 'publication_names', 'fx', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    // fx2 skips the v1 scenario; it only sees one transaction big enough to be streamed.
    db.exec(
        "SELECT count(*) FROM pg_logical_slot_get_binary_changes('fx2', NULL, NULL,
        'proto_version', '2', 'publication_names', 'fx')",
    )
    .await;
    db.exec("INSERT INTO kinds SELECT g, md5(g::text) FROM generate_series(100, 2100) g")
        .await;
    let v2 = db
        .client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('fx2', NULL, NULL,
                'proto_version', '2', 'publication_names', 'fx', 'streaming', 'on')",
            &[],
        )
        .await
        .unwrap();
    let dir = fixture_dir();
    for old in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(old.unwrap().path()).unwrap();
    }
    let write = |scenario: &str, rows: &[tokio_postgres::Row], limit: usize| {
        // Keep the repository small: the streamed scenario keeps its first and last messages.
        let n = rows.len();
        for (i, row) in rows.iter().enumerate() {
            if n > limit && i >= limit / 2 && i < n - limit / 2 {
                continue;
            }
            let data: Vec<u8> = row.get(0);
            let name = format!("{scenario}_{i:05}_{}.bin", tag_name(data[0]));
            std::fs::write(dir.join(name), &data).unwrap();
        }
    };
    write("v1", &v1, usize::MAX);
    write("v2", &v2, 40);
}
