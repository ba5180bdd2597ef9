//! Fuzzes the sync protocol's frame splitter, message decoder and `prepare` (which also decodes
//! and verifies every event in an `Events` frame): any bytes from the network must give an
//! error or a value, never a panic, and a decoded message must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shikaku_protocol::wire::{FrameSplitter, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        // Receipts leave the certificate-given ids out of the wire; everything else round-trips.
        assert_eq!(&message.to_frame()[4..], data);
    }
    let _ = shikaku_node::prepare(data, 1_800_000_000_000);
    let mut splitter = FrameSplitter::new(64 * 1024);
    splitter.push(data);
    while let Ok(Some(body)) = splitter.next_frame() {
        let _ = Message::decode(&body);
    }
});
