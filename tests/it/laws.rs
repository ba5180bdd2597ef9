//! Laws, checked with property tests: the projection is a function of the event *set*
//! (any order, any duplicates, any split into replicas merged as a grow-only set gives the
//! same digest and the same answers), and every encoding round-trips.

use proptest::prelude::*;
use shikaku_core::{
    CheckQuery, Date, EventBody, Freshness, Hlc, Projection, Replication, SignedEvent,
};

use crate::story::d;

fn stream() -> &'static [SignedEvent] {
    static STREAM: std::sync::OnceLock<Vec<SignedEvent>> = std::sync::OnceLock::new();
    STREAM.get_or_init(|| {
        let mut events =
            shikaku_gen::generate(&shikaku_gen::GenConfig::new(400, 11)).expect("generate").events;
        // Add clinic-side events (declarations, resolutions, consent, checks) and a conflict.
        let mut story = crate::story::Story::new();
        crate::story::extra_clinic_events(&mut story, &events);
        events.extend(story.events);
        events
    })
}

fn queries(events: &[SignedEvent]) -> Vec<CheckQuery> {
    events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::CardLinked { card, .. } => Some(CheckQuery::Card(*card)),
            EventBody::MemberRegistered { member, .. } => Some(CheckQuery::Member(member.clone())),
            _ => None,
        })
        .step_by(7)
        .collect()
}

fn fold<'a>(events: impl IntoIterator<Item = &'a SignedEvent>) -> Projection {
    let mut projection = Projection::new(Replication::All);
    for event in events {
        projection.apply(event);
    }
    projection
}

fn answers(projection: &Projection, queries: &[CheckQuery]) -> Vec<shikaku_core::AnswerHash> {
    let dates = [d("2025-03-31"), d("2025-10-01"), d("2026-10-31")];
    let cutoffs = [Hlc(u64::MAX), Hlc::end_of_ms(d("2025-12-01").start_unix_ms_jst())];
    let fresh = Freshness::default();
    let mut out = Vec::new();
    for query in queries {
        for date in dates {
            for cutoff in cutoffs {
                out.push(projection.check(query, date, cutoff, fresh).hash());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_permutation_with_duplicates_gives_the_same_state(seed in any::<u64>(), dup_every in 2usize..9) {
        // Shuffle the stream with a seeded Fisher-Yates, repeat every n-th event, and compare
        // digests and answers with the fold of the stream in record order.
        let events = stream();
        let reference = fold(events);
        let mut order: Vec<usize> = (0..events.len()).collect();
        let mut rng = shikaku_gen::Rng::new(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut shuffled: Vec<&SignedEvent> = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            shuffled.push(&events[i]);
            if n % dup_every == 0 {
                shuffled.push(&events[order[rng.below(order.len() as u64) as usize]]);
            }
        }
        let folded = fold(shuffled);
        prop_assert_eq!(folded.events_held(), reference.events_held());
        prop_assert_eq!(folded.digest(), reference.digest());
        let q = queries(events);
        prop_assert_eq!(answers(&folded, &q), answers(&reference, &q));
    }

    #[test]
    fn replicas_merged_as_a_grow_only_set_converge(seed in any::<u64>()) {
        // Two replicas each hold a random subset; merging their id sets with crdts' GSet (the
        // CRDT the event set is) and folding the union gives the same state as folding both
        // replicas' events into one projection in either order.
        use crdts::{CvRDT, GSet};
        let events = stream();
        let mut rng = shikaku_gen::Rng::new(seed);
        let (mut a, mut b) = (GSet::new(), GSet::new());
        for (i, _) in events.iter().enumerate() {
            match rng.below(3) {
                0 => a.insert(i),
                1 => b.insert(i),
                _ => { a.insert(i); b.insert(i); }
            }
        }
        let mut merged = a.clone();
        merged.merge(b.clone());
        let union = fold(merged.read().iter().map(|&i| &events[i]));
        let ab = fold(a.read().iter().chain(b.read().iter()).map(|&i| &events[i]));
        let ba = fold(b.read().iter().chain(a.read().iter()).map(|&i| &events[i]));
        prop_assert_eq!(union.digest(), ab.digest());
        prop_assert_eq!(ab.digest(), ba.digest());
        prop_assert_eq!(union.digest(), fold(events).digest());
    }

    #[test]
    fn dates_round_trip_through_text(day in -25_000i32..80_000) {
        let date = Date(day);
        prop_assert_eq!(date.to_string().parse::<Date>().ok().filter(|_| (1900..=2199).contains(&date.ymd().0)), (1900..=2199).contains(&date.ymd().0).then_some(date));
    }

    #[test]
    fn member_keys_round_trip_through_text(symbol in "[0-9A-Za-z記号国]{0,20}", number in "[0-9]{1,20}", branch in 0u8..100) {
        let key = shikaku_core::MemberKey::new(shikaku_core::InsurerNumber::with_check_digit(613_001), &symbol, &number, branch).unwrap();
        prop_assert_eq!(key.to_string().parse::<shikaku_core::MemberKey>().unwrap(), key);
    }
}

#[test]
fn every_event_round_trips_through_bytes_and_json_lines() {
    // Proves the canonical encoding is stable: decode(encode(e)) == e for rkyv bytes and for
    // the JSON Lines format, with ids and signatures intact.
    for event in stream() {
        let decoded = SignedEvent::decode(
            event.schema_version(),
            event.canonical_bytes(),
            event.signature(),
            Some(event.id()),
            None,
        )
        .unwrap();
        assert_eq!(&decoded, event);
        let line = shikaku_cli::jsonl::encode(event);
        let back = shikaku_cli::jsonl::decode(&line, None).unwrap();
        assert_eq!(&back, event);
        assert_eq!(shikaku_cli::jsonl::encode(&back), line);
    }
}

#[test]
fn the_stream_exercises_every_rule() {
    // Guards the laws above against a stream that silently stopped containing the hard cases.
    let mut types = std::collections::BTreeSet::new();
    for event in stream() {
        types.insert(event.event().body.type_name());
    }
    for needed in [
        "member_registered",
        "coverage_started",
        "coverage_ended",
        "copay_ratio_set",
        "limit_category_set",
        "card_linked",
        "event_superseded",
        "event_voided",
        "self_declaration_recorded",
        "self_declaration_resolved",
        "consent_given",
        "check_performed",
        "wrong_person_linkage_revoked",
    ] {
        assert!(types.contains(needed), "stream lacks {needed}: {types:?}");
    }
}

#[test]
fn projection_snapshots_round_trip_and_refuse_damage() {
    // Proves: decode(encode(p)) has the same digest and answers as p, and folding more events
    // on top of a snapshot equals folding everything; a snapshot with any byte changed is
    // refused (digest or format error), never loaded and never a panic.
    let events = stream();
    let half = events.len() / 2;
    let first = fold(&events[..half]);
    let bytes = first.encode_snapshot(half as u64);
    let (mut loaded, position) = Projection::decode_snapshot(&bytes).unwrap();
    assert_eq!(position, half as u64);
    assert_eq!(loaded.digest(), first.digest());
    let q = queries(events);
    assert_eq!(answers(&loaded, &q), answers(&first, &q));
    for event in &events[half..] {
        loaded.apply(event);
    }
    let full = fold(events);
    assert_eq!(loaded.digest(), full.digest());
    assert_eq!(answers(&loaded, &q), answers(&full, &q));
    let mut rng = shikaku_gen::Rng::new(5);
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        let at = rng.below(damaged.len() as u64) as usize;
        damaged[at] ^= 1 << rng.below(8);
        assert!(
            Projection::decode_snapshot(&damaged).is_err(),
            "a change at byte {at} went unnoticed"
        );
    }
    assert!(Projection::decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn answer_code_names_are_the_json_names() {
    use shikaku_core::AnswerCode as C;
    for code in [
        C::Valid,
        C::Invalid,
        C::InvalidNewerExists,
        C::NoMatch,
        C::MultipleMatches,
        C::PendingSuccessor,
        C::Unknown,
    ] {
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::Value::String(shikaku_core::text::code_name(code))
        );
    }
}
