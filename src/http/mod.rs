//! HTTP on hyper 1: `/ws` upgrade, the SSE transport (`/sse/*`), the server publish API
//! (`/publish`, `/destroy`), health and readiness, metrics, the client library, the demo page and the
//! dashboard.

mod cors;
mod demo;
mod publish;
mod sse;

pub use demo::DemoApi;
pub use publish::PublishApi;

use crate::sse::SseStreams;
use crate::ws::{serve_socket, WsContext};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, SEC_WEBSOCKET_EXTENSIONS};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use tokio_util::task::TaskTracker;

const CLIENT_JS: &str = include_str!("assets/client.js");
const INDEX_HTML: &str = include_str!("assets/index.html");
const DASHBOARD_HTML: &str = include_str!("assets/dashboard.html");

/// Every response body: whole (`Full`) or streamed (SSE).
pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Shared by every HTTP request.
pub struct HttpState {
    pub ws: Arc<WsContext>,
    pub db: Arc<crate::db::Database>,
    /// Whether the replication stream is up; the window log's figures.
    pub status: Arc<crate::pipeline::Status>,
    pub demo: Option<DemoApi>,
    pub sse: Arc<SseStreams>,
    pub publish: PublishApi,
    /// Socket tasks, awaited at shutdown.
    pub sockets: TaskTracker,
}

pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Reads a request body up to `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// `key: value` lines after the verdict: replication and the window log.
fn readiness_details(status: &crate::pipeline::Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replication: {}",
        if status.streaming() {
            "streaming"
        } else {
            "down"
        }
    );
    match status.log() {
        Some(log) => {
            let _ = writeln!(out, "resume_log_dir: {}", log.location);
            let _ = writeln!(out, "resume_log_bytes: {}", log.bytes);
            let _ = writeln!(out, "resume_log_segments: {}", log.segments);
            let oldest = log
                .oldest
                .map_or_else(|| "none".to_owned(), |l| l.to_string());
            let _ = writeln!(out, "resume_log_oldest: {oldest}");
            let _ = writeln!(out, "resume_log_durable: {}", log.durable);
        }
        None => out.push_str("resume_log: off\n"),
    }
    out
}

pub async fn route(
    state: Arc<HttpState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => upgrade(&state, req),
        (&Method::GET, "/sse/connect") => sse::connect(&state.sse, &req),
        (&Method::POST, "/sse/msg") => {
            sse::message(&state.sse, req, state.ws.config.max_frame_bytes).await
        }
        (&Method::OPTIONS, "/sse/msg" | "/sse/connect" | "/publish" | "/destroy") => {
            cors::preflight()
        }
        (&Method::POST, "/publish") => state.publish.handle(req).await,
        (&Method::POST, "/destroy") => state.publish.handle_destroy(req).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let ready = state.status.streaming() && state.db.is_reachable().await;
            let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
            body.push_str(&readiness_details(&state.status));
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "text/plain; charset=utf-8", body)
        }
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::telemetry::render(),
        ),
        (&Method::GET, "/client.js") => respond(
            StatusCode::OK,
            "application/javascript; charset=utf-8",
            CLIENT_JS,
        ),
        (&Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, "/dashboard") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD_HTML)
        }
        _ if path.starts_with("/demo/") => match &state.demo {
            Some(demo) => demo.handle(req).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// `?sbpk=` or the `SB-PUBLIC-KEY` header names the app.
fn app_key(req: &Request<Incoming>) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "sbpk")
            .map(|(_, v)| v.to_owned())
    });
    from_query
        .or_else(|| {
            req.headers()
                .get("SB-PUBLIC-KEY")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|k| !k.is_empty())
}

fn upgrade(state: &Arc<HttpState>, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
    }
    let key = app_key(&req);
    let deflate = crate::ws::deflate::negotiate(
        state.ws.config.compression,
        req.headers()
            .get_all(SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let (mut response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => return text(StatusCode::BAD_REQUEST, "invalid websocket upgrade\n"),
    };
    if let Some(agreed) = deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_EXTENSIONS, agreed);
    }
    let ws = Arc::clone(&state.ws);
    state.sockets.spawn(async move {
        match upgrade.await {
            Ok(socket) => serve_socket(ws, socket.into_inner(), key, deflate).await,
            Err(error) => {
                tracing::debug!(error = &error as &dyn std::error::Error, "upgrade failed")
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()).boxed_unsync())
}
