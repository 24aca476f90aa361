//! Shared helpers of the real-PostgreSQL tests: one private cluster per test (fast enough with
//! `initdb --no-sync`, and the only layout that works the same under `cargo test` and
//! `cargo nextest`, where each test is its own process); dropped — stopped and removed — at the
//! end of the test, also on panic.

#![allow(dead_code)]

use std::time::Duration;

use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};
use walcast_replication::{PublicationScope, ReplicationConfig, ReplicationStream, Transaction};

pub const RECV_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Db {
    pub url: String,
    pub client: tokio_postgres::Client,
    pub postgres: EmbeddedPostgres,
}

impl Db {
    pub async fn start() -> Db {
        Db::with(EmbeddedOptions::default()).await
    }

    pub async fn with(opts: EmbeddedOptions) -> Db {
        let postgres = EmbeddedPostgres::start(opts)
            .await
            .expect("start private PostgreSQL");
        let url = postgres.create_database().await.expect("create database");
        let client = connect(&url).await;
        Db {
            url,
            client,
            postgres,
        }
    }

    pub fn dbname(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    pub fn config(&self) -> ReplicationConfig {
        ReplicationConfig {
            conninfo: self.url.clone(),
            create_publication: PublicationScope::AllTables,
            ..ReplicationConfig::default()
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn current_lsn(&self) -> walcast_replication::Lsn {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse().unwrap()
    }

    pub async fn slot_confirmed(&self, slot: &str) -> walcast_replication::Lsn {
        let row = self
            .client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        row.get::<_, String>(0).parse().unwrap()
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Next transaction, failing the test on error, end of stream or timeout.
pub async fn next(stream: &mut ReplicationStream) -> Transaction {
    match tokio::time::timeout(RECV_TIMEOUT, stream.recv()).await {
        Ok(Some(Ok(tx))) => tx,
        Ok(Some(Err(e))) => panic!("stream error: {e:?}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no transaction within {RECV_TIMEOUT:?}"),
    }
}

/// Asserts that no transaction arrives within `wait`.
pub async fn assert_quiet(stream: &mut ReplicationStream, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, stream.recv()).await {
        panic!("expected nothing, got {got:?}");
    }
}
