//! The server publish API (`POST /publish`, `walcast publish`), idempotency keys (also on
//! `chan_in`) and the message data limit.

use crate::support::sse::Sse;
use crate::support::*;
use serde_json::{json, Value};

const KEY: &str = "publish-key-for-tests";

async fn publish(env: &TestEnv, bearer: &str, body: Value) -> HttpResponse {
    let auth = format!("Bearer {bearer}");
    let headers: Vec<(&str, &str)> = if bearer.is_empty() {
        vec![]
    } else {
        vec![("Authorization", &auth)]
    };
    http(env.addr, "POST", "/publish", &headers, &body.to_string()).await
}

fn refused(response: &HttpResponse, status: u16, error: &str) {
    assert_eq!(response.status, status, "{response:?}");
    let body = response.json();
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"], error, "{body}");
}

#[tokio::test]
async fn publish_reaches_websocket_and_sse_members_once_per_key() {
    let env = TestEnv::start_with(|s| s.publish.key = Some(KEY.into())).await;
    let app = env.create_app("acme").await;
    let other = env.create_app("other").await;
    let account = env.create_account(&app).await;
    let alice = env.create_user(&app, account, 0).await;
    let bob = env.create_user(&app, account, 0).await;
    let mut ws = env.ws_as(&alice).await;
    ws.join("news").await;
    let mut sse = Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    sse.auth(&bob.jwt).await;
    sse.join("news").await;

    let sent = publish(
        &env,
        KEY,
        json!({"app": app.id.to_string(), "channel": "news", "data": "hello"}),
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(sent.json(), json!({"ok": true, "delivered": 2}));
    assert_eq!(sent.header("access-control-allow-origin"), Some("*"));
    for mut msg in [ws.recv().await, sse.recv().await] {
        // [ext] the message's offset in the channel's history follows the five keys.
        let offset = msg.as_object_mut().unwrap().remove("offset");
        assert!(offset.is_some_and(|o| o.is_u64()), "{msg}");
        assert_eq!(
            msg,
            json!({"sid": "", "type": "chan_out", "data": "hello", "channel": "news", "token": ""})
        );
    }

    // The same key twice (the app named by schema name this time): answered ok, delivered once.
    let keyed =
        json!({"app": "acme", "channel": "news", "data": {"n": 1}, "idempotency_key": "k-1"});
    assert_eq!(publish(&env, KEY, keyed.clone()).await.json()["ok"], true);
    let again = publish(&env, KEY, keyed).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), json!({"ok": true, "duplicate": true}));
    // The same key on another app's channel of the same name is another message.
    let elsewhere = publish(
        &env,
        KEY,
        json!({"app": other.id.to_string(), "channel": "news", "data": "x", "idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!(elsewhere.json(), json!({"ok": true, "delivered": 0}));
    publish(
        &env,
        KEY,
        json!({"app": "acme", "channel": "news", "data": "after"}),
    )
    .await;
    for member in [ws.recv().await, sse.recv().await] {
        assert_eq!(
            member["data"], r#"{"n":1}"#,
            "non-string data travels as JSON text"
        );
    }
    assert_eq!(
        ws.recv().await["data"],
        "after",
        "the repeat was not delivered"
    );
    assert_eq!(
        sse.recv().await["data"],
        "after",
        "the repeat was not delivered"
    );

    // chan_in with an [ext] idempotency key: `ok` both times, one copy.
    let retried = json!({"sid": ws.sid, "token": ws.token, "type": "chan_in", "channel": "news",
                         "data": "retried", "idempotency_key": "client-1"});
    ws.send_text(retried.to_string()).await;
    assert_eq!(ws.recv().await["type"], "ok");
    assert_eq!(ws.recv().await["data"], "retried");
    ws.send_text(retried.to_string()).await;
    assert_eq!(ws.recv().await["type"], "ok");
    assert_eq!(sse.recv().await["data"], "retried");
    ws.send("chan_in", "end", "news").await;
    assert_eq!(ws.recv().await["type"], "ok");
    assert_eq!(ws.recv().await["data"], "end");
    assert_eq!(sse.recv().await["data"], "end");
}

#[tokio::test]
async fn publish_refusals_each_get_their_error() {
    let env = TestEnv::start_with(|s| {
        s.publish.key = Some(KEY.into());
        s.publish.max_message_bytes = 16;
    })
    .await;
    let (app, account, user) = env.app_with_user("acme", 0).await;
    let root = env.create_user(&app, account, 100).await;
    let id = app.id.to_string();
    let ok_body = json!({"app": id, "channel": "news", "data": "x"});

    let forged = walcast::auth::issue_token(b"other-secret", root.id, &root.user_token, 60);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "",
            ok_body.clone(),
            401,
            "missing credentials: send Authorization: Bearer <publish key or root session token>",
        ),
        ("wrong-key", ok_body.clone(), 401, "invalid publish key"),
        (
            &user.jwt,
            ok_body.clone(),
            403,
            "root user required: the token's user has a role below 100",
        ),
        (&forged, ok_body.clone(), 401, "invalid token"),
        (
            KEY,
            json!({"app": id, "channel": "db-tasks", "data": "x"}),
            403,
            "you cannot write to database channel",
        ),
        (
            KEY,
            json!({"app": id, "channel": "DB-tasks", "data": "x"}),
            403,
            "you cannot write to database channel",
        ),
        (
            KEY,
            json!({"app": id, "channel": "news", "data": "x".repeat(17)}),
            413,
            "message too large",
        ),
        (
            KEY,
            json!({"app": id, "data": "x"}),
            400,
            "no channel was specified",
        ),
        (
            KEY,
            json!({"channel": "news", "data": "x"}),
            400,
            "no app was specified",
        ),
        (
            KEY,
            json!({"app": "nope", "channel": "news", "data": "x"}),
            404,
            "unknown app",
        ),
        (
            KEY,
            json!({"app": id, "channel": "news"}),
            400,
            "no data was specified",
        ),
        (
            KEY,
            json!({"app": id, "channel": "sbsys", "data": "x"}),
            403,
            "reserved channel",
        ),
        (
            KEY,
            json!({"app": id, "channel": "news", "data": "x", "idempotency_key": "k".repeat(257)}),
            400,
            "invalid idempotency key",
        ),
    ];
    for (bearer, body, status, error) in cases {
        refused(&publish(&env, bearer, body).await, status, error);
    }
    // The key alone, without a scheme, is accepted too.
    let bare = http(
        env.addr,
        "POST",
        "/publish",
        &[("Authorization", KEY)],
        &json!({"app": id, "channel": "news", "data": "x"}).to_string(),
    )
    .await;
    assert_eq!(bare.json(), json!({"ok": true, "delivered": 0}));
    let not_json = http(
        env.addr,
        "POST",
        "/publish",
        &[("Authorization", &format!("Bearer {KEY}"))],
        "nope",
    )
    .await;
    assert_eq!(not_json.status, 400);

    // A root user's session token publishes to its own app, with or without naming it.
    let mut ws = env.ws_as(&user).await;
    ws.join("news").await;
    let by_root = publish(
        &env,
        &root.jwt,
        json!({"channel": "news", "data": "from root"}),
    )
    .await;
    assert_eq!(by_root.json(), json!({"ok": true, "delivered": 1}));
    assert_eq!(ws.recv().await["data"], "from root");

    // chan_in gets the same data limit, as an error on the connection.
    ws.send("chan_in", &"y".repeat(17), "news").await;
    assert_eq!(ws.recv().await["data"], "message too large");
    ws.send("chan_in", &"y".repeat(16), "news").await;
    assert_eq!(ws.recv().await["type"], "ok");
    assert_eq!(ws.recv().await["data"], "y".repeat(16));
}

#[tokio::test]
async fn walcast_publish_command() {
    let env = TestEnv::start_with(|s| s.publish.key = Some(KEY.into())).await;
    let (app, _, user) = env.app_with_user("acme", 0).await;
    let mut ws = env.ws_as(&user).await;
    ws.join("jobs").await;

    let run = |args: Vec<String>, key: &str| {
        walcast_command(["publish"])
            .args(args)
            .env("WALCAST_URL", format!("http://{}", env.addr))
            .env("WALCAST_APP", app.id.to_string())
            .env("WALCAST_PUBLISH_KEY", key)
            .output()
    };
    let args = |data: &str, key: Option<&str>| {
        let mut args = vec![
            "--channel".to_owned(),
            "jobs".to_owned(),
            "--data".to_owned(),
            data.to_owned(),
        ];
        if let Some(key) = key {
            args.extend(["--idempotency-key".to_owned(), key.to_owned()]);
        }
        args
    };
    let out = run(args("done", Some("job-7")), KEY).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"ok": true, "delivered": 1}));
    let again = run(args("done", Some("job-7")), KEY).await.unwrap();
    assert!(again.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&again.stdout).unwrap()["duplicate"],
        true
    );

    let denied = run(args("x", None), "wrong").await.unwrap();
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("invalid publish key") && stderr.contains("401"),
        "{stderr}"
    );

    assert_eq!(ws.recv().await["data"], "done");
    ws.send("echo", "marker", "").await;
    assert_eq!(
        ws.recv().await["data"],
        "echo: marker",
        "one delivery for the key"
    );
}
