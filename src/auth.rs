//! Session JWT → authenticated user (PROTOCOL.md §3 `auth`): StaticBackend's HS256 tokens whose
//! `token` claim is `<userId>|<userToken>`, matched against the app's `sb_tokens`.

use crate::db::{quote_ident, Database, DbError};
use crate::permission::{AppName, Reader};
use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// Every client-visible failure collapses into this one (`invalid token`).
    #[error("invalid token")]
    Invalid,
    #[error("user directory unavailable")]
    Directory(#[from] DbError),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// An app as `sb.apps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppRef {
    /// The public key (`sbpk`).
    pub id: Uuid,
    /// The schema name, which scopes channels.
    pub name: AppName,
}

pub(crate) struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    db: Arc<Database>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(secret: &[u8], db: Arc<Database>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // StaticBackend sets `nbf` 30 minutes ahead; it must be ignored. `exp` is checked when
        // present but StaticBackend tokens are not required to carry it.
        validation.validate_nbf = false;
        validation.validate_exp = true;
        validation.leeway = 5;
        validation.required_spec_claims.clear();
        Authenticator {
            key: DecodingKey::from_secret(secret),
            validation,
            db,
        }
    }

    /// Verifies the JWT and finds its user. `app_key` is the `sbpk` the connection named, if any:
    /// then the user must belong to that app.
    pub async fn authenticate(
        &self,
        jwt: &str,
        app_key: Option<&str>,
    ) -> Result<Reader, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(jwt, &self.key, &self.validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        let (user, secret) = claims.token.split_once('|').ok_or(AuthError::Invalid)?;
        let user_id = Uuid::parse_str(user).map_err(|_| AuthError::Invalid)?;
        let client = self.db.client().await?;
        let app_id = match app_key {
            Some(key) => Some(Uuid::parse_str(key).map_err(|_| AuthError::Invalid)?),
            None => None,
        };
        // Apps whose users table exists: a half-made or dropped app must not fail every login.
        let apps: Vec<String> = client
            .query(
                "SELECT name FROM sb.apps \
                 WHERE ($1::uuid IS NULL OR id = $1) \
                   AND to_regclass(format('%I.sb_tokens', name)) IS NOT NULL \
                 ORDER BY name",
                &[&app_id],
            )
            .await
            .map_err(DbError::from)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if apps.is_empty() {
            return Err(AuthError::Invalid);
        }
        // One round trip whatever the number of apps.
        let lookups: Vec<String> = apps
            .iter()
            .enumerate()
            .map(|(i, app)| {
                format!(
                    "SELECT {i} AS app, account_id, role, token FROM {}.sb_tokens WHERE id = $1",
                    quote_ident(app)
                )
            })
            .collect();
        let sql = format!(
            "SELECT app, account_id, role, token FROM ({}) u ORDER BY app LIMIT 1",
            lookups.join(" UNION ALL ")
        );
        let Some(row) = client
            .query_opt(&sql, &[&user_id])
            .await
            .map_err(DbError::from)?
        else {
            return Err(AuthError::Invalid);
        };
        let index: i32 = row.get(0);
        let token: String = row.get(3);
        let app = usize::try_from(index)
            .ok()
            .and_then(|i| apps.get(i))
            .ok_or(AuthError::Invalid)?;
        if !constant_time_eq(token.as_bytes(), secret.as_bytes()) {
            return Err(AuthError::Invalid);
        }
        Ok(Reader {
            app: AppName::from(app.as_str()),
            user_id,
            account_id: row.get(1),
            role: row.get(2),
        })
    }
}

impl Authenticator {
    /// The app whose public key or schema name is `app`.
    pub async fn find_app(&self, app: &str) -> Result<Option<AppRef>, AuthError> {
        let client = self.db.client().await?;
        let id = Uuid::parse_str(app).ok();
        let row = client
            .query_opt(
                "SELECT id, name FROM sb.apps WHERE id = $1 OR name = $2 \
                 ORDER BY id = $1 DESC LIMIT 1",
                &[&id, &app],
            )
            .await
            .map_err(DbError::from)?;
        Ok(row.map(|row| AppRef {
            id: row.get(0),
            name: AppName::from(row.get::<_, String>(1).as_str()),
        }))
    }

    /// The app a connection named with `sbpk` (its id), for connections that do not
    /// authenticate (channels whose rule has `auth = false`).
    pub async fn app(&self, app_key: &str) -> Result<AppName, AuthError> {
        Uuid::parse_str(app_key).map_err(|_| AuthError::Invalid)?;
        let app = self.find_app(app_key).await?.ok_or(AuthError::Invalid)?;
        Ok(app.name)
    }
}

/// Who a session JWT belongs to. The gateway asks PostgreSQL ([`Authenticator`]); the protocol
/// session only needs this question answered, so its tests answer it from memory.
pub(crate) trait UserLookup: Send + Sync + std::fmt::Debug {
    /// The user behind `jwt`; with `app_key` (the `sbpk` the connection named), only a user of
    /// that app.
    fn authenticate<'a>(
        &'a self,
        jwt: &'a str,
        app_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Reader, AuthError>>;

    /// The app whose id (`sbpk`) is `app_key`.
    fn app<'a>(&'a self, app_key: &'a str) -> BoxFuture<'a, Result<AppName, AuthError>>;
}

impl UserLookup for Authenticator {
    fn authenticate<'a>(
        &'a self,
        jwt: &'a str,
        app_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Reader, AuthError>> {
        Box::pin(Authenticator::authenticate(self, jwt, app_key))
    }

    fn app<'a>(&'a self, app_key: &'a str) -> BoxFuture<'a, Result<AppName, AuthError>> {
        Box::pin(Authenticator::app(self, app_key))
    }
}

/// Comparison whose time does not depend on where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A session JWT with StaticBackend's claims (for `walcast token`, the demo and tests).
pub fn issue_token(secret: &[u8], user_id: Uuid, user_token: &str, ttl_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    token_claims(user_id, user_token, now, ttl_secs).encode(secret)
}

/// Valid from `now` to `now + ttl_secs`. (StaticBackend puts `nbf` 30 minutes ahead, which
/// standard verifiers refuse and which lies past `exp` for short lifetimes; walcast ignores
/// `nbf` when verifying, so its own tokens need not copy that.)
fn token_claims(user_id: Uuid, user_token: &str, now: u64, ttl_secs: u64) -> Claims {
    Claims {
        token: format!("{user_id}|{user_token}"),
        exp: Some(now.saturating_add(ttl_secs)),
        nbf: Some(now),
        iat: Some(now),
    }
}

impl Claims {
    fn encode(&self, secret: &[u8]) -> String {
        let claims = self;
        // HS256 over a serialisable struct cannot fail.
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jwt: &str, validate_time: bool) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = validate_time;
        validation.validate_exp = validate_time;
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_secret(b"s"), &validation)
            .map(|d| d.claims)
    }

    #[test]
    fn short_lived_tokens_are_valid_now_and_nbf_never_follows_exp() {
        for ttl in [0, 1, 60, 3600, 86_400] {
            let jwt = issue_token(b"s", Uuid::new_v4(), "t", ttl);
            let claims = decode(&jwt, false).unwrap();
            let (nbf, exp, iat) = (
                claims.nbf.unwrap(),
                claims.exp.unwrap(),
                claims.iat.unwrap(),
            );
            assert!(nbf <= exp, "ttl {ttl}: nbf {nbf} > exp {exp}");
            assert_eq!(exp - iat, ttl);
            if ttl >= 60 {
                // A standard verifier (nbf checked, no leeway) accepts it right away.
                decode(&jwt, true).unwrap();
            }
        }
        let far = token_claims(Uuid::nil(), "t", u64::MAX - 1, 60);
        assert_eq!(far.exp, Some(u64::MAX));
    }
}
