//! `POST /publish`: the server publish API. A backend (or `walcast publish`) sends
//! `{"app","channel","data","idempotency_key"}` with `Authorization: Bearer <key or JWT>`,
//! authenticated by the configured publish key (constant-time compare) or a root user's session
//! token. Every refusal is a JSON `{"ok":false,"error":…}` with a status that says why.

use super::{read_body, respond, Body};
use crate::auth::{constant_time_eq, AppRef, AuthError, Authenticator};
use crate::permission::AppName;
use crate::protocol::ChannelError;
use crate::publish::{PublishError, Published, Publisher};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// What `POST /publish` needs.
pub struct PublishApi {
    pub publisher: Arc<Publisher>,
    pub auth: Arc<Authenticator>,
    /// The server key; `None`: root session tokens only.
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    /// The app's public key or schema name; optional with a root token (its app is used).
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    /// A string is sent as is; any other JSON value is sent as its JSON text.
    #[serde(default)]
    data: Option<Value>,
    #[serde(default, alias = "idempotencyKey")]
    idempotency_key: Option<String>,
}

/// A refusal: status and the exact error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, error: &'static str) -> Self {
        Refusal { status, error }
    }

    pub const BODY_TOO_LARGE: Refusal =
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    pub const INVALID_BODY: Refusal = Refusal::new(
        StatusCode::BAD_REQUEST,
        "request body must be a JSON object with string app, channel and idempotency_key",
    );
    pub const MISSING_DATA: Refusal =
        Refusal::new(StatusCode::BAD_REQUEST, "no data was specified");
    pub const MISSING_CREDENTIALS: Refusal = Refusal::new(
        StatusCode::UNAUTHORIZED,
        "missing credentials: send Authorization: Bearer <publish key or root session token>",
    );
    pub const INVALID_KEY: Refusal = Refusal::new(StatusCode::UNAUTHORIZED, "invalid publish key");
    pub const INVALID_TOKEN: Refusal = Refusal::new(StatusCode::UNAUTHORIZED, "invalid token");
    pub const NOT_ROOT: Refusal = Refusal::new(
        StatusCode::FORBIDDEN,
        "root user required: the token's user has a role below 100",
    );
    pub const NO_APP: Refusal = Refusal::new(StatusCode::BAD_REQUEST, "no app was specified");
    pub const UNKNOWN_APP: Refusal = Refusal::new(StatusCode::NOT_FOUND, "unknown app");
    pub const DIRECTORY: Refusal = Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "user directory unavailable",
    );

    fn of(error: PublishError) -> Refusal {
        let status = match error {
            PublishError::InvalidKey
            | PublishError::Channel(ChannelError::Missing | ChannelError::Invalid) => {
                StatusCode::BAD_REQUEST
            }
            PublishError::Channel(ChannelError::NotWritable | ChannelError::Reserved)
            | PublishError::Denied(_) => StatusCode::FORBIDDEN,
            PublishError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, error.message())
    }

    fn response(self) -> Response<Body> {
        let mut response = respond(
            self.status,
            "application/json",
            json!({"ok": false, "error": self.error}).to_string(),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl PublishApi {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        answer(self.publish(req).await.map(|published| match published {
            Published::Delivered(delivery) => json!({"ok": true, "delivered": delivery.delivered}),
            Published::Duplicate => json!({"ok": true, "duplicate": true}),
        }))
    }

    /// `POST /destroy` [ext]: `{"app","channel"}` with the same credentials as `/publish`;
    /// every member gets `destroyed` and is removed.
    pub async fn handle_destroy(&self, req: Request<Incoming>) -> Response<Body> {
        let destroyed = async {
            let (app, body) = self.read_authorized(req).await?;
            let channel = body.channel.unwrap_or_default();
            self.publisher
                .server_destroy(&app, &channel)
                .map_err(Refusal::of)
        };
        answer(
            destroyed
                .await
                .map(|members| json!({"ok": true, "members": members})),
        )
    }

    async fn publish(&self, req: Request<Incoming>) -> Result<Published, Refusal> {
        let (app, body) = self.read_authorized(req).await?;
        let data = match body.data {
            None | Some(Value::Null) => return Err(Refusal::MISSING_DATA),
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
        };
        let channel = body.channel.unwrap_or_default();
        self.publisher
            .server_publish(&app, &channel, &data, body.idempotency_key.as_deref())
            .await
            .map_err(Refusal::of)
    }

    /// The request body and the app its credentials may act on.
    async fn read_authorized(
        &self,
        req: Request<Incoming>,
    ) -> Result<(AppName, PublishBody), Refusal> {
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(bearer_credential)
            .filter(|v| !v.is_empty());
        let header_app = super::app_key(&req);
        // JSON escapes can make the body up to six times the data it carries.
        let limit = self.publisher.max_message_bytes().saturating_mul(6) + 64 * 1024;
        let body = read_body(req, limit).await.ok_or(Refusal::BODY_TOO_LARGE)?;
        let body: PublishBody = serde_json::from_slice(&body).map_err(|_| Refusal::INVALID_BODY)?;
        let bearer = bearer.ok_or(Refusal::MISSING_CREDENTIALS)?;
        let app_named = body.app.clone().filter(|a| !a.is_empty()).or(header_app);
        let app = self.authorize(&bearer, app_named.as_deref()).await?;
        Ok((app, body))
    }

    /// The app the caller may publish to. Credentials are checked before the app is looked
    /// up, so an unauthenticated caller learns nothing about which apps exist.
    async fn authorize(&self, bearer: &str, app: Option<&str>) -> Result<AppName, Refusal> {
        if let Some(key) = &self.key {
            if constant_time_eq(key.as_bytes(), bearer.as_bytes()) {
                let app = app.ok_or(Refusal::NO_APP)?;
                return Ok(self.find_app(app).await?.name);
            }
        }
        // A JWT has three dot-separated parts; anything else was meant as a publish key.
        if bearer.split('.').count() != 3 {
            return Err(Refusal::INVALID_KEY);
        }
        let reader = match self.auth.authenticate(bearer, None).await {
            Ok(reader) => reader,
            Err(AuthError::Invalid) => return Err(Refusal::INVALID_TOKEN),
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "publish auth lookup failed"
                );
                return Err(Refusal::DIRECTORY);
            }
        };
        if !reader.is_root() {
            return Err(Refusal::NOT_ROOT);
        }
        if let Some(app) = app {
            // A token of another app is refused, as on a connection that named its app.
            if self.find_app(app).await?.name != reader.app {
                return Err(Refusal::INVALID_TOKEN);
            }
        }
        Ok(reader.app)
    }

    async fn find_app(&self, app: &str) -> Result<AppRef, Refusal> {
        match self.auth.find_app(app).await {
            Ok(Some(app)) => Ok(app),
            Ok(None) => Err(Refusal::UNKNOWN_APP),
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "app lookup failed"
                );
                Err(Refusal::DIRECTORY)
            }
        }
    }
}

/// 200 with the JSON answer, or the refusal; CORS as for the SSE routes.
fn answer(result: Result<Value, Refusal>) -> Response<Body> {
    let mut response = match result {
        Ok(body) => respond(StatusCode::OK, "application/json", body.to_string()),
        Err(refusal) => refusal.response(),
    };
    super::cors::allow_any_origin(&mut response);
    response
}

/// The credential of an `Authorization` value: after a `Bearer` scheme (any case), or the whole
/// value when it names no scheme.
fn bearer_credential(value: &str) -> String {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_owned(),
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer_credential("Bearer k1"), "k1");
        assert_eq!(bearer_credential("bearer  k2 "), "k2");
        assert_eq!(bearer_credential("k3"), "k3");
        assert_eq!(bearer_credential("Bearer"), "Bearer");
    }
}
