//! Headless Chromium driven over the Chrome DevTools Protocol (one browser WebSocket, pages as
//! flattened target sessions). No npm, no WebDriver: just `chromium --remote-debugging-port=0`.
//!
//! The binary is `$WALCAST_CHROMIUM`, else `chromium` or `chromium-browser` on PATH; CI installs
//! Debian's package with `.ci/install-chromium`. A missing browser is an error, never a skip.

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on a single protocol command (navigation and promise awaits included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Console lines and exceptions kept per page, for failure messages.
const CONSOLE_KEEP: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "no Chromium found: set WALCAST_CHROMIUM or install Debian's `chromium` package \
         (.ci/install-chromium does)"
    )]
    Missing,
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chromium did not print its DevTools address; stderr:\n{stderr}")]
    NoDevTools { stderr: String },
    #[error("cannot connect to the DevTools WebSocket")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("DevTools connection closed")]
    Closed,
    #[error("{method} timed out")]
    Timeout { method: String },
    #[error("{method} failed: {error}")]
    Protocol { method: String, error: Value },
    #[error("script threw: {0}")]
    Script(String),
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Reply = Result<Value, Value>;

/// The browser-level DevTools connection, shared by every page.
struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// sessionId → console output and uncaught exceptions of that page.
    console: Mutex<HashMap<String, Vec<String>>>,
}

impl Cdp {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await;
        if sent.is_err() {
            self.pending.lock().unwrap().remove(&id);
            return Err(BrowserError::Closed);
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(BrowserError::Timeout {
                    method: method.to_owned(),
                })
            }
            Ok(Err(_)) => Err(BrowserError::Closed),
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(BrowserError::Protocol {
                method: method.to_owned(),
                error,
            }),
        }
    }

    /// Routes replies to their callers and keeps console output; ends with the connection.
    fn on_message(&self, msg: Value) {
        if let Some(id) = msg["id"].as_u64() {
            let reply = match msg.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(msg["result"].clone()),
            };
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let _ = tx.send(reply);
            }
            return;
        }
        let line = match msg["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = msg["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("").to_owned(),
                        other => other.to_string(),
                    })
                    .collect();
                format!(
                    "console.{}: {}",
                    msg["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let details = &msg["params"]["exceptionDetails"];
                format!(
                    "uncaught: {} {}",
                    details["text"].as_str().unwrap_or(""),
                    details["exception"]["description"].as_str().unwrap_or("")
                )
            }
            _ => return,
        };
        if let Some(session) = msg["sessionId"].as_str() {
            let mut console = self.console.lock().unwrap();
            let lines = console.entry(session.to_owned()).or_default();
            lines.push(line);
            if lines.len() > CONSOLE_KEEP {
                lines.remove(0);
            }
        }
    }
}

/// A headless Chromium with its own throwaway profile. `close()` ends it cleanly; dropping it
/// kills its whole process group. Either way the profile directory is removed.
pub struct Browser {
    cdp: Arc<Cdp>,
    process: Chromium,
    reader: tokio::task::JoinHandle<()>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The Chromium process group and its profile directory, cleaned up on drop.
struct Chromium {
    child: Child,
    /// Removed once no Chromium process can write there any more.
    profile: PathBuf,
}

/// `$WALCAST_CHROMIUM`, else the first of `chromium`, `chromium-browser` on PATH.
pub fn find_chromium() -> Result<PathBuf, BrowserError> {
    if let Some(path) = std::env::var_os("WALCAST_CHROMIUM").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or(BrowserError::Missing)
}

impl Browser {
    pub async fn launch() -> Result<Browser, BrowserError> {
        let binary = find_chromium()?;
        let profile_dir = tempfile::Builder::new()
            .prefix("walcast-chromium-")
            .tempdir()
            .map_err(|source| BrowserError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let child = Command::new(&binary)
            .args([
                "--headless=new",
                // Required when running as root (CI containers); the pages are our own.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                // Every page must keep its timers (reconnect backoff) running at full speed.
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group: renderers, GPU and network processes die with it (see Drop).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BrowserError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let mut process = Chromium {
            child,
            profile: profile_dir.keep(),
        };

        // Chromium announces its browser WebSocket on stderr; keep draining stderr afterwards so
        // that it never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(process.child.stderr.take().ok_or(
            BrowserError::NoDevTools {
                stderr: String::new(),
            },
        )?)
        .lines();
        let find = async {
            while let Ok(Some(line)) = lines.next_line().await {
                let found = line
                    .split_once("DevTools listening on ")
                    .map(|(_, url)| url.trim().to_owned());
                stderr.lock().unwrap().push(line);
                if found.is_some() {
                    return found;
                }
            }
            None
        };
        let url = match tokio::time::timeout(COMMAND_TIMEOUT, find).await {
            Ok(Some(url)) => url,
            _ => {
                return Err(BrowserError::NoDevTools {
                    stderr: stderr.lock().unwrap().join("\n"),
                });
            }
        };
        let drain = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = drain.lock().unwrap();
                kept.push(line);
                if kept.len() > CONSOLE_KEEP {
                    kept.remove(0);
                }
            }
        });

        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(BrowserError::Connect)?;
        let (sink, mut stream) = ws.split();
        let cdp = Arc::new(Cdp {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            console: Mutex::new(HashMap::new()),
        });
        let routed = Arc::clone(&cdp);
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                if let Message::Text(text) = frame {
                    if let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) {
                        routed.on_message(msg);
                    }
                }
            }
            // Connection gone: fail whoever still waits instead of letting them time out.
            routed.pending.lock().unwrap().clear();
        });
        Ok(Browser {
            cdp,
            process,
            reader,
            stderr,
        })
    }

    /// A new tab (its own window, so it is never a throttled background tab) showing `url`.
    pub async fn open(&self, url: &str) -> Result<Page, BrowserError> {
        let target = self
            .cdp
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "newWindow": true}),
            )
            .await?;
        let target_id = target["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let page = Page {
            cdp: Arc::clone(&self.cdp),
            session,
        };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        page.navigate(url).await?;
        Ok(page)
    }

    /// Asks Chromium to quit and waits (bounded) until it has; `Drop` then removes the profile.
    pub async fn close(mut self) {
        let _ = self.cdp.call(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.process.child.wait()).await;
    }

    /// Chromium's last stderr lines (diagnostics).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The browser process alone dying leaves its children writing to the profile for a
        // moment, so the whole group goes.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// One tab, addressed through its flattened session.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    pub async fn navigate(&self, url: &str) -> Result<(), BrowserError> {
        let result = self.call("Page.navigate", json!({"url": url})).await?;
        match result["errorText"].as_str() {
            Some(error) if !error.is_empty() => Err(BrowserError::Protocol {
                method: "Page.navigate".into(),
                error: json!(error),
            }),
            _ => Ok(()),
        }
    }

    /// Evaluates `js` in the page; a returned promise is awaited. Returns the value as JSON.
    pub async fn eval(&self, js: &str) -> Result<Value, BrowserError> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception")
                .to_owned();
            return Err(BrowserError::Script(text));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `predicate` (a JS expression) every 100 ms until it is truthy; errors after
    /// `timeout`. Script errors while polling count as "not yet" (the page may be navigating).
    pub async fn wait_until(&self, predicate: &str, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last: Value;
        loop {
            match self.eval(&format!("!!({predicate})")).await {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(other) => last = other,
                Err(error) => last = json!(error.to_string()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for `{predicate}` (last: {last})\n{}",
                    self.diagnostics().await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PNG bytes of the visible viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        base64_decode(shot["data"].as_str().unwrap_or_default())
            .ok_or_else(|| BrowserError::Script("screenshot is not base64".into()))
    }

    /// Console output and uncaught exceptions seen so far.
    pub fn console(&self) -> Vec<String> {
        self.cdp
            .console
            .lock()
            .unwrap()
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    /// What a failure message needs: URL, the demo's status and event log, the console.
    pub async fn diagnostics(&self) -> String {
        let state = self
            .eval(
                "JSON.stringify({url: location.href, \
                   status: (document.getElementById('status') || {}).textContent, \
                   error: (document.getElementById('error') || {}).textContent, \
                   log: [...document.querySelectorAll('#event-log li')].slice(0, 15).map(li => li.textContent)}, null, 1)",
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|e| format!("(page state unavailable: {e})"));
        format!(
            "page state: {state}\nconsole:\n  {}",
            self.console().join("\n  ")
        )
    }
}

/// Standard base64 (with padding), as DevTools encodes binary results.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n == 1 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}
