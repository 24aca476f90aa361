//! CORS for the routes a browser page on another origin calls: the SSE transport (what the
//! published StaticBackend client does from any site) and the publish API. Credentials travel in
//! headers, never cookies, so any origin may call.

use super::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
};
use hyper::{Response, StatusCode};

/// Headers a browser may send (the StaticBackend client sends all three). Named: a `*` never
/// covers `Authorization`.
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, SB-PUBLIC-KEY";

pub fn allow_any_origin(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
}

/// `OPTIONS` preflight: 204, no key or auth needed.
pub fn preflight() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    allow_any_origin(&mut response);
    response
}
