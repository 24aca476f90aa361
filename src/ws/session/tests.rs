//! Protocol cases of one session, without PostgreSQL: the user lookup answers from memory and
//! replies are read back from the connection's outbox.

use super::{Next, Session, Transport};
use crate::auth::{AuthError, UserLookup};
use crate::hub::{Hub, Outbox};
use crate::permission::{AppName, Reader};
use crate::protocol::CloseReason;
use crate::publish::{ChannelSink, IdempotencyConfig, MemoryIdempotency, Publisher};
use crate::telemetry::Telemetry;
use crate::ws::{ConnectionLimits, WsConfig, WsContext};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Session JWTs this directory knows, each with its user.
#[derive(Debug, Default)]
struct Directory(HashMap<&'static str, Reader>);

impl UserLookup for Directory {
    fn authenticate<'a>(
        &'a self,
        jwt: &'a str,
        _app_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Reader, AuthError>> {
        let found = self.0.get(jwt).cloned().ok_or(AuthError::Invalid);
        Box::pin(async move { found })
    }

    fn app<'a>(&'a self, app_key: &'a str) -> BoxFuture<'a, Result<AppName, AuthError>> {
        let found = self
            .0
            .values()
            .find(|reader| &*reader.app == app_key)
            .map(|reader| Arc::clone(&reader.app))
            .ok_or(AuthError::Invalid);
        Box::pin(async move { found })
    }
}

fn user(app: &str, n: u128) -> Reader {
    Reader {
        app: app.into(),
        user_id: Uuid::from_u128(n),
        account_id: Some(Uuid::from_u128(1000 + n)),
        role: 0,
    }
}

fn context(config: WsConfig, per_app: usize) -> Arc<WsContext> {
    let directory = Directory(HashMap::from([
        ("jwt-alice", user("acme", 1)),
        ("jwt-bob", user("acme", 2)),
    ]));
    let hub = Arc::new(Hub::default());
    let telemetry = Telemetry::new();
    Arc::new(WsContext {
        publisher: Arc::new(Publisher::new(
            Arc::clone(&hub) as Arc<dyn ChannelSink>,
            Arc::new(MemoryIdempotency::new(IdempotencyConfig::default())),
            64 * 1024,
            telemetry.clone(),
        )),
        hub,
        auth: Arc::new(directory),
        // Never used: these sessions ask for no snapshot (the pool connects on first use).
        snapshots: Arc::new(
            crate::livequery::Snapshots::new(
                "postgres://127.0.0.1:1/none",
                crate::livequery::SnapshotConfig::default(),
            )
            .unwrap(),
        ),
        limits: ConnectionLimits::new(100, per_app),
        config,
        telemetry,
        shutdown: CancellationToken::new(),
    })
}

/// A session and the client's view of it.
struct Client {
    session: Session,
    outbox: Arc<Outbox>,
    sid: String,
    token: String,
}

impl Client {
    fn connect(ctx: &Arc<WsContext>, conn: u64) -> Client {
        Client::connect_over(ctx, conn, Transport::WebSocket)
    }

    fn connect_over(ctx: &Arc<WsContext>, conn: u64, transport: Transport) -> Client {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let session = Session::new(Arc::clone(ctx), conn, Arc::clone(&outbox), None, transport);
        session.send_init();
        let mut client = Client {
            session,
            outbox,
            sid: String::new(),
            token: String::new(),
        };
        let init = client.replies();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["type"], "init");
        client.sid = init[0]["data"].as_str().unwrap_or_default().to_owned();
        client
    }

    /// Every frame queued so far, as JSON.
    fn replies(&self) -> Vec<Value> {
        self.entries().into_iter().flatten().collect()
    }

    /// Every queue entry so far, each as its frames' JSON.
    fn entries(&self) -> Vec<Vec<Value>> {
        let mut batch = Vec::new();
        let _ = self.outbox.next_batch(&mut batch).now_or_never();
        batch
            .iter()
            .map(|entry| entry.parts().map(|f| text_payload(&f)).collect())
            .collect()
    }

    fn send_raw(&mut self, payload: &str) -> Next {
        self.send_together(&[payload.to_owned()])
    }

    /// Messages that arrived together (one read).
    fn send_together(&mut self, payloads: &[String]) -> Next {
        let payloads: Vec<bytes::Bytes> = payloads
            .iter()
            .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        self.session
            .handle_burst(&payloads)
            .now_or_never()
            .expect("the in-memory lookup never waits")
    }

    /// A message with this session's sid and current token.
    fn message(&self, kind: &str, data: &str, channel: &str) -> String {
        serde_json::json!({
            "sid": self.sid, "type": kind, "data": data, "channel": channel, "token": self.token,
        })
        .to_string()
    }

    /// Sends a message with this session's sid and current token.
    fn send(&mut self, kind: &str, data: &str, channel: &str) -> Next {
        let message = self.message(kind, data, channel);
        self.send_raw(&message)
    }

    /// Sends and returns the one reply.
    fn ask(&mut self, kind: &str, data: &str, channel: &str) -> Value {
        assert_eq!(self.send(kind, data, channel), Next::Continue);
        let mut replies = self.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    fn login(&mut self, jwt: &str) {
        let reply = self.ask("auth", jwt, "");
        assert_eq!(reply["type"], "token", "{reply}");
        self.token = reply["data"].as_str().unwrap_or_default().to_owned();
        assert!(!self.token.is_empty());
    }
}

/// Alice and Bob, authenticated, both members of `room`.
fn both_in_room(ctx: &Arc<WsContext>) -> (Client, Client) {
    let mut alice = Client::connect(ctx, 1);
    let mut bob = Client::connect(ctx, 2);
    alice.login("jwt-alice");
    bob.login("jwt-bob");
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.ask("join", "room", "")["type"], "joined");
    }
    (alice, bob)
}

/// Each reply as `"<type> <data>"`.
fn brief(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["type"].as_str().unwrap(),
                r["data"].as_str().unwrap()
            )
        })
        .collect()
}

/// The JSON of one unmasked server text frame.
fn text_payload(frame: &bytes::Bytes) -> Value {
    let payload = crate::protocol::frame::text_payload(frame).expect("a final text frame");
    serde_json::from_slice(&payload).expect("server frames are JSON")
}

fn error_text(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["data"].as_str().unwrap_or_default()
}

#[test]
fn refusals_before_any_request() {
    let ctx = context(WsConfig::default(), 10);
    let mut client = Client::connect(&ctx, 1);
    assert_eq!(client.send_raw("not json"), Next::Continue);
    assert_eq!(error_text(&client.replies()[0]), "invalid message");
    client.send_raw(r#"{"sid":"someone-else","type":"echo"}"#);
    assert_eq!(error_text(&client.replies()[0]), "invalid sid");
    // The sid is checked before the type.
    client.send_raw(r#"{"sid":"someone-else","type":"dance"}"#);
    assert_eq!(error_text(&client.replies()[0]), "invalid sid");
    let reply = client.ask("dance", "", "");
    assert_eq!(error_text(&reply), "dance command not found");
}

#[test]
fn echo_sends_back_channel_and_token() {
    let ctx = context(WsConfig::default(), 10);
    let mut client = Client::connect(&ctx, 1);
    client.token = "t".into();
    let reply = client.ask("echo", "hello", "c");
    assert_eq!(reply["type"], "echo");
    assert_eq!(reply["data"], "echo: hello");
    assert_eq!(reply["channel"], "c");
    assert_eq!(reply["token"], "t");
    assert_eq!(reply["sid"], client.sid.as_str());
}

#[test]
fn token_is_checked_before_the_channel() {
    let ctx = context(WsConfig::default(), 10);
    let mut client = Client::connect(&ctx, 1);
    let refused = |client: &mut Client, cases: &[(&str, &str, &str, &str)]| {
        for (kind, data, channel, want) in cases {
            let reply = client.ask(kind, data, channel);
            assert_eq!(error_text(&reply), *want, "{kind} {data:?} {channel:?}");
        }
    };
    refused(
        &mut client,
        &[
            ("join", "sbsys", "", "invalid token"),
            ("leave", "sbsys", "", "invalid token"),
            ("chan_in", "x", "", "invalid token"),
            ("auth", "forged", "", "invalid token"),
        ],
    );
    client.login("jwt-alice");
    refused(
        &mut client,
        &[
            ("join", "sbsys", "", "reserved channel"),
            ("join", "", "", "invalid channel name"),
            ("chan_in", "x", "", "no channel was specified"),
            (
                "chan_in",
                "x",
                "DB-tasks",
                "you cannot write to database channel",
            ),
        ],
    );
    client.token = "stale".into();
    refused(&mut client, &[("join", "room", "", "invalid token")]);
}

#[test]
fn join_publish_leave() {
    let ctx = context(WsConfig::default(), 10);
    let mut alice = Client::connect(&ctx, 1);
    let mut bob = Client::connect(&ctx, 2);
    alice.login("jwt-alice");
    bob.login("jwt-bob");
    for client in [&mut alice, &mut bob] {
        let joined = client.ask("join", "room", "");
        assert_eq!(joined["type"], "joined");
        assert_eq!(joined["data"], "room");
        assert!(joined.get("recovered").is_none());
    }
    assert_eq!(alice.send("chan_in", "hi", "room"), Next::Continue);
    let sent = alice.replies();
    assert_eq!(sent[0]["type"], "ok");
    for got in [&sent[1], &bob.replies()[0]] {
        assert_eq!(got["type"], "chan_out");
        assert_eq!(got["data"], "hi");
        assert_eq!(got["channel"], "room");
        assert_eq!(got["sid"], alice.sid.as_str());
    }
    let left = bob.ask("leave", "room", "");
    assert_eq!(
        (&left["type"], &left["data"]),
        (&"left".into(), &"room".into())
    );
    alice.send("chan_in", "again", "room");
    assert_eq!(alice.replies().len(), 2, "ok and its own copy");
    assert!(bob.replies().is_empty(), "bob left");
    // Leaving a channel one is not in is answered the same way.
    let left = bob.ask("leave", "never-joined", "");
    assert_eq!(left["type"], "left");
}

/// `chan_in` that arrive together go out as one burst: every member gets them as one queue
/// entry, in order; the sender, a member too, sees each `ok` right before its own copy, as if
/// they had come one by one.
#[test]
fn messages_that_arrive_together_are_published_as_one_burst() {
    let ctx = context(WsConfig::default(), 10);
    let (mut alice, bob) = both_in_room(&ctx);
    let burst: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|data| alice.message("chan_in", data, "room"))
        .collect();
    assert_eq!(alice.send_together(&burst), Next::Continue);
    let own = alice.entries();
    assert_eq!(own.len(), 1, "the sender's replies and copies as one entry");
    let seen = brief(&own[0]);
    assert_eq!(
        seen,
        [
            "ok ",
            "chan_out 1",
            "ok ",
            "chan_out 2",
            "ok ",
            "chan_out 3"
        ]
    );
    let entries = bob.entries();
    assert_eq!(entries.len(), 1, "one queue entry for the burst");
    let data: Vec<&Value> = entries[0].iter().map(|r| &r["data"]).collect();
    assert_eq!(data, ["1", "2", "3"]);
    assert!(entries[0].iter().all(|r| r["type"] == "chan_out"));
}

/// Every reply keeps its place in a burst: a run is answered and published before whatever
/// follows it, and a refused message (bad token, rate limit) ends the run.
#[test]
fn a_burst_keeps_every_reply_in_place() {
    let config = WsConfig {
        rate_per_sec: 1,
        rate_burst: 8,
        ..WsConfig::default()
    };
    let ctx = context(config, 10);
    let (mut alice, bob) = both_in_room(&ctx);
    let mut burst = vec![
        alice.message("chan_in", "a", "room"),
        alice.message("chan_in", "b", "room"),
        alice.message("echo", "e", ""),
        alice.message("chan_in", "c", "room"),
    ];
    let mut forged = serde_json::from_str::<Value>(&burst[0]).unwrap();
    forged["token"] = "forged".into();
    forged["data"] = "x".into();
    burst.push(forged.to_string());
    burst.push(alice.message("chan_in", "d", "room"));
    // Two of the eight allowed went to auth and join: six more pass, the rest is refused.
    burst.push(alice.message("chan_in", "late", "room"));
    burst.push(alice.message("chan_in", "later", "room"));
    assert_eq!(alice.send_together(&burst), Next::Continue);
    let seen = brief(&alice.replies());
    assert_eq!(
        seen,
        [
            "ok ",
            "chan_out a",
            "ok ",
            "chan_out b",
            "echo echo: e",
            "ok ",
            "chan_out c",
            "error invalid token",
            "ok ",
            "chan_out d",
            "error rate limit exceeded",
            "error rate limit exceeded",
        ]
    );
    let data: Vec<Value> = bob.replies().iter().map(|r| r["data"].clone()).collect();
    assert_eq!(data, ["a", "b", "c", "d"]);
}

/// A sender that is not a member gets its replies only; one refused for its size keeps its
/// place between the others, and members get only what was published.
#[test]
fn a_burst_from_a_non_member_answers_in_order() {
    let ctx = context(WsConfig::default(), 10);
    let mut alice = Client::connect(&ctx, 1);
    let mut bob = Client::connect(&ctx, 2);
    alice.login("jwt-alice");
    bob.login("jwt-bob");
    assert_eq!(bob.ask("join", "room", "")["type"], "joined");
    let big = "x".repeat(64 * 1024 + 1);
    let burst = vec![
        alice.message("chan_in", "1", "room"),
        alice.message("chan_in", &big, "room"),
        alice.message("chan_in", "3", "room"),
    ];
    assert_eq!(alice.send_together(&burst), Next::Continue);
    let kinds: Vec<Value> = alice.replies().iter().map(|r| r["type"].clone()).collect();
    assert_eq!(kinds, ["ok", "error", "ok"]);
    let data: Vec<Value> = bob.replies().iter().map(|r| r["data"].clone()).collect();
    assert_eq!(data, ["1", "3"]);
}

#[test]
fn database_channel_join_and_resume_flag() {
    let ctx = context(WsConfig::default(), 10);
    let mut client = Client::connect(&ctx, 1);
    client.login("jwt-alice");
    let joined = client.ask("join", "db-tasks_760_", "");
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["data"], "db-tasks_760_");
    let message = serde_json::json!({
        "sid": client.sid, "type": "join", "data": "db-notes", "token": client.token,
        "since": "0/1",
    });
    client.send_raw(&message.to_string());
    let joined = &client.replies()[0];
    assert_eq!(joined["type"], "joined");
    assert_eq!(
        joined["recovered"], false,
        "an empty window holds nothing after 0/1"
    );
}

#[test]
fn channel_limit_counts_distinct_channels() {
    let config = WsConfig {
        max_channels: 2,
        ..WsConfig::default()
    };
    let ctx = context(config, 10);
    let mut client = Client::connect(&ctx, 1);
    client.login("jwt-alice");
    assert_eq!(client.ask("join", "a", "")["type"], "joined");
    assert_eq!(client.ask("join", "b", "")["type"], "joined");
    assert_eq!(client.ask("join", "a", "")["type"], "joined", "rejoining");
    assert_eq!(
        error_text(&client.ask("join", "c", "")),
        "channel limit reached"
    );
    client.ask("leave", "a", "");
    assert_eq!(client.ask("join", "c", "")["type"], "joined");
}

#[test]
fn reauth_starts_clean() {
    let ctx = context(WsConfig::default(), 10);
    let mut alice = Client::connect(&ctx, 1);
    let mut watcher = Client::connect(&ctx, 2);
    watcher.login("jwt-bob");
    watcher.ask("join", "room", "");
    alice.login("jwt-alice");
    alice.ask("join", "room", "");
    let old_token = alice.token.clone();
    alice.login("jwt-bob");
    assert_ne!(alice.token, old_token);
    watcher.send("chan_in", "x", "room");
    assert_eq!(watcher.replies().len(), 2, "ok and its own copy");
    assert!(
        alice.replies().is_empty(),
        "the old identity's channels are left"
    );
}

#[test]
fn app_connection_limit_closes_with_1013() {
    let ctx = context(WsConfig::default(), 1);
    let mut first = Client::connect(&ctx, 1);
    first.login("jwt-alice");
    let mut second = Client::connect(&ctx, 2);
    assert_eq!(
        second.send("auth", "jwt-bob", ""),
        Next::Close(CloseReason::ConnectionLimit)
    );
    assert_eq!(error_text(&second.replies()[0]), "connection limit reached");
    drop(first);
    second.login("jwt-bob");
}

#[test]
fn rate_limit_answers_past_the_burst() {
    let config = WsConfig {
        rate_per_sec: 1,
        rate_burst: 2,
        ..WsConfig::default()
    };
    let ctx = context(config, 10);
    let mut client = Client::connect(&ctx, 1);
    assert_eq!(client.ask("echo", "1", "")["type"], "echo");
    assert_eq!(client.ask("echo", "2", "")["type"], "echo");
    assert_eq!(
        error_text(&client.ask("echo", "3", "")),
        "rate limit exceeded"
    );
}

#[test]
fn event_stream_token_is_the_jwt_and_binds_every_message() {
    let ctx = context(WsConfig::default(), 100);
    let mut alice = Client::connect_over(&ctx, 1, Transport::EventStream);
    // Before auth nothing is bound: echo works with any token, join needs auth.
    alice.token = "whatever".into();
    assert_eq!(alice.ask("echo", "x", "")["data"], "echo: x");
    assert_eq!(error_text(&alice.ask("join", "room", "")), "invalid token");
    // The published client sends its JWT as token on every message, auth included.
    alice.token = "jwt-alice".into();
    let reply = alice.ask("auth", "jwt-alice", "");
    assert_eq!(reply["type"], "token");
    assert_eq!(reply["data"], "jwt-alice");
    assert_eq!(alice.ask("join", "room", "")["type"], "joined");
    // Any other token, even another user's valid JWT, changes nothing.
    alice.token = "jwt-bob".into();
    assert_eq!(
        error_text(&alice.ask("auth", "jwt-bob", "")),
        "invalid token"
    );
    assert_eq!(error_text(&alice.ask("echo", "x", "")), "invalid token");
    assert_eq!(error_text(&alice.ask("leave", "room", "")), "invalid token");
    alice.token = "jwt-alice".into();
    assert_eq!(alice.ask("leave", "room", "")["type"], "left");
}
