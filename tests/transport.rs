//! Transport: TLS on the listener (wss://, https://, certificate reload on SIGHUP),
//! permessage-deflate against real clients (Python `websockets`, Chromium) beside plain ones, a
//! decompression bomb, and the bundled `/client.js` reconnecting after a refused attempt under
//! Node's built-in WebSocket, the `ws` package and Chromium.
//!
//! External clients: `python3` with `websockets`, `node` with `tests/js/node_modules/ws`, and
//! Chromium; `.ci/run` installs them.

use crate::support::browser::{Browser, Page};
use crate::support::{client_frame, TestEnv, User, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use walcast::gateway::Gateway;
use walcast::tls::TlsFiles;
use walcast::ws::deflate::CompressionMode;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A self-signed certificate for `localhost`, written as PEM; returns its DER for clients.
fn write_certificate(cert_path: &Path, key_path: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(cert_path, made.cert.pem()).unwrap();
    std::fs::write(key_path, made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// A TLS client trusting exactly `cert`.
fn connector(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    #[allow(deprecated)] // the provider the server uses; see src/tls.rs
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(cert).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("connection ended")
            .expect("websocket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_share_the_listener_and_sighup_swaps_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
    };
    let first = write_certificate(&files.cert, &files.key);
    let tls = files.clone();
    let mut env = TestEnv::start_with(move |s| s.tls = Some(tls)).await;
    let addr = env.addr;

    // HTTP routes over TLS.
    let mut https = tls_connect(addr, &first).await.expect("TLS handshake");
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    https.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");

    // The WebSocket protocol over TLS.
    let stream = tls_connect(addr, &first).await.unwrap();
    let (mut wss, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("wss upgrade");
    let init = next_json(&mut wss).await;
    assert_eq!(init["type"], "init", "{init}");
    let sid = init["data"].as_str().unwrap().to_owned();

    // Plain HTTP is not served on a TLS listener.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut head)).await;
    assert!(!head.starts_with(b"HTTP/1.1 200"));

    // Renew the files in place and send SIGHUP. The gateway registered its handler at start,
    // so the signal cannot end this test process.
    let second = write_certificate(&files.cert, &files.key);
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tls_connect(addr, &second).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        tls_connect(addr, &first).await.is_err(),
        "new handshakes get the new certificate only"
    );

    // The connection opened under the old certificate is still served.
    wss.send(Message::text(
        json!({"sid": sid, "type": "echo", "data": "still here", "channel": "", "token": ""})
            .to_string(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut wss).await;
    assert_eq!(reply["type"], "echo", "{reply}");
    assert_eq!(reply["data"], "echo: still here", "{reply}");

    // A broken renewal keeps the current certificate.
    std::fs::write(&files.key, "garbage").unwrap();
    let gateway = env.gateway.as_ref().unwrap();
    assert!(gateway.reload_tls().is_err());
    tls_connect(addr, &second)
        .await
        .expect("still serving the last good certificate");
    env.shutdown().await;
}

/// A member of `room` and `db-notes` on Python `websockets`, which offers permessage-deflate.
struct PythonMember {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    extensions: String,
}

impl PythonMember {
    async fn start(env: &TestEnv, user: &User) -> PythonMember {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/py/deflate_client.py"))
            .arg(format!("ws://{}/ws", env.addr))
            .arg(&user.jwt)
            .args(["room", "db-notes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = next_line(&mut lines).await;
        let extensions = first["extensions"].as_str().unwrap_or_default().to_owned();
        let ready = next_line(&mut lines).await;
        assert!(ready["ready"].is_string(), "{ready}");
        PythonMember {
            child,
            lines,
            extensions,
        }
    }

    async fn publish(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        next_line(&mut self.lines).await
    }
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>) -> Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("timed out waiting for the client's output")
        .unwrap()
        .expect("the client exited early (python3 with `websockets` installed?)");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

fn is_event(message: &Value) -> bool {
    matches!(message["type"].as_str(), Some("chan_out" | "db_created"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_plain_members_of_a_channel_get_the_same_messages() {
    let env = TestEnv::start_with(|s| s.ws.compression.mode = CompressionMode::On).await;
    let (app, account, user) = env.app_with_user("deflated", 0).await;
    env.create_repo(&app, "notes").await;

    let mut plain = env.ws_as(&user).await;
    plain.join("room").await;
    plain.join("db-notes").await;
    let mut python = PythonMember::start(&env, &user).await;
    assert!(
        python.extensions.starts_with("permessage-deflate"),
        "negotiated: {:?}",
        python.extensions
    );

    // Large, repetitive messages: Python compresses what it sends, the server what it fans out.
    let from_python = "python says ".repeat(200);
    let from_plain = "plain says ".repeat(300);
    python.publish(&from_python).await;
    let mut plain_events = Vec::new();
    while plain_events.is_empty() {
        let message = plain.recv().await;
        if is_event(&message) {
            plain_events.push(message);
        }
    }
    // Written together, so published as one burst: the compressed member gets each message
    // compressed or not on its own (the short one is under the threshold).
    let texts = [
        from_plain.as_str(),
        "tiny",
        "plain again ".repeat(300).as_str(),
    ]
    .iter()
    .map(|data| plain.message("chan_in", data, "room"))
    .collect();
    plain.send_together(texts).await;
    let id = env
        .insert(
            &app,
            "notes",
            Some(account),
            Some(user.id),
            json!({"text": "x".repeat(2000)}),
        )
        .await;
    while plain_events.len() < 5 {
        let message = plain.recv().await;
        if is_event(&message) {
            plain_events.push(message);
        }
    }
    let mut python_events = Vec::new();
    while python_events.len() < 5 {
        let message = python.recv().await;
        assert!(message.get("ended").is_none(), "{message}");
        if is_event(&message) {
            python_events.push(message);
        }
    }
    assert_eq!(python_events, plain_events);
    assert_eq!(plain_events[0]["data"], from_python.as_str());
    assert_eq!(plain_events[1]["data"], from_plain.as_str());
    assert_eq!(plain_events[2]["data"], "tiny");
    assert_eq!(plain_events[3]["data"], "plain again ".repeat(300).as_str());
    let doc: Value = serde_json::from_str(plain_events[4]["data"].as_str().unwrap()).unwrap();
    assert_eq!(doc["id"], id.to_string());
}

/// A raw client: handshake offering permessage-deflate, then frames by hand.
struct RawClient {
    stream: BufReader<TcpStream>,
}

impl RawClient {
    async fn connect(addr: std::net::SocketAddr, offer: bool) -> (RawClient, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let extension = if offer {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (RawClient { stream }, head)
    }

    /// (first byte, payload) of the next server frame.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        let read = async {
            let b0 = self.stream.read_u8().await?;
            let len = match self.stream.read_u8().await? {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.stream.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((b0, payload))
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended")
    }

    /// `first_byte` carries FIN, RSV1 (compressed) and the opcode as sent on the wire.
    async fn send(&mut self, first_byte: u8, payload: &[u8]) {
        let mut out = client_frame(true, 0, payload, true);
        out[0] = first_byte;
        self.stream.get_mut().write_all(&out).await.unwrap();
    }

    /// The close code the server sends, skipping other frames.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (b0, payload) = self.frame().await;
            if b0 & 0x0F == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// Raw deflate with a sync flush, the trailing 00 00 ff ff removed (RFC 7692 §7.2.1), as a
/// client compresses, at the best ratio.
fn client_deflate(data: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 1024);
    loop {
        let consumed = compressor.total_in() as usize;
        compressor
            .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        if compressor.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_closes_1009_and_nothing_else() {
    let env = TestEnv::start().await;
    let mut bystander = env.ws().await;

    let (mut client, head) = RawClient::connect(env.addr, true).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    let (b0, _init) = client.frame().await;
    assert_eq!(b0 & 0x0F, 0x1);
    // A small compressed message that inflates to 10 MB, past --max-frame-bytes (64 KiB).
    let bomb = client_deflate(&vec![b' '; 10 << 20]);
    assert!(
        bomb.len() < 64 * 1024,
        "the bomb itself fits: {}",
        bomb.len()
    );
    client.send(0xC1, &bomb).await;
    assert_eq!(client.close_code().await, 1009);

    // A well-formed compressed message on another connection is served.
    let (mut good, _) = RawClient::connect(env.addr, true).await;
    let (_, init) = good.frame().await;
    let init: Value = serde_json::from_slice(&init).unwrap();
    let echo =
        json!({"sid": init["data"], "type": "echo", "data": "hi", "channel": "", "token": ""});
    good.send(0xC1, &client_deflate(echo.to_string().as_bytes()))
        .await;
    let (b0, reply) = good.frame().await;
    assert_eq!(b0 & 0x0F, 0x1, "a text reply");
    let reply: Value = serde_json::from_slice(&reply).expect("small replies are not compressed");
    assert_eq!(reply["data"], "echo: hi", "{reply}");

    // RSV1 without a negotiated extension is a protocol error.
    let (mut unnegotiated, head) = RawClient::connect(env.addr, false).await;
    assert!(!head.to_ascii_lowercase().contains("permessage-deflate"));
    let _init = unnegotiated.frame().await;
    unnegotiated
        .send(0xC1, &client_deflate(echo.to_string().as_bytes()))
        .await;
    assert_eq!(unnegotiated.close_code().await, 1002);

    // The bystander never noticed.
    bystander.send("echo", "still fine", "").await;
    assert_eq!(bystander.recv().await["data"], "echo: still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_off_negotiates_nothing() {
    let env = TestEnv::start_with(|s| s.ws.compression.mode = CompressionMode::Off).await;
    let (mut client, head) = RawClient::connect(env.addr, true).await;
    assert!(
        !head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
    let (b0, _) = client.frame().await;
    assert_eq!(b0, 0x81, "init is a plain text frame");
}

/// The status changes of a client under test, one at a time.
trait StatusFeed {
    async fn next(&mut self) -> Value;

    /// Waits for `status`, returning everything seen before it.
    async fn until(&mut self, status: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let line = self.next().await;
            if line["status"] == status {
                return seen;
            }
            seen.push(line);
        }
    }
}

/// JSON lines printed by `tests/js/reconnect.js`.
struct NodeFeed(Lines<BufReader<ChildStdout>>);

impl StatusFeed for NodeFeed {
    async fn next(&mut self) -> Value {
        next_line(&mut self.0).await
    }
}

/// `window.__statuses` of a page.
struct PageFeed<'a> {
    page: &'a Page,
    read: usize,
}

impl StatusFeed for PageFeed<'_> {
    async fn next(&mut self) -> Value {
        let at = self.read;
        self.read += 1;
        self.page
            .wait_until(&format!("__statuses.length > {at}"), WAIT)
            .await
            .unwrap();
        self.page.eval(&format!("__statuses[{at}]")).await.unwrap()
    }
}

/// True when, among `statuses`, an attempt ended without ever opening: "connecting" followed
/// directly by "closed".
fn has_refused_attempt(statuses: &[Value]) -> bool {
    statuses
        .windows(2)
        .any(|w| w[0]["status"] == "connecting" && w[1]["status"] == "closed")
}

/// Stops the gateway, lets the client fail at least one attempt against the closed port, then
/// starts a new gateway on the same address: the client must authenticate again.
async fn refused_then_back(env: &mut TestEnv, feed: &mut impl StatusFeed) {
    feed.until("authenticated").await;
    env.shutdown().await;
    let mut statuses = Vec::new();
    while !has_refused_attempt(&statuses) {
        statuses.push(feed.next().await);
    }
    let mut settings = env.settings.clone();
    settings.listen = env.addr;
    env.gateway = Some(Gateway::start(settings).await.expect("gateway restart"));
    feed.until("authenticated").await;
}

async fn node_reconnects(runtime: &str) {
    let mut env = TestEnv::start().await;
    let (_, _, user) = env.app_with_user("nodeapp", 0).await;

    let mut command = Command::new("node");
    if runtime == "builtin" {
        // Node 22 has WebSocket globally; Node 20 behind a flag.
        let probe = std::process::Command::new("node")
            .args(["-p", "typeof WebSocket"])
            .output()
            .expect("node");
        if String::from_utf8_lossy(&probe.stdout).trim() != "function" {
            command.arg("--experimental-websocket");
        }
    }
    let mut child = command
        .arg(repo_path("tests/js/reconnect.js"))
        .arg(runtime)
        .arg(repo_path("src/http/assets/client.js"))
        .arg(format!("ws://{}/ws", env.addr))
        .arg(&user.jwt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut feed = NodeFeed(BufReader::new(child.stdout.take().unwrap()).lines());
    refused_then_back(&mut env, &mut feed).await;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_reconnects_after_a_refused_attempt_under_node_builtin_websocket() {
    node_reconnects("builtin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_reconnects_after_a_refused_attempt_under_the_ws_package() {
    assert!(
        repo_path("tests/js/node_modules/ws").exists(),
        "run `npm install` in tests/js (done by .ci/run)"
    );
    node_reconnects("ws").await;
}

const CLIENT_JS: &str = include_str!("../src/http/assets/client.js");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_deflate_and_client_js_reconnects() {
    let browser = Browser::launch()
        .await
        .unwrap_or_else(|e| panic!("headless Chromium: {e}"));
    let mut env = TestEnv::start_with(|s| s.ws.compression.mode = CompressionMode::On).await;
    let (app, account, user) = env.app_with_user("chromeapp", 0).await;
    env.create_repo(&app, "notes").await;
    let page = browser
        .open(&format!("http://{}/healthz", env.addr))
        .await
        .expect("open page");

    // A bare browser WebSocket: what did it negotiate, and what does it receive?
    let setup = format!(
        "window.__msgs = []; window.__ws = new WebSocket('ws://{addr}/ws'); \
         __ws.onmessage = e => {{ const m = JSON.parse(e.data); __msgs.push(m); \
           if (m.type === 'init') __ws.send(JSON.stringify({{sid: m.data, type: 'auth', data: {jwt}, channel: '', token: ''}})); \
           if (m.type === 'token') {{ for (const ch of ['room', 'db-notes']) \
             __ws.send(JSON.stringify({{sid: __msgs[0].data, type: 'join', data: ch, channel: '', token: m.data}})); }} }}; true",
        addr = env.addr,
        jwt = Value::from(user.jwt.as_str()),
    );
    page.eval(&setup).await.unwrap();
    page.wait_until(
        "window.__msgs.filter(m => m.type === 'joined').length === 2",
        WAIT,
    )
    .await
    .unwrap();
    let extensions = page.eval("__ws.extensions").await.unwrap();
    assert!(
        extensions
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "{extensions}"
    );

    let mut plain = env.ws_as(&user).await;
    plain.join("room").await;
    plain.join("db-notes").await;
    let text = "from the plain member ".repeat(100);
    plain.send("chan_in", &text, "room").await;
    env.insert(&app, "notes", Some(account), Some(user.id), json!({"n": 1}))
        .await;
    let mut plain_events = Vec::new();
    while plain_events.len() < 2 {
        let message = plain.recv().await;
        if is_event(&message) {
            plain_events.push(message);
        }
    }
    page.wait_until(
        "__msgs.filter(m => m.type === 'chan_out' || m.type === 'db_created').length === 2",
        WAIT,
    )
    .await
    .unwrap();
    let browser_events = page
        .eval("__msgs.filter(m => m.type === 'chan_out' || m.type === 'db_created')")
        .await
        .unwrap();
    assert_eq!(browser_events, Value::from(plain_events));
    page.eval("__ws.close(); true").await.unwrap();

    // The bundled client across a refused attempt.
    page.eval(&format!("{CLIENT_JS}; true")).await.unwrap();
    page.eval(&format!(
        "window.__statuses = []; window.__client = new Walcast.Client({{url: 'ws://{addr}/ws', \
         sessionToken: {jwt}, minBackoffMs: 100, maxBackoffMs: 400, connectTimeoutMs: 3000}}); \
         __client.onStatus((s, d) => __statuses.push({{status: s, detail: d || null}})); true",
        addr = env.addr,
        jwt = Value::from(user.jwt.as_str()),
    ))
    .await
    .unwrap();
    let mut feed = PageFeed {
        page: &page,
        read: 0,
    };
    refused_then_back(&mut env, &mut feed).await;
    page.eval("__client.close(); true").await.unwrap();
    browser.close().await;
}
