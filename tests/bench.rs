//! `walcast bench` at toy size: it starts its own PostgreSQL and a gateway child process, and its
//! JSON report accounts for every delivery.

use crate::support::walcast_command;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn channel_scenario_reports_json() {
    let report = channel_run(&[]).await;
    assert_eq!(report["transport"], "ws");
}

#[tokio::test]
async fn channel_scenario_over_tls_with_compression() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let report = channel_run(&[
        "--compression",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--payload-bytes",
        "600",
    ])
    .await;
    assert_eq!(report["transport"], "wss + permessage-deflate");
    // Compressed frames: fewer WebSocket bytes read per delivery than the 600-byte payload.
    let wire = report["wire_bytes_per_delivery"].as_f64().unwrap();
    assert!(wire < 600.0, "{wire}");
}

/// A toy channel run with `extra` flags; asserts every delivery is accounted for.
async fn channel_run(extra: &[&str]) -> Value {
    // Run from an empty directory, with temporary files in another: the gateway child's data
    // must go to a temporary directory of its own, removed afterwards, never to `./walcast-data`.
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = walcast_command(["bench", "--scenario", "channel", "--connections", "10"])
        .args(extra)
        .args([
            "--rate",
            "100",
            "--duration",
            "1",
            "--drain",
            "60",
            "--json",
        ])
        .env_remove("WALCAST_DATA_DIR")
        .env("TMPDIR", tmp.path())
        .current_dir(cwd.path())
        .output();
    // Bounded (initdb on a loaded machine is slow), never a timing assertion.
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("walcast bench finished")
        .expect("walcast bench ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["scenario"], "channel");
    assert_eq!(report["connections"], 10);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(report["expected_deliveries"].as_u64().unwrap(), sent * 10);
    assert_eq!(report["deliveries"], report["expected_deliveries"]);
    assert_eq!(report["missed"], 0);
    assert_eq!(report["slow_consumer_closes"], 0);
    assert!(report["server"]["pid"].as_u64().is_some());
    let left = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("walcast"))
            .collect()
    };
    assert_eq!(left(cwd.path()), Vec::<String>::new(), "working directory");
    assert_eq!(
        left(tmp.path()),
        Vec::<String>::new(),
        "temporary directory"
    );
    report
}
