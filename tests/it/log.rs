//! The ledger log under faults: round trips across segments, duplicates, optimistic
//! concurrency, subscriptions, crashes that lose or tear unsynced writes, bit flips,
//! misdirected writes, foreign and newer segments, truncated files and a full disk — each
//! detected with a typed error that names the place, and nothing acknowledged ever lost.

use proptest::prelude::*;
use shikaku_core::{NodeId, SignedEvent};
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_log::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use shikaku_log::{stream_of, ExpectedVersion, Log, LogConfig, LogError, Subscription};

const NODE: NodeId = NodeId([3; 32]);

fn events(n: usize) -> Vec<SignedEvent> {
    static STREAM: std::sync::OnceLock<Vec<SignedEvent>> = std::sync::OnceLock::new();
    STREAM
        .get_or_init(|| shikaku_gen::generate(&shikaku_gen::GenConfig::new(300, 5)).unwrap().events)
        .iter()
        .take(n)
        .cloned()
        .collect()
}

fn small_config() -> LogConfig {
    // 8 KiB segments: a few dozen records each, so tests cross many segment boundaries.
    LogConfig { node: NODE, segment_bytes: 8 * 1024 }
}

fn open(dir: &FaultDirectory) -> Log<FaultDirectory> {
    Log::open(dir.clone(), small_config()).expect("log opens")
}

fn ids(log: &Log<FaultDirectory>) -> Vec<shikaku_core::EventId> {
    log.read_from(1, usize::MAX).unwrap().into_iter().map(|(_, e)| e.id()).collect()
}

#[test]
fn append_read_reopen_across_segments() {
    // Proves: events come back identical, in order, after reopening; the chain crosses
    // segment seals; positions are dense from 1.
    let dir = FaultDirectory::new(FaultConfig::default(), 1);
    let input = events(500);
    let mut log = open(&dir);
    for chunk in input.chunks(37) {
        log.append(chunk).unwrap();
    }
    let stats = log.stats().unwrap();
    assert!(stats.segments > 10, "{} segments", stats.segments);
    drop(log);
    let log = open(&dir);
    assert_eq!(log.recovery().damaged, vec![]);
    assert_eq!(log.recovery().truncated_tail, None);
    let back: Vec<SignedEvent> =
        log.read_from(1, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
    assert_eq!(back, input);
    assert_eq!(log.head(), 501);
    let report = log.verify();
    assert_eq!((report.records, report.signatures, report.problems.len()), (500, 500, 0));
}

#[test]
fn duplicates_are_not_stored_twice() {
    let dir = FaultDirectory::new(FaultConfig::default(), 2);
    let mut log = open(&dir);
    let input = events(20);
    let first = log.append(&input).unwrap();
    let mut doubled = input.clone();
    doubled.extend(input.iter().cloned());
    let second = log.append(&doubled).unwrap();
    assert_eq!(first.new, 20);
    assert_eq!(second.new, 0);
    assert_eq!(second.positions[..20], first.positions[..]);
    assert_eq!(log.len(), 20);
}

#[test]
fn stale_writer_gets_a_conflict_not_an_overwrite() {
    // Proves optimistic concurrency on a member's stream.
    let dir = FaultDirectory::new(FaultConfig::default(), 3);
    let mut log = open(&dir);
    let input = events(200);
    let stream = stream_of(&input[0]);
    let mine: Vec<SignedEvent> = input.iter().filter(|e| stream_of(e) == stream).cloned().collect();
    assert!(mine.len() >= 2, "the first member has several events");
    let version = log.append_to_stream(&stream, ExpectedVersion::NoStream, &mine[..1]).unwrap();
    assert_eq!(version, 1);
    let error = log.append_to_stream(&stream, ExpectedVersion::NoStream, &mine[1..2]).unwrap_err();
    assert_eq!(
        error,
        LogError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: ExpectedVersion::NoStream,
            current: 1
        }
    );
    assert_eq!(log.append_to_stream(&stream, ExpectedVersion::Exact(1), &mine[1..2]).unwrap(), 2);
    let other = input.iter().find(|e| stream_of(e) != stream).unwrap();
    assert!(matches!(
        log.append_to_stream(&stream, ExpectedVersion::Any, std::slice::from_ref(other)),
        Err(LogError::EventOutsideStream { .. })
    ));
    assert_eq!(log.read_stream(&stream).unwrap(), mine[..2].to_vec());
}

#[test]
fn catch_up_subscription_turns_live() {
    let dir = FaultDirectory::new(FaultConfig::default(), 4);
    let mut log = open(&dir);
    let input = events(100);
    log.append(&input[..60]).unwrap();
    let mut subscription = Subscription::from(1);
    let first = subscription.poll(&log, 50).unwrap();
    assert_eq!((first.events.len(), first.live), (50, false));
    let second = subscription.poll(&log, 50).unwrap();
    assert_eq!((second.events.len(), second.live), (10, true));
    log.append(&input[60..]).unwrap();
    let third = subscription.poll(&log, 500).unwrap();
    assert_eq!((third.events.len(), third.live), (40, true));
    assert_eq!(third.events[0].0, 61);
    assert_eq!(log.positions_by_hlc(input[10].event().hlc, input[12].event().hlc).len(), 3);
}

#[test]
fn crashes_never_lose_acknowledged_events() {
    // Proves, over many seeded power failures in the middle of an append (during any fsync,
    // including segment roll-overs): every acknowledged event survives while unsynced writes
    // are dropped, kept or torn; recovery cuts only the never-acknowledged torn tail; what
    // remains is exactly a prefix of the input; the log verifies and accepts appends again.
    let input = events(400);
    for seed in 0..80u64 {
        let dir = FaultDirectory::new(FaultConfig::default(), seed);
        let mut rng = shikaku_gen::Rng::new(seed);
        let mut log = open(&dir);
        let mut acknowledged = 0usize;
        let mut at = 0;
        dir.set_config(FaultConfig {
            crash_at_sync: Some(1 + rng.below(40)),
            ..FaultConfig::default()
        });
        while at < input.len() {
            let n = 1 + rng.below(40) as usize;
            let chunk = &input[at..(at + n).min(input.len())];
            match log.append(chunk) {
                Ok(_) => acknowledged = at + chunk.len(),
                Err(LogError::Storage { durable, .. }) => {
                    acknowledged = at + durable;
                    break;
                }
                Err(other) => panic!("seed {seed}: {other}"),
            }
            at += chunk.len();
        }
        drop(log);
        dir.set_config(FaultConfig {
            torn_write: 0.5,
            unsynced_survives: 0.3,
            ..FaultConfig::default()
        });
        dir.crash();
        dir.set_config(FaultConfig::default());
        let mut log = open(&dir);
        let held = ids(&log);
        assert!(
            held.len() >= acknowledged,
            "seed {seed}: {} held, {acknowledged} acknowledged",
            held.len()
        );
        let expected: Vec<_> = input[..held.len()].iter().map(|e| e.id()).collect();
        assert_eq!(held, expected, "seed {seed}: the log holds a prefix of what was appended");
        assert!(log.recovery().damaged.is_empty(), "seed {seed}: {:?}", log.recovery().damaged);
        assert!(log.verify().problems.is_empty(), "seed {seed}: {:?}", log.verify().problems);
        log.append(&input[held.len()..]).unwrap();
        assert_eq!(ids(&log).len(), input.len());
    }
}

#[test]
fn a_disk_that_lies_about_fsync_loses_only_what_it_lied_about() {
    // Proves: when fsync lies for one batch and power then fails, every event acknowledged by
    // a truthful fsync is still there; anything else lost is either a cut tail or reported as
    // damage (for re-fetching from the hub) and never served half-read.
    let input = events(400);
    for seed in 0..60u64 {
        let dir = FaultDirectory::new(FaultConfig::default(), seed);
        let mut rng = shikaku_gen::Rng::new(seed ^ 99);
        let mut log = open(&dir);
        let mut truthful = 0usize;
        let mut at = 0;
        while at < input.len() {
            let n = 1 + rng.below(40) as usize;
            let chunk = &input[at..(at + n).min(input.len())];
            let lies = rng.chance(0.2);
            dir.set_config(FaultConfig {
                lying_fsync: if lies { 1.0 } else { 0.0 },
                ..FaultConfig::default()
            });
            log.append(chunk).unwrap();
            at += chunk.len();
            if lies {
                break;
            }
            truthful = at;
        }
        drop(log);
        dir.set_config(FaultConfig {
            torn_write: 0.5,
            unsynced_survives: 0.3,
            ..FaultConfig::default()
        });
        dir.crash();
        dir.set_config(FaultConfig::default());
        let log = open(&dir);
        let held = ids(&log);
        for event in &input[..truthful] {
            assert!(
                held.contains(&event.id()),
                "seed {seed}: lost a truthfully acknowledged event"
            );
        }
        for (seq, event) in log.read_from(1, usize::MAX).unwrap() {
            assert_eq!(
                event.id(),
                input[seq as usize - 1].id(),
                "seed {seed}: served the wrong event at {seq}"
            );
        }
    }
}

fn segment_with_records(dir: &FaultDirectory) -> (String, Vec<u64>) {
    // Offsets of the records in the first segment, found by walking its lengths.
    let name = "segment-0000000000.shk".to_owned();
    let image = dir.durable_image(&name).unwrap();
    let mut offsets = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at + 4 <= image.len() {
        let len = u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        offsets.push(at as u64);
        at += len;
    }
    (name, offsets)
}

#[test]
fn bit_flips_anywhere_are_detected_and_never_served() {
    // Proves: a flipped bit in any record before the tail is reported with segment and offset,
    // the damaged event is never served, and the events around it still are.
    let input = events(120);
    for (case, bit) in [(1usize, 0u8), (3, 7), (5, 3), (8, 5)] {
        let dir = FaultDirectory::new(FaultConfig::default(), 10);
        let mut log = open(&dir);
        log.append(&input).unwrap();
        drop(log);
        let (name, offsets) = segment_with_records(&dir);
        let target = offsets[case] + 200 + u64::from(bit) * 3;
        dir.flip_bit(&name, target, bit);
        let log = open(&dir);
        let damage = &log.recovery().damaged;
        assert_eq!(damage.len(), 1, "case {case}: {damage:?}");
        assert_eq!((damage[0].segment.as_str(), damage[0].offset), (name.as_str(), offsets[case]));
        let seq = case as u64 + 1;
        assert!(matches!(log.read(seq), Err(LogError::Damaged { .. })));
        assert_eq!(log.read(seq + 1).unwrap(), input[case + 1]);
        assert!(!log.verify().problems.is_empty());
        assert!(!ids(&log).contains(&input[case].id()));
    }
}

#[test]
fn misdirected_and_torn_writes_are_detected() {
    let input = events(60);
    // A record's bytes written over another record's place.
    let dir = FaultDirectory::new(FaultConfig::default(), 11);
    let mut log = open(&dir);
    log.append(&input).unwrap();
    drop(log);
    let (name, offsets) = segment_with_records(&dir);
    let image = dir.durable_image(&name).unwrap();
    let donor = image[offsets[4] as usize..offsets[5] as usize].to_vec();
    dir.overwrite(&name, offsets[2], &donor);
    let log = open(&dir);
    assert_eq!(log.recovery().damaged.len(), 1);
    assert_eq!(log.recovery().damaged[0].offset, offsets[2]);
    // Writes that land one sector off while the disk runs are caught when read back.
    let dir =
        FaultDirectory::new(FaultConfig { misdirected_write: 1.0, ..FaultConfig::default() }, 12);
    let mut log = open(&dir);
    let _ = log.append(&input[..5]);
    dir.set_config(FaultConfig::default());
    let readable = (1..log.head()).filter(|&seq| log.read(seq).is_ok()).count();
    assert!(readable < 5, "misdirected records must not read back as valid ({readable})");
}

#[test]
fn foreign_newer_and_truncated_segments_are_refused_by_name() {
    let input = events(10);
    let dir = FaultDirectory::new(FaultConfig::default(), 13);
    let mut log = open(&dir);
    log.append(&input).unwrap();
    drop(log);
    // Another node's log.
    let error =
        Log::open(dir.clone(), LogConfig { node: NodeId([4; 32]), ..small_config() }).unwrap_err();
    assert!(matches!(error, LogError::ForeignSegment { .. }), "{error}");
    assert!(error.to_string().contains("segment-0000000000.shk"));
    // A segment written by a newer format that this build cannot read.
    let name = "segment-0000000000.shk";
    let newer = SegmentHeader {
        format_version: 2,
        min_compatible_version: 2,
        segment_bytes: 8192,
        segment_index: 0,
        first_seq: 1,
        node: NODE,
        prev_hash: [0; 32],
    };
    let original = dir.durable_image(name).unwrap();
    dir.overwrite(name, 0, &newer.encode(&format::checksum_key(&NODE)));
    let error = Log::open(dir.clone(), small_config()).unwrap_err();
    assert!(error.to_string().contains("format version 2 needs a newer shikaku"), "{error}");
    dir.overwrite(name, 0, &original[..SEGMENT_HEADER_BYTES]);
    // A truncated file (shorter than its header).
    let dir = FaultDirectory::new(FaultConfig::default(), 14);
    {
        use shikaku_log::storage::{Directory, Storage};
        let mut d = dir.clone();
        let mut file = d.create(name).unwrap();
        file.write_at(0, &original[..40]).unwrap();
        file.sync().unwrap();
        d.sync().unwrap();
    }
    let log = Log::open(dir.clone(), small_config()).unwrap();
    let damage = &log.recovery().damaged;
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].reason.contains("segment header"), "{}", damage[0]);
    assert_eq!(damage[0].segment, name);
}

#[test]
fn a_full_disk_is_a_typed_error_and_loses_nothing_acknowledged() {
    let input = events(300);
    let dir = FaultDirectory::new(
        FaultConfig { capacity_bytes: Some(40 * 1024), ..FaultConfig::default() },
        15,
    );
    let mut log = open(&dir);
    let mut acknowledged = 0;
    let mut failure = None;
    for chunk in input.chunks(25) {
        match log.append(chunk) {
            Ok(outcome) => acknowledged += outcome.new,
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.expect("the disk fills up");
    assert!(
        matches!(
            failure,
            LogError::Storage { source: shikaku_log::storage::StorageError::NoSpace, .. }
        ),
        "{failure}"
    );
    let LogError::Storage { durable, .. } = failure else { unreachable!() };
    acknowledged += durable;
    drop(log);
    dir.crash();
    dir.set_config(FaultConfig::default());
    let mut log = open(&dir);
    let held = ids(&log);
    assert!(held.len() >= acknowledged);
    assert_eq!(
        held[..acknowledged],
        input[..acknowledged].iter().map(|e| e.id()).collect::<Vec<_>>()[..]
    );
    assert!(log.verify().problems.is_empty());
    log.append(&input).unwrap();
    assert_eq!(ids(&log).len(), input.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let key = format::checksum_key(&NODE);
        prop_assert!(format::RecordHeader::decode(&bytes, &key).is_err());
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let n = bytes.len().min(SEGMENT_HEADER_BYTES);
        header[..n].copy_from_slice(&bytes[..n]);
        prop_assert!(SegmentHeader::decode(&header).is_err());
    }

    #[test]
    fn any_flipped_bit_in_a_record_is_detected(position in 0usize..100_000, bit in 0u8..8) {
        let event = &events(1)[0];
        let key = format::checksum_key(&NODE);
        let header = format::RecordHeader {
            kind: format::KIND_EVENT,
            flags: 0,
            stream_tag: 0,
            schema_version: 1,
            payload_bytes: event.canonical_bytes().len() as u32,
            seq: 1,
            hlc: event.event().hlc,
            event_id: event.id(),
            prev_hash: [0; 32],
            signature: event.signature(),
        };
        let mut bytes = Vec::new();
        header.encode_into(event.canonical_bytes(), &key, &mut bytes);
        let at = position % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(format::RecordHeader::decode(&bytes, &key).is_err());
    }
}

#[test]
fn index_checkpoints_skip_the_scan_and_are_verified() {
    // Proves: an open that uses a checkpoint gives exactly the log a full scan gives; a
    // damaged checkpoint, or one that does not match the log, is ignored (and said so).
    let input = events(700);
    let dir = FaultDirectory::new(FaultConfig::default(), 21);
    let mut log = open(&dir);
    for chunk in input[..500].chunks(64) {
        log.append(chunk).unwrap();
    }
    log.write_checkpoint().unwrap();
    assert_eq!(log.events_since_checkpoint(), 0);
    log.append(&input[500..]).unwrap();
    drop(log);
    let with = open(&dir);
    assert_eq!(with.recovery().checkpoint.as_deref(), Some("used: 500 events up to position 500"));
    assert!(
        with.recovery().records < 300,
        "only the tail was scanned: {}",
        with.recovery().records
    );
    let all: Vec<SignedEvent> =
        with.read_from(1, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
    assert_eq!(all, input);
    assert!(with.verify().problems.is_empty());
    let stream = stream_of(&input[3]);
    let from_checkpoint = with.read_stream(&stream).unwrap();
    let stats = with.stats().unwrap();
    drop(with);
    // A flipped bit in the checkpoint: ignored, full scan, same answers.
    dir.flip_bit(shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE, 300, 2);
    let without = open(&dir);
    assert!(
        without.recovery().checkpoint.as_deref().unwrap().starts_with("ignored"),
        "{:?}",
        without.recovery().checkpoint
    );
    assert_eq!(without.read_stream(&stream).unwrap(), from_checkpoint);
    assert_eq!(without.stats().unwrap(), stats);
    drop(without);
    // A checkpoint from another log of the same node does not fit this one.
    let other = FaultDirectory::new(FaultConfig::default(), 22);
    let mut log = open(&other);
    log.append(&input[..50]).unwrap();
    log.write_checkpoint().unwrap();
    let foreign = {
        use shikaku_log::storage::Directory;
        other.clone().read_whole(shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE).unwrap().unwrap()
    };
    {
        use shikaku_log::storage::Directory;
        dir.clone().write_atomic(shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE, &foreign).unwrap();
    }
    let log = open(&dir);
    assert!(log.recovery().checkpoint.as_deref().unwrap().starts_with("ignored"));
    assert_eq!(log.len(), 700);
}

#[test]
fn a_segment_size_beyond_32_bit_offsets_is_refused_on_open() {
    let disk = FaultDirectory::new(FaultConfig::default(), 1);
    let config = LogConfig { node: NODE, segment_bytes: 1 << 33 };
    let error = Log::open(disk, config).unwrap_err();
    assert!(matches!(error, LogError::Config(_)), "{error}");
    assert!(error.to_string().contains("32-bit record offsets"), "{error}");
}

#[test]
fn a_record_with_nonzero_padding_is_refused_even_when_its_checksum_matches() {
    // Found by `cargo fuzz run record_decoder` (CI, issue 17's run): libFuzzer learned the
    // keyed checksum from its comparison and wrote a record whose padding after the payload
    // was not zero, with a matching checksum. It decoded, and re-encoding it gave other
    // bytes: one record, two encodings. Padding must be zero, as LOG-FORMAT.md says.
    let event = &events(1)[0];
    let key = format::checksum_key(&NODE);
    let payload = event.canonical_bytes();
    let header = format::RecordHeader {
        kind: format::KIND_EVENT,
        flags: 0,
        stream_tag: 0,
        schema_version: 1,
        payload_bytes: payload.len() as u32,
        seq: 1,
        hlc: event.event().hlc,
        event_id: event.id(),
        prev_hash: [0; 32],
        signature: event.signature(),
    };
    // A payload one byte short of alignment leaves padding to write into.
    let short = &payload[..payload.len() - 1];
    let header = format::RecordHeader { payload_bytes: short.len() as u32, ..header };
    let mut bytes = Vec::new();
    header.encode_into(short, &key, &mut bytes);
    assert!(format::RecordHeader::decode(&bytes, &key).is_ok(), "the honest record decodes");
    let padding_at = format::RECORD_HEADER_BYTES + short.len();
    assert!(padding_at < bytes.len() - format::CHECKSUM_BYTES, "the record has padding");
    bytes[padding_at] = 0xff;
    let body_end = bytes.len() - format::CHECKSUM_BYTES;
    let sum = format::checksum(&key, &bytes[..body_end]);
    bytes[body_end..].copy_from_slice(&sum);
    assert_eq!(
        format::RecordHeader::decode(&bytes, &key).unwrap_err(),
        format::FormatError::NonZeroPadding
    );
}
