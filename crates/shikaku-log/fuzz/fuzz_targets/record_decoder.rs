//! Fuzzes the record and segment-header decoders and the event decoder behind them: any
//! bytes must give an error or a value, never a panic, and a decoded record must re-encode to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shikaku_core::NodeId;
use shikaku_log::format::{checksum_key, RecordHeader, SegmentHeader, SEGMENT_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let key = checksum_key(&NodeId([7; 32]));
    if let Ok((header, payload, sum)) = RecordHeader::decode(data, &key) {
        let mut again = Vec::new();
        let resum = header.encode_into(payload, &key, &mut again);
        assert_eq!(resum, sum);
        assert_eq!(&again[..], &data[..again.len()]);
        let _ = shikaku_core::SignedEvent::decode(
            header.schema_version,
            payload,
            header.signature,
            Some(header.event_id),
            None,
        );
    }
    if data.len() >= SEGMENT_HEADER_BYTES {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes.copy_from_slice(&data[..SEGMENT_HEADER_BYTES]);
        let _ = SegmentHeader::decode(&bytes);
    }
});
