//! Bad input never panics: each kind gets a typed error that names the problem, and import
//! keeps every good line.

use proptest::prelude::*;
use shikaku_core::{
    Event, EventBody, EventError, Hlc, MemberKeyError, Namespace, Signature, SignedEvent, Signer,
};

use crate::story::{d, employer_a, member, person};

fn one_event(hlc: Hlc) -> SignedEvent {
    let signer = Signer::derived("shikaku tests", b"bad-input");
    let m = member(employer_a(), "1", 0);
    signer
        .sign(Event {
            namespace: Namespace::Insurer(employer_a()),
            origin: signer.node_id(),
            origin_seq: 1,
            hlc,
            author: signer.public(),
            body: EventBody::MemberRegistered {
                member: m,
                person: person("名前", "1990-01-01"),
                relationship: shikaku_core::Relationship::Insured,
            },
        })
        .unwrap()
}

#[test]
fn malformed_member_keys_are_named() {
    let cases: &[(&str, &str)] = &[
        ("06130017", "must be INSURER:SYMBOL:NUMBER:BRANCH"),
        ("0613001:1:2:00", "must be 6 digits"),
        ("06130017:1:2:3", "branch number \"3\" must be two digits"),
        ("06130017:a b:2:00", "symbol \"a b\" must be at most 20 characters"),
        ("06130017:1::00", "number must not be empty"),
        ("00130015:1:2:00", "starts with 00"),
    ];
    for (input, expected) in cases {
        let error = input.parse::<shikaku_core::MemberKey>().unwrap_err().to_string();
        assert!(error.contains(expected), "{input}: {error}");
    }
}

#[test]
fn wrong_check_digit_names_the_expected_digit() {
    let error = "06130018:1:2:00".parse::<shikaku_core::MemberKey>().unwrap_err();
    assert_eq!(
        error,
        MemberKeyError::InsurerCheckDigit { number: "06130018".into(), found: 8, expected: 7 }
    );
    assert_eq!(error.to_string(), "insurer number 06130018 has check digit 8, expected 7");
}

#[test]
fn unknown_schema_version_is_refused() {
    let event = one_event(Hlc::new(1_000, 0));
    let error =
        SignedEvent::decode(4, event.canonical_bytes(), event.signature(), None, None).unwrap_err();
    assert_eq!(error, EventError::UnknownSchemaVersion { found: 4, supported: 3 });
}

#[test]
fn bad_signature_is_refused() {
    let event = one_event(Hlc::new(1_000, 0));
    let mut signature = event.signature().0;
    signature[10] ^= 0x01;
    let error = SignedEvent::decode(1, event.canonical_bytes(), Signature(signature), None, None)
        .unwrap_err();
    assert_eq!(error, EventError::BadSignature(event.id()));
}

#[test]
fn timestamp_too_far_in_the_future_is_refused() {
    let now_ms = d("2026-01-01").start_unix_ms_jst();
    let event = one_event(Hlc::new(now_ms + 3_600_000, 0));
    let error =
        SignedEvent::decode(1, event.canonical_bytes(), event.signature(), None, Some(now_ms))
            .unwrap_err();
    assert!(
        matches!(
            error,
            EventError::Clock(shikaku_core::HlcError::TooFarInFuture { ahead_ms: 3_600_000, .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("3600000 ms ahead"), "{error}");
}

#[test]
fn tampered_content_and_truncation_are_refused() {
    let event = one_event(Hlc::new(1_000, 0));
    let bytes = event.canonical_bytes();
    let error = SignedEvent::decode(1, &bytes[..bytes.len() - 8], event.signature(), None, None)
        .unwrap_err();
    assert!(matches!(error, EventError::Malformed(_)), "{error}");
    let mut other = bytes.to_vec();
    other[0] ^= 0x40;
    let error =
        SignedEvent::decode(1, &other, event.signature(), Some(event.id()), None).unwrap_err();
    assert!(matches!(error, EventError::IdMismatch { .. }), "{error}");
}

#[test]
fn events_outside_their_namespace_are_refused() {
    // A membership fact about insurer A's member signed into a clinic namespace.
    let signer = Signer::derived("shikaku tests", b"clinic");
    let error = signer
        .sign(Event {
            namespace: Namespace::Clinic(signer.node_id()),
            origin: signer.node_id(),
            origin_seq: 1,
            hlc: Hlc::new(1, 0),
            author: signer.public(),
            body: EventBody::CoverageEnded {
                member: member(employer_a(), "1", 0),
                loss_date: d("2025-01-01"),
                reason: shikaku_core::EndReason::Other,
            },
        })
        .unwrap_err();
    assert!(
        matches!(error, EventError::WrongNamespace { event_type: "coverage_ended", .. }),
        "{error}"
    );
}

#[test]
fn my_numbers_are_refused_as_card_tokens() {
    let error = "123456789012".parse::<shikaku_core::CardToken>().unwrap_err();
    assert_eq!(error, MemberKeyError::LooksLikeIndividualNumber);
    let error = shikaku_cli::parse_query(Some("1234-5678-9012"), None).unwrap_err();
    assert!(error.to_string().contains("My Number"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        // Random bytes must come back as an error, never a panic or a bogus event.
        prop_assert!(SignedEvent::decode(1, &bytes, Signature([0; 64]), None, None).is_err());
    }

    #[test]
    fn flipped_bits_in_a_real_event_are_always_detected(position in 0usize..10_000, bit in 0u8..8) {
        let event = one_event(Hlc::new(1_000, 0));
        let mut bytes = event.canonical_bytes().to_vec();
        let at = position % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(SignedEvent::decode(1, &bytes, event.signature(), None, None).is_err());
    }

    #[test]
    fn arbitrary_lines_never_panic_the_importer(line in ".{0,300}") {
        prop_assert!(shikaku_cli::jsonl::decode(&line, None).is_err());
    }
}
