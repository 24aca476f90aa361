//! The gateway's ordinary (non-replication) PostgreSQL connection: user lookups, preparation,
//! readiness. One pipelined client, reconnected on demand.

use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    #[error("query failed")]
    Query(#[from] tokio_postgres::Error),
}

#[derive(Debug)]
pub struct Database {
    conninfo: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl Database {
    pub fn new(conninfo: impl Into<String>) -> Self {
        Database {
            conninfo: conninfo.into(),
            client: Mutex::new(None),
        }
    }

    pub fn conninfo(&self) -> &str {
        &self.conninfo
    }

    /// A live client; a closed one is replaced. Concurrent callers share one connection
    /// (tokio-postgres pipelines their queries).
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let (client, connection) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .map_err(DbError::Connect)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "database connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Whether a trivial query succeeds now.
    pub async fn is_reachable(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Quotes an SQL identifier (schema names come from `sb.apps`, i.e. from data).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes() {
        assert_eq!(super::quote_ident("app"), "\"app\"");
        assert_eq!(super::quote_ident("a\"; drop"), "\"a\"\"; drop\"");
    }
}
