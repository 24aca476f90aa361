//! A flood of malformed frames, oversize frames, invalid UTF-8, unmasked frames, bad-token
//! auths and half-open (slowloris) handshakes against a `walcast serve` process: every bad
//! connection is closed with its code, a control client is served throughout, and the
//! gateway's RSS stays bounded. Figures: docs/OPERATIONS.md.

use crate::support::serve;
use crate::support::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

/// Bad connections per kind.
const PER_KIND: usize = 200;
const SLOWLORIS: usize = 1000;
/// Growth of the gateway's RSS the flood may cause at most, after its sockets are gone.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

async fn start_gateway(url: &str) -> (Child, SocketAddr) {
    let addr = serve::free_addr();
    let extra = [
        "--handshake-timeout-secs",
        "2",
        "--max-frame-bytes",
        "65536",
    ];
    let mut child = serve::spawn(url, addr, "flood", &extra, "error");
    serve::wait_ready(addr, &mut child).await;
    (child, addr)
}

/// The control client is served: an echo, and a row inserted now arrives as an event.
async fn served(env: &TestEnv, control: &mut Ws, app: &App, account: uuid::Uuid, when: &str) {
    assert_eq!(
        control.request("echo", when, "").await["data"],
        format!("echo: {when}")
    );
    let row = serde_json::json!({ "when": when });
    let id = env
        .insert(app, "tasks_760_", Some(account), None, row)
        .await;
    control
        .expect_id("db_created", "db-tasks_760_", id, when)
        .await;
}

/// One bad client: handshake, one bad frame, the close code it got.
async fn bad_frame(addr: SocketAddr, frame: Vec<u8>) -> u16 {
    let mut ws = raw_ws(addr).await;
    ws.write_all(&frame).await.unwrap();
    raw_close(&mut ws).await.0
}

#[tokio::test]
async fn flood_leaves_the_gateway_serving_with_bounded_memory() {
    let mut env = TestEnv::start().await;
    env.shutdown().await;
    let (app, account, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks_760_").await;
    let (child, addr) = start_gateway(&env.url).await;
    let pid = child.id().unwrap();

    let mut control = Ws::connect(addr, "").await;
    control.auth(&user.jwt).await;
    control.join("db-tasks_760_").await;
    let rss_before = rss_kib(pid);

    // Slowloris: half a request, then one more header byte now and then, never finished.
    let mut slow = Vec::new();
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }

    // Oversize frames are refused from their header, before any payload is read or allocated:
    // only the header (and mask key) is sent.
    let oversize_header = |len: u64| {
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f
    };
    let kinds: Vec<(Vec<u8>, u16)> = vec![
        (client_frame(true, 0x3, b"x", true), 1002), // reserved opcode
        (
            {
                let mut f = client_frame(true, 0x1, b"{}", true);
                f[0] |= 0x40; // RSV1 without an extension
                f
            },
            1002,
        ),
        (client_frame(true, 0x1, b"{}", false), 1002), // unmasked
        (oversize_header(1 << 40), 1009),
        (oversize_header(70_000), 1009),
        (client_frame(true, 0x1, &[0xC3, 0x28, 0xFF], true), 1007),
    ];
    let mut floods = Vec::new();
    for (frame, code) in &kinds {
        for _ in 0..PER_KIND {
            let frame = frame.clone();
            let code = *code;
            floods.push(tokio::spawn(async move {
                assert_eq!(bad_frame(addr, frame).await, code);
            }));
        }
    }
    // Bad-token auths: each connection tries 20 forged tokens.
    for _ in 0..PER_KIND {
        floods.push(tokio::spawn(async move {
            let mut ws = Ws::connect(addr, "").await;
            for n in 0..20 {
                let forged = walcast::auth::issue_token(b"wrong", uuid::Uuid::new_v4(), "x", 60);
                let jwt = if n % 2 == 0 { forged } else { "garbage".into() };
                assert_eq!(ws.request("auth", &jwt, "").await["data"], "invalid token");
            }
        }));
    }

    // While the flood runs, the control client is served.
    served(&env, &mut control, &app, account, "during the flood").await;
    for flood in floods {
        flood.await.expect("a flood client saw the wrong answer");
    }
    let rss_peak = rss_kib(pid);

    // The half-open handshakes are closed by the server's header timeout.
    for s in &mut slow {
        let _ = s.write_all(b"a").await;
    }
    for mut s in slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-open handshake was never closed");
        assert!(!rest.starts_with(b"HTTP/1.1 101"));
    }

    served(&env, &mut control, &app, account, "after the flood").await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "flood: {} bad-frame connections, {PER_KIND} bad-token connections × 20 auths, \
         {SLOWLORIS} half-open handshakes; gateway RSS before {rss_before} KiB, at peak \
         {rss_peak} KiB, after {rss_after} KiB",
        kinds.len() * PER_KIND
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(child);
}
