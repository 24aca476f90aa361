//! PROTOCOL.md §1–3, §5 over a real socket.

use crate::support::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn init_echo_and_errors() {
    let env = TestEnv::start().await;
    let mut ws = env.ws().await;
    assert_eq!(ws.sid.len(), 36, "sid is a uuid");

    let echo = ws.request("echo", "hello", "").await;
    assert_eq!(echo["type"], "echo");
    assert_eq!(echo["data"], "echo: hello");
    assert_eq!(echo["sid"], ws.sid.as_str());

    let unknown = ws.request("dance", "", "").await;
    assert_eq!(unknown["type"], "error");
    assert_eq!(unknown["data"], "dance command not found");

    ws.send_text(json!({"sid": "not-mine", "type": "echo", "data": "x"}).to_string())
        .await;
    let wrong_sid = ws.recv().await;
    assert_eq!(wrong_sid["data"], "invalid sid");

    for bad in [
        "not json",
        "[1,2]",
        "42",
        r#"{"type": 5}"#,
        r#"{"sid": {"a": 1}}"#,
    ] {
        ws.send_text(bad).await;
        let reply = ws.recv().await;
        assert_eq!(reply["type"], "error", "{bad}");
        assert_eq!(reply["data"], "invalid message", "{bad}");
    }
    // Still usable after bad input; null and missing keys read as "".
    ws.send_text(json!({"sid": ws.sid, "type": "echo", "data": null, "channel": null}).to_string())
        .await;
    let echo = ws.recv().await;
    assert_eq!(echo["data"], "echo: ");
    // Every server message carries the five keys in order.
    let keys: Vec<String> = echo.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5);
}

#[tokio::test]
async fn auth_refusals_are_one_string() {
    let env = TestEnv::start().await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let mut ws = env.ws().await;

    let wrong_secret = walcast::auth::issue_token(b"other", user.id, &user.user_token, 3600);
    let wrong_user_token = walcast::auth::issue_token(SECRET.as_bytes(), user.id, "nope", 3600);
    let unknown_user =
        walcast::auth::issue_token(SECRET.as_bytes(), uuid::Uuid::new_v4(), "x", 3600);
    let expired = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims =
            json!({"token": format!("{}|{}", user.id, user.user_token), "exp": now - 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for jwt in [
        wrong_secret.as_str(),
        wrong_user_token.as_str(),
        unknown_user.as_str(),
        expired.as_str(),
        "garbage",
        "",
    ] {
        let reply = ws.request("auth", jwt, "").await;
        assert_eq!(reply["type"], "error", "{jwt}");
        assert_eq!(reply["data"], "invalid token", "{jwt}");
    }
    // An app row without its schema (half-made, or dropped) breaks nobody's login.
    env.sql("INSERT INTO sb.apps (name) VALUES ('ghost')").await;
    let other = env.create_app("other").await;
    let other_account = env.create_account(&other).await;
    env.create_user(&other, other_account, 0).await;
    // nbf 30 minutes ahead (as StaticBackend issues) is accepted.
    ws.auth(&user.jwt).await;
    assert_eq!(ws.token.len(), 48);
    assert_ne!(
        ws.token, user.user_token,
        "the websocket token is not the user's credential"
    );
}

#[tokio::test]
async fn join_and_chan_in_need_the_connection_token() {
    let env = TestEnv::start().await;
    let (_, _, user) = env.app_with_user("acme", 0).await;

    let mut anon = env.ws().await;
    assert_eq!(
        anon.request("join", "room", "").await["data"],
        "invalid token"
    );
    assert_eq!(
        anon.request("chan_in", "hi", "room").await["data"],
        "invalid token"
    );

    let mut a = env.ws_as(&user).await;
    // Another connection's websocket token is useless here.
    anon.token = a.token.clone();
    assert_eq!(
        anon.request("join", "room", "").await["data"],
        "invalid token"
    );
    a.join("room").await;
}

#[tokio::test]
async fn channel_rules_and_chan_in_errors() {
    let env = TestEnv::start().await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let mut ws = env.ws_as(&user).await;

    let long = "x".repeat(257);
    let refusals = [
        ("join", "", "", "invalid channel name"),
        ("join", long.as_str(), "", "invalid channel name"),
        ("join", "a\u{7}b", "", "invalid channel name"),
        ("join", "sbsys", "", "reserved channel"),
        ("chan_in", "x", "", "no channel was specified"),
        (
            "chan_in",
            "x",
            "db-tasks",
            "you cannot write to database channel",
        ),
        (
            "chan_in",
            "x",
            "DB-tasks",
            "you cannot write to database channel",
        ),
        ("chan_in", "x", "sbsys", "reserved channel"),
    ];
    for (kind, data, channel, error) in refusals {
        let reply = ws.request(kind, data, channel).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["data"], error, "{kind} {data:?} {channel:?}");
    }
    ws.join("'; DROP TABLE sb_tokens; --").await;
    // The SQL-looking channel works like any other and the database is intact.
    let ok = ws
        .request("chan_in", "still here", "'; DROP TABLE sb_tokens; --")
        .await;
    assert_eq!(ok["type"], "ok");
    let out = ws.recv().await;
    assert_eq!(out["data"], "still here");
    let users = env
        .db
        .query_one("SELECT count(*) FROM acme.sb_tokens", &[])
        .await
        .unwrap();
    assert_eq!(users.get::<_, i64>(0), 1);
}

#[tokio::test]
async fn chan_out_reaches_members_in_order_with_token_blanked() {
    let env = TestEnv::start().await;
    let (_, _, [u1, u2]) = env.app_with_users("acme", 0).await;
    let mut a = env.ws_as(&u1).await;
    let mut b = env.ws_as(&u2).await;
    let mut outsider = env.ws_as(&u2).await;
    a.join("room").await;
    a.join("room").await; // idempotent: still one copy
    b.join("room").await;
    outsider.join("other").await;

    for i in 0..50 {
        let ok = a.request("chan_in", &format!("m{i}"), "room").await;
        assert_eq!(ok["type"], "ok", "ok comes before the sender's own copy");
        let own = a.recv().await;
        assert_eq!(own["type"], "chan_out");
        assert_eq!(own["data"], format!("m{i}"));
    }
    for i in 0..50 {
        let msg = b.recv().await;
        assert_eq!(msg["type"], "chan_out");
        assert_eq!(msg["sid"], a.sid.as_str());
        assert_eq!(msg["channel"], "room");
        assert_eq!(msg["token"], "");
        assert_eq!(msg["data"], format!("m{i}"));
    }
    // A sender need not have joined; the outsider got nothing from "room".
    let ok = outsider.request("chan_in", "from outside", "room").await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(b.recv().await["data"], "from outside");
    assert_eq!(a.recv().await["data"], "from outside");
    outsider.send("chan_in", "sentinel", "other").await;
    assert_eq!(outsider.recv().await["type"], "ok");
    assert_eq!(
        outsider.recv().await["data"],
        "sentinel",
        "no room message reached a non-member"
    );

    let left = b.request("leave", "room", "").await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["data"], "room");
    a.request("chan_in", "after leave", "room").await;
    assert_eq!(a.recv().await["data"], "after leave");
    b.join("probe").await;
    b.request("chan_in", "probe", "probe").await;
    assert_eq!(
        b.recv().await["data"],
        "probe",
        "left members receive nothing more"
    );
}

#[tokio::test]
async fn channels_are_scoped_per_app() {
    let env = TestEnv::start().await;
    let one = env.create_app("one").await;
    let two = env.create_app("two").await;
    let acc1 = env.create_account(&one).await;
    let acc2 = env.create_account(&two).await;
    let u1 = env.create_user(&one, acc1, 0).await;
    let u2 = env.create_user(&two, acc2, 0).await;
    let mut a = env.ws_as(&u1).await;
    let mut b = env.ws_as(&u2).await;
    a.join("room1").await;
    b.join("room1").await;
    a.request("chan_in", "only app one", "room1").await;
    assert_eq!(a.recv().await["data"], "only app one");
    b.request("chan_in", "only app two", "room1").await;
    assert_eq!(
        b.recv().await["data"],
        "only app two",
        "app one's message never crossed over"
    );

    // With sbpk, a token of another app is refused.
    let mut scoped = Ws::connect(env.addr, &format!("?sbpk={}", one.id)).await;
    assert_eq!(
        scoped.request("auth", &u2.jwt, "").await["data"],
        "invalid token"
    );
    scoped.auth(&u1.jwt).await;
    for key in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let mut unknown = Ws::connect(env.addr, &format!("?sbpk={key}")).await;
        assert_eq!(
            unknown.request("auth", &u1.jwt, "").await["data"],
            "invalid token"
        );
    }
}

#[tokio::test]
async fn oversize_and_binary_frames_close_the_connection() {
    let env = TestEnv::start_with(|s| s.ws.max_frame_bytes = 1024).await;
    let mut ws = env.ws().await;
    ws.send_text(json!({"sid": ws.sid, "type": "echo", "data": "a".repeat(2000)}).to_string())
        .await;
    assert_eq!(ws.closed().await, 1009);

    let mut ws = env.ws().await;
    ws.stream
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(ws.closed().await, 1003);

    // Others are unaffected.
    let mut ok = env.ws().await;
    assert_eq!(ok.request("echo", "x", "").await["data"], "echo: x");
}

#[tokio::test]
async fn channel_limit_per_connection() {
    let env = TestEnv::start_with(|s| s.ws.max_channels = 3).await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let mut ws = env.ws_as(&user).await;
    for channel in ["a", "b", "db-c"] {
        ws.join(channel).await;
    }
    ws.join("a").await; // already a member: not a new channel
    let refused = ws.request("join", "d", "").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["data"], "channel limit reached");
    assert_eq!(ws.request("leave", "b", "").await["type"], "left");
    ws.join("d").await;
}

#[tokio::test]
async fn rate_limit_refuses_excess_messages() {
    let env = TestEnv::start_with(|s| {
        s.ws.rate_per_sec = 1;
        s.ws.rate_burst = 5;
    })
    .await;
    let mut ws = env.ws().await;
    for _ in 0..5 {
        assert_eq!(ws.request("echo", "x", "").await["type"], "echo");
    }
    let refused = ws.request("echo", "x", "").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["data"], "rate limit exceeded");
}

#[tokio::test]
async fn connection_limit_global_and_per_app() {
    let env = TestEnv::start_with(|s| {
        s.max_connections = 3;
        s.max_connections_per_app = 1;
    })
    .await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let _a = env.ws_as(&user).await;
    let mut second = env.ws().await;
    let refused = second.request("auth", &user.jwt, "").await;
    assert_eq!(refused["data"], "connection limit reached");
    assert_eq!(second.closed().await, 1013);

    let _b = env.ws().await;
    let _c = env.ws().await;
    let mut over = Ws::connect_raw(env.addr, "").await;
    let msg = over.recv().await;
    assert_eq!(msg["type"], "error");
    assert_eq!(msg["data"], "connection limit reached");
    assert_eq!(over.closed().await, 1013);
}

#[tokio::test]
async fn stalled_client_is_closed_as_slow_consumer_others_keep_receiving() {
    let env = TestEnv::start_with(|s| {
        s.ws.max_outbound_bytes = 256 * 1024;
        s.ws.rate_per_sec = 0;
    })
    .await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let mut stalled = env.ws_as(&user).await;
    let mut healthy = env.ws_as(&user).await;
    let mut sender = env.ws_as(&user).await;
    stalled.join("firehose").await;
    healthy.join("firehose").await;

    // The stalled client never reads; loopback socket buffers absorb a few MB, then its
    // outbox fills. 60 KB × 400 = 24 MB.
    let payload = "p".repeat(60 * 1024 - 200);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 400 {
            let msg = healthy.recv().await;
            if msg["type"] == "chan_out" {
                got += 1;
            }
        }
        got
    });
    for _ in 0..400 {
        sender.send("chan_in", &payload, "firehose").await;
        assert_eq!(sender.recv().await["type"], "ok");
    }
    assert_eq!(
        reader.await.unwrap(),
        400,
        "the healthy member got every message"
    );
    assert_eq!(stalled.closed().await, 4008);
}

#[tokio::test]
async fn server_pings_and_closes_silent_connections() {
    let env = TestEnv::start_with(|s| {
        s.ws.ping_interval = std::time::Duration::from_millis(200);
        s.ws.idle_timeout = std::time::Duration::from_millis(1000);
    })
    .await;
    // A raw client that completes the handshake, reads `init` and then never answers anything.
    let mut stream = raw_ws(env.addr).await;
    let result = tokio::time::timeout(WAIT, async {
        let mut pings = 0;
        loop {
            match raw_frame(&mut stream).await {
                (0x9, _) => pings += 1,
                (0x8, payload) => {
                    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
                    assert_eq!(&payload[2..], b"idle timeout");
                    return pings;
                }
                (op, _) => panic!("unexpected opcode {op}"),
            }
        }
    })
    .await
    .expect("the silent connection was not closed");
    assert!(result >= 1, "the server pinged before giving up");
}
