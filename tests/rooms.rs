//! [ext] rooms over real sockets: presence, custom-channel history and `since`, channel rules,
//! room metadata, destroy, and the memory bounds under a flood.

use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;
use walcast::rules::{RuleSpec, Rules};

/// Channel rules from `[[channel]]` tables, as the config file holds them.
fn rules(toml: &str) -> Rules {
    let specs: Vec<RuleSpec> = toml::from_str::<toml::Table>(toml).unwrap()["channel"]
        .clone()
        .try_into()
        .unwrap();
    Rules::from_specs(&specs).unwrap()
}

/// Sends a message with this connection's sid and token plus `extra` keys.
async fn send_with(ws: &mut Ws, kind: &str, data: &str, channel: &str, extra: Value) {
    let mut msg =
        json!({"sid": ws.sid, "type": kind, "data": data, "channel": channel, "token": ws.token});
    for (key, value) in extra.as_object().expect("extra is an object") {
        msg[key] = value.clone();
    }
    ws.send_text(msg.to_string()).await;
}

/// Joins with presence metadata; returns the `joined` reply.
async fn join_with(ws: &mut Ws, channel: &str, extra: Value) -> Value {
    send_with(ws, "join", channel, "", extra).await;
    let reply = ws.recv().await;
    assert_eq!(reply["type"], "joined", "{reply}");
    assert_eq!(reply["data"], channel);
    reply
}

/// The next message, asserted to be `kind` on `channel`, with `data` parsed as JSON.
async fn expect_json(ws: &mut Ws, kind: &str, channel: &str) -> Value {
    let msg = ws.recv().await;
    assert_eq!(msg["type"], kind, "{msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    serde_json::from_str(msg["data"].as_str().expect("data is a string")).expect("data is JSON")
}

/// The `presence` reply's list; presence events queued before it are skipped.
async fn presence(ws: &mut Ws, channel: &str) -> Vec<Value> {
    ws.send("presence", "", channel).await;
    loop {
        let msg = ws.recv().await;
        if msg["type"] == "presence_join" || msg["type"] == "presence_leave" {
            continue;
        }
        assert_eq!(msg["type"], "presence", "{msg}");
        assert_eq!(msg["channel"], channel, "{msg}");
        let list: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        return list.as_array().expect("a JSON list").clone();
    }
}

fn sids(members: &[Value]) -> Vec<String> {
    let mut sids: Vec<String> = members
        .iter()
        .map(|m| m["sid"].as_str().expect("sid").to_owned())
        .collect();
    sids.sort();
    sids
}

fn sorted(mut sids: Vec<String>) -> Vec<String> {
    sids.sort();
    sids
}

/// Publishes `data` and returns the sender's own `chan_out` (it joined) after its `ok`.
async fn say(ws: &mut Ws, channel: &str, data: &str) -> Value {
    let ok = ws.request("chan_in", data, channel).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let out = ws.recv().await;
    assert_eq!(out["type"], "chan_out", "{out}");
    assert_eq!(out["data"], data);
    out
}

#[tokio::test]
async fn presence_join_leave_and_a_killed_socket() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    let account = env.create_account(&app).await;
    let other_account = env.create_account(&app).await;
    let alice = env.create_user(&app, account, 0).await;
    let bob = env.create_user(&app, other_account, 0).await;
    let carol = env.create_user(&app, account, 0).await;
    let ch = "presence-lobby";

    let mut a = env.ws_as(&alice).await;
    join_with(&mut a, ch, json!({"meta": {"status": "online"}})).await;
    let own = expect_json(&mut a, "presence_join", ch).await;
    assert_eq!(own["sid"], a.sid.as_str());
    assert_eq!(own["userId"], alice.id.to_string());
    assert_eq!(own["accountId"], account.to_string());
    assert_eq!(own["meta"], json!({"status": "online"}));

    let mut b = env.ws_as(&bob).await;
    join_with(&mut b, ch, json!({})).await;
    let seen = expect_json(&mut a, "presence_join", ch).await;
    assert_eq!(seen["sid"], b.sid.as_str());
    assert_eq!(seen["userId"], bob.id.to_string());
    assert_eq!(seen["meta"], Value::Null);
    expect_json(&mut b, "presence_join", ch).await;

    let mut c = env.ws_as(&carol).await;
    c.join(ch).await;
    for ws in [&mut a, &mut b, &mut c] {
        let joined = expect_json(ws, "presence_join", ch).await;
        assert_eq!(joined["userId"], carol.id.to_string());
    }
    let list = presence(&mut b, ch).await;
    assert_eq!(
        sids(&list),
        sorted(vec![a.sid.clone(), b.sid.clone(), c.sid.clone()])
    );
    let alice_entry = list.iter().find(|m| m["sid"] == a.sid.as_str()).unwrap();
    assert_eq!(alice_entry["meta"]["status"], "online");

    // Carol's socket dies without a close frame.
    let carol_sid = c.sid.clone();
    drop(c);
    for ws in [&mut a, &mut b] {
        let left = expect_json(ws, "presence_leave", ch).await;
        assert_eq!(left["sid"], carol_sid.as_str());
        assert_eq!(left["userId"], carol.id.to_string());
    }
    assert_eq!(
        sids(&presence(&mut a, ch).await),
        sorted(vec![a.sid.clone(), b.sid.clone()])
    );

    // An explicit leave.
    let left = b.request("leave", ch, "").await;
    assert_eq!(left["type"], "left");
    let gone = expect_json(&mut a, "presence_leave", ch).await;
    assert_eq!(gone["sid"], b.sid.as_str());
    assert_eq!(sids(&presence(&mut a, ch).await), vec![a.sid.clone()]);

    // Non-members may not look; channels without presence say so.
    let err = b.request("presence", "", ch).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"], "you cannot read this channel");
    b.join("plain").await;
    assert_eq!(
        b.request("presence", "", "plain").await["data"],
        "presence is not enabled on this channel"
    );
    assert_eq!(
        b.request("presence", "", "db-tasks").await["data"],
        "presence is not enabled on this channel"
    );
    assert_eq!(
        b.request("presence", ch, "").await["data"],
        "no channel was specified"
    );
    let mut anon = env.ws().await;
    assert_eq!(
        anon.request("presence", "", ch).await["data"],
        "invalid token"
    );
}

#[tokio::test]
async fn slow_consumer_close_leaves_presence() {
    let env = TestEnv::start_with(|s| {
        s.ws.max_outbound_bytes = 64 * 1024;
        s.ws.rate_per_sec = 0;
    })
    .await;
    let (_, _, [talker, sleeper]) = env.app_with_users("acme", 0).await;
    let ch = "presence-busy";

    let mut t = env.ws_as(&talker).await;
    t.join(ch).await;
    expect_json(&mut t, "presence_join", ch).await;
    // The sleeper never reads, so its outbound queue overflows and it is closed (4008).
    let mut s = env.ws_as(&sleeper).await;
    s.join(ch).await;
    let sleeper_sid = s.sid.clone();
    expect_json(&mut t, "presence_join", ch).await;
    let payload = "z".repeat(8 * 1024);
    let mut leave = None;
    // Loopback socket buffers absorb some megabytes before the outbox itself fills.
    'flood: for _ in 0..4000 {
        t.send("chan_in", &payload, ch).await;
        // `ok`, then the talker's own copy; the sleeper's leave may come at any point.
        for _ in 0..2 {
            let next = t.recv().await;
            match next["type"].as_str() {
                Some("presence_leave") => {
                    leave = Some(next);
                    break 'flood;
                }
                Some("ok") | Some("chan_out") => {}
                _ => panic!("unexpected {next}"),
            }
        }
    }
    let leave = leave.expect("the slow consumer left the presence list");
    let gone: Value = serde_json::from_str(leave["data"].as_str().unwrap()).unwrap();
    assert_eq!(gone["sid"], sleeper_sid.as_str());
    // The rest of the last message's replies come before the presence reply.
    t.send("presence", "", ch).await;
    let list = loop {
        let msg = t.recv().await;
        match msg["type"].as_str() {
            Some("ok") | Some("chan_out") => continue,
            _ => break msg,
        }
    };
    assert_eq!(list["type"], "presence", "{list}");
    let members: Vec<Value> = serde_json::from_str(list["data"].as_str().unwrap()).unwrap();
    assert_eq!(sids(&members), vec![t.sid.clone()]);
    drop(s);
}

#[tokio::test]
async fn history_pages_are_complete_and_in_order() {
    let env = TestEnv::start_with(|s| s.ws.rate_per_sec = 0).await;
    let (_, _, [user, outsider]) = env.app_with_users("acme", 0).await;
    let ch = "chat";

    let mut ws = env.ws_as(&user).await;
    ws.join(ch).await;
    let mut offsets = Vec::new();
    for i in 0..23 {
        let out = say(&mut ws, ch, &format!("m{i}")).await;
        offsets.push(out["offset"].as_u64().expect("chan_out carries its offset"));
    }
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "offsets count up by one: {offsets:?}"
    );

    // Newest first, pages of 5 until the cursor runs out.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let query = json!({"cursor": cursor, "limit": 5}).to_string();
        ws.send("history", &query, ch).await;
        let page = expect_json(&mut ws, "history", ch).await;
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 5);
        for m in messages {
            seen.push((
                m["offset"].as_u64().unwrap(),
                m["data"].as_str().unwrap().to_owned(),
            ));
            assert_eq!(m["sid"], ws.sid.as_str());
        }
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let expected: Vec<(u64, String)> = offsets
        .iter()
        .enumerate()
        .rev()
        .map(|(i, o)| (*o, format!("m{i}")))
        .collect();
    assert_eq!(seen, expected);

    // Empty data: the newest page.
    ws.send("history", "", ch).await;
    let latest = expect_json(&mut ws, "history", ch).await;
    assert_eq!(latest["messages"].as_array().unwrap().len(), 23);
    assert_eq!(latest["messages"][0]["data"], "m22");
    assert_eq!(latest["cursor"], Value::Null);

    // Oldest first after an offset.
    let query = json!({"since": offsets[19], "limit": 2}).to_string();
    ws.send("history", &query, ch).await;
    let after = expect_json(&mut ws, "history", ch).await;
    let data: Vec<&str> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, vec!["m20", "m21"]);
    assert_eq!(after["cursor"], offsets[21]);

    assert_eq!(
        ws.request("history", "{\"limit\":\"many\"}", ch).await["data"],
        "invalid history request"
    );
    // Members only (the default rule).
    let mut other = env.ws_as(&outsider).await;
    assert_eq!(
        other.request("history", "", ch).await["data"],
        "you cannot read this channel"
    );
}

/// A client that writes many `chan_in` at once (they reach the gateway in one read and are
/// published as one burst): each is answered `ok` right before the sender's own copy, every
/// member gets all of them in order with consecutive offsets, and history holds them all.
#[tokio::test]
async fn messages_written_together_reach_every_member_in_order() {
    let env = TestEnv::start_with(|s| s.ws.rate_per_sec = 0).await;
    let (_, _, [sender, member]) = env.app_with_users("acme", 0).await;
    let ch = "burst";
    let mut tx = env.ws_as(&sender).await;
    let mut rx = env.ws_as(&member).await;
    tx.join(ch).await;
    rx.join(ch).await;
    const N: usize = 40;
    let texts = (0..N)
        .map(|i| tx.message("chan_in", &format!("m{i}"), ch))
        .collect();
    tx.send_together(texts).await;

    // As if they had come one by one: each `ok` right before the sender's own copy.
    let mut own = Vec::new();
    for _ in 0..N {
        let ok = tx.recv().await;
        assert_eq!(ok["type"], "ok", "{ok}");
        let msg = tx.recv().await;
        assert_eq!(msg["type"], "chan_out", "{msg}");
        own.push(msg);
    }
    let mut theirs = Vec::new();
    for _ in 0..N {
        let msg = rx.recv().await;
        assert_eq!(msg["type"], "chan_out", "{msg}");
        theirs.push(msg);
    }
    for got in [&own, &theirs] {
        let data: Vec<&str> = got.iter().map(|m| m["data"].as_str().unwrap()).collect();
        let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        assert_eq!(data, expected);
        let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "consecutive offsets: {offsets:?}"
        );
        assert!(got.iter().all(|m| m["sid"] == tx.sid.as_str()));
    }
    let page = rx.request("history", "{\"limit\":100}", ch).await;
    let page: Value = serde_json::from_str(page["data"].as_str().unwrap()).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), N);
}

#[tokio::test]
async fn join_since_on_a_custom_channel_recovers_what_was_missed() {
    let env = TestEnv::start_with(|s| s.ws.rate_per_sec = 0).await;
    let (_, _, [reader, writer]) = env.app_with_users("acme", 0).await;
    let ch = "feed";

    let mut r = env.ws_as(&reader).await;
    r.join(ch).await;
    let mut w = env.ws_as(&writer).await;
    assert_eq!(w.request("chan_in", "before", ch).await["type"], "ok");
    let seen = r.recv().await;
    assert_eq!(seen["data"], "before");
    let last = seen["offset"].as_u64().unwrap();
    drop(r);

    // Missed while offline: more than one page of messages, from two senders.
    for i in 0..60 {
        assert_eq!(
            w.request("chan_in", &format!("missed{i}"), ch).await["type"],
            "ok"
        );
    }
    let mut r = env.ws_as(&reader).await;
    let reply = join_with(&mut r, ch, json!({"since": last})).await;
    assert_eq!(reply["recovered"], true);
    for i in 0..60 {
        let msg = r.recv().await;
        assert_eq!(msg["type"], "chan_out", "{msg}");
        assert_eq!(msg["data"], format!("missed{i}"));
        assert_eq!(msg["sid"], w.sid.as_str());
        assert_eq!(msg["offset"], last + 1 + i);
    }
    // Then live, no gap, no duplicate.
    assert_eq!(w.request("chan_in", "live", ch).await["type"], "ok");
    let live = r.recv().await;
    assert_eq!(live["data"], "live");
    assert_eq!(live["offset"], last + 61);

    // Offsets as strings work too; nothing missed is an empty replay.
    let mut again = env.ws_as(&reader).await;
    let reply = join_with(&mut again, ch, json!({"since": (last + 61).to_string()})).await;
    assert_eq!(reply["recovered"], true);
    // Older than what is held, not an offset, or from the future: reload.
    for since in [json!(1), json!("soon"), json!(last + 1000)] {
        let mut ws = env.ws_as(&reader).await;
        let reply = join_with(&mut ws, ch, json!({"since": since})).await;
        assert_eq!(reply["recovered"], false, "{since}");
    }
    // Without since: no recovered key, as before.
    let mut plain = env.ws_as(&reader).await;
    let reply = join_with(&mut plain, ch, json!({})).await;
    assert!(reply.get("recovered").is_none(), "{reply}");
}

/// The window is time-bound: a client away longer than the TTL is told to reload; one away for
/// less gets everything. The default TTL (300 s) holds a 30-second absence; this test scales the
/// absence and the TTL down together instead of sleeping 30 s.
#[tokio::test]
async fn since_within_the_history_ttl_recovers_and_past_it_does_not() {
    assert!(walcast::hub::HistoryLimits::default().retention.ttl >= Duration::from_secs(30));
    let env = TestEnv::start_with(|s| {
        s.rooms.history.retention.ttl = Duration::from_secs(5);
    })
    .await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let ch = "ticker";

    let mut w = env.ws_as(&user).await;
    w.join(ch).await;
    let first = say(&mut w, ch, "one").await["offset"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    say(&mut w, ch, "two").await;
    let mut r = env.ws_as(&user).await;
    let reply = join_with(&mut r, ch, json!({"since": first - 1})).await;
    assert_eq!(reply["recovered"], true, "three seconds away, TTL 5 s");
    assert_eq!(r.recv().await["data"], "one");
    assert_eq!(r.recv().await["data"], "two");

    // 'one' is now more than 5 s old, 'two' about 2.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut late = env.ws_as(&user).await;
    let reply = join_with(&mut late, ch, json!({"since": first - 1})).await;
    assert_eq!(reply["recovered"], false, "'one' has expired");
    let reply = join_with(&mut late, ch, json!({"since": first})).await;
    assert_eq!(reply["recovered"], true, "'two' is still held");
    assert_eq!(late.recv().await["data"], "two");
}

#[tokio::test]
async fn built_in_rules_private_and_readonly() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    let mine = env.create_account(&app).await;
    let theirs = env.create_account(&app).await;
    let me = env.create_user(&app, mine, 0).await;
    let them = env.create_user(&app, theirs, 0).await;
    let root = env.create_user(&app, theirs, 100).await;
    let private = format!("private-{mine}-notes");

    let mut ws_me = env.ws_as(&me).await;
    ws_me.join(&private).await;
    let mut ws_them = env.ws_as(&them).await;
    let denied = ws_them.request("join", &private, "").await;
    assert_eq!(denied["type"], "error");
    assert_eq!(denied["data"], "you cannot join this channel");
    assert_eq!(
        ws_them.request("chan_in", "psst", &private).await["data"],
        "you cannot write to this channel"
    );
    assert_eq!(
        ws_them.request("join", "private-nobody", "").await["data"],
        "you cannot join this channel"
    );
    let mut ws_root = env.ws_as(&root).await;
    ws_root.join(&private).await;

    let news = "readonly-news";
    ws_me.join(news).await;
    assert_eq!(
        ws_me.request("chan_in", "hi", news).await["data"],
        "you cannot write to this channel"
    );
    assert_eq!(
        ws_root.request("chan_in", "from root", news).await["type"],
        "ok"
    );
    assert_eq!(ws_me.recv().await["data"], "from root");
    // The server publish API passes the rule and is kept in history like any message.
    let sent = http(
        env.addr,
        "POST",
        "/publish",
        &[("Authorization", &format!("Bearer {}", root.jwt))],
        &json!({"app": app.id.to_string(), "channel": news, "data": "from server"}).to_string(),
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let msg = ws_me.recv().await;
    assert_eq!(msg["data"], "from server");
    assert_eq!(msg["sid"], "");
    assert!(msg["offset"].as_u64().is_some());
}

#[tokio::test]
async fn configured_rules_replace_the_built_in_ones() {
    let rules = rules(
        r#"
        [[channel]]
        pattern = "team-{account}-*"
        presence = true
        read = "anyone"
        publish = "members"

        [[channel]]
        pattern = "ops-*"
        join = "root"
        "#,
    );
    let env = TestEnv::start_with(move |s| s.rooms.rules = rules).await;
    let app = env.create_app("acme").await;
    let account = env.create_account(&app).await;
    let other = env.create_account(&app).await;
    let user = env.create_user(&app, account, 0).await;
    let mate = env.create_user(&app, account, 0).await;
    let stranger = env.create_user(&app, other, 0).await;
    let team = format!("team-{account}-general");

    let mut u = env.ws_as(&user).await;
    let mut m = env.ws_as(&mate).await;
    let mut s = env.ws_as(&stranger).await;
    // `publish = "members"`: a teammate must join before writing.
    assert_eq!(
        m.request("chan_in", "early", &team).await["data"],
        "you cannot write to this channel"
    );
    u.join(&team).await;
    expect_json(&mut u, "presence_join", &team).await;
    // `read = "anyone"` still needs the right to join: strangers are kept out.
    assert_eq!(
        s.request("presence", "", &team).await["data"],
        "you cannot read this channel"
    );
    // A teammate that has not joined may read.
    assert_eq!(presence(&mut m, &team).await.len(), 1);
    assert_eq!(
        s.request("join", "ops-deploys", "").await["data"],
        "you cannot join this channel"
    );
    // The built-in rules are gone: presence-* is a plain channel now.
    u.join("presence-x").await;
    assert_eq!(
        u.request("presence", "", "presence-x").await["data"],
        "presence is not enabled on this channel"
    );
}

#[tokio::test]
async fn room_meta_is_shared_and_sent_to_joiners() {
    let env = TestEnv::start_with(|s| s.rooms.room_meta_max_bytes = 200).await;
    let (_, _, [alice, bob]) = env.app_with_users("acme", 0).await;
    let ch = "project_123";

    let mut a = env.ws_as(&alice).await;
    let mut b = env.ws_as(&bob).await;
    let meta = json!({"title": "Launch plan", "locked": false}).to_string();
    assert_eq!(
        b.request("room_meta", &meta, ch).await["data"],
        "you cannot change this room's metadata"
    );
    a.join(ch).await;
    assert_eq!(a.request("room_meta", "", ch).await["data"], "");
    assert_eq!(a.request("room_meta", &meta, ch).await["type"], "ok");
    let set = expect_json(&mut a, "room_meta", ch).await;
    assert_eq!(set["meta"]["title"], "Launch plan");
    assert!(set["updatedAt"].as_u64().is_some());

    b.join(ch).await;
    let sent = expect_json(&mut b, "room_meta", ch).await;
    assert_eq!(sent, set);
    let got = expect_json_reply(&mut b, "room_meta", ch).await;
    assert_eq!(got, set);

    let huge = json!({"title": "x".repeat(300)}).to_string();
    assert_eq!(
        a.request("room_meta", &huge, ch).await["data"],
        "room metadata too large"
    );
    assert_eq!(
        a.request("room_meta", "not json", ch).await["data"],
        "invalid metadata"
    );
}

async fn expect_json_reply(ws: &mut Ws, kind: &str, channel: &str) -> Value {
    ws.send(kind, "", channel).await;
    expect_json(ws, kind, channel).await
}

#[tokio::test]
async fn destroy_ends_membership() {
    let env = TestEnv::start().await;
    let (app, account, user) = env.app_with_user("acme", 0).await;
    let root = env.create_user(&app, account, 100).await;
    let ch = "presence-standup";

    let mut u = env.ws_as(&user).await;
    u.join(ch).await;
    expect_json(&mut u, "presence_join", ch).await;
    say(&mut u, ch, "hello").await;
    assert_eq!(
        u.request("destroy", "", ch).await["data"],
        "you cannot destroy this channel"
    );
    let mut r = env.ws_as(&root).await;
    r.join(ch).await;
    expect_json(&mut r, "presence_join", ch).await;
    expect_json(&mut u, "presence_join", ch).await;
    assert_eq!(r.request("destroy", "", ch).await["type"], "ok");
    for ws in [&mut u, &mut r] {
        let destroyed = ws.recv().await;
        assert_eq!(destroyed["type"], "destroyed", "{destroyed}");
        assert_eq!(destroyed["channel"], ch);
    }
    // No longer members: nothing more arrives, history and presence are gone.
    assert_eq!(r.request("chan_in", "after", ch).await["type"], "ok");
    assert_eq!(
        u.request("presence", "", ch).await["data"],
        "you cannot read this channel"
    );
    let echo = u.request("echo", "still here", "").await;
    assert_eq!(
        echo["data"], "echo: still here",
        "no chan_out reached a removed member"
    );
    u.join(ch).await;
    expect_json(&mut u, "presence_join", ch).await;
    u.send("history", "", ch).await;
    let history = expect_json(&mut u, "history", ch).await;
    let data: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, vec!["after"], "history before the destroy is gone");
    assert_eq!(presence(&mut u, ch).await.len(), 1);

    // The server may destroy too, over the server API (a root session token as credential).
    let bearer = format!("Bearer {}", root.jwt);
    let body = json!({"app": app.id.to_string(), "channel": ch}).to_string();
    let denied = http(
        env.addr,
        "POST",
        "/destroy",
        &[("Authorization", &format!("Bearer {}", user.jwt))],
        &body,
    )
    .await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let destroyed = http(
        env.addr,
        "POST",
        "/destroy",
        &[("Authorization", &bearer)],
        &body,
    )
    .await;
    assert_eq!(destroyed.status, 200, "{destroyed:?}");
    let answer: Value = serde_json::from_str(&destroyed.body).unwrap();
    assert_eq!(answer, json!({"ok": true, "members": 1}));
    assert_eq!(u.recv().await["type"], "destroyed");
    assert_eq!(
        u.request("destroy", "", "db-tasks").await["data"],
        "you cannot destroy this channel"
    );
}

#[tokio::test]
async fn floods_of_history_and_presence_metadata_stay_bounded() {
    let env = TestEnv::start_with(|s| {
        s.ws.rate_per_sec = 0;
        s.rooms.history.max_bytes = 50_000;
        s.rooms.presence_max_meta_bytes = 64;
        s.rooms.presence_max_members = 3;
    })
    .await;
    let (_, _, user) = env.app_with_user("acme", 0).await;
    let hub = std::sync::Arc::clone(&env.gateway.as_ref().unwrap().hub);

    let mut ws = env.ws_as(&user).await;
    let payload = "f".repeat(1000);
    for i in 0..600 {
        let ch = format!("flood-{}", i % 150);
        assert_eq!(ws.request("chan_in", &payload, &ch).await["type"], "ok");
        assert!(hub.rooms().history_bytes() <= 50_000);
    }
    assert!(
        hub.rooms().history_bytes() > 40_000,
        "the budget is used, not wasted"
    );
    // The newest messages are the ones kept.
    ws.join("flood-149").await;
    ws.send("history", "", "flood-149").await;
    let page = expect_json(&mut ws, "history", "flood-149").await;
    assert!(!page["messages"].as_array().unwrap().is_empty());

    let big = json!({"blob": "m".repeat(100)});
    send_with(&mut ws, "join", "presence-big", "", json!({"meta": big})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["data"], "presence metadata too large");
    assert_eq!(hub.rooms().presence_members(), 0);

    let mut members = Vec::new();
    for i in 0..5 {
        let mut m = env.ws_as(&user).await;
        join_with(&mut m, "presence-big", json!({"meta": {"n": i}})).await;
        members.push(m);
    }
    assert_eq!(hub.rooms().presence_members(), 5);
    assert_eq!(presence(&mut members[0], "presence-big").await.len(), 3);
    drop(members);
    for _ in 0..100 {
        if hub.rooms().presence_members() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hub.rooms().presence_members(),
        0,
        "every closed member was removed"
    );
}

#[tokio::test]
async fn auth_false_channels_admit_guests_of_the_named_app() {
    let rules = rules(
        r#"
        [[channel]]
        pattern = "status"
        auth = false
        read = "anyone"
        publish = "root"
        presence = true
        "#,
    );
    let env = TestEnv::start_with(move |s| s.rooms.rules = rules).await;
    let (app, _, root) = env.app_with_user("acme", 100).await;
    let ch = "status";

    let mut admin = env.ws_as(&root).await;
    admin.join(ch).await;
    expect_json(&mut admin, "presence_join", ch).await;
    assert_eq!(admin.request("chan_in", "all good", ch).await["type"], "ok");
    admin.recv().await;

    // No auth, app named at connect.
    let mut guest = Ws::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    guest.join(ch).await;
    assert_eq!(
        admin.request("chan_in", "still good", ch).await["type"],
        "ok"
    );
    assert_eq!(guest.recv().await["data"], "still good");
    guest.send("history", "", ch).await;
    let history = expect_json(&mut guest, "history", ch).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    // Guests never write, never show in presence, never join what needs auth.
    assert_eq!(
        guest.request("chan_in", "hi", ch).await["data"],
        "invalid token"
    );
    assert_eq!(presence(&mut guest, ch).await.len(), 1);
    // A channel whose rule needs auth answers a guest as it always did.
    assert_eq!(
        guest.request("join", "lobby", "").await["data"],
        "invalid token"
    );
    assert_eq!(
        guest.request("join", "db-tasks", "").await["data"],
        "invalid token"
    );
    assert_eq!(
        guest.request("room_meta", "{}", ch).await["data"],
        "you cannot change this room's metadata"
    );
    assert_eq!(guest.request("leave", ch, "").await["type"], "left");

    // Without sbpk there is no app to be a guest of.
    let mut nobody = env.ws().await;
    assert_eq!(
        nobody.request("join", ch, "").await["data"],
        "invalid token"
    );
    // An unknown app id is refused the same way.
    let mut stranger = Ws::connect(env.addr, &format!("?sbpk={}", uuid::Uuid::new_v4())).await;
    assert_eq!(
        stranger.request("join", ch, "").await["data"],
        "invalid token"
    );
}

#[tokio::test]
async fn sse_members_share_presence_and_history_with_websocket_members() {
    let env = TestEnv::start().await;
    let (app, _, [alice, bob]) = env.app_with_users("acme", 0).await;
    let ch = "presence-mixed";

    let mut ws = env.ws_as(&alice).await;
    ws.join(ch).await;
    expect_json(&mut ws, "presence_join", ch).await;
    let mut sse = crate::support::sse::Sse::connect(env.addr, &format!("?sbpk={}", app.id)).await;
    sse.auth(&bob.jwt).await;
    sse.join(ch).await;
    let joined = expect_json(&mut ws, "presence_join", ch).await;
    assert_eq!(joined["sid"], sse.sid.as_str());
    assert_eq!(joined["userId"], bob.id.to_string());
    let own = sse.recv().await;
    assert_eq!(own["type"], "presence_join", "{own}");

    // SSE requests name the channel in `channel` like WebSocket ones.
    let reply = sse.request("presence", "", ch).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let members: Vec<Value> = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        sids(&members),
        sorted(vec![ws.sid.clone(), sse.sid.clone()])
    );
    let sent = say(&mut ws, ch, "hi sse").await;
    let got = sse.recv().await;
    assert_eq!(got["data"], "hi sse");
    assert_eq!(got["offset"], sent["offset"]);
    let reply = sse.request("history", "", ch).await;
    assert_eq!(reply["type"], "history", "{reply}");
    let page: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(page["messages"][0]["data"], "hi sse");

    // A closed stream leaves presence.
    let sse_sid = sse.sid.clone();
    sse.vanish();
    let left = expect_json(&mut ws, "presence_leave", ch).await;
    assert_eq!(left["sid"], sse_sid.as_str());
}
