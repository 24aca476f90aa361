//! The HTTP edge of the SSE transport (PROTOCOL.md §1b): `GET /sse/connect` and
//! `POST /sse/msg`.

use super::cors::allow_any_origin;
use super::{app_key, read_body, Body};
use crate::sse::{Posted, SseStreams};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// `GET /sse/connect?sbpk=<app>`: 200 and the event stream (`init` first).
pub fn connect(streams: &Arc<SseStreams>, req: &Request<Incoming>) -> Response<Body> {
    let body = streams.open(app_key(req));
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) would otherwise buffer the stream.
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    allow_any_origin(&mut response);
    response
}

/// `POST /sse/msg`: one client envelope for the stream its `sid` names. 200 `true` once handed
/// to that stream (whose replies go out on the stream), whatever the message's outcome.
pub async fn message(
    streams: &SseStreams,
    req: Request<Incoming>,
    max_frame_bytes: usize,
) -> Response<Body> {
    let (status, body) = match read_body(req, max_frame_bytes).await {
        None => (
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"error":"message too big"}"#,
        ),
        Some(body) => match streams.post(&body).await {
            Posted::Handled => (StatusCode::OK, "true"),
            Posted::UnknownSid => (StatusCode::NOT_FOUND, r#"{"error":"invalid sid"}"#),
            Posted::Unreadable => (StatusCode::BAD_REQUEST, r#"{"error":"invalid message"}"#),
        },
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    allow_any_origin(&mut response);
    response
}
