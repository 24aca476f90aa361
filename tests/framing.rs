//! RFC 6455 framing rules at the gateway's edge, over raw sockets: fragmentation (§5.4),
//! masking (§5.1), and the handshake's header timeout.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &[u8] = br#"{"sid":"","type":"echo","data":"x"}"#;

async fn send(stream: &mut tokio::net::TcpStream, frames: &[Vec<u8>]) {
    for frame in frames {
        stream.write_all(frame).await.expect("send frame");
    }
}

#[tokio::test]
async fn fragmentation_violations_close_1002() {
    let env = TestEnv::start().await;
    let (head, tail) = ECHO.split_at(10);

    let violations = [
        (
            "a final text frame in the middle of a fragmented message",
            vec![
                client_frame(false, 0x1, head, true),
                client_frame(true, 0x1, ECHO, true),
                client_frame(true, 0x0, tail, true),
            ],
        ),
        (
            "a new non-final text frame while one is pending",
            vec![
                client_frame(false, 0x1, head, true),
                client_frame(false, 0x1, head, true),
                client_frame(true, 0x0, tail, true),
            ],
        ),
        (
            "a continuation with nothing to continue",
            vec![client_frame(true, 0x0, ECHO, true)],
        ),
    ];
    for (case, frames) in violations {
        let mut ws = raw_ws(env.addr).await;
        send(&mut ws, &frames).await;
        assert_eq!(raw_close(&mut ws).await.0, 1002, "{case}");
    }

    // A well-formed fragmented message, with a ping between its fragments, is answered.
    let (mut ws, sid) = raw_ws_sid(env.addr).await;
    let echo = serde_json::json!({"sid": sid, "type": "echo", "data": "x"}).to_string();
    let (head, tail) = echo.as_bytes().split_at(10);
    send(
        &mut ws,
        &[
            client_frame(false, 0x1, head, true),
            client_frame(true, 0x9, b"p", true),
            client_frame(true, 0x0, tail, true),
        ],
    )
    .await;
    assert_eq!(raw_frame(&mut ws).await, (0xA, b"p".to_vec()));
    let (op, reply) = raw_frame(&mut ws).await;
    assert_eq!(op, 0x1);
    assert!(String::from_utf8(reply).unwrap().contains("echo: x"));
}

#[tokio::test]
async fn unmasked_client_frames_close_1002() {
    let env = TestEnv::start().await;
    for (opcode, payload) in [(0x1, ECHO), (0x9, &b"ping"[..])] {
        let mut ws = raw_ws(env.addr).await;
        send(&mut ws, &[client_frame(true, opcode, payload, false)]).await;
        let (code, reason) = raw_close(&mut ws).await;
        assert_eq!(code, 1002, "opcode {opcode}");
        assert_eq!(reason, "client frames must be masked");
    }
    // The same frame masked is answered.
    let (mut ws, sid) = raw_ws_sid(env.addr).await;
    let echo = serde_json::json!({"sid": sid, "type": "echo", "data": "x"}).to_string();
    send(&mut ws, &[client_frame(true, 0x1, echo.as_bytes(), true)]).await;
    let (op, reply) = raw_frame(&mut ws).await;
    assert_eq!(op, 0x1);
    assert!(String::from_utf8(reply).unwrap().contains("echo: x"));
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed() {
    let env = TestEnv::start_with(|s| s.ws.handshake_timeout = Duration::from_millis(500)).await;
    // Half a request line and one header, then silence.
    let mut stalled = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    stalled
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    for stream in [&mut stalled, &mut silent] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("the server did not close the stalled handshake");
        // Closed, possibly with a 408 first; never upgraded.
        if let Ok(n) = read {
            assert!(n == 0 || rest.starts_with(b"HTTP/1.1 408"), "{rest:?}");
        }
    }
    // A complete handshake after that is served.
    let mut ws = env.ws().await;
    assert_eq!(ws.request("echo", "y", "").await["data"], "echo: y");
}
