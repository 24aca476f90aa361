//! Replication against a real PostgreSQL started privately per test (feature `embedded`).

#![cfg(feature = "embedded")]

mod support;

use std::time::Duration;

use support::{assert_quiet, next, Db, RECV_TIMEOUT};
use walcast_replication::embedded::EmbeddedOptions;
use walcast_replication::{
    Change, Lsn, OldTuple, PublicationScope, ReplicaIdentity, ReplicationConfig, ReplicationError,
    ReplicationStream, Value,
};

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not text: {v:?}"))
}

#[tokio::test]
async fn insert_update_delete_truncate_with_values_and_types() {
    let db = Db::start().await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, big bigint, ok boolean,
            price numeric(10,2), at timestamptz, doc jsonb, raw bytea, note varchar(20))",
    )
    .await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec(
        "INSERT INTO items VALUES (1, 'one', 9000000000, true, 12.50, '2024-01-02 03:04:05+00',
            '{\"a\": 1}', '\\xdead', NULL)",
    )
    .await;
    db.exec("UPDATE items SET name = 'uno' WHERE id = 1").await;
    db.exec("UPDATE items SET id = 2 WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 2").await;
    db.exec("TRUNCATE items").await;

    let tx = next(&mut stream).await;
    assert!(tx.commit_lsn == tx.final_lsn && tx.end_lsn > tx.commit_lsn);
    let [Change::Insert { relation, new }] = &tx.changes[..] else {
        panic!("{:?}", tx.changes)
    };
    assert_eq!(
        (relation.schema.as_str(), relation.name.as_str()),
        ("public", "items")
    );
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    let oids: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
    assert_eq!(oids, [23, 25, 20, 16, 1700, 1184, 3802, 17, 1043]);
    assert!(relation.columns[0].is_key && !relation.columns[1].is_key);
    assert_eq!(
        relation.columns[8].type_modifier, 24,
        "varchar(20) typmod is 20 + 4"
    );
    let values: Vec<&Value> = new.0.iter().collect();
    assert_eq!(text(values[0]), "1");
    assert_eq!(text(values[1]), "one");
    assert_eq!(text(values[2]), "9000000000");
    assert_eq!(text(values[3]), "t");
    assert_eq!(text(values[4]), "12.50");
    assert_eq!(text(values[5]), "2024-01-02 03:04:05+00");
    assert_eq!(text(values[6]), "{\"a\": 1}");
    assert_eq!(text(values[7]), "\\xdead");
    assert_eq!(values[8], &Value::Null);
    assert_eq!(
        new.by_name(relation, "name").and_then(Value::as_str),
        Some("one")
    );

    let tx = next(&mut stream).await;
    let [Change::Update { old, new, .. }] = &tx.changes[..] else {
        panic!()
    };
    assert!(
        old.is_none(),
        "key unchanged: no old tuple with default identity"
    );
    assert_eq!(text(&new.0[1]), "uno");

    let tx = next(&mut stream).await;
    let [Change::Update {
        old: Some(OldTuple::Key(key)),
        new,
        ..
    }] = &tx.changes[..]
    else {
        panic!("{:?}", tx.changes)
    };
    assert_eq!(text(&key.0[0]), "1");
    assert_eq!(key.0[1], Value::Null, "key tuples carry only key columns");
    assert_eq!(text(&new.0[0]), "2");

    let tx = next(&mut stream).await;
    let [Change::Delete {
        old: OldTuple::Key(key),
        ..
    }] = &tx.changes[..]
    else {
        panic!()
    };
    assert_eq!(text(&key.0[0]), "2");

    let tx = next(&mut stream).await;
    let [Change::Truncate {
        relations,
        cascade,
        restart_identity,
    }] = &tx.changes[..]
    else {
        panic!("{:?}", tx.changes)
    };
    assert_eq!(relations.len(), 1);
    assert_eq!(relations[0].name, "items");
    assert!(!cascade && !restart_identity);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn replica_identity_full_sends_whole_old_row() {
    let db = Db::start().await;
    db.exec("CREATE TABLE f (id int, v text); ALTER TABLE f REPLICA IDENTITY FULL")
        .await;
    db.exec("INSERT INTO f VALUES (1, 'a')").await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec("UPDATE f SET v = 'b'").await;
    let tx = next(&mut stream).await;
    let [Change::Update {
        relation,
        old: Some(OldTuple::Full(old)),
        new,
    }] = &tx.changes[..]
    else {
        panic!("{:?}", tx.changes)
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    assert_eq!((text(&old.0[1]), text(&new.0[1])), ("a", "b"));
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn unchanged_toasted_jsonb_is_reported_as_unchanged_toast() {
    let db = Db::start().await;
    db.exec("CREATE TABLE docs (id int PRIMARY KEY, counter int, doc jsonb)")
        .await;
    // ~100 KB of pseudo-random hex: compression cannot bring it under the TOAST threshold,
    // so it is stored out of line.
    db.exec(
        "INSERT INTO docs SELECT 1, 0, jsonb_build_object('blob', string_agg(md5(random()::text), ''))
         FROM generate_series(1, 3200)",
    )
    .await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec("UPDATE docs SET counter = counter + 1 WHERE id = 1")
        .await;
    let tx = next(&mut stream).await;
    let [Change::Update { relation, old, new }] = &tx.changes[..] else {
        panic!()
    };
    assert!(old.is_none());
    assert_eq!(text(&new.0[1]), "1");
    assert_eq!(
        new.0[relation.column_index("doc").unwrap()],
        Value::UnchangedToast
    );
    // Changing the document itself sends it in full.
    db.exec("UPDATE docs SET doc = doc || '{\"x\": 1}' WHERE id = 1")
        .await;
    let tx = next(&mut stream).await;
    let [Change::Update { new, .. }] = &tx.changes[..] else {
        panic!()
    };
    assert!(text(&new.0[2]).len() > 100_000);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn multi_statement_transactions_and_rollbacks() {
    let db = Db::start().await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec(
        "BEGIN; INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b');
         UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2; COMMIT",
    )
    .await;
    db.exec("BEGIN; INSERT INTO t VALUES (10, 'never'); ROLLBACK")
        .await;
    db.exec(
        "BEGIN; INSERT INTO t VALUES (20, 'x'); SAVEPOINT s; INSERT INTO t VALUES (21, 'gone');
         ROLLBACK TO s; INSERT INTO t VALUES (22, 'y'); COMMIT",
    )
    .await;
    let first = next(&mut stream).await;
    let kinds: Vec<&str> = first
        .changes
        .iter()
        .map(|c| match c {
            Change::Insert { .. } => "I",
            Change::Update { .. } => "U",
            Change::Delete { .. } => "D",
            _ => "?",
        })
        .collect();
    assert_eq!(kinds, ["I", "I", "U", "D"]);
    let second = next(&mut stream).await;
    assert!(second.xid != first.xid && second.commit_lsn > first.commit_lsn);
    let ids: Vec<&str> = second
        .changes
        .iter()
        .map(|c| match c {
            Change::Insert { new, .. } => text(&new.0[0]),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["20", "22"], "rolled back work never appears");
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn one_transaction_of_100k_rows() {
    let db = Db::start().await;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 100000) g")
        .await;
    let tx = next(&mut stream).await;
    assert_eq!(tx.changes.len(), 100_000);
    for (i, change) in tx.changes.iter().enumerate() {
        let Change::Insert { new, .. } = change else {
            panic!()
        };
        assert_eq!(text(&new.0[0]).parse::<usize>().unwrap(), i + 1);
    }
    stream.confirmer().confirm(tx.end_lsn);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn table_created_and_altered_while_streaming() {
    let db = Db::start().await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    db.exec("CREATE TABLE late (id int PRIMARY KEY)").await;
    db.exec("INSERT INTO late VALUES (1)").await;
    db.exec("ALTER TABLE late ADD COLUMN label text DEFAULT 'none'")
        .await;
    db.exec("INSERT INTO late VALUES (2, 'two')").await;
    db.exec("ALTER TABLE late DROP COLUMN label; INSERT INTO late VALUES (3)")
        .await;

    let tx = next(&mut stream).await;
    let [Change::Insert { relation, new }] = &tx.changes[..] else {
        panic!()
    };
    assert_eq!(relation.columns.len(), 1);
    assert_eq!(new.0.len(), 1);
    let tx = next(&mut stream).await;
    let [Change::Insert { relation, new }] = &tx.changes[..] else {
        panic!()
    };
    assert_eq!(relation.columns.len(), 2);
    assert_eq!(relation.columns[1].name, "label");
    assert_eq!(text(&new.0[1]), "two");
    let tx = next(&mut stream).await;
    let [Change::Insert { relation, .. }] = &tx.changes[..] else {
        panic!()
    };
    assert_eq!(relation.columns.len(), 1);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn restart_from_confirmed_position_loses_and_repeats_nothing() {
    let db = Db::start().await;
    db.exec("CREATE TABLE seq (n int)").await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    for n in 1..=5 {
        db.exec(&format!("INSERT INTO seq VALUES ({n})")).await;
    }
    let mut confirmed = Lsn::ZERO;
    for n in 1..=5 {
        let tx = next(&mut stream).await;
        let [Change::Insert { new, .. }] = &tx.changes[..] else {
            panic!()
        };
        assert_eq!(text(&new.0[0]), n.to_string());
        if n <= 3 {
            stream.confirmer().confirm(tx.end_lsn);
            confirmed = tx.end_lsn;
        }
    }
    assert_eq!(stream.progress().confirmed(), confirmed);
    stream.stop().await.unwrap();
    assert_eq!(db.slot_confirmed("walcast").await, confirmed);

    for n in 6..=7 {
        db.exec(&format!("INSERT INTO seq VALUES ({n})")).await;
    }
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    assert_eq!(stream.start_lsn(), confirmed);
    for n in 4..=7 {
        let tx = next(&mut stream).await;
        let [Change::Insert { new, .. }] = &tx.changes[..] else {
            panic!()
        };
        assert_eq!(
            text(&new.0[0]),
            n.to_string(),
            "unconfirmed 4, 5 replayed once, then 6, 7"
        );
        stream.confirmer().confirm(tx.end_lsn);
    }
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn idle_stream_outlives_wal_sender_timeout_and_slot_advances() {
    let db = Db::with(EmbeddedOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "2s".into())],
        ..EmbeddedOptions::default()
    })
    .await;
    db.exec("CREATE TABLE watched (id int); CREATE TABLE other (id int)")
        .await;
    let config = ReplicationConfig {
        create_publication: PublicationScope::Tables(vec!["public.watched".into()]),
        ..db.config()
    };
    let mut stream = ReplicationStream::start(config).await.unwrap();
    db.exec("INSERT INTO watched VALUES (1)").await;
    let tx = next(&mut stream).await;
    stream.confirmer().confirm(tx.end_lsn);

    // WAL the stream does not deliver; the slot must still move past it.
    db.exec("INSERT INTO other SELECT generate_series(1, 1000)")
        .await;
    let target = db.current_lsn().await;
    // Three times wal_sender_timeout with the default 10 s status interval: only replies to
    // keepalives keep the connection alive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut advanced = db.slot_confirmed("walcast").await;
    for _ in 0..50 {
        if advanced >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        advanced = db.slot_confirmed("walcast").await;
    }
    assert!(
        advanced >= target,
        "slot at {advanced}, expected >= {target}"
    );
    assert!(stream.progress().server_wal_end() >= target);

    db.exec("INSERT INTO watched VALUES (2)").await;
    let tx = next(&mut stream).await;
    assert_eq!(tx.changes.len(), 1, "stream still up after idling");
    stream.stop().await.unwrap();
}

async fn password_login(method: &str) {
    let db = Db::with(EmbeddedOptions {
        extra_conf: vec![("password_encryption".into(), method.into())],
        extra_hba: vec![format!("host all walcast_repl 127.0.0.1/32 {method}")],
        ..EmbeddedOptions::default()
    })
    .await;
    db.exec(
        "CREATE ROLE walcast_repl LOGIN REPLICATION PASSWORD 'p@ss w0rd';
         CREATE TABLE t (id int); CREATE PUBLICATION walcast FOR TABLE t",
    )
    .await;
    let stored: String = db
        .client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'walcast_repl'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let prefix = if method == "md5" {
        "md5"
    } else {
        "SCRAM-SHA-256$"
    };
    assert!(stored.starts_with(prefix), "{stored}");
    let conninfo = |password: &str| {
        format!(
            "host=127.0.0.1 port={} user=walcast_repl password='{password}' dbname={}",
            db.postgres.port(),
            db.dbname()
        )
    };
    let wrong = ReplicationStream::start(ReplicationConfig {
        conninfo: conninfo("nope"),
        create_publication: PublicationScope::None,
        ..ReplicationConfig::default()
    })
    .await
    .unwrap_err();
    assert_eq!(wrong.sqlstate(), Some("28P01"), "{wrong:?}");

    let mut stream = ReplicationStream::start(ReplicationConfig {
        conninfo: conninfo("p@ss w0rd"),
        create_publication: PublicationScope::None,
        temporary_slot: true,
        ..ReplicationConfig::default()
    })
    .await
    .unwrap();
    db.exec("INSERT INTO t VALUES (7)").await;
    let tx = next(&mut stream).await;
    assert_eq!(tx.changes.len(), 1);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn scram_sha_256_login_as_replication_user() {
    password_login("scram-sha-256").await;
}

#[tokio::test]
async fn md5_login_as_replication_user() {
    password_login("md5").await;
}

#[tokio::test]
async fn unix_socket_temporary_slot_messages_and_backpressure() {
    let db = Db::start().await;
    db.exec("CREATE TABLE t (id int)").await;
    let config = ReplicationConfig {
        conninfo: format!(
            "host={} port={} user=postgres dbname={}",
            db.postgres.socket_dir().display(),
            db.postgres.port(),
            db.dbname()
        ),
        slot: "temp_slot_1".into(),
        publication: "Pub-\"lication\"".into(),
        temporary_slot: true,
        channel_capacity: 1,
        messages: true,
        ..db.config()
    };
    let mut stream = ReplicationStream::start(config).await.unwrap();
    for n in 0..20 {
        db.exec(&format!("INSERT INTO t VALUES ({n})")).await;
    }
    db.exec("SELECT pg_logical_emit_message(false, 'walcast', 'hello')")
        .await;
    // The reader holds at most one transaction in the channel plus one pending; the rest stays
    // in PostgreSQL until the consumer catches up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..20 {
        let tx = next(&mut stream).await;
        let [Change::Insert { new, .. }] = &tx.changes[..] else {
            panic!()
        };
        assert_eq!(text(&new.0[0]), n.to_string());
    }
    let tx = next(&mut stream).await;
    let [Change::Message {
        transactional,
        prefix,
        content,
    }] = &tx.changes[..]
    else {
        panic!("{:?}", tx.changes)
    };
    assert!(!transactional);
    assert_eq!((prefix.as_str(), &content[..]), ("walcast", &b"hello"[..]));
    stream.stop().await.unwrap();
    // `stop` returns once the connection is closed; the walsender drops its temporary slot
    // while it exits, after that. Checking at once raced with that exit on a busy machine.
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let slots: i64 = db
            .client
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        if slots == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "temporary slot still there {RECV_TIMEOUT:?} after its connection ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_errors_carry_sqlstate() {
    let db = Db::start().await;
    let err = ReplicationStream::start(ReplicationConfig {
        conninfo: db.postgres.url("no_such_db"),
        ..ReplicationConfig::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ReplicationError::Server { code, message } if code == "3D000" && message.contains("no_such_db")),
        "{err:?}"
    );

    db.exec("SELECT pg_create_logical_replication_slot('other_plugin', 'test_decoding')")
        .await;
    let err = ReplicationStream::start(ReplicationConfig {
        slot: "other_plugin".into(),
        ..db.config()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ReplicationError::Config(_)), "{err:?}");

    // A slot already streamed by another connection is a server error (55006).
    let first = ReplicationStream::start(db.config()).await.unwrap();
    let err = ReplicationStream::start(db.config()).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("55006"), "{err:?}");
    first.stop().await.unwrap();
}

#[tokio::test]
async fn creation_is_idempotent() {
    let db = Db::start().await;
    for _ in 0..2 {
        let stream = ReplicationStream::start(db.config()).await.unwrap();
        stream.stop().await.unwrap();
    }
    let n: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn embedded_postgres_is_stopped_and_removed_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let postgres =
                walcast_replication::embedded::EmbeddedPostgres::start(EmbeddedOptions::default())
                    .await
                    .unwrap();
            tx.send((postgres.port(), postgres.data_dir().to_path_buf()))
                .unwrap();
            panic!("test failure while the postgres runs");
        })
    })
    .join();
    assert!(result.is_err());
    let (port, data_dir) = rx.recv().unwrap();
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening"
    );
}

#[tokio::test]
async fn flush_position_is_exactly_what_the_consumer_confirmed() {
    let db = Db::start().await;
    db.exec("CREATE TABLE t (id int)").await;
    let config = ReplicationConfig {
        status_interval: Duration::from_millis(100),
        ..db.config()
    };
    let mut stream = ReplicationStream::start(config).await.unwrap();
    let start = db.slot_confirmed("walcast").await;
    for n in 0..3 {
        db.exec(&format!("INSERT INTO t VALUES ({n})")).await;
    }
    let txs = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ];
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        db.slot_confirmed("walcast").await,
        start,
        "nothing confirmed, nothing flushed"
    );
    stream.confirmer().confirm(txs[0].end_lsn);
    stream.confirmer().confirm(Lsn(txs[0].end_lsn.0 - 1)); // lower: ignored
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(db.slot_confirmed("walcast").await, txs[0].end_lsn);
    stream.confirmer().confirm(txs[2].end_lsn);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(db.slot_confirmed("walcast").await >= txs[2].end_lsn);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn slow_consumer_pauses_reading_and_postgres_keeps_the_wal() {
    let db = Db::start().await;
    db.exec("CREATE TABLE blobs (id int, body text)").await;
    let config = ReplicationConfig {
        channel_capacity: 2,
        ..db.config()
    };
    let mut stream = ReplicationStream::start(config).await.unwrap();
    // ~30 MB of incompressible row data, far more than socket buffers hold.
    for n in 0..300 {
        db.exec(&format!(
            "INSERT INTO blobs SELECT {n}, string_agg(md5(random()::text), '') FROM generate_series(1, 3200)"
        ))
        .await;
    }
    let end = db.current_lsn().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = stream.progress().received();
    assert!(
        end.0 - received.0 > 10_000_000,
        "reader did not pause: received {received}, end {end}"
    );
    for n in 0..300 {
        let tx = next(&mut stream).await;
        let [Change::Insert { new, .. }] = &tx.changes[..] else {
            panic!()
        };
        assert_eq!(text(&new.0[0]), n.to_string());
        stream.confirmer().confirm(tx.end_lsn);
    }
    stream.stop().await.unwrap();
}

/// A test binary killed outright (no unwinding, no Drop) must not leak its server: the watchdog
/// notices the process is gone and stops it.
#[test]
fn embedded_postgres_is_stopped_when_the_process_dies_without_drop() {
    if std::env::var_os("WALCAST_CLUSTER_ABORT_CHILD").is_some() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let postgres = rt
            .block_on(walcast_replication::embedded::EmbeddedPostgres::start(
                EmbeddedOptions::default(),
            ))
            .unwrap();
        println!(
            "CLUSTER {} {}",
            postgres.port(),
            postgres.data_dir().display()
        );
        std::process::abort();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "embedded_postgres_is_stopped_when_the_process_dies_without_drop",
            "--nocapture",
        ])
        .env("WALCAST_CLUSTER_ABORT_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CLUSTER "))
        .unwrap_or_else(|| panic!("child did not start a postgres: {stdout}"));
    let (port, data_dir) = line.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if !std::path::Path::new(data_dir).exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("server on port {port} ({data_dir}) outlived its process");
}

#[tokio::test]
async fn persistent_data_dir_is_reused_and_deep_paths_work() {
    let base = tempfile::Builder::new()
        .prefix("walcast-persist-")
        .tempdir()
        .unwrap();
    // Deep enough that the socket cannot live in the data directory (107-byte limit).
    let data_dir = base
        .path()
        .join("a".repeat(60))
        .join("b".repeat(40))
        .join("pgdata");
    let opts = EmbeddedOptions {
        data_dir: Some(data_dir.clone()),
        ..EmbeddedOptions::default()
    };
    let postgres = walcast_replication::embedded::EmbeddedPostgres::start(opts.clone())
        .await
        .unwrap();
    assert_ne!(postgres.socket_dir(), data_dir.as_path());
    let client = postgres.client("postgres").await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    drop(client);
    postgres.stop().await.unwrap();
    assert!(
        data_dir.join("PG_VERSION").exists(),
        "persistent data survives stop"
    );

    let postgres = walcast_replication::embedded::EmbeddedPostgres::start(opts)
        .await
        .unwrap();
    let client = postgres.client("postgres").await.unwrap();
    let n: i32 = client
        .query_one("SELECT id FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop(postgres);
    assert!(
        data_dir.join("PG_VERSION").exists(),
        "drop stops but never deletes persistent data"
    );
}

#[tokio::test]
async fn server_shutdown_surfaces_as_one_error_then_end_of_stream() {
    let db = Db::start().await;
    let mut stream = ReplicationStream::start(db.config()).await.unwrap();
    let Db {
        postgres, client, ..
    } = db;
    drop(client);
    postgres.stop().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.recv())
        .await
        .expect("stream noticed the shutdown");
    assert!(
        matches!(
            first,
            Some(Err(
                ReplicationError::Closed | ReplicationError::Server { .. }
            ))
        ),
        "{first:?}"
    );
    assert!(stream.recv().await.is_none());
    assert!(stream.stop().await.is_ok(), "error already reported");
}
