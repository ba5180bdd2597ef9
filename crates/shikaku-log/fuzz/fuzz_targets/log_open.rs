//! Fuzzes recovery: arbitrary bytes as a segment file must open to an error or a log whose
//! every served event verifies — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shikaku_core::NodeId;
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_log::storage::{Directory, Storage};
use shikaku_log::{Log, LogConfig};

fuzz_target!(|data: &[u8]| {
    let mut dir = FaultDirectory::new(FaultConfig::default(), 1);
    let Ok(mut file) = dir.create("segment-0000000000.shk") else { return };
    if file.write_at(0, data).is_err() || file.sync().is_err() || dir.sync().is_err() {
        return;
    }
    if let Ok(log) = Log::open(dir, LogConfig { node: NodeId([7; 32]), segment_bytes: 1 << 20 }) {
        for seq in 1..log.head() {
            let _ = log.read(seq);
        }
        let _ = log.verify();
    }
});
