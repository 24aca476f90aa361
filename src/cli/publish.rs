//! `walcast publish`: one message to a custom channel through a gateway's `POST /publish`, for
//! scripts and data jobs. Prints the gateway's JSON answer; a refusal exits non-zero with the
//! gateway's error.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use std::io::Read;
use tokio::net::TcpStream;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The gateway's base URL (http).
    #[arg(long, env = "WALCAST_URL", default_value = "http://127.0.0.1:8099")]
    url: String,
    /// The app: its public key (sbpk) or schema name. Optional with a root session token.
    #[arg(long, env = "WALCAST_APP")]
    app: Option<String>,
    /// The gateway's publish key (`serve --publish-key`).
    #[arg(long, env = "WALCAST_PUBLISH_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A root user's session JWT; used instead of the publish key when both are set.
    #[arg(long, env = "WALCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The custom channel.
    #[arg(long)]
    channel: String,
    /// The message's `data` (sent as a string); `-` reads it from standard input.
    #[arg(long)]
    data: String,
    /// Retries with the same key within the gateway's window are delivered once.
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub async fn run(args: PublishArgs) -> Result<()> {
    let data = if args.data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading data from standard input")?;
        text
    } else {
        args.data
    };
    let Some(bearer) = args.token.or(args.key) else {
        bail!("no credentials: pass --key (WALCAST_PUBLISH_KEY) or --token (WALCAST_TOKEN)");
    };
    let mut body = json!({"channel": args.channel, "data": data});
    if let Some(app) = args.app {
        body["app"] = json!(app);
    }
    if let Some(key) = args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    let (status, answer) = post(&args.url, &bearer, body.to_string()).await?;
    let parsed: Option<Value> = serde_json::from_slice(&answer).ok();
    if status.is_success() {
        println!("{}", String::from_utf8_lossy(&answer).trim_end());
        return Ok(());
    }
    let error = parsed
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
    bail!("publish refused ({}): {error}", status.as_u16());
}

/// `POST <url>/publish` over one HTTP/1.1 connection.
async fn post(url: &str, bearer: &str, body: String) -> Result<(hyper::StatusCode, Bytes)> {
    let base: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    if base.scheme_str() != Some("http") {
        bail!("only http:// gateway URLs are supported (got {url})");
    }
    let authority = base
        .authority()
        .with_context(|| format!("URL {url} has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host(), port))
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
    tokio::spawn(connection);
    let path = format!("{}/publish", base.path().trim_end_matches('/'));
    let request = Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Full::new(Bytes::from(body)))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, answer))
}
