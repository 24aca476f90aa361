//! The benchmark's app: accounts, one user per account (with a session JWT) and a repo.

use super::BenchError;
use tokio_postgres::Client;
use uuid::Uuid;

pub const APP: &str = "walcast_bench";
/// Account-level read permission: a row reaches the subscribers of its account only.
pub const REPO: &str = "items_760_";

#[derive(Debug, Clone)]
pub struct BenchUser {
    pub account: Uuid,
    pub user: Uuid,
    pub jwt: String,
}

pub async fn connect(url: &str) -> Result<Client, BenchError> {
    walcast::db::connect(url).await.map_err(BenchError::Db)
}

/// Creates the app and repo (idempotent) and `accounts` fresh accounts with one user each.
pub async fn create(
    client: &Client,
    accounts: usize,
    jwt_secret: &str,
) -> Result<Vec<BenchUser>, BenchError> {
    let migrated: bool = client
        .query_one(
            "SELECT to_regprocedure('sb.walcast_create_app(text)') IS NOT NULL",
            &[],
        )
        .await
        .map_err(BenchError::Database)?
        .get(0);
    if !migrated {
        return Err(BenchError::NotMigrated);
    }
    client
        .execute("SELECT sb.walcast_create_app($1)", &[&APP])
        .await
        .map_err(BenchError::Database)?;
    client
        .execute("SELECT sb.walcast_create_repo($1, $2)", &[&APP, &REPO])
        .await
        .map_err(BenchError::Database)?;
    let account_ids: Vec<Uuid> = (0..accounts).map(|_| Uuid::new_v4()).collect();
    let user_ids: Vec<Uuid> = (0..accounts).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<String> = user_ids
        .iter()
        .map(|u| format!("bench-{}", u.simple()))
        .collect();
    client
        .execute(
            &format!(
                "INSERT INTO \"{APP}\".sb_accounts (id, email, created) \
                 SELECT a, a::text || '@bench.test', now() FROM unnest($1::uuid[]) AS t(a)"
            ),
            &[&account_ids],
        )
        .await
        .map_err(BenchError::Database)?;
    client
        .execute(
            &format!(
                "INSERT INTO \"{APP}\".sb_tokens (id, account_id, token, email, password, role, reset_code, created) \
                 SELECT u, a, t, t || '@bench.test', '', 0, '', now() \
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS x(u, a, t)"
            ),
            &[&user_ids, &account_ids, &tokens],
        )
        .await
        .map_err(BenchError::Database)?;
    Ok(account_ids
        .into_iter()
        .zip(user_ids)
        .zip(&tokens)
        .map(|((account, user), token)| BenchUser {
            account,
            user,
            jwt: walcast::auth::issue_token(jwt_secret.as_bytes(), user, token, 24 * 3600),
        })
        .collect())
}

/// Inserts rows for ($1 accounts, $2 owners, $3 data texts) in one statement, in array order.
pub fn insert_sql() -> String {
    format!(
        "INSERT INTO \"{APP}\".\"{REPO}\" (account_id, owner_id, data, created) \
         SELECT a, o, d::jsonb, now() FROM unnest($1::uuid[], $2::uuid[], $3::text[]) \
         WITH ORDINALITY AS t(a, o, d, n) ORDER BY n"
    )
}
