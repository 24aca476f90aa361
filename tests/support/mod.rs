//! Test support: a private PostgreSQL per test (from the installed server binaries), the
//! StaticBackend layout, a gateway on 127.0.0.1:0, and a real WebSocket client.

#![allow(dead_code)]

pub mod browser;
pub mod model;
pub mod nats;
pub mod serve;
pub mod sse;

pub use serve::{walcast_command, BIN};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;
use walcast::config::Settings;
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(15);

pub struct TestEnv {
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub url: String,
    pub db: Client,
    pub settings: Settings,
    // Dropped last: stops PostgreSQL even when a test panics.
    pub postgres: EmbeddedPostgres,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub id: Uuid,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub account: Uuid,
    pub user_token: String,
    pub jwt: String,
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// A private PostgreSQL with the StaticBackend layout and no gateway in this process (the
    /// cluster tests run gateways as child processes).
    pub async fn database_only() -> TestEnv {
        let postgres = EmbeddedPostgres::start(EmbeddedOptions::default())
            .await
            .expect("start private PostgreSQL");
        let url = postgres.create_database().await.expect("create database");
        let db = connect(&url).await;
        walcast::schema::migrate(&db, false).await.expect("migrate");
        let settings = Settings::new(url.clone(), SECRET);
        TestEnv {
            gateway: None,
            addr: settings.listen,
            url,
            db,
            settings,
            postgres,
        }
    }

    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> TestEnv {
        let mut env = Self::database_only().await;
        env.settings.listen = "127.0.0.1:0".parse().unwrap();
        tune(&mut env.settings);
        let gateway = Gateway::start(env.settings.clone())
            .await
            .expect("gateway start");
        env.addr = gateway.local_addr();
        env.gateway = Some(gateway);
        env
    }

    pub async fn sql(&self, sql: &str) {
        self.db
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn create_app(&self, name: &str) -> App {
        let row = self
            .db
            .query_one("SELECT sb.walcast_create_app($1)", &[&name])
            .await
            .expect("create app");
        App {
            name: name.to_owned(),
            id: row.get(0),
        }
    }

    pub async fn create_account(&self, app: &App) -> Uuid {
        let id = Uuid::new_v4();
        self.db
            .execute(
                &format!(
                    "INSERT INTO \"{}\".sb_accounts (id, email) VALUES ($1, $2)",
                    app.name
                ),
                &[&id, &format!("{id}@acct.test")],
            )
            .await
            .expect("create account");
        id
    }

    pub async fn create_user(&self, app: &App, account: Uuid, role: i32) -> User {
        let id = Uuid::new_v4();
        let user_token = format!("tok-{}", Uuid::new_v4().simple());
        self.db
            .execute(
                &format!(
                    "INSERT INTO \"{}\".sb_tokens (id, account_id, token, email, password, role, reset_code) \
                     VALUES ($1, $2, $3, $4, '', $5, '')",
                    app.name
                ),
                &[&id, &account, &user_token, &format!("{id}@user.test"), &role],
            )
            .await
            .expect("create user");
        let jwt = walcast::auth::issue_token(SECRET.as_bytes(), id, &user_token, 3600);
        User {
            id,
            account,
            user_token,
            jwt,
        }
    }

    /// A new app `name` with one account and one user of `role` in it.
    pub async fn app_with_user(&self, name: &str, role: i32) -> (App, Uuid, User) {
        let (app, account, [user]) = self.app_with_users(name, role).await;
        (app, account, user)
    }

    /// A new app `name` with one account and `N` users of `role` in it.
    pub async fn app_with_users<const N: usize>(
        &self,
        name: &str,
        role: i32,
    ) -> (App, Uuid, [User; N]) {
        let app = self.create_app(name).await;
        let account = self.create_account(&app).await;
        let mut users = Vec::with_capacity(N);
        for _ in 0..N {
            users.push(self.create_user(&app, account, role).await);
        }
        let users = users
            .try_into()
            .unwrap_or_else(|_| unreachable!("N users made"));
        (app, account, users)
    }

    pub async fn create_repo(&self, app: &App, repo: &str) {
        self.db
            .execute("SELECT sb.walcast_create_repo($1, $2)", &[&app.name, &repo])
            .await
            .expect("create repo");
    }

    /// Inserts a document; returns its id.
    pub async fn insert(
        &self,
        app: &App,
        repo: &str,
        account: Option<Uuid>,
        owner: Option<Uuid>,
        data: Value,
    ) -> Uuid {
        let row = self
            .db
            .query_one(
                &format!(
                    "INSERT INTO \"{}\".\"{repo}\" (account_id, owner_id, data, created) \
                     VALUES ($1, $2, $3::text::jsonb, now()) RETURNING id",
                    app.name
                ),
                &[&account, &owner, &data.to_string()],
            )
            .await
            .expect("insert");
        row.get(0)
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(self.addr, "").await
    }

    pub async fn ws_as(&self, user: &User) -> Ws {
        let mut ws = self.ws().await;
        ws.auth(&user.jwt).await;
        ws
    }

    pub async fn shutdown(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub sid: String,
    pub token: String,
}

impl Ws {
    /// Connected, before reading `init`.
    pub async fn connect_raw(addr: SocketAddr, query: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
            .await
            .expect("websocket connect");
        Ws {
            stream,
            sid: String::new(),
            token: String::new(),
        }
    }

    pub async fn connect(addr: SocketAddr, query: &str) -> Ws {
        let mut ws = Self::connect_raw(addr, query).await;
        let init = ws.recv().await;
        assert_eq!(init["type"], "init", "{init}");
        assert_eq!(init["sid"], "");
        ws.sid = init["data"].as_str().expect("sid").to_owned();
        ws
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Several messages in one write, as a client that batches its sends writes them.
    pub async fn send_together(&mut self, texts: Vec<String>) {
        for text in texts {
            self.stream.feed(Message::text(text)).await.expect("send");
        }
        self.stream.flush().await.expect("send");
    }

    /// A message with this connection's sid and websocket token.
    pub fn message(&self, kind: &str, data: &str, channel: &str) -> String {
        json!({"sid": self.sid, "type": kind, "data": data, "channel": channel, "token": self.token})
            .to_string()
    }

    /// Sends a message with this connection's sid and websocket token.
    pub async fn send(&mut self, kind: &str, data: &str, channel: &str) {
        let msg = json!({"sid": self.sid, "type": kind, "data": data, "channel": channel, "token": self.token});
        self.send_text(msg.to_string()).await;
    }

    /// Next text message, parsed. Pings are answered by tungstenite itself.
    pub async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection ended")
                .expect("websocket error");
            match next {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("server sent invalid JSON")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Next text message, or `None` when the connection ends, fails or stays silent for
    /// [`WAIT`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match next {
                Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
                Message::Ping(_) | Message::Pong(_) => continue,
                _ => return None,
            }
        }
    }

    /// `join` with `since`: returns `recovered` of the `joined` reply.
    pub async fn join_since(&mut self, channel: &str, since: &str) -> bool {
        let msg = json!({"sid": self.sid, "type": "join", "data": channel, "token": self.token, "since": since});
        self.send_text(msg.to_string()).await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "joined", "{reply}");
        assert_eq!(reply["data"], channel);
        reply["recovered"]
            .as_bool()
            .expect("recovered is a boolean")
    }

    /// Sends and returns the reply.
    pub async fn request(&mut self, kind: &str, data: &str, channel: &str) -> Value {
        self.send(kind, data, channel).await;
        self.recv().await
    }

    pub async fn auth(&mut self, jwt: &str) {
        let reply = self.request("auth", jwt, "").await;
        assert_eq!(reply["type"], "token", "{reply}");
        self.token = reply["data"].as_str().expect("token").to_owned();
    }

    pub async fn join(&mut self, channel: &str) {
        let reply = self.request("join", channel, "").await;
        assert_eq!(reply["type"], "joined", "{reply}");
        assert_eq!(reply["data"], channel);
    }

    /// Asserts the next message is a `kind` event on `channel` for document `id`; returns the
    /// document.
    pub async fn expect_id(&mut self, kind: &str, channel: &str, id: Uuid, why: &str) -> Value {
        let doc = event(&self.recv().await, kind, channel);
        assert_eq!(doc["id"], id.to_string(), "{why}");
        doc
    }

    /// Asserts the next message is a `db_deleted` event on `channel` for document `id`.
    pub async fn expect_deleted(&mut self, channel: &str, id: Uuid, why: &str) {
        let data = event(&self.recv().await, "db_deleted", channel);
        assert_eq!(data, Value::String(id.to_string()), "{why}");
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("connection failed before a close frame: {error}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// Asserts an event message and returns its parsed document (or id for deletes).
pub fn event(msg: &Value, kind: &str, channel: &str) -> Value {
    assert_eq!(msg["type"], kind, "{msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    assert_eq!(msg["sid"], "", "{msg}");
    assert_eq!(msg["token"], "", "{msg}");
    assert!(
        msg["lsn"].as_str().is_some_and(|l| l.contains('/')),
        "{msg}"
    );
    serde_json::from_str(msg["data"].as_str().expect("data is a string")).expect("data is JSON")
}

/// A response read by [`http`]: status code and body (the server closes after it).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    /// Status line and headers.
    pub head: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A tiny HTTP/1.1 client: one request with `Connection: close`, read to the end. Bounded by
/// [`WAIT`]. `headers` are extra `Name: value` lines; a body gets a `Content-Length`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("http connect");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .await
            .expect("http send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("http read");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("timed out waiting for an HTTP response");
    let text = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("response has a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked responses are not decoded here: {head}"
    );
    HttpResponse {
        status,
        body: body.to_owned(),
        head: head.to_owned(),
    }
}

/// `GET path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], "").await
}

/// A raw TCP socket after a completed WebSocket handshake on `/ws`, with the `init` frame read.
pub async fn raw_ws(addr: SocketAddr) -> TcpStream {
    raw_ws_sid(addr).await.0
}

/// [`raw_ws`] and the connection's sid.
pub async fn raw_ws_sid(addr: SocketAddr) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("handshake send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("handshake response"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let (op, init) = raw_frame(&mut stream).await;
    assert_eq!(op, 0x1);
    let init: Value = serde_json::from_slice(&init).expect("init is JSON");
    assert_eq!(init["type"], "init");
    let sid = init["data"].as_str().expect("sid").to_owned();
    (stream, sid)
}

/// A client frame as RFC 6455 §5.2 lays it out; masked with a fixed key unless `masked` is false.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one server frame from a raw socket: (opcode, payload).
pub async fn raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are unmasked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await.unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// Reads server frames until a close; returns its code and reason. Bounded by [`WAIT`].
pub async fn raw_close(stream: &mut TcpStream) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            let (op, payload) = raw_frame(stream).await;
            if op == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    })
    .await
    .expect("timed out waiting for a close frame")
}

/// A port free at the time of asking (for a gateway process to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
