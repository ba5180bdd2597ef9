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

impl Vector {
    /// The vector of a signed event: its signer's secret, bytes, id, signature and line.
    fn of(name: String, secret: [u8; 32], signed: SignedEvent) -> Vector {
        Vector {
            name,
            signer_secret_hex: hex(&secret),
            canonical_hex: hex(signed.canonical_bytes()),
            id: signed.id().to_string(),
            signature: signed.signature().to_string(),
            jsonl: shikaku_cli::jsonl::encode(&signed),
        }
    }
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
            Vector::of(name, secret, Signer::from_secret(secret).sign(event).unwrap())
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

const VECTORS_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/events-v2.json");
const KEYSTORE_VECTORS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/keystore-v1.json");

/// The key store vectors: every item as encoded, the store file, and what opens the wraps.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct KeyStoreVector {
    /// The card token whose wrap opens (hex), and the member key and birth date whose does.
    card_token: String,
    member_key: String,
    birth_date: String,
    /// The member reference both wraps open, and the data key inside (hex).
    reference: String,
    data_key: String,
    /// Encoded items (KEYSTORE.md "Items"), hex, in item order.
    items: Vec<String>,
    /// The insurer's key store file (KEYSTORE.md "The file"), hex.
    file: String,
}

/// The schema-1 vectors sealed into schema 2 with a counting "random" source (so the bytes
/// are reproducible), plus a `member_erased` order; and the key store that results.
fn vector_events_v2() -> (Vec<(String, [u8; 32], Event)>, shikaku_core::keystore::KeyStore) {
    use shikaku_core::seal;
    use shikaku_core::sealer::{ref_secret_of, Sealer};
    let signer = Signer::from_secret([7u8; 32]);
    let mut sealer = Sealer::new(ref_secret_of(&signer), shikaku_core::seal::KdfParams::LIGHT);
    let mut store = shikaku_core::keystore::KeyStore::new([3u8; 16]);
    let mut counter = 0u8;
    let mut fill = |buf: &mut [u8]| {
        for b in buf {
            counter = counter.wrapping_add(1);
            *b = counter;
        }
    };
    let mut ids = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    let query = |sealer: &Sealer, q: &CheckQuery| match q {
        CheckQuery::Card(c) => CheckQuery::Card(seal::card_tag(c)),
        CheckQuery::Member(m) => CheckQuery::Member(sealer.reference(m)),
    };
    for (name, secret, event) in vector_events() {
        let v1_id = Signer::from_secret(secret).sign(event.clone()).unwrap().id();
        let body = match &event.body {
            EventBody::CheckPerformed {
                query: q,
                service_date,
                mode,
                knowledge,
                hub_position,
                code,
                answer_hash,
                decided_by,
            } => EventBody::CheckPerformed {
                query: query(&sealer, q),
                service_date: *service_date,
                mode: *mode,
                knowledge: *knowledge,
                hub_position: *hub_position,
                code: *code,
                answer_hash: *answer_hash,
                decided_by: decided_by
                    .iter()
                    .map(|id| ids.get(id).copied().unwrap_or(*id))
                    .collect(),
            },
            EventBody::SelfDeclarationRecorded { query: q, declared_insurer, declared_start } => {
                EventBody::SelfDeclarationRecorded {
                    query: query(&sealer, q),
                    declared_insurer: *declared_insurer,
                    declared_start: *declared_start,
                }
            }
            EventBody::SelfDeclarationResolved { query: q, declaration, outcome } => {
                EventBody::SelfDeclarationResolved {
                    query: query(&sealer, q),
                    declaration: ids.get(declaration).copied().unwrap_or(*declaration),
                    outcome: *outcome,
                }
            }
            EventBody::ConsentGiven { member } => {
                EventBody::ConsentGiven { member: sealer.reference(member) }
            }
            EventBody::ConsentWithdrawn { member } => {
                EventBody::ConsentWithdrawn { member: sealer.reference(member) }
            }
            insurer => sealer.seal_body(insurer, &ids, &mut store, &mut fill).unwrap(),
        };
        let name = match name.as_str() {
            "member_registered" => "member_sealed".to_owned(),
            "member_registered_dependant" => "member_sealed_dependant".to_owned(),
            "demographics_changed" => "demographics_sealed".to_owned(),
            other => other.to_owned(),
        };
        let event = Event { body, ..event };
        let v2_id = Signer::from_secret(secret).sign_sealed(event.clone()).unwrap().id();
        ids.insert(v1_id, v2_id);
        out.push((name, secret, event));
    }
    let m = member(employer_a(), "1001", 0);
    let reference = sealer.reference(&m);
    let erase = Event {
        namespace: Namespace::Insurer(employer_a()),
        origin: signer.node_id(),
        origin_seq: 100,
        hlc: Hlc::new(1_790_000_000_000, 0),
        author: signer.public(),
        body: EventBody::MemberErased {
            member: reference.clone(),
            key_tags: store.key_tags_of(&reference),
            reason: "retention period over".into(),
        },
    };
    out.push(("member_erased".to_owned(), [7u8; 32], erase));
    (out, store)
}

#[test]
fn golden_schema_2_vectors_decode_and_reencode_identically() {
    // Pins EVENTS.md "Schema version 2" and KEYSTORE.md: every event type sealed, the key
    // store items and file, and that the wraps open with the card and with key + birth date.
    let (events, store) = vector_events_v2();
    let built: Vec<Vector> = events
        .into_iter()
        .map(|(name, secret, event)| {
            Vector::of(name, secret, Signer::from_secret(secret).sign_sealed(event).unwrap())
        })
        .collect();
    let m = member(employer_a(), "1001", 0);
    let signer = Signer::from_secret([7u8; 32]);
    let reference =
        shikaku_core::seal::member_ref(&shikaku_core::sealer::ref_secret_of(&signer), &m);
    let (items, _) = store.items_since(0, usize::MAX, |_| true);
    let keys = KeyStoreVector {
        card_token: card("vector").to_string(),
        member_key: m.to_string(),
        birth_date: "1990-05-01".into(),
        reference: reference.to_string(),
        data_key: hex(&store.data_key(&reference).unwrap().0),
        items: items.iter().map(|i| hex(&shikaku_core::keystore::encode_item(i))).collect(),
        file: hex(&store.encode_file()),
    };
    if std::env::var_os("SHIKAKU_BLESS_VECTORS").is_some() {
        std::fs::write(VECTORS_V2, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
        std::fs::write(KEYSTORE_VECTORS, serde_json::to_string_pretty(&keys).unwrap() + "\n")
            .unwrap();
    }
    let stored: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS_V2).expect("v2 vectors present"))
            .unwrap();
    assert_eq!(stored.len(), built.len());
    let mut types = std::collections::BTreeSet::new();
    for (vector, fresh) in stored.iter().zip(&built) {
        let bytes = unhex(&vector.canonical_hex);
        let signature: Signature = vector.signature.parse().unwrap();
        let id: EventId = vector.id.parse().unwrap();
        let decoded = SignedEvent::decode(2, &bytes, signature, Some(id), None)
            .unwrap_or_else(|e| panic!("vector {}: {e}", vector.name));
        assert!(
            SignedEvent::decode(1, &bytes, signature, None, None).is_err(),
            "{}: a schema-2 event is not a schema-1 one",
            vector.name
        );
        let from_line = shikaku_cli::jsonl::decode(&vector.jsonl, None).unwrap();
        assert_eq!(decoded, from_line, "vector {}: bytes and JSON line agree", vector.name);
        types.insert(decoded.event().body.type_name());
        assert_eq!(vector, fresh, "vector {} no longer matches this build", vector.name);
    }
    assert_eq!(types.len(), 17, "every schema-2 event type has a vector: {types:?}");

    let stored: KeyStoreVector =
        serde_json::from_str(&std::fs::read_to_string(KEYSTORE_VECTORS).unwrap()).unwrap();
    assert_eq!(stored, keys, "the key store vectors no longer match this build");
    for item in &stored.items {
        let bytes = unhex(item);
        let decoded = shikaku_core::keystore::decode_item(&bytes).unwrap();
        assert_eq!(shikaku_core::keystore::encode_item(&decoded), bytes);
    }
    let file = shikaku_core::keystore::KeyStore::decode_file(&unhex(&stored.file)).unwrap();
    // Both wraps open to the stored data key, and it opens the sealed registration.
    let token: shikaku_core::CardToken = stored.card_token.parse().unwrap();
    let presented = shikaku_core::keystore::Presented::Card(token);
    let found = file.lookup(&presented).unwrap();
    assert!(!found.keys.is_empty(), "the card's wrap opens");
    for (reference, key) in &found.keys {
        assert_eq!(file.data_key(reference), Some(key), "the card's wrap holds that member's key");
    }
    let by_key = file
        .lookup(&shikaku_core::keystore::Presented::Key {
            key: stored.member_key.parse().unwrap(),
            birth: stored.birth_date.parse().unwrap(),
        })
        .unwrap();
    assert_eq!(by_key.keys[0].0.to_string(), stored.reference);
    assert_eq!(hex(&by_key.keys[0].1 .0), stored.data_key);
    let registration = shikaku_cli::jsonl::decode(&built[0].jsonl, None).unwrap();
    let EventBody::MemberSealed { member, sealed } = &registration.event().body else { panic!() };
    let record = shikaku_core::seal::open_member(&by_key.keys[0].1, member, sealed).unwrap();
    assert_eq!(record.person.name, "山田 花子");
}

const VECTORS_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/events-v3.json");

#[test]
fn golden_schema_3_vectors_decode_and_reencode_identically() {
    // Pins EVENTS.md "Schema version 3": every clinic record of the schema-1 and schema-2
    // vectors, attributed to operator 0102030405060708; the canonical bytes are the inner
    // event's followed by the operator's 8 bytes, and only clinic records may be attributed.
    let operator = shikaku_core::StaffId([1, 2, 3, 4, 5, 6, 7, 8]);
    let inner: Vec<(String, u16, [u8; 32], Event)> = vector_events()
        .into_iter()
        .map(|(name, secret, event)| (format!("v1/{name}"), 1, secret, event))
        .chain(
            vector_events_v2()
                .0
                .into_iter()
                .map(|(name, secret, event)| (format!("v2/{name}"), 2, secret, event)),
        )
        .filter(|(_, _, _, e)| e.body.kind().is_clinic_record())
        .collect();
    let mut built = Vec::new();
    for (name, schema, secret, event) in &inner {
        let signer = Signer::from_secret(*secret);
        let attributed = signer.sign_attributed(event.clone(), operator).unwrap();
        let plain = signer.sign_as(*schema, event.clone()).unwrap();
        let mut expected = plain.canonical_bytes().to_vec();
        expected.extend_from_slice(&operator.0);
        assert_eq!(attributed.canonical_bytes(), expected, "{name}: inner bytes ‖ operator");
        built.push(Vector::of(name.clone(), *secret, attributed));
    }
    if std::env::var_os("SHIKAKU_BLESS_VECTORS").is_some() {
        std::fs::write(VECTORS_V3, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS_V3).expect("v3 vectors present"))
            .unwrap();
    assert_eq!(stored.len(), built.len());
    let mut types = std::collections::BTreeSet::new();
    for (vector, fresh) in stored.iter().zip(&built) {
        let bytes = unhex(&vector.canonical_hex);
        let signature: Signature = vector.signature.parse().unwrap();
        let id: EventId = vector.id.parse().unwrap();
        let decoded = SignedEvent::decode(3, &bytes, signature, Some(id), None)
            .unwrap_or_else(|e| panic!("vector {}: {e}", vector.name));
        assert_eq!(decoded.operator(), Some(operator), "{}", vector.name);
        for other in [1, 2] {
            assert!(
                SignedEvent::decode(other, &bytes, signature, None, None).is_err(),
                "{}: a schema-3 event is not a schema-{other} one",
                vector.name
            );
        }
        let from_line = shikaku_cli::jsonl::decode(&vector.jsonl, None).unwrap();
        assert_eq!(decoded, from_line, "vector {}: bytes and JSON line agree", vector.name);
        assert!(vector.jsonl.contains("\"operator\":\"0102030405060708\""), "{}", vector.jsonl);
        types.insert(decoded.event().body.type_name());
        assert_eq!(vector, fresh, "vector {} no longer matches this build", vector.name);
    }
    assert_eq!(types.len(), 5, "every clinic record type has a vector: {types:?}");
    // Only clinic records may be attributed.
    let membership = vector_events().into_iter().find(|(_, _, e)| e.body.kind().is_membership());
    let (name, secret, event) = membership.unwrap();
    let refused = Signer::from_secret(secret).sign_attributed(event, operator).unwrap_err();
    assert!(
        refused.to_string().contains("schema 3 attributes only clinic records"),
        "{name}: {refused}"
    );
}
