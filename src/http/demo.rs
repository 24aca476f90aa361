//! The demo app's tiny HTTP API (`walcast up` only): who the demo users are, and todo CRUD on
//! `demo.tasks_760_` acting as the user of the bearer token. Writes go to PostgreSQL only; the
//! pages learn of them through the WAL like any other client.

use super::{read_body, respond, text, Body};
use crate::auth::{issue_token, Authenticator};
use crate::db::Database;
use crate::event::build_document;
use crate::permission::Reader;
use crate::schema::DEMO_USERS;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

const TASKS: &str = "demo.tasks_760_";

pub struct DemoApi {
    pub db: Arc<Database>,
    pub auth: Arc<Authenticator>,
    pub jwt_secret: Vec<u8>,
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

fn bad(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

impl DemoApi {
    /// The demo users with fresh session tokens (printed by `walcast up` too).
    pub fn users(&self) -> Value {
        Value::Array(
            DEMO_USERS
                .iter()
                .map(|(name, email, account, user_id, account_id, token)| {
                    let session = Uuid::parse_str(user_id)
                        .map(|id| issue_token(&self.jwt_secret, id, token, 7 * 24 * 3600))
                        .unwrap_or_default();
                    json!({"name": name, "email": email, "account": account,
                           "userId": user_id, "accountId": account_id, "token": session})
                })
                .collect(),
        )
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if req.method() == Method::GET && path == "/demo/users" {
            return json_response(StatusCode::OK, &self.users());
        }
        let Some(rest) = path.strip_prefix("/demo/tasks") else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let reader = match self.caller(&req).await {
            Some(reader) => reader,
            None => return bad(StatusCode::UNAUTHORIZED, "invalid token"),
        };
        let id = rest.strip_prefix('/').map(Uuid::parse_str);
        let method = req.method().clone();
        let result = match (method, id) {
            (Method::GET, None) => self.list(&reader).await,
            (Method::POST, None) => match body_object(req).await {
                Some(fields) => self.create(&reader, fields).await,
                None => return bad(StatusCode::BAD_REQUEST, "body must be a JSON object"),
            },
            (Method::PATCH, Some(Ok(id))) => match body_object(req).await {
                Some(fields) => self.update(&reader, id, fields).await,
                None => return bad(StatusCode::BAD_REQUEST, "body must be a JSON object"),
            },
            (Method::DELETE, Some(Ok(id))) => self.delete(&reader, id).await,
            _ => return bad(StatusCode::NOT_FOUND, "not found"),
        };
        match result {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "demo request failed"
                );
                bad(StatusCode::INTERNAL_SERVER_ERROR, "database error")
            }
        }
    }

    async fn caller(&self, req: &Request<Incoming>) -> Option<Reader> {
        let header = req.headers().get("authorization")?.to_str().ok()?;
        let jwt = header.strip_prefix("Bearer ")?;
        self.auth.authenticate(jwt, None).await.ok()
    }

    async fn list(&self, reader: &Reader) -> Result<Value, crate::db::DbError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id::text, account_id::text, data::text FROM {TASKS} \
                     WHERE $1 OR account_id = $2 ORDER BY created, id"
                ),
                &[&reader.is_root(), &reader.account_id],
            )
            .await?;
        let docs = rows
            .iter()
            .filter_map(|row| {
                let id: String = row.get(0);
                let account: Option<String> = row.get(1);
                let data: String = row.get(2);
                let doc = build_document(&data, &id, account.as_deref()).ok()?;
                serde_json::from_str::<Value>(&doc).ok()
            })
            .collect();
        Ok(Value::Array(docs))
    }

    async fn create(&self, reader: &Reader, fields: Value) -> Result<Value, crate::db::DbError> {
        let client = self.db.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {TASKS} (account_id, owner_id, data, created) \
                     VALUES ($1, $2, $3::text::jsonb, now()) RETURNING id::text"
                ),
                &[&reader.account_id, &reader.user_id, &fields.to_string()],
            )
            .await?;
        let id: String = row.get(0);
        Ok(json!({ "id": id }))
    }

    async fn update(
        &self,
        reader: &Reader,
        id: Uuid,
        fields: Value,
    ) -> Result<Value, crate::db::DbError> {
        let client = self.db.client().await?;
        let n = client
            .execute(
                &format!(
                    "UPDATE {TASKS} SET data = data || $1::text::jsonb \
                     WHERE id = $2 AND ($3 OR account_id = $4)"
                ),
                &[
                    &fields.to_string(),
                    &id,
                    &reader.is_root(),
                    &reader.account_id,
                ],
            )
            .await?;
        Ok(json!({ "updated": n }))
    }

    async fn delete(&self, reader: &Reader, id: Uuid) -> Result<Value, crate::db::DbError> {
        let client = self.db.client().await?;
        let n = client
            .execute(
                &format!("DELETE FROM {TASKS} WHERE id = $1 AND ($2 OR account_id = $3)"),
                &[&id, &reader.is_root(), &reader.account_id],
            )
            .await?;
        Ok(json!({ "deleted": n }))
    }
}

async fn body_object(req: Request<Incoming>) -> Option<Value> {
    let body = read_body(req, 64 * 1024).await?;
    let value: Value = serde_json::from_slice(&body).ok()?;
    value.is_object().then_some(value)
}
