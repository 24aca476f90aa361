//! End to end in headless Chromium: the demo page (`/`) and its JavaScript client against a real
//! gateway and PostgreSQL. Alice and Bob (account A) and Carol (account B) each have a tab.
//!
//! "Carol never receives account A's rows" is shown without sleeping: after the account A rows,
//! an account B row is inserted, and once Carol shows it she must not show any account A row
//! (a subscriber receives events in commit order); the same the other way round.
//!
//! `WALCAST_SCREENSHOT_DIR=<dir>` keeps a screenshot of each page there.

use crate::support::browser::{Browser, Page};
use crate::support::{connect, SECRET};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::Client;
use walcast::config::Settings;
use walcast::gateway::Gateway;
use walcast_replication::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// Bound on every wait: generous for a loaded CI machine, short enough not to hang it.
const WAIT: Duration = Duration::from_secs(30);

const ACCOUNT_A: &str = "a0000000-0000-4000-8000-00000000000a";
const ALICE: &str = "a1000000-0000-4000-8000-0000000000a1";
const ACCOUNT_B: &str = "b0000000-0000-4000-8000-00000000000b";
const CAROL: &str = "c1000000-0000-4000-8000-0000000000c1";

/// A port that is free now, so that a restarted gateway can listen on the same address.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A gateway on its own runtime, as if it were its own process: it can be killed outright (every
/// task and socket dropped, no close frames, no final confirmation), and a stuck gateway cannot
/// starve the test's timers or its browser connection.
struct GatewayProcess {
    runtime: Option<Runtime>,
    gateway: Option<Gateway>,
}

impl GatewayProcess {
    async fn start(settings: &Settings) -> GatewayProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gateway")
            .enable_all()
            .build()
            .unwrap();
        let started = runtime.spawn(Gateway::start(settings.clone()));
        let gateway = started
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("gateway start on {}: {e:?}", settings.listen));
        GatewayProcess {
            runtime: Some(runtime),
            gateway: Some(gateway),
        }
    }

    /// Like `kill -9`: the runtime goes away with everything on it.
    fn kill(mut self) {
        drop(self.gateway.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Dropping a runtime may block, which is not allowed inside the test's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// After a kill: PostgreSQL has noticed the replication connection is gone (the slot is free
/// again) and the listening socket is closed (the port can be bound again).
async fn wait_until_released(db: &Client, settings: &Settings) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let active: bool = db
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
                &[&settings.slot],
            )
            .await
            .unwrap()
            .get(0);
        let port_free = std::net::TcpListener::bind(settings.listen).is_ok();
        if !active && port_free {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "killed gateway not released: slot active {active}, port free {port_free}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn insert_task(db: &Client, account: &str, owner: &str, title: &str) {
    db.execute(
        "INSERT INTO demo.tasks_760_ (account_id, owner_id, data, created) \
         VALUES ($1::text::uuid, $2::text::uuid, $3::text::jsonb, now())",
        &[
            &account,
            &owner,
            &json!({"title": title, "done": false}).to_string(),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("insert {title:?}: {e:?}"));
}

/// A tab of the demo page as `email`, authenticated, with both channels joined and the list
/// loaded; its later status changes and re-joins are recorded in `window.__statuses` / `__joins`.
async fn open_demo(browser: &Browser, addr: SocketAddr, email: &str) -> Page {
    let page = browser
        .open(&format!("http://{addr}/?user={email}"))
        .await
        .unwrap_or_else(|e| panic!("open page as {email}: {e}"));
    page.wait_until("window.walcastDemo && window.Walcast", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{email}: demo page did not load: {e}"));
    let ready = page
        .eval(
            "Promise.race([window.walcastDemo.ready.then(d => d.user.email), \
             new Promise(r => setTimeout(() => r('timeout'), 25000))])",
        )
        .await;
    if ready.as_ref().ok() != Some(&json!(email)) {
        panic!(
            "{email}: page not ready ({ready:?})\n{}",
            page.diagnostics().await
        );
    }
    page.eval(
        "window.__statuses = []; window.__joins = []; \
         walcastDemo.client.onStatus(s => __statuses.push(s)); \
         walcastDemo.client.onMessage(m => { if (m.type === 'joined') __joins.push(m.data); }); \
         walcastDemo.client.status",
    )
    .await
    .unwrap();
    page
}

fn js(text: &str) -> String {
    Value::from(text).to_string()
}

fn shows_todo(title: &str) -> String {
    format!(
        "[...document.querySelectorAll('#todo-list li[data-id] .title')].some(t => t.textContent === {})",
        js(title)
    )
}

fn shows_chat(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#chat-list li.chat-msg')].some(li => li.textContent.endsWith(' ' + {}))",
        js(text)
    )
}

fn todo_item(title: &str) -> String {
    format!(
        "[...document.querySelectorAll('#todo-list li[data-id]')].find(li => li.querySelector('.title').textContent === {})",
        js(title)
    )
}

/// Runs statements in the page (a block, so `const` stays local).
async fn page_action(page: &Page, statements: &str) {
    if let Err(e) = page.eval(&format!("{{ {statements}; }} true")).await {
        panic!("{statements}: {e}\n{}", page.diagnostics().await);
    }
}

async fn todo_titles(page: &Page) -> Vec<String> {
    let titles = page
        .eval("[...document.querySelectorAll('#todo-list li[data-id] .title')].map(t => t.textContent)")
        .await
        .unwrap();
    serde_json::from_value(titles).unwrap()
}

async fn wait_all(pages: &[(&str, &Page)], predicate: &str, what: &str) {
    for (who, page) in pages {
        page.wait_until(predicate, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{who} never showed {what}: {e}"));
    }
}

async fn send_chat(page: &Page, text: &str) {
    page_action(
        page,
        &format!(
            "document.getElementById('chat-text').value = {}; \
             document.getElementById('chat-send').click()",
            js(text)
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_follow_sql_and_chat_across_a_gateway_restart() {
    // First, so that a missing browser fails fast and says how to get one.
    let browser = Browser::launch()
        .await
        .unwrap_or_else(|e| panic!("headless Chromium: {e}"));

    let postgres = EmbeddedPostgres::start(EmbeddedOptions::default())
        .await
        .expect("start private PostgreSQL");
    let url = postgres.create_database().await.expect("create database");
    let db = connect(&url).await;
    walcast::schema::migrate(&db, true)
        .await
        .expect("migrate with the demo app");
    let mut settings = Settings::new(url, SECRET);
    settings.listen = free_addr();
    settings.demo = true;
    let gateway = GatewayProcess::start(&settings).await;
    let addr = settings.listen;

    let alice = open_demo(&browser, addr, "alice@demo.test").await;
    let bob = open_demo(&browser, addr, "bob@demo.test").await;
    let carol = open_demo(&browser, addr, "carol@demo.test").await;
    let account_a = [("alice", &alice), ("bob", &bob)];
    let everyone = [("alice", &alice), ("bob", &bob), ("carol", &carol)];

    // An SQL insert reaches account A's pages only.
    insert_task(&db, ACCOUNT_A, ALICE, "from SQL").await;
    wait_all(&account_a, &shows_todo("from SQL"), "the account A row").await;
    insert_task(&db, ACCOUNT_B, CAROL, "for account B").await;
    wait_all(
        &[("carol", &carol)],
        &shows_todo("for account B"),
        "the account B row",
    )
    .await;
    assert_eq!(todo_titles(&carol).await, ["for account B"]);

    // The page's own controls (the demo's HTTP endpoint) go through the WAL like SQL does.
    page_action(
        &bob,
        "document.getElementById('todo-title').value = 'added by Bob'; \
         document.getElementById('todo-add').click()",
    )
    .await;
    wait_all(&account_a, &shows_todo("added by Bob"), "Bob's new todo").await;
    page_action(
        &alice,
        &format!(
            "{}.querySelector('input.toggle').click()",
            todo_item("added by Bob")
        ),
    )
    .await;
    wait_all(
        &[("bob", &bob)],
        &format!("{}.classList.contains('done')", todo_item("added by Bob")),
        "the todo ticked by Alice",
    )
    .await;
    page_action(
        &alice,
        &format!(
            "const li = {}; \
             li.querySelector('.title').dispatchEvent(new MouseEvent('dblclick', {{bubbles: true}})); \
             const input = li.querySelector('input.edit'); \
             input.value = 'edited by Alice'; \
             input.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true}}))",
            todo_item("added by Bob")
        ),
    )
    .await;
    wait_all(
        &account_a,
        &shows_todo("edited by Alice"),
        "the edited title",
    )
    .await;
    page_action(
        &bob,
        &format!(
            "{}.querySelector('button.delete').click()",
            todo_item("edited by Alice")
        ),
    )
    .await;
    wait_all(
        &account_a,
        &format!("!{}", shows_todo("edited by Alice")),
        "the todo deleted by Bob gone",
    )
    .await;

    // A chat message reaches every page of the app.
    send_chat(&alice, "hello from Alice").await;
    wait_all(
        &everyone,
        &shows_chat("hello from Alice"),
        "Alice's message",
    )
    .await;

    // Kill the gateway: every page notices, then reconnects by itself to a new one.
    gateway.kill();
    wait_all(
        &everyone,
        "__statuses.includes('closed') && walcastDemo.client.status !== 'authenticated'",
        "the disconnect",
    )
    .await;
    insert_task(&db, ACCOUNT_A, ALICE, "while the gateway was down").await;
    wait_until_released(&db, &settings).await;
    let gateway = GatewayProcess::start(&settings).await;
    wait_all(
        &everyone,
        "walcastDemo.client.status === 'authenticated' && \
         __joins.includes('db-tasks_760_') && __joins.includes('chat-demo')",
        "a reconnect with both channels re-joined",
    )
    .await;
    for (who, page) in everyone {
        let shown = page
            .eval("document.getElementById('status').textContent")
            .await
            .unwrap();
        assert_eq!(shown, "authenticated", "{who}");
    }

    // They keep receiving: the row written while down, new rows, new messages.
    wait_all(
        &account_a,
        &shows_todo("while the gateway was down"),
        "the row written while the gateway was down",
    )
    .await;
    insert_task(&db, ACCOUNT_A, ALICE, "after the restart").await;
    wait_all(&account_a, &shows_todo("after the restart"), "the new row").await;
    for (who, page) in account_a {
        assert_eq!(
            todo_titles(page).await,
            [
                "from SQL",
                "while the gateway was down",
                "after the restart"
            ],
            "{who}"
        );
    }
    insert_task(&db, ACCOUNT_B, CAROL, "for account B again").await;
    wait_all(
        &[("carol", &carol)],
        &shows_todo("for account B again"),
        "the second account B row",
    )
    .await;
    assert_eq!(
        todo_titles(&carol).await,
        ["for account B", "for account B again"]
    );

    send_chat(&carol, "hello from Carol").await;
    wait_all(
        &everyone,
        &shows_chat("hello from Carol"),
        "Carol's message",
    )
    .await;

    let shot = alice.screenshot().await.expect("screenshot");
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alice.png"), &shot).unwrap();
    if let Some(keep) = std::env::var_os("WALCAST_SCREENSHOT_DIR") {
        for (who, page) in everyone {
            let png = page.screenshot().await.expect("screenshot");
            std::fs::write(std::path::Path::new(&keep).join(format!("{who}.png")), png).unwrap();
        }
    }
    for (who, page) in everyone {
        let errors: Vec<String> = page
            .console()
            .into_iter()
            .filter(|line| line.starts_with("uncaught") || line.starts_with("console.error"))
            .collect();
        assert!(errors.is_empty(), "{who}: {errors:?}");
    }

    browser.close().await;
    gateway.shutdown().await;
    postgres.stop().await.expect("stop PostgreSQL");
}
