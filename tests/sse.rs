//! The SSE transport (PROTOCOL.md §1b) against a real gateway: stream shape, the JWT as the
//! connection's token, members on both transports, db events, CORS, limits and cleanup.

use crate::support::sse::{Block, Sse};
use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// Polls `check` until it holds; panics after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sse_stream_speaks_the_protocol_with_websocket_members() {
    let env = TestEnv::start().await;
    let (app, _, [alice, bob]) = env.app_with_users("acme", 0).await;

    let mut sse = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    assert_eq!(
        sse.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(sse.headers.get("access-control-allow-origin").unwrap(), "*");

    let echo = sse.request("echo", "hi", "").await;
    assert_eq!(echo["type"], "echo");
    assert_eq!(echo["data"], "echo: hi");

    // Not yet authenticated: join needs auth.
    let refused = sse.request("join", "room", "").await;
    assert_eq!(refused["data"], "invalid token", "{refused}");

    sse.auth(&alice.jwt).await;
    sse.join("room").await;
    let mut ws = env.ws_as(&bob).await;
    ws.join("room").await;

    // SSE → both: `ok` first, then its own copy; the WebSocket member sees the SSE sid.
    let ok = sse.request("chan_in", "from sse", "room").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let own = sse.recv().await;
    let theirs = ws.recv().await;
    for out in [&own, &theirs] {
        assert_eq!(out["type"], "chan_out", "{out}");
        assert_eq!(out["data"], "from sse");
        assert_eq!(out["channel"], "room");
        assert_eq!(out["sid"], sse.sid.as_str());
        assert_eq!(out["token"], "", "the JWT is never forwarded");
    }

    // WebSocket → SSE.
    assert_eq!(ws.request("chan_in", "from ws", "room").await["type"], "ok");
    ws.recv().await;
    let got = sse.recv().await;
    assert_eq!(
        (
            got["type"].as_str(),
            got["data"].as_str(),
            got["sid"].as_str()
        ),
        (Some("chan_out"), Some("from ws"), Some(ws.sid.as_str()))
    );

    // leave, then a message on the channel no longer reaches the stream: the next thing it
    // sees is its echo.
    assert_eq!(sse.request("leave", "room", "").await["type"], "left");
    assert_eq!(
        ws.request("chan_in", "after leave", "room").await["type"],
        "ok"
    );
    ws.recv().await;
    assert_eq!(
        sse.request("echo", "marker", "").await["data"],
        "echo: marker"
    );
}

#[tokio::test]
async fn sse_token_is_the_authenticating_jwt_and_nothing_else() {
    let env = TestEnv::start().await;
    let (app, _, [alice, mallory]) = env.app_with_users("acme", 0).await;

    let mut sse = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    let bad = sse.request("auth", "not-a-jwt", "").await;
    assert_eq!(bad["data"], "invalid token");
    sse.auth(&alice.jwt).await;

    // Another user's valid JWT as token: refused, nothing joined.
    let mut imposter = Sse::connect(env.addr, "").await;
    imposter.sid = sse.sid.clone();
    imposter.token = mallory.jwt.clone();
    imposter.send("join", "room", "").await;
    assert_eq!(sse.recv().await["data"], "invalid token");
    // Nor may it re-authenticate the stream as someone else.
    imposter.send("auth", &mallory.jwt, "").await;
    assert_eq!(sse.recv().await["data"], "invalid token");

    // An unknown sid changes nothing and says so.
    let unknown = http(
        env.addr,
        "POST",
        "/sse/msg",
        &[],
        &json!({"sid": "nope", "type": "echo", "data": "x"}).to_string(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "invalid sid");

    // A body that is not a message, with a readable sid: `invalid message` on that stream.
    let broken = sse
        .post_raw(&json!({"sid": sse.sid, "type": 7}).to_string())
        .await;
    assert_eq!(broken.status, 200);
    assert_eq!(sse.recv().await["data"], "invalid message");
    assert_eq!(sse.post_raw("[1]").await.status, 400);

    // Still Alice's stream: her token works, and `room` was never joined.
    let mut ws = env.ws_as(&mallory).await;
    ws.join("room").await;
    sse.join("room2").await;
    assert_eq!(ws.request("chan_in", "x", "room").await["type"], "ok");
    ws.recv().await;
    assert_eq!(
        sse.request("echo", "still mine", "").await["data"],
        "echo: still mine"
    );
}

#[tokio::test]
async fn sse_receives_db_events_and_resumes() {
    let env = TestEnv::start().await;
    let (app, account, alice) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks_760_").await;

    let mut sse = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    sse.auth(&alice.jwt).await;
    sse.join("db-tasks_760_").await;
    let id = env
        .insert(
            &app,
            "tasks_760_",
            Some(account),
            Some(alice.id),
            json!({"t": 1}),
        )
        .await;
    let created = sse.recv().await;
    let doc = event(&created, "db_created", "db-tasks_760_");
    assert_eq!(doc["id"], id.to_string());
    let lsn = created["lsn"].as_str().unwrap().to_owned();

    // A second row while the first stream is gone; a new stream resumes after the first.
    drop(sse);
    let missed = env
        .insert(
            &app,
            "tasks_760_",
            Some(account),
            Some(alice.id),
            json!({"t": 2}),
        )
        .await;
    let mut again = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    again.auth(&alice.jwt).await;
    let msg = json!({"sid": again.sid, "token": alice.jwt, "type": "join",
                     "data": "db-tasks_760_", "since": lsn});
    assert_eq!(again.post_raw(&msg.to_string()).await.status, 200);
    let joined = again.recv().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["recovered"], true, "{joined}");
    let doc = event(&again.recv().await, "db_created", "db-tasks_760_");
    assert_eq!(doc["id"], missed.to_string());
}

#[tokio::test]
async fn sse_cors_preflight_and_headers() {
    let env = TestEnv::start().await;
    let preflight = http(
        env.addr,
        "OPTIONS",
        "/sse/msg",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type,sb-public-key",
            ),
        ],
        "",
    )
    .await;
    assert!((200..300).contains(&preflight.status), "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "sb-public-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));

    let sse = Sse::connect(env.addr, "").await;
    let answer = sse
        .post_raw(&json!({"sid": sse.sid, "type": "echo", "data": "x"}).to_string())
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn vanished_sse_client_is_cleaned_up() {
    let env = TestEnv::start_with(|s| s.ws.ping_interval = Duration::from_millis(200)).await;
    let (app, _, [alice, bob]) = env.app_with_users("acme", 0).await;
    let gateway = env.gateway.as_ref().unwrap();

    let mut sse = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    sse.auth(&alice.jwt).await;
    sse.join("room").await;
    sse.join("db-tasks").await;
    // Keep-alive comments flow while nothing else does.
    loop {
        if let Some(Block::Comment(c)) = sse.next_block().await {
            assert_eq!(c, "keep-alive");
            break;
        }
    }
    let mut ws = env.ws_as(&bob).await;
    ws.join("room").await;
    assert_eq!(gateway.sse.len(), 1);
    assert_eq!(gateway.hub.channel_count(), 2);

    sse.vanish();
    eventually("the vanished stream is unregistered", || {
        gateway.sse.is_empty()
    })
    .await;
    eventually("its channels are left", || gateway.hub.channel_count() == 1).await;
    // Nobody is blocked: the WebSocket member still talks.
    assert_eq!(ws.request("chan_in", "alone", "room").await["type"], "ok");
    assert_eq!(ws.recv().await["data"], "alone");
}

#[tokio::test]
async fn sse_connection_and_rate_limits() {
    let env = TestEnv::start_with(|s| {
        s.max_connections = 1;
        s.ws.rate_per_sec = 1;
        s.ws.rate_burst = 1;
    })
    .await;
    let mut first = Sse::connect(env.addr, "").await;
    let mut second = Sse::open(env.addr, "").await;
    let refused = second.recv().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["data"], "connection limit reached");
    second.ended().await;

    assert_eq!(first.request("echo", "1", "").await["type"], "echo");
    first.send("echo", "2", "").await;
    assert_eq!(first.recv().await["data"], "rate limit exceeded");
}

#[tokio::test]
async fn sse_streams_end_at_shutdown() {
    let mut env = TestEnv::start().await;
    let mut sse = Sse::connect(env.addr, "").await;
    env.shutdown().await;
    let comments = sse.ended().await;
    assert!(comments.iter().any(|c| c.contains("1001")), "{comments:?}");
}

#[tokio::test]
async fn stalled_sse_client_is_dropped_as_slow_consumer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start_with(|s| s.ws.max_outbound_bytes = 256 * 1024).await;
    let (app, _, [alice, bob]) = env.app_with_users("acme", 0).await;
    let gateway = env.gateway.as_ref().unwrap();

    // A stream read up to its `init`, then never again.
    let mut stalled = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /sse/connect?sbpk={} HTTP/1.1\r\nHost: x\r\n\r\n",
                app.id
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let sid = loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stalled.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended before init");
        head.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&head);
        if let Some(rest) = text.split_once(r#""type":"init","data":""#) {
            if let Some((sid, _)) = rest.1.split_once('"') {
                break sid.to_owned();
            }
        }
    };
    for (kind, data) in [("auth", alice.jwt.as_str()), ("join", "room")] {
        let msg = json!({"sid": sid, "type": kind, "data": data, "token": alice.jwt});
        let answer = http(env.addr, "POST", "/sse/msg", &[], &msg.to_string()).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(gateway.sse.len(), 1);

    let data = "z".repeat(60 * 1024);
    for _ in 0..2000 {
        if gateway.sse.is_empty() {
            break;
        }
        gateway
            .publisher
            .server_publish("acme", "room", &data, None)
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    eventually("the stalled stream is dropped", || gateway.sse.is_empty()).await;
    eventually("its channel is left", || gateway.hub.channel_count() == 0).await;

    // Nobody else was held up: a new member gets the next message at once.
    let mut ws = env.ws_as(&bob).await;
    ws.join("room").await;
    gateway
        .publisher
        .server_publish("acme", "room", "after", None)
        .await
        .unwrap();
    assert_eq!(ws.recv().await["data"], "after");
}

#[tokio::test]
async fn vanished_sse_client_is_noticed_without_waiting_for_a_keep_alive() {
    let env = TestEnv::start_with(|s| s.ws.ping_interval = Duration::from_secs(3600)).await;
    let gateway = env.gateway.as_ref().unwrap();
    let sse = Sse::connect(env.addr, "").await;
    assert_eq!(gateway.sse.len(), 1);
    sse.vanish();
    eventually("the stream is unregistered", || gateway.sse.is_empty()).await;
}
