//! SQL the gateway applies, embedded in the binary (files under `schema/`).

use crate::db::DbError;
use tokio_postgres::Client;

/// StaticBackend's layout plus helper functions to create apps and repos.
pub const STATICBACKEND: &str = include_str!("../schema/staticbackend.sql");
/// What the gateway prepares for itself: replica identity of document tables, event trigger.
pub(crate) const WALCAST: &str = include_str!("../schema/walcast.sql");
/// The demo app of `walcast up`.
const DEMO: &str = include_str!("../schema/demo.sql");

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

/// Runs one embedded script in a transaction. Concurrent starts (`migrate`, `up`, several
/// `serve`) are serialised by one advisory lock so that `CREATE ... IF NOT EXISTS` and
/// `CREATE OR REPLACE` races cannot fail any of them. Takes a shared client: the gateway's
/// connection is shared, and nothing else uses it before the gateway has started.
pub(crate) async fn apply(client: &Client, script: &str) -> Result<(), DbError> {
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7708391)")
        .await?;
    let applied = async {
        client.batch_execute(script).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(error) = applied {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(error.into());
    }
    Ok(())
}

/// Connects to `url` and applies [`migrate`] over a connection of its own, closed afterwards
/// (`walcast migrate`, `walcast up`, the gateway `walcast bench` starts).
pub async fn migrate_url(url: &str, with_demo: bool) -> Result<(), DbError> {
    let client = crate::db::connect(url).await?;
    migrate(&client, with_demo).await
}

/// `walcast migrate`: the StaticBackend layout, then the gateway's own preparation.
pub async fn migrate(client: &Client, with_demo: bool) -> Result<(), DbError> {
    apply(client, STATICBACKEND).await?;
    apply(client, WALCAST).await?;
    if with_demo {
        apply(client, DEMO).await?;
    }
    Ok(())
}
