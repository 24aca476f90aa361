//! PROTOCOL.md §8 [ext]: `join` with `since` replays what a client missed, from the resume
//! window, permission-filtered, with no gap and no duplicate — also across a gateway restart.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn rejoin_with_since_replays_exactly_what_was_missed() {
    let env = TestEnv::start().await;
    let app = env.create_app("acme").await;
    let a = env.create_account(&app).await;
    let b = env.create_account(&app).await;
    let a1 = env.create_user(&app, a, 0).await;
    let c = env.create_user(&app, b, 0).await;
    env.create_repo(&app, "tasks_760_").await;
    let ch = "db-tasks_760_";

    let mut first = env.ws_as(&a1).await;
    first.join(ch).await;
    let e1 = env
        .insert(&app, "tasks_760_", Some(a), None, json!({"n": 1}))
        .await;
    let seen = first.recv().await;
    let since = seen["lsn"].as_str().unwrap().to_owned();
    drop(first);

    // Missed while away: A's insert, B's insert (not readable), an update and a delete.
    let e2 = env
        .insert(&app, "tasks_760_", Some(a), None, json!({"n": 2}))
        .await;
    env.insert(&app, "tasks_760_", Some(b), None, json!({"n": "B"}))
        .await;
    env.sql(&format!(
        "UPDATE acme.tasks_760_ SET data = '{{\"n\": 22}}' WHERE id = '{e2}'"
    ))
    .await;
    env.sql(&format!("DELETE FROM acme.tasks_760_ WHERE id = '{e1}'"))
        .await;

    let mut back = env.ws_as(&a1).await;
    assert!(back.join_since(ch, &since).await, "within the window");
    assert_eq!(event(&back.recv().await, "db_created", ch)["n"], 2);
    assert_eq!(event(&back.recv().await, "db_updated", ch)["n"], 22);
    back.expect_deleted(ch, e1, "").await;
    // Then live, with nothing repeated.
    let e5 = env
        .insert(&app, "tasks_760_", Some(a), None, json!({"n": 5}))
        .await;
    back.expect_id("db_created", ch, e5, "live after the replay")
        .await;

    // Another account's user resuming from the same point sees only its own row.
    let mut other = env.ws_as(&c).await;
    assert!(other.join_since(ch, &since).await);
    assert_eq!(event(&other.recv().await, "db_created", ch)["n"], "B");
    let e6 = env
        .insert(&app, "tasks_760_", Some(b), None, json!({"n": 6}))
        .await;
    other
        .expect_id("db_created", ch, e6, "nothing of account A in between")
        .await;

    // Older than the window (before the gateway's start), or unreadable: reload.
    let mut stale = env.ws_as(&a1).await;
    assert!(!stale.join_since(ch, "0/1").await);
    let mut garbage = env.ws_as(&a1).await;
    assert!(!garbage.join_since("db-other", "not-an-lsn").await);
    // Custom channels keep no history.
    assert!(!garbage.join_since("room", &since).await);
}

#[tokio::test]
async fn resume_survives_a_gateway_restart() {
    let mut env = TestEnv::start().await;
    let (app, a, a1) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks_760_").await;
    let ch = "db-tasks_760_";

    let since = {
        let mut ws = env.ws_as(&a1).await;
        ws.join(ch).await;
        env.insert(&app, "tasks_760_", Some(a), None, json!({"n": 1}))
            .await;
        let seen = ws.recv().await;
        assert_eq!(event(&seen, "db_created", ch)["n"], 1);
        seen["lsn"].as_str().unwrap().to_owned()
    };
    env.shutdown().await;
    let e2 = env
        .insert(&app, "tasks_760_", Some(a), None, json!({"n": 2}))
        .await;

    let gateway = walcast::gateway::Gateway::start(env.settings.clone())
        .await
        .unwrap();
    // A fresh client (no since) loads its data after the restart: rows committed before it
    // joined are never pushed to it.
    let mut fresh = Ws::connect(gateway.local_addr(), "").await;
    fresh.auth(&a1.jwt).await;
    fresh.join(ch).await;
    let mut back = Ws::connect(gateway.local_addr(), "").await;
    back.auth(&a1.jwt).await;
    assert!(
        back.join_since(ch, &since).await,
        "the WAL kept the window across the restart"
    );
    let e3 = env
        .insert(&app, "tasks_760_", Some(a), None, json!({"n": 3}))
        .await;

    back.expect_id(
        "db_created",
        ch,
        e2,
        "missed during the restart, row 1 not repeated",
    )
    .await;
    back.expect_id("db_created", ch, e3, "then live").await;
    fresh
        .expect_id(
            "db_created",
            ch,
            e3,
            "no pre-restart row for a fresh client",
        )
        .await;
    gateway.shutdown().await;
}
