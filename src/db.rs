//! The gateway's ordinary (non-replication) PostgreSQL connection: user lookups, preparation,
//! readiness. One pipelined client, reconnected on demand.

use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `address` is `host:port` or the socket path tried, never credentials.
    #[error("cannot connect to PostgreSQL at {address}")]
    Connect {
        address: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("query failed")]
    Query(#[from] tokio_postgres::Error),
}

impl DbError {
    /// Whether retrying unchanged cannot help (refused credentials, no such database, missing
    /// privileges, a malformed connection string); network and server restarts are transient.
    pub fn is_permanent(&self) -> bool {
        let source = match self {
            DbError::Connect { source, .. } | DbError::Query(source) => source,
        };
        match source.code() {
            Some(code) => walcast_replication::error::sqlstate_is_permanent(code.code()),
            // No SQLSTATE: a parse error of the connection string is permanent, I/O is not.
            // tokio-postgres exposes no error kind; its configuration errors say so.
            None => {
                let text = source.to_string();
                text.starts_with("invalid configuration") || text.starts_with("invalid connection")
            }
        }
    }
}

/// One connection, its driver spawned. Errors name the address tried.
pub async fn connect(conninfo: &str) -> Result<Client, DbError> {
    let address = conninfo
        .parse::<tokio_postgres::Config>()
        .map(|config| walcast_replication::error::describe_target(&config))
        .unwrap_or_else(|_| "(invalid connection string)".to_owned());
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|source| DbError::Connect { address, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "database connection ended");
        }
    });
    Ok(client)
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
        let client = Arc::new(connect(&self.conninfo).await?);
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
pub(crate) fn quote_ident(name: &str) -> String {
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
