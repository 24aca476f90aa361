//! The pgoutput decoder must never panic, whatever the bytes. The first input byte selects
//! whether the message is decoded as inside a v2 stream block.
//!
//! Run: `cd replication/fuzz && cargo +nightly fuzz run decode corpus/decode`
//! (seed the corpus with `cp ../tests/fixtures/*.bin corpus/decode/`; see README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let bytes = bytes::Bytes::copy_from_slice(payload);
    let _ = walcast_replication::pgoutput::decode_in_stream(bytes, mode & 1 == 1);
});
