//! Golden vectors: `protocol/vectors/events-v1.json` pins the schema-1 event encoding (rkyv
//! canonical bytes), the id (blake3), the signature (ed25519 over the context and id) and the
//! JSON Lines form. The test decodes every vector and re-derives every field; a format change
//! that would silently break stored ledgers or other implementations fails here.
//!
//! Regenerate (only when the schema version changes!) with
//! `SHIKAKU_BLESS_VECTORS=1 cargo test -p shikaku-tests vectors`.

use shikaku_core::event::{AnswerHash, DeclarationOutcome};
use shikaku_core::{
    AnswerCode, CheckMode, CheckQuery, Date, EndReason, Event, EventBody, EventId, Hlc, MemberKey,
    Namespace, Relationship, Sex, Signature, SignedEvent, Signer,
};

use crate::story::{card, employer_a, employer_b, member, person};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/events-v1.json");

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Vector {
    name: String,
    signer_secret_hex: String,
    canonical_hex: String,
    id: String,
    signature: String,
    jsonl: String,
}

fn vector_events() -> Vec<(String, [u8; 32], Event)> {
    let secret = [7u8; 32];
    let signer = Signer::from_secret(secret);
    let m = member(employer_a(), "1001", 0);
    let base = |seq: u64, body: EventBody| Event {
        namespace: Namespace::Insurer(employer_a()),
        origin: signer.node_id(),
        origin_seq: seq,
        hlc: Hlc::new(1_743_465_600_000, seq as u16),
        author: signer.public(),
        body,
    };
    let clinic_secret = [9u8; 32];
    let clinic = Signer::from_secret(clinic_secret);
    let first = vec![
        (
            "member_registered".to_owned(),
            secret,
            base(
                1,
                EventBody::MemberRegistered {
                    member: m.clone(),
                    person: person("山田 花子", "1990-05-01"),
                    relationship: Relationship::Insured,
                },
            ),
        ),
        (
            "coverage_ended".to_owned(),
            secret,
            base(
                2,
                EventBody::CoverageEnded {
                    member: m.clone(),
                    loss_date: "2025-06-01".parse::<Date>().unwrap(),
                    reason: EndReason::JobChange,
                },
            ),
        ),
        (
            "event_superseded".to_owned(),
            secret,
            base(
                3,
                EventBody::EventSuperseded {
                    subject: CheckQuery::Member(m.clone()),
                    target: EventId([1; 32]),
                    replacement: EventId([2; 32]),
                },
            ),
        ),
        (
            "self_declaration_recorded".to_owned(),
            clinic_secret,
            Event {
                namespace: Namespace::Clinic(clinic.node_id()),
                origin: clinic.node_id(),
                origin_seq: 1,
                hlc: Hlc::new(1_743_552_000_000, 0),
                author: clinic.public(),
                body: EventBody::SelfDeclarationRecorded {
                    query: CheckQuery::Card(card("vector")),
                    declared_insurer: None,
                    declared_start: "2025-04-01".parse::<Date>().unwrap(),
                },
            },
        ),
    ];
    // The other twelve types, and the layouts a stranger must get right: out-of-line strings
    // below and above 64 bytes, an empty and a non-empty `Vec`, `Option::Some`, a variant with
    // fields (`Dependant`), a member key whose symbol is stored out of line.
    let long_symbol = MemberKey::new(employer_a(), "国民健康保険組合", "77", 1).unwrap();
    let clinic_event = |seq: u64, body: EventBody| Event {
        namespace: Namespace::Clinic(clinic.node_id()),
        origin: clinic.node_id(),
        origin_seq: seq,
        hlc: Hlc::new(1_743_552_000_000 + seq * 1_000, 0),
        author: clinic.public(),
        body,
    };
    let mut moved = person("山田 花子", "1990-05-01");
    moved.address =
        "北海道札幌市中央区北一条西二丁目一番地 札幌市役所本庁舎 十八階 国民健康保険課".to_owned();
    moved.sex = Sex::Male;
    let d = |text: &str| text.parse::<Date>().unwrap();
    let more: Vec<(&str, [u8; 32], Event)> = vec![
        ("member_registered_dependant", secret, base(4, EventBody::MemberRegistered {
            member: member(employer_a(), "1001", 1),
            person: person("山田 太郎", "2015-08-20"),
            relationship: Relationship::Dependant { insured: m.clone() },
        })),
        ("coverage_started", secret, base(5, EventBody::CoverageStarted {
            member: m.clone(), start: d("2025-04-01"), copay_tenths: 3, elderly_certificate: true,
        })),
        ("copay_ratio_set", secret, base(6, EventBody::CopayRatioSet {
            member: m.clone(), effective: d("2025-08-01"), copay_tenths: 2,
        })),
        ("limit_category_set", secret, base(7, EventBody::LimitCategorySet {
            member: m.clone(), effective: d("2025-08-01"), category: "A03".to_owned(),
        })),
        ("demographics_changed", secret, base(8, EventBody::DemographicsChanged {
            member: m.clone(), effective: d("2025-09-15"), person: moved,
        })),
        ("card_linked", secret, base(9, EventBody::CardLinked { card: card("vector"), member: long_symbol.clone() })),
        ("card_unlinked", secret, base(10, EventBody::CardUnlinked { card: card("vector"), member: long_symbol.clone() })),
        ("wrong_person_linkage_revoked", secret, base(11, EventBody::WrongPersonLinkageRevoked {
            card: card("vector"),
            member: long_symbol.clone(),
            reason: "registered under the wrong person at enrolment; confirmed against the employer's records".to_owned(),
        })),
        ("event_voided", secret, base(12, EventBody::EventVoided {
            subject: CheckQuery::Card(card("vector")),
            target: EventId([3; 32]),
            reason: "duplicate".to_owned(),
        })),
        ("check_performed", clinic_secret, clinic_event(2, EventBody::CheckPerformed {
            query: CheckQuery::Member(long_symbol.clone()),
            service_date: d("2025-10-01"),
            mode: CheckMode::Offline,
            knowledge: Hlc::new(1_743_551_000_000, 7),
            hub_position: 4_096,
            code: AnswerCode::Valid,
            answer_hash: AnswerHash([4; 32]),
            decided_by: vec![EventId([5; 32]), EventId([6; 32])],
        })),
        ("check_performed_nothing_decided", clinic_secret, clinic_event(3, EventBody::CheckPerformed {
            query: CheckQuery::Card(card("vector")),
            service_date: d("2025-10-01"),
            mode: CheckMode::Online,
            knowledge: Hlc::new(1_743_551_000_000, 8),
            hub_position: 0,
            code: AnswerCode::Unknown,
            answer_hash: AnswerHash([8; 32]),
            decided_by: vec![],
        })),
        ("self_declaration_recorded_insurer", clinic_secret, clinic_event(4, EventBody::SelfDeclarationRecorded {
            query: CheckQuery::Member(m.clone()),
            declared_insurer: Some(employer_b()),
            declared_start: d("2025-10-01"),
        })),
        ("self_declaration_resolved", clinic_secret, clinic_event(5, EventBody::SelfDeclarationResolved {
            query: CheckQuery::Member(m.clone()),
            declaration: EventId([9; 32]),
            outcome: DeclarationOutcome::Confirmed,
        })),
        ("consent_given", clinic_secret, clinic_event(6, EventBody::ConsentGiven { member: m.clone() })),
        ("consent_withdrawn", clinic_secret, clinic_event(7, EventBody::ConsentWithdrawn { member: m.clone() })),
    ];
    let mut all = first;
    all.extend(more.into_iter().map(|(name, secret, event)| (name.to_owned(), secret, event)));
    all
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    shikaku_core::hex::encode(bytes)
}

pub(crate) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

#[test]
fn golden_event_vectors_decode_and_reencode_identically() {
    let built: Vec<Vector> = vector_events()
        .into_iter()
        .map(|(name, secret, event)| {
            let signed = Signer::from_secret(secret).sign(event).unwrap();
            Vector {
                name,
                signer_secret_hex: hex(&secret),
                canonical_hex: hex(signed.canonical_bytes()),
                id: signed.id().to_string(),
                signature: signed.signature().to_string(),
                jsonl: shikaku_cli::jsonl::encode(&signed),
            }
        })
        .collect();
    if std::env::var_os("SHIKAKU_BLESS_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("golden vectors present"))
            .unwrap();
    assert_eq!(stored.len(), built.len());
    for (vector, fresh) in stored.iter().zip(&built) {
        // Decoding the stored bytes verifies id and signature independently of our encoder.
        let bytes = unhex(&vector.canonical_hex);
        let signature: Signature = vector.signature.parse().unwrap();
        let id: EventId = vector.id.parse().unwrap();
        let decoded = SignedEvent::decode(1, &bytes, signature, Some(id), None)
            .unwrap_or_else(|e| panic!("vector {}: {e}", vector.name));
        let from_line = shikaku_cli::jsonl::decode(&vector.jsonl, None).unwrap();
        assert_eq!(decoded, from_line, "vector {}: bytes and JSON line agree", vector.name);
        // Re-encoding today gives the same bytes, id, signature and line.
        assert_eq!(vector, fresh, "vector {} no longer matches this build", vector.name);
    }
}

const LOG_VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/log-v1.json");

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct LogVector {
    node: String,
    segment_bytes: u64,
    event_ids: Vec<String>,
    /// (file name, file length, hex of the bytes up to the end of the data; the rest is zero)
    segments: Vec<(String, u64, String)>,
    /// The index checkpoint written after the appends, hex.
    index_checkpoint: String,
    /// The projection snapshot of the four events at position 4, hex.
    projection_snapshot: String,
    /// The node snapshot (`node.snapshot`) of the same log at position 4, hex.
    node_snapshot: String,
}

#[test]
fn golden_log_segments_open_and_rebuild_identically() {
    // Pins protocol/LOG-FORMAT.md: a two-segment log (with a seal) holding the event vectors,
    // byte for byte. Opening the stored bytes must verify and return the events; writing the
    // same events today must give the same bytes.
    use shikaku_log::fault::{FaultConfig, FaultDirectory};
    use shikaku_log::storage::{Directory, Storage};
    use shikaku_log::{Log, LogConfig};
    let events: Vec<SignedEvent> = vector_events()
        .into_iter()
        .take(4)
        .map(|(_, secret, event)| Signer::from_secret(secret).sign(event).unwrap())
        .collect();
    let node = shikaku_core::NodeId([5; 32]);
    let config = LogConfig { node, segment_bytes: 2048 };
    let disk = FaultDirectory::new(FaultConfig::default(), 1);
    let mut log = Log::open(disk.clone(), config.clone()).unwrap();
    log.append(&events[..2]).unwrap();
    log.append(&events[2..]).unwrap();
    log.write_checkpoint().unwrap();
    let mut projection = shikaku_core::Projection::new(shikaku_core::Replication::All);
    for event in &events {
        projection.apply(event);
    }
    let snapshot = projection.encode_snapshot(events.len() as u64);
    let node_snapshot = shikaku_node::snapshot::of_log(&log, shikaku_node::Role::Hub, &projection)
        .unwrap()
        .unwrap();
    drop(log);
    let checkpoint = disk.durable_image(shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE).unwrap();
    let mut segments = Vec::new();
    for name in disk.list().unwrap().into_iter().filter(|n| n.starts_with("segment-")) {
        let image = disk.durable_image(&name).unwrap();
        let end = image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        segments.push((name, image.len() as u64, hex(&image[..end])));
    }
    let built = LogVector {
        node: node.to_string(),
        segment_bytes: 2048,
        event_ids: events.iter().map(|e| e.id().to_string()).collect(),
        segments,
        index_checkpoint: hex(&checkpoint),
        projection_snapshot: hex(&snapshot),
        node_snapshot: hex(&node_snapshot.encode()),
    };
    assert!(built.segments.len() >= 2, "the vector crosses a segment seal");
    if std::env::var_os("SHIKAKU_BLESS_VECTORS").is_some() {
        std::fs::write(LOG_VECTORS, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: LogVector =
        serde_json::from_str(&std::fs::read_to_string(LOG_VECTORS).expect("log vectors present"))
            .unwrap();
    // Open the stored bytes on a fresh disk.
    let mut fresh = FaultDirectory::new(FaultConfig::default(), 2);
    for (name, len, data) in &stored.segments {
        let mut file = fresh.create(name).unwrap();
        file.set_len(*len).unwrap();
        file.write_at(0, &unhex(data)).unwrap();
        file.sync().unwrap();
    }
    fresh
        .write_atomic(
            shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE,
            &unhex(&stored.index_checkpoint),
        )
        .unwrap();
    fresh.sync().unwrap();
    let log = Log::open(
        fresh,
        LogConfig { node: stored.node.parse().unwrap(), segment_bytes: stored.segment_bytes },
    )
    .unwrap();
    let read: Vec<String> =
        log.read_from(1, 100).unwrap().into_iter().map(|(_, e)| e.id().to_string()).collect();
    assert_eq!(read, stored.event_ids);
    assert!(log.verify().problems.is_empty());
    assert_eq!(
        log.recovery().checkpoint.as_deref(),
        Some("used: 4 events up to position 4"),
        "the stored index checkpoint verifies against the stored segments"
    );
    let (loaded, position) =
        shikaku_core::Projection::decode_snapshot(&unhex(&stored.projection_snapshot)).unwrap();
    assert_eq!((position, loaded.digest()), (4, projection.digest()));
    let node = shikaku_node::snapshot::NodeSnapshot::decode(&unhex(&stored.node_snapshot)).unwrap();
    assert_eq!((node.position, node.id.to_string()), (4, stored.event_ids[3].clone()));
    assert_eq!(node.namespace_of.len(), 4);
    assert_eq!(node.clock, events.iter().map(|e| e.event().hlc).max().unwrap());
    assert_eq!(node.projection().unwrap().digest(), projection.digest());
    assert_eq!(stored, built, "this build writes different log bytes: bump the format version");
}
