//! The published `@staticbackend/js` client (1.7.0, unpatched, from npm) against walcast: its
//! `connect()` speaks Server-Sent Events. In Node (with the `eventsource` polyfill) and in
//! headless Chromium (the package's browser build, on a page of another origin, so CORS is
//! exercised): auth, join a db channel and a custom one, a row inserted by SQL arrives, `send`
//! reaches a WebSocket member and the member's answer comes back.
//!
//! The npm packages live in `tests/staticbackend-js` (package.json + package-lock.json);
//! `.ci/run` installs them with `npm ci`.

use crate::support::browser::Browser;
use crate::support::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;

const REPO: &str = "tasks_760_";
const DB_CHANNEL: &str = "db-tasks_760_";
const ROOM: &str = "room-42";

/// The npm harness directory, installed.
fn harness() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/staticbackend-js");
    let package = dir.join("node_modules/@staticbackend/js/package.json");
    assert!(
        package.is_file(),
        "{} is missing: run `npm ci --prefix tests/staticbackend-js` (.ci/run does)",
        package.display()
    );
    dir
}

/// An app with a 760 repo, Alice (driven by the JS client) and Bob (a WebSocket member) in
/// one account.
struct Scene {
    env: TestEnv,
    app: App,
    account: uuid::Uuid,
    alice: User,
    bob: Ws,
}

impl Scene {
    async fn start() -> Scene {
        let env = TestEnv::start().await;
        let (app, account, [alice, bob_user]) = env.app_with_users("acme", 0).await;
        env.create_repo(&app, REPO).await;
        let mut bob = env.ws_as(&bob_user).await;
        bob.join(ROOM).await;
        Scene {
            env,
            app,
            account,
            alice,
            bob,
        }
    }

    async fn insert_row(&self, title: &str) -> uuid::Uuid {
        self.env
            .insert(
                &self.app,
                REPO,
                Some(self.account),
                Some(self.alice.id),
                json!({"title": title}),
            )
            .await
    }

    /// Bob receives the JS client's message and answers; returns the JS client's sid.
    async fn bob_answers(&mut self, expected: &str, answer: &str) -> String {
        let got = self.bob.recv().await;
        assert_eq!(got["type"], "chan_out", "{got}");
        assert_eq!(got["channel"], ROOM);
        assert_eq!(got["data"], expected);
        assert_eq!(got["token"], "", "the JWT is never forwarded");
        let sid = got["sid"].as_str().unwrap().to_owned();
        assert_eq!(
            self.bob.request("chan_in", answer, ROOM).await["type"],
            "ok"
        );
        assert_eq!(self.bob.recv().await["data"], answer, "Bob's own copy");
        sid
    }
}

/// Messages the JS client reported, in order.
struct Seen(Vec<Value>);

impl Seen {
    fn joined(&self, channel: &str) -> bool {
        self.0
            .iter()
            .any(|m| m["type"] == "joined" && m["data"] == channel)
    }

    fn find(&self, kind: &str, data_contains: &str) -> Option<&Value> {
        self.0.iter().find(|m| {
            m["type"] == kind
                && m["data"]
                    .as_str()
                    .is_some_and(|d| d.contains(data_contains))
        })
    }
}

/// Asks the Node driver to call `send(...args)`.
async fn command(stdin: &mut tokio::process::ChildStdin, args: Value) {
    stdin
        .write_all(format!("{args}\n").as_bytes())
        .await
        .expect("node driver stdin");
}

#[tokio::test]
async fn published_js_client_connect_in_node() {
    let dir = harness();
    let mut scene = Scene::start().await;
    let mut node = Command::new(std::env::var("WALCAST_NODE").unwrap_or_else(|_| "node".into()))
        .current_dir(&dir)
        .arg("drive.mjs")
        .arg(format!("http://{}", scene.env.addr))
        .arg(scene.app.id.to_string())
        .arg(&scene.alice.jwt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node (set WALCAST_NODE or put node on PATH)");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut stderr = node.stderr.take().unwrap();
    let mut seen = Seen(Vec::new());
    // The next line the client reports.
    macro_rules! next {
        () => {{
            let line = tokio::time::timeout(WAIT, lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => serde_json::from_str::<Value>(&line).expect("JSON line"),
                other => {
                    let mut err = String::new();
                    let _ = stderr.read_to_string(&mut err).await;
                    panic!(
                        "node reported nothing ({other:?}); seen {:?}\n{err}",
                        seen.0
                    );
                }
            }
        }};
    }

    let auth = next!();
    assert_eq!(
        auth["auth"],
        scene.alice.jwt.as_str(),
        "onAuth gets the session token"
    );
    for channel in [DB_CHANNEL, ROOM] {
        command(&mut stdin, json!(["join", channel])).await;
        while !seen.joined(channel) {
            seen.0.push(next!()["message"].clone());
        }
    }
    let id = scene.insert_row("from SQL").await;
    while seen.find("db_created", &id.to_string()).is_none() {
        seen.0.push(next!()["message"].clone());
    }
    let created = seen.find("db_created", &id.to_string()).unwrap();
    assert_eq!(created["channel"], DB_CHANNEL);

    command(&mut stdin, json!(["chan_in", "hello from node", ROOM])).await;
    let sid = scene.bob_answers("hello from node", "hello back").await;
    while seen.find("chan_out", "hello back").is_none() {
        seen.0.push(next!()["message"].clone());
    }
    let back = seen.find("chan_out", "hello back").unwrap();
    assert_eq!(back["sid"], scene.bob.sid.as_str());
    let own = seen.find("chan_out", "hello from node").expect("own copy");
    assert_eq!(own["sid"], sid.as_str());
    assert!(
        seen.find("error", "").is_none(),
        "no error reached the client: {:?}",
        seen.0
    );

    drop(stdin);
    let status = tokio::time::timeout(WAIT, node.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "node exited with {status}");
}

/// Serves the test page and the package's browser build from another origin than the gateway.
async fn serve_page(html: String, script: Vec<u8>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (html, script) = (html.clone(), script.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let path = String::from_utf8_lossy(&request)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                let (status, kind, body) = match path.as_str() {
                    "/" => ("200 OK", "text/html", html.into_bytes()),
                    "/backend.js" => ("200 OK", "application/javascript", script),
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn published_js_client_connect_in_chromium() {
    let dir = harness();
    let script = std::fs::read(dir.join("node_modules/@staticbackend/js/dist/backend.js"))
        .expect("the package's browser build");
    let mut scene = Scene::start().await;
    let config = json!({
        "base": format!("http://{}", scene.env.addr),
        "app": scene.app.id.to_string(),
        "jwt": scene.alice.jwt,
    });
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>sb</title>\
         <script src=\"/backend.js\"></script>\
         <script>\
           const config = {config};\
           window.seen = []; window.authed = null;\
           window.backend = new sb.Backend(config.app, config.base);\
           backend.connect(config.jwt, t => {{ window.authed = t; }}, m => seen.push(m));\
         </script>"
    );
    let page_addr = serve_page(html, script).await;
    let browser = Browser::launch().await.expect("launch chromium");
    let page = browser
        .open(&format!("http://{page_addr}/"))
        .await
        .expect("open the page");
    let wait = |predicate: String| {
        let page = &page;
        async move {
            page.wait_until(&predicate, WAIT)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    wait(format!("window.authed === {}", json!(scene.alice.jwt))).await;
    for channel in [DB_CHANNEL, ROOM] {
        page.eval(&format!("backend.send('join', {})", json!(channel)))
            .await
            .unwrap();
        wait(format!(
            "seen.some(m => m.type === 'joined' && m.data === {})",
            json!(channel)
        ))
        .await;
    }
    let id = scene.insert_row("from SQL").await;
    wait(format!(
        "seen.some(m => m.type === 'db_created' && m.channel === {} && JSON.parse(m.data).id === {})",
        json!(DB_CHANNEL),
        json!(id.to_string())
    ))
    .await;
    page.eval(&format!(
        "backend.send('chan_in', 'hello from chromium', {})",
        json!(ROOM)
    ))
    .await
    .unwrap();
    scene
        .bob_answers("hello from chromium", "hello browser")
        .await;
    wait(format!(
        "seen.some(m => m.type === 'chan_out' && m.data === 'hello browser' && m.sid === {})",
        json!(scene.bob.sid)
    ))
    .await;
    let errors = page
        .eval("JSON.stringify(seen.filter(m => m.type === 'error'))")
        .await
        .unwrap();
    assert_eq!(errors, json!("[]"), "{}", page.diagnostics().await);
    browser.close().await;
}
