//! Golden vectors of the sync protocol (`protocol/vectors/sync-v1.json`): one frame per
//! message type of protocol version 1, each decoded and re-encoded byte for byte, plus a signed
//! receipt whose signature is verified and the frame-level errors a decoder must report.
//!
//! Regenerate (only when the protocol version changes!) with
//! `SHIKAKU_BLESS_VECTORS=1 cargo test -p shikaku-tests sync_vectors`.

use shikaku_core::{EventId, InsurerNumber, Namespace, NodeId, Signature, Signer};
use shikaku_protocol::negentropy::{Item, Reconciler};
use shikaku_protocol::wire::{
    event_to_wire, ErrorCode, FrameSplitter, Message, Receipt, Refusal, RefusalReason, Role,
    Subscription, WireError, FRAME_BYTES_MAX,
};
use shikaku_protocol::wire::{Ack, Hello, Welcome};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/sync-v1.json");

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Vector {
    name: String,
    /// The whole frame: u32 LE body length ‖ type ‖ payload.
    frame_hex: String,
    /// What it means, for readers.
    note: String,
}

fn hex(bytes: &[u8]) -> String {
    shikaku_core::hex::encode(bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn messages() -> Vec<(&'static str, Message, &'static str)> {
    let hub = Signer::from_secret([1u8; 32]);
    let clinic = Signer::from_secret([2u8; 32]);
    let insurer = InsurerNumber::new(6_130_017).unwrap();
    let ins = Namespace::Insurer(insurer);
    let own = Namespace::Clinic(clinic.node_id());
    let other = Namespace::Clinic(NodeId([3u8; 32]));
    let other_insurer = Namespace::Insurer(InsurerNumber::new(1_130_012).unwrap());
    let mut receipt = Receipt {
        hub: hub.node_id(),
        clinic: clinic.node_id(),
        scope: shikaku_protocol::wire::scope_digest(&[own, ins]),
        position: 6450,
        count: 925,
        fingerprint: [0xab; 16],
        complete: true,
        issued_ms: 1_795_636_420_643,
        signature: Signature([0; 64]),
    };
    receipt.signature = hub.sign_bytes(&receipt.signed_bytes());
    // The event vector "member_registered" of events-v1.json, as it travels.
    let events: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/vectors/events-v1.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let first = &events[0];
    let canonical = unhex(first["canonical_hex"].as_str().unwrap());
    let signature: [u8; 64] = unhex(first["signature"].as_str().unwrap()).try_into().unwrap();
    let event = event_to_wire(1, &canonical, &Signature(signature));
    let items: Vec<Item> =
        (1..=3u64).map(|i| Item { timestamp: i * 1000, id: [i as u8; 32] }).collect();
    let negentropy = Reconciler::new(&items, 0).unwrap().initiate().unwrap();
    vec![
        (
            "hello",
            Message::Hello(Hello {
                version: 1,
                role: Role::Clinic,
                frame_max: 1 << 20,
                cursor: 6450,
                subscriptions: vec![Subscription { namespace: ins, cursor: None }, Subscription { namespace: other_insurer, cursor: Some(0) }, Subscription { namespace: other, cursor: None }],
                prefetch: vec!["06130017:2393:0000048:01".into()],
            }),
            "clinic (node key = secret 0x02*32) holds its namespace and insurer 06130017 up to hub position 6450, newly subscribes to insurer 01130012 (cursor 0), asks for another clinic's namespace, and prefetches one member",
        ),
        (
            "welcome",
            Message::Welcome(Welcome { version: 1, frame_max: 1 << 20, verdicts: vec![None, None, Some(RefusalReason::OtherClinic)], own_seq: 4 }),
            "hub grants both insurers (and the clinic's own namespace, implied), refuses the other clinic's namespace, holds the clinic's events up to origin sequence 4",
        ),
        ("events", Message::Events { events: vec![event] }, "one event: the member_registered vector of events-v1.json (u16 schema ‖ canonical ‖ signature)"),
        ("receipt", Message::Receipt(receipt), "complete receipt by the hub (node key = secret 0x01*32) for the clinic's own namespace and insurer 06130017, signed over \"shikaku/receipt/v1\" ‖ hub id ‖ clinic id ‖ fields"),
        (
            "ack",
            Message::Ack(Ack {
                own_seq: 5,
                stored: 1,
                refused: vec![Refusal { index: 1, reason: RefusalReason::NotWritable, detail: "not yours".into() }],
            }),
            "one of two events stored, the second refused",
        ),
        ("reconcile", Message::Reconcile { namespace: ins, message: negentropy.clone() }, "Negentropy v1 initial message over items (1000,01*32),(2000,02*32),(3000,03*32)"),
        ("reconcile_reply", Message::ReconcileReply { namespace: ins, message: vec![0x61] }, "Negentropy v1: nothing left to reconcile"),
        ("fetch", Message::Fetch { namespace: ins, ids: vec![EventId([0x11; 32]), EventId([0x22; 32])] }, "two ids asked for"),
        ("error", Message::Error { code: ErrorCode::TooLarge.code(), message: "frame of 8388608 bytes exceeds the limit of 1048576".into() }, "last frame before the stream is closed"),
        ("keys_from", Message::KeysFrom { store: [3; 16], since: 41, erasures: vec![vec![2, 0, 0xAB, 0xCD]] }, "protocol 2: key store items after 41 of store 0303…, with one erasure order (its bytes are opaque here)"),
        ("keys", Message::Keys { store: [3; 16], last: 42, more: false, items: vec![vec![2, 4, 0, 0, 0, 2, 0, 0xAB, 0xCD]] }, "protocol 2: one key store item (an erasure order item), nothing more"),
    ]
}

#[test]
fn sync_vectors_decode_and_reencode_byte_for_byte() {
    let expected: Vec<Vector> = messages()
        .into_iter()
        .map(|(name, m, note)| Vector {
            name: name.into(),
            frame_hex: hex(&m.to_frame()),
            note: note.into(),
        })
        .collect();
    if std::env::var_os("SHIKAKU_BLESS_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&expected).unwrap() + "\n").unwrap();
    }
    let stored: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    assert_eq!(stored.len(), expected.len());
    for ((vector, (name, message, _)), fresh) in stored.iter().zip(messages()).zip(&expected) {
        assert_eq!(vector.name, name);
        let frame = unhex(&vector.frame_hex);
        let mut splitter = FrameSplitter::new(FRAME_BYTES_MAX);
        splitter.push(&frame);
        let body = splitter.next_frame().unwrap().unwrap();
        assert_eq!(splitter.buffered(), 0);
        let decoded = Message::decode(&body).unwrap();
        let expected_message = match message {
            Message::Receipt(mut r) => {
                r.hub = NodeId([0; 32]);
                r.clinic = NodeId([0; 32]);
                Message::Receipt(r)
            }
            other => other,
        };
        assert_eq!(decoded, expected_message, "vector {name} decodes to its message");
        assert_eq!(decoded.to_frame(), frame, "vector {name} re-encodes byte for byte");
        assert_eq!(vector, fresh, "vector {name} is what this build writes");
        if let Message::Receipt(mut r) = decoded {
            // The ids come from the certificates, not the wire.
            r.hub = Signer::from_secret([1u8; 32]).node_id();
            r.clinic = Signer::from_secret([2u8; 32]).node_id();
            let key = ed25519_dalek::VerifyingKey::from_bytes(&r.hub.0).unwrap();
            key.verify_strict(
                &r.signed_bytes(),
                &ed25519_dalek::Signature::from_bytes(&r.signature.0),
            )
            .unwrap();
        }
    }
}

#[test]
fn frame_errors_are_typed() {
    let hello = messages().remove(0).1.to_frame();
    // Every truncation of a valid body is refused, never a panic.
    for cut in 1..hello.len() - 4 {
        let err = Message::decode(&hello[4..4 + cut]).unwrap_err();
        assert!(matches!(err, WireError::Truncated(_)), "cut at {cut}: {err}");
    }
    let mut trailing = hello[4..].to_vec();
    trailing.push(0);
    assert!(matches!(Message::decode(&trailing), Err(WireError::TrailingBytes { .. })));
    assert_eq!(Message::decode(&[0x42]), Err(WireError::UnknownMessage(0x42)));
    // A count beyond its limit is refused before allocating.
    let mut events = vec![0x03];
    events.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Message::decode(&events), Err(WireError::TooMany { what: "events", .. })));
    // A bad insurer check digit inside a namespace.
    let mut fetch = vec![0x08, 1];
    fetch.extend_from_slice(&6_130_018u32.to_le_bytes());
    fetch.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(Message::decode(&fetch), Err(WireError::BadInsurer(6_130_018)));
    // Refusals out of index order would give one Welcome two encodings (found by fuzzing).
    let mut welcome = vec![0x02, 1, 0, 0, 0, 16, 0];
    welcome.extend_from_slice(&3u32.to_le_bytes()); // three subscriptions answered
    welcome.extend_from_slice(&2u32.to_le_bytes()); // two refusals
    welcome.extend_from_slice(&2u32.to_le_bytes());
    welcome.push(2);
    welcome.extend_from_slice(&0u32.to_le_bytes());
    welcome.push(1);
    welcome.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        Message::decode(&welcome),
        Err(WireError::BadIndex { what: "refused subscription", index: 0 })
    );
    let mut splitter = FrameSplitter::new(1 << 20);
    splitter.push(&[0, 0, 0, 0]);
    assert_eq!(splitter.next_frame(), Err(WireError::EmptyFrame));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = Message::decode(&bytes);
        let mut splitter = FrameSplitter::new(4096);
        splitter.push(&bytes);
        while let Ok(Some(body)) = splitter.next_frame() {
            let _ = Message::decode(&body);
        }
    }
}
