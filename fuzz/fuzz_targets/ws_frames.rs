//! The WebSocket frame reader (RFC 6455 masking, fragmentation, size and UTF-8 rules) must
//! never panic and must end on every input, with a close reason or end of input. The first
//! byte picks the message size limit and, by its low bit, whether permessage-deflate was
//! agreed (compressed messages are inflated under the same limit). Run: see `fuzz/README.md`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use walcast::ws::inbound::{Inbound, InboundReader};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 16 + 1;
    let deflate = limit & 1 == 1;
    let mut reader = InboundReader::new(std::io::Cursor::new(stream.to_vec()), max, deflate);
    runtime().block_on(async {
        // Every frame consumes at least its 2-byte header, so this ends.
        while let Ok(item) = reader.next().await {
            if let Inbound::Text(text) = item {
                assert!(text.len() <= max, "message over the limit");
                assert!(std::str::from_utf8(&text).is_ok(), "message not UTF-8");
            }
        }
    });
});
