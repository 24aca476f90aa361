//! SQL the gateway applies, embedded in the binary (files under `schema/`).

use crate::db::DbError;
use tokio_postgres::Client;

/// StaticBackend's layout plus helper functions to create apps and repos.
pub const STATICBACKEND: &str = include_str!("../schema/staticbackend.sql");
/// What the gateway prepares for itself: replica identity of document tables, event trigger.
pub const WALCAST: &str = include_str!("../schema/walcast.sql");
/// The demo app of `walcast up`.
pub const DEMO: &str = include_str!("../schema/demo.sql");

/// Demo users as `schema/demo.sql` creates them: (name, email, account label, user id, account id, user token).
pub const DEMO_USERS: [(&str, &str, &str, &str, &str, &str); 3] = [
    (
        "Alice",
        "alice@demo.test",
        "Account A",
        "a1000000-0000-4000-8000-0000000000a1",
        "a0000000-0000-4000-8000-00000000000a",
        "demo-token-alice",
    ),
    (
        "Bob",
        "bob@demo.test",
        "Account A",
        "a2000000-0000-4000-8000-0000000000a2",
        "a0000000-0000-4000-8000-00000000000a",
        "demo-token-bob",
    ),
    (
        "Carol",
        "carol@demo.test",
        "Account B",
        "c1000000-0000-4000-8000-0000000000c1",
        "b0000000-0000-4000-8000-00000000000b",
        "demo-token-carol",
    ),
];

/// Runs one embedded script in a transaction. Concurrent first starts are serialised by an
/// advisory lock so that `CREATE ... IF NOT EXISTS` races cannot fail either of them.
pub async fn apply(client: &mut Client, script: &str) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7708391)")
        .await?;
    tx.batch_execute(script).await?;
    tx.commit().await?;
    Ok(())
}

/// Connects to `url` and applies [`migrate`] over a connection of its own, closed afterwards
/// (`walcast migrate`, `walcast up`, the gateway `walcast bench` starts).
pub async fn migrate_url(url: &str, with_demo: bool) -> Result<(), DbError> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(DbError::Connect)?;
    let connection = tokio::spawn(connection);
    let migrated = migrate(&mut client, with_demo).await;
    drop(client);
    let _ = connection.await;
    migrated
}

/// `walcast migrate`: the StaticBackend layout, then the gateway's own preparation.
pub async fn migrate(client: &mut Client, with_demo: bool) -> Result<(), DbError> {
    apply(client, STATICBACKEND).await?;
    apply(client, WALCAST).await?;
    if with_demo {
        apply(client, DEMO).await?;
    }
    Ok(())
}
