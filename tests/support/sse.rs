//! A Server-Sent Events client for tests: the stream read over hyper's HTTP/1.1 client (chunked
//! decoding included), messages posted to `/sse/msg` like the StaticBackend JS client does.

use super::{http, HttpResponse, WAIT};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One block of the stream, as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A `data:` event, parsed.
    Event(Value),
    /// A comment line (`: …`), without the colon.
    Comment(String),
}

pub struct Sse {
    pub addr: SocketAddr,
    pub sid: String,
    /// The token sent on every message: the session JWT once authenticated.
    pub token: String,
    /// Response headers of `/sse/connect`.
    pub headers: hyper::HeaderMap,
    blocks: mpsc::UnboundedReceiver<Block>,
    reader: tokio::task::JoinHandle<()>,
    /// Drives the HTTP connection; aborting it closes the socket.
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Sse {
    /// Opens `/sse/connect{query}` and reads `init`.
    pub async fn connect(addr: SocketAddr, query: &str) -> Sse {
        let mut sse = Self::open(addr, query).await;
        let init = sse.recv().await;
        assert_eq!(init["type"], "init", "{init}");
        assert_eq!(init["sid"], "", "{init}");
        sse.sid = init["data"].as_str().expect("sid").to_owned();
        sse
    }

    /// Opens the stream without reading anything from it.
    pub async fn open(addr: SocketAddr, query: &str) -> Sse {
        let stream = TcpStream::connect(addr).await.expect("sse connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("http handshake");
        let request = Request::get(format!("/sse/connect{query}"))
            .header("Host", addr.to_string())
            .header("Accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (tx, blocks) = mpsc::unbounded_channel();
        let driver = tokio::spawn(conn);
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .expect("timed out opening the stream")
            .expect("sse request");
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let reader = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                buffer.push_str(std::str::from_utf8(&chunk).expect("stream is UTF-8"));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    for line in block.lines().filter(|l| !l.is_empty()) {
                        let parsed = if let Some(data) = line.strip_prefix("data: ") {
                            Block::Event(serde_json::from_str(data).expect("event is JSON"))
                        } else if let Some(comment) = line.strip_prefix(':') {
                            Block::Comment(comment.trim().to_owned())
                        } else {
                            panic!("unexpected stream line {line:?}");
                        };
                        if tx.send(parsed).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Sse {
            addr,
            sid: String::new(),
            token: String::new(),
            headers,
            blocks,
            reader,
            driver,
        }
    }

    /// The next block; `None` once the stream ended.
    pub async fn next_block(&mut self) -> Option<Block> {
        tokio::time::timeout(WAIT, self.blocks.recv())
            .await
            .expect("timed out waiting on the event stream")
    }

    /// The next event (comments skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_block().await {
                Some(Block::Event(value)) => return value,
                Some(Block::Comment(_)) => continue,
                None => panic!("event stream ended"),
            }
        }
    }

    /// Waits for the end of the stream; returns the comments seen on the way (events are an
    /// error).
    pub async fn ended(&mut self) -> Vec<String> {
        let mut comments = Vec::new();
        loop {
            match self.next_block().await {
                None => return comments,
                Some(Block::Comment(c)) => comments.push(c),
                Some(Block::Event(e)) => panic!("event {e} before the end"),
            }
        }
    }

    /// Posts a raw body to `/sse/msg`.
    pub async fn post_raw(&self, body: &str) -> HttpResponse {
        http(
            self.addr,
            "POST",
            "/sse/msg",
            &[("Authorization", &format!("Bearer {}", self.token))],
            body,
        )
        .await
    }

    /// Posts a message the way the JS client does (its sid and token; no channel key when
    /// empty); asserts the HTTP answer is 200 `true`.
    pub async fn send(&self, kind: &str, data: &str, channel: &str) {
        let mut msg = json!({"sid": self.sid, "token": self.token, "type": kind, "data": data});
        if !channel.is_empty() {
            msg["channel"] = json!(channel);
        }
        let answer = self.post_raw(&msg.to_string()).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "true"));
    }

    pub async fn request(&mut self, kind: &str, data: &str, channel: &str) -> Value {
        self.send(kind, data, channel).await;
        self.recv().await
    }

    /// `auth` with the session JWT; from then on the JWT is the token.
    pub async fn auth(&mut self, jwt: &str) {
        self.token = jwt.to_owned();
        let reply = self.request("auth", jwt, "").await;
        assert_eq!(reply["type"], "token", "{reply}");
        assert_eq!(reply["sid"], self.sid.as_str(), "{reply}");
    }

    pub async fn join(&mut self, channel: &str) {
        let reply = self.request("join", channel, "").await;
        assert_eq!(reply["type"], "joined", "{reply}");
        assert_eq!(reply["data"], channel);
    }

    /// Like a browser tab closing: the connection goes away without a word.
    pub fn vanish(self) {}
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.reader.abort();
        self.driver.abort();
    }
}
