//! Operator endpoints: `/healthz`, `/readyz` and the Prometheus text of `/metrics` after real
//! traffic. The metrics recorder is process-wide and tests run in parallel, so counters are
//! checked as lower bounds.

use crate::support::*;
use serde_json::json;

/// The value of an unlabelled sample `name` in Prometheus text, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_health_and_readiness_while_streaming() {
    let env = TestEnv::start().await;
    assert_eq!(http_get(env.addr, "/healthz").await.status, 200);
    let ready = http_get(env.addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(ready.body.starts_with("ready\n"), "{}", ready.body);
    // Details: the window log's directory, size and oldest position.
    for key in [
        "replication: streaming",
        "resume_log_dir: ",
        "resume_log_bytes: ",
        "resume_log_oldest: ",
    ] {
        assert!(ready.body.contains(key), "{key} in {}", ready.body);
    }

    let (app, account, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks").await;
    let mut ws = env.ws_as(&user).await;
    ws.join("db-tasks").await;
    env.insert(
        &app,
        "tasks",
        Some(account),
        Some(user.id),
        json!({"title": "measured"}),
    )
    .await;
    event(&ws.recv().await, "db_created", "db-tasks");

    let metrics = http_get(env.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    for (name, at_least) in [
        ("walcast_connections", 1.0),
        ("walcast_events_in_total", 1.0),
        ("walcast_transactions_in_total", 1.0),
        ("walcast_deliveries_total", 1.0),
        ("walcast_messages_in_total", 2.0),
    ] {
        assert!(
            sample(&text, name).is_some_and(|n| n >= at_least),
            "{name} below {at_least}: {text}"
        );
    }
    assert!(
        text.contains("# TYPE walcast_events_in_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE walcast_connections gauge"), "{text}");

    // The replication gauges are set by the dispatch loop's once-a-second report: poll (bounded)
    // until a report after the event has confirmed a position.
    let mut text = text;
    for _ in 0..100 {
        if sample(&text, "walcast_confirmed_lsn").is_some_and(|n| n > 0.0)
            && sample(&text, "walcast_replication_lag_bytes").is_some()
            && sample(&text, "walcast_channels").is_some()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = http_get(env.addr, "/metrics").await.body;
    }
    assert!(
        sample(&text, "walcast_confirmed_lsn").is_some_and(|n| n > 0.0),
        "{text}"
    );
    for name in [
        "walcast_replication_lag_bytes",
        "walcast_replication_lag_seconds",
    ] {
        assert!(
            sample(&text, name).is_some_and(|n| n >= 0.0),
            "{name}: {text}"
        );
    }
    // Set by every gateway of this process, some with no channel: only present.
    assert!(sample(&text, "walcast_channels").is_some(), "{text}");

    assert_eq!(http_get(env.addr, "/readyz").await.status, 200);
}
