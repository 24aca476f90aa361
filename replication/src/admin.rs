//! Publication and slot administration over the replication connection: `IDENTIFY_SYSTEM`,
//! create-when-missing of the publication and the logical slot. Everything is idempotent:
//! existence is checked first, and a concurrent creator (SQLSTATE 42710 duplicate_object) is
//! treated as success.

use tracing::info;

use crate::connection::{quote_ident, quote_literal, Connection};
use crate::{Lsn, PublicationScope, ReplicationError};

const DUPLICATE_OBJECT: &str = "42710";

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush position of the server.
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

pub(crate) async fn identify_system(
    conn: &mut Connection,
) -> Result<SystemIdentity, ReplicationError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let col = |i: usize| row.get(i).cloned().flatten();
    let bad = || ReplicationError::Protocol("malformed IDENTIFY_SYSTEM row".into());
    Ok(SystemIdentity {
        system_id: col(0).ok_or_else(bad)?,
        timeline: col(1).and_then(|t| t.parse().ok()).ok_or_else(bad)?,
        xlogpos: col(2).and_then(|l| l.parse().ok()).ok_or_else(bad)?,
        dbname: col(3),
    })
}

pub(crate) async fn ensure_publication(
    conn: &mut Connection,
    name: &str,
    scope: &PublicationScope,
) -> Result<(), ReplicationError> {
    let exists = conn
        .simple_query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?;
    if !exists.is_empty() {
        return Ok(());
    }
    let target = match scope {
        PublicationScope::None => {
            return Err(ReplicationError::Config(format!(
                "publication {name:?} does not exist and creating it is disabled"
            )))
        }
        PublicationScope::AllTables => "ALL TABLES".to_owned(),
        PublicationScope::Tables(tables) if tables.is_empty() => {
            return Err(ReplicationError::Config(
                "publication scope lists no tables".into(),
            ))
        }
        PublicationScope::Tables(tables) => {
            let list: Vec<String> = tables.iter().map(|t| quote_qualified(t)).collect();
            format!("TABLE {}", list.join(", "))
        }
    };
    let sql = format!("CREATE PUBLICATION {} FOR {target}", quote_ident(name));
    match conn.simple_query(&sql).await {
        Ok(_) => {
            info!(publication = name, "created publication");
            Ok(())
        }
        Err(e) if e.sqlstate() == Some(DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the slot unless a persistent one exists. Returns the slot's consistent point when it
/// was created now.
pub(crate) async fn ensure_slot(
    conn: &mut Connection,
    slot: &str,
    temporary: bool,
) -> Result<Option<Lsn>, ReplicationError> {
    if !temporary {
        let rows = conn
            .simple_query(&format!(
                "SELECT plugin, slot_type, database FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        if let Some(row) = rows.first() {
            let plugin = row.first().cloned().flatten().unwrap_or_default();
            if plugin != "pgoutput" {
                return Err(ReplicationError::Config(format!(
                    "replication slot {slot:?} exists but uses plugin {plugin:?}, not pgoutput"
                )));
            }
            return Ok(None);
        }
    }
    // PostgreSQL 15 introduced the parenthesised option list; older servers only know the
    // legacy keyword. No snapshot is exported: nobody would use it.
    let options = if conn.server_version >= 150000 || conn.server_version == 0 {
        "(SNAPSHOT 'nothing')"
    } else {
        "NOEXPORT_SNAPSHOT"
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput {options}",
        quote_ident(slot),
        if temporary { " TEMPORARY" } else { "" }
    );
    match conn.simple_query(&sql).await {
        Ok(rows) => {
            let point = rows
                .first()
                .and_then(|r| r.get(1).cloned().flatten())
                .and_then(|l| l.parse().ok());
            info!(slot, temporary, consistent_point = ?point, "created replication slot");
            Ok(point)
        }
        Err(e) if !temporary && e.sqlstate() == Some(DUPLICATE_OBJECT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `schema.table` → `"schema"."table"`; a bare name is quoted as one identifier.
fn quote_qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        assert_eq!(quote_qualified("public.t"), "\"public\".\"t\"");
        assert_eq!(quote_qualified("T"), "\"T\"");
    }
}
