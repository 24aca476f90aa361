//! The client-frame parser (PROTOCOL.md §2–3) must never panic, whatever the bytes: every input
//! is either a typed request or an error value. Run: see `fuzz/README.md`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::protocol::{parse_client, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = parse_client(data) {
        let _ = Request::from_message(message);
    }
});
