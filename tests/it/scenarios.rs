//! Scenario stories: each test builds a small signed history and snapshots the answers to a
//! few checks (rendered as reception sees them, with event ids replaced by `#index:type`).
//! The snapshots are reviewed like code; a changed rule shows up as a changed snapshot.

use shikaku_core::{CheckQuery, DeclarationOutcome, EndReason, EventBody, Hlc};

use crate::story::*;

fn by_card(label: &str) -> CheckQuery {
    CheckQuery::Card(card(label))
}

fn by_key(member: &shikaku_core::MemberKey) -> CheckQuery {
    CheckQuery::Member(member.clone())
}

#[test]
fn s01_enrollment_and_basic_checks() {
    // Proves: valid inside the half-open coverage, invalid before the start date, no match for
    // an unknown card, and both card and key lookups agree.
    let mut s = Story::new();
    let hanako = member(employer_a(), "1001", 0);
    s.on("2025-03-25").enroll(&hanako, person("山田 花子", "1990-05-01"), None, "2025-04-01", 3);
    s.on("2025-03-28").link(card("hanako"), &hanako);
    insta::assert_snapshot!(report(
        &s,
        &[
            ("card on the first covered day", by_card("hanako"), "2025-04-01", None),
            ("key the day before coverage starts", by_key(&hanako), "2025-03-31", None),
            ("a card nobody linked", by_card("stranger"), "2025-04-01", None),
        ]
    ));
}

#[test]
fn s02_job_change_with_registration_lag_and_self_declaration() {
    // Proves: while the new insurer has not registered the member, the card is invalid; a
    // self-declaration makes it pending; once registered (retroactively to the job change
    // date) it is valid; the old key answers invalid-but-newer-exists; the declaration can be
    // resolved.
    let mut s = Story::new();
    let old = member(employer_a(), "2001", 0);
    let new = member(employer_b(), "9001", 0);
    s.on("2024-03-20").enroll(&old, person("佐藤 翔太", "1985-07-07"), None, "2024-04-01", 3);
    s.on("2024-03-21").link(card("shota"), &old);
    s.on("2025-06-03").insurer(
        employer_a(),
        EventBody::CoverageEnded {
            member: old.clone(),
            loss_date: d("2025-06-01"),
            reason: EndReason::JobChange,
        },
    );
    let declaration = s.on("2025-06-05").clinic(EventBody::SelfDeclarationRecorded {
        query: by_card("shota"),
        declared_insurer: Some(employer_b()),
        declared_start: d("2025-06-01"),
    });
    s.on("2025-07-10").enroll(&new, person("佐藤 翔太", "1985-07-07"), None, "2025-06-01", 3);
    s.on("2025-07-10").link(card("shota"), &new);
    s.on("2025-07-11").clinic(EventBody::SelfDeclarationResolved {
        query: by_card("shota"),
        declaration,
        outcome: DeclarationOutcome::Confirmed,
    });
    insta::assert_snapshot!(report(
        &s,
        &[
            (
                "visit 2025-06-04, known that day",
                by_card("shota"),
                "2025-06-04",
                Some("2025-06-04")
            ),
            (
                "visit 2025-06-05 after the self-declaration",
                by_card("shota"),
                "2025-06-05",
                Some("2025-06-05")
            ),
            ("the same visit as known after registration", by_card("shota"), "2025-06-05", None),
            ("old member key for that visit, known now", by_key(&old), "2025-06-05", None),
        ]
    ));
}

#[test]
fn s03_retroactive_termination() {
    // Proves: a termination recorded later with a past loss date flips the answer for past
    // service dates as known now, while the answer as known then is unchanged (bitemporal).
    let mut s = Story::new();
    let m = member(employer_a(), "3001", 0);
    s.on("2024-01-10").enroll(&m, person("鈴木 誠", "1970-01-15"), None, "2024-01-01", 3);
    s.on("2025-09-30").insurer(
        employer_a(),
        EventBody::CoverageEnded {
            member: m.clone(),
            loss_date: d("2025-08-01"),
            reason: EndReason::Retirement,
        },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            (
                "visit 2025-08-20 as the clinic knew it on 2025-08-20",
                by_key(&m),
                "2025-08-20",
                Some("2025-08-20")
            ),
            ("the same visit as known now", by_key(&m), "2025-08-20", None),
        ]
    ));
}

#[test]
fn s04_void_and_void_of_void() {
    // Proves: corrections never overwrite — a void removes a copay change, and voiding the
    // void restores it; each answer names the deciding events.
    let mut s = Story::new();
    let m = member(employer_a(), "4001", 0);
    s.on("2024-03-01").enroll(&m, person("田中 恵子", "1960-02-02"), None, "2024-04-01", 3);
    let wrong = s.on("2025-05-01").insurer(
        employer_a(),
        EventBody::CopayRatioSet { member: m.clone(), effective: d("2025-05-01"), copay_tenths: 2 },
    );
    let void = s.on("2025-05-10").insurer(
        employer_a(),
        EventBody::EventVoided {
            subject: by_key(&m),
            target: wrong,
            reason: "entered for the wrong member".into(),
        },
    );
    s.on("2025-06-01").insurer(
        employer_a(),
        EventBody::EventVoided {
            subject: by_key(&m),
            target: void,
            reason: "the void itself was a mistake".into(),
        },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            (
                "copay on 2025-05-20 known 2025-05-05 (change in force)",
                by_key(&m),
                "2025-05-20",
                Some("2025-05-05")
            ),
            ("known 2025-05-15 (change voided)", by_key(&m), "2025-05-20", Some("2025-05-15")),
            ("known now (void voided: change restored)", by_key(&m), "2025-05-20", None),
        ]
    ));
}

#[test]
fn s05_supersession_and_competing_corrections() {
    // Proves: a supersession replaces its target; two different supersessions of one event are
    // surfaced as a conflict instead of one silently winning.
    let mut s = Story::new();
    let m = member(employer_a(), "5001", 0);
    s.on("2024-03-01").enroll(&m, person("伊藤 蓮", "1988-08-08"), None, "2024-04-01", 3);
    let wrong = s.on("2025-04-01").insurer(
        employer_a(),
        EventBody::CopayRatioSet { member: m.clone(), effective: d("2025-04-01"), copay_tenths: 1 },
    );
    let fix_a = s.on("2025-04-03").insurer(
        employer_a(),
        EventBody::CopayRatioSet { member: m.clone(), effective: d("2025-04-01"), copay_tenths: 3 },
    );
    s.on("2025-04-03").insurer(
        employer_a(),
        EventBody::EventSuperseded { subject: by_key(&m), target: wrong, replacement: fix_a },
    );
    let after_one = report(&s, &[("after one correction", by_key(&m), "2025-04-10", None)]);
    let fix_b = s.on("2025-04-04").insurer(
        employer_a(),
        EventBody::CopayRatioSet { member: m.clone(), effective: d("2025-04-01"), copay_tenths: 2 },
    );
    s.on("2025-04-04").insurer(
        employer_a(),
        EventBody::EventSuperseded { subject: by_key(&m), target: wrong, replacement: fix_b },
    );
    let after_two =
        report(&s, &[("after a second, different correction", by_key(&m), "2025-04-10", None)]);
    let conflicts = s.projection().conflicts(Hlc(u64::MAX));
    insta::assert_snapshot!(format!(
        "{after_one}{after_two}## conflicts in the ledger\n{}",
        conflicts.len()
    ));
}

#[test]
fn s06_move_between_municipalities() {
    // Proves: a move ends city A's national health insurance and starts city B's on the
    // moving date; the card follows the person; city A's key then has a newer coverage.
    let mut s = Story::new();
    let in_a = member(city_a(), "6001", 0);
    let in_b = member(city_b(), "7001", 0);
    s.on("2023-04-01").enroll(&in_a, person("高橋 博", "1958-11-11"), None, "2023-04-01", 3);
    s.on("2023-04-02").link(card("hiroshi"), &in_a);
    s.on("2025-10-01").insurer(
        city_a(),
        EventBody::DemographicsChanged {
            member: in_a.clone(),
            effective: d("2025-10-01"),
            person: person("高橋 博", "1958-11-11"),
        },
    );
    s.on("2025-10-02").insurer(
        city_a(),
        EventBody::CoverageEnded {
            member: in_a.clone(),
            loss_date: d("2025-10-01"),
            reason: EndReason::MoveOutOfMunicipality,
        },
    );
    s.on("2025-10-03").enroll(&in_b, person("高橋 博", "1958-11-11"), None, "2025-10-01", 3);
    s.on("2025-10-03").link(card("hiroshi"), &in_b);
    insta::assert_snapshot!(report(
        &s,
        &[
            ("card the day before the move", by_card("hiroshi"), "2025-09-30", None),
            ("card on the moving day", by_card("hiroshi"), "2025-10-01", None),
            ("city A key on the moving day", by_key(&in_a), "2025-10-01", None),
        ]
    ));
}

#[test]
fn s07_wrong_person_linkage_revoked() {
    // Proves: after a wrong-person linkage is revoked the card stops resolving to that member,
    // and the checks that relied on the link can be listed.
    let mut s = Story::new();
    let right = member(employer_a(), "8001", 0);
    let wrong = member(employer_a(), "8002", 0);
    s.on("2024-01-05").enroll(&right, person("小林 陽菜", "1995-03-03"), None, "2024-01-01", 3);
    s.on("2024-01-05").enroll(&wrong, person("小林 陽菜", "1995-03-30"), None, "2024-01-01", 3);
    let bad_link = s.on("2024-02-01").link(card("hina"), &wrong);
    let before = s.answer(&by_card("hina"), "2024-02-10", None);
    let check = s.on("2024-02-10").clinic(EventBody::CheckPerformed {
        query: by_card("hina"),
        service_date: d("2024-02-10"),
        mode: shikaku_core::CheckMode::Online,
        knowledge: before.knowledge.as_of,
        hub_position: 0,
        code: before.code,
        answer_hash: before.hash(),
        decided_by: before.decided_by.clone(),
    });
    s.on("2024-02-20").insurer(
        employer_a(),
        EventBody::WrongPersonLinkageRevoked {
            card: card("hina"),
            member: wrong.clone(),
            reason: "linked to a namesake".into(),
        },
    );
    s.on("2024-02-21").link(card("hina"), &right);
    let affected = s.projection().checks_using_revoked_link(&card("hina"), &wrong, Hlc(u64::MAX));
    assert!(before.decided_by.contains(&bad_link), "the check relied on the bad link");
    assert_eq!(affected, vec![check], "the check that used the revoked link is listed");
    insta::assert_snapshot!(report(
        &s,
        &[
            (
                "card on 2024-02-10 as known then (wrong person)",
                by_card("hina"),
                "2024-02-10",
                Some("2024-02-10")
            ),
            ("card on 2024-02-10 as known now", by_card("hina"), "2024-02-10", None),
        ]
    ));
}

#[test]
fn s08_dependant_coverage_ends_with_the_insured() {
    // Proves: a dependant is covered only while the insured person is, even when the insurer
    // has not (yet) reported the dependant's own loss.
    let mut s = Story::new();
    let insured = member(employer_a(), "9001", 0);
    let child = member(employer_a(), "9001", 1);
    s.on("2020-04-01").enroll(&insured, person("渡辺 健一", "1980-01-01"), None, "2020-04-01", 3);
    s.on("2020-04-01").enroll(
        &child,
        person("渡辺 葵", "2015-06-06"),
        Some(&insured),
        "2020-04-01",
        2,
    );
    s.on("2025-07-02").insurer(
        employer_a(),
        EventBody::CoverageEnded {
            member: insured.clone(),
            loss_date: d("2025-07-01"),
            reason: EndReason::Retirement,
        },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            ("child on 2025-06-30", by_key(&child), "2025-06-30", None),
            (
                "child on 2025-07-01 (insured person's coverage ended)",
                by_key(&child),
                "2025-07-01",
                None
            ),
        ]
    ));
}

#[test]
fn s09_transfer_at_age_75() {
    // Proves: on the 75th birthday coverage outside the late-stage system ends even before the
    // insurer reports it, and the late-stage coverage starting that day answers for the card.
    let mut s = Story::new();
    let old = member(city_a(), "1101", 0);
    let elder = member(late_stage(), "1102", 0);
    s.on("2010-01-01").enroll(&old, person("中村 幸子", "1950-09-15"), None, "2010-01-01", 2);
    s.on("2010-01-02").link(card("sachiko"), &old);
    s.on("2025-09-01").enroll(&elder, person("中村 幸子", "1950-09-15"), None, "2025-09-15", 1);
    s.on("2025-09-02").link(card("sachiko"), &elder);
    insta::assert_snapshot!(report(
        &s,
        &[
            ("old key the day before the birthday", by_key(&old), "2025-09-14", None),
            (
                "old key on the 75th birthday (not reported by city A)",
                by_key(&old),
                "2025-09-15",
                None
            ),
            ("card on the 75th birthday", by_card("sachiko"), "2025-09-15", None),
        ]
    ));
}

#[test]
fn s10_death_ends_member_and_dependants() {
    // Proves: death ends coverage from the day after, and the dependant's coverage with it.
    let mut s = Story::new();
    let insured = member(employer_b(), "1201", 0);
    let spouse = member(employer_b(), "1201", 1);
    s.on("2015-04-01").enroll(&insured, person("加藤 隆", "1960-04-04"), None, "2015-04-01", 3);
    s.on("2015-04-01").enroll(
        &spouse,
        person("加藤 由美", "1962-12-12"),
        Some(&insured),
        "2015-04-01",
        3,
    );
    s.on("2025-11-05").insurer(
        employer_b(),
        EventBody::CoverageEnded {
            member: insured.clone(),
            loss_date: d("2025-11-02"),
            reason: EndReason::Death,
        },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            ("insured on the day of death", by_key(&insured), "2025-11-01", None),
            ("insured the day after", by_key(&insured), "2025-11-02", None),
            ("spouse the day after", by_key(&spouse), "2025-11-02", None),
        ]
    ));
}

#[test]
fn s11_copay_change_mid_month() {
    // Proves: a copay ratio change applies from its effective day, mid-month included.
    let mut s = Story::new();
    let m = member(employer_a(), "1301", 0);
    s.on("2024-04-01").enroll(&m, person("吉田 大輔", "1956-10-20"), None, "2024-04-01", 3);
    s.on("2026-10-10").insurer(
        employer_a(),
        EventBody::CopayRatioSet { member: m.clone(), effective: d("2026-10-16"), copay_tenths: 2 },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            ("2026-10-15", by_key(&m), "2026-10-15", None),
            ("2026-10-16", by_key(&m), "2026-10-16", None),
        ]
    ));
}

#[test]
fn s12_same_day_start_and_end() {
    // Proves: half-open intervals — a coverage that starts and ends on the same day covers no
    // day; an old coverage ending on D and a new one starting on D hand over exactly on D.
    let mut s = Story::new();
    let brief = member(employer_a(), "1401", 0);
    s.on("2025-05-01").enroll(&brief, person("山口 誠", "1990-01-01"), None, "2025-05-01", 3);
    s.on("2025-05-02").insurer(
        employer_a(),
        EventBody::CoverageEnded {
            member: brief.clone(),
            loss_date: d("2025-05-01"),
            reason: EndReason::Other,
        },
    );
    let old = member(employer_a(), "1402", 0);
    let new = member(employer_b(), "1403", 0);
    s.on("2024-01-01").enroll(&old, person("松本 凛", "1992-02-02"), None, "2024-01-01", 3);
    s.on("2024-01-01").link(card("rin"), &old);
    s.on("2025-06-01").insurer(
        employer_a(),
        EventBody::CoverageEnded {
            member: old.clone(),
            loss_date: d("2025-06-01"),
            reason: EndReason::JobChange,
        },
    );
    s.on("2025-06-01").enroll(&new, person("松本 凛", "1992-02-02"), None, "2025-06-01", 3);
    s.on("2025-06-01").link(card("rin"), &new);
    insta::assert_snapshot!(report(
        &s,
        &[
            ("same-day start and end", by_key(&brief), "2025-05-01", None),
            ("handover: card on 2025-05-31", by_card("rin"), "2025-05-31", None),
            ("handover: card on 2025-06-01", by_card("rin"), "2025-06-01", None),
        ]
    ));
}

#[test]
fn s13_limit_category_needs_consent() {
    // Proves: the limit category is withheld until the patient consents, shown after, and
    // withheld again once consent is withdrawn.
    let mut s = Story::new();
    let m = member(employer_a(), "1501", 0);
    s.on("2024-04-01").enroll(&m, person("井上 美咲", "1975-05-05"), None, "2024-04-01", 3);
    s.on("2025-01-01").insurer(
        employer_a(),
        EventBody::LimitCategorySet {
            member: m.clone(),
            effective: d("2025-01-01"),
            category: "A03".into(),
        },
    );
    s.on("2025-02-01").clinic(EventBody::ConsentGiven { member: m.clone() });
    s.on("2025-03-01").clinic(EventBody::ConsentWithdrawn { member: m.clone() });
    insta::assert_snapshot!(report(
        &s,
        &[
            ("before consent", by_key(&m), "2025-01-20", Some("2025-01-20")),
            ("with consent", by_key(&m), "2025-02-10", Some("2025-02-10")),
            ("after withdrawal", by_key(&m), "2025-03-10", None),
        ]
    ));
}

#[test]
fn s14_two_insurers_claim_one_card() {
    // Proves: two insurers covering the same card on the same date is a visible conflict
    // (multiple matches), never a silent choice; overlapping periods under one key are too.
    let mut s = Story::new();
    let a = member(employer_a(), "1601", 0);
    let b = member(employer_b(), "1602", 0);
    s.on("2025-04-01").enroll(&a, person("林 湊", "1999-09-09"), None, "2025-04-01", 3);
    s.on("2025-04-01").link(card("minato"), &a);
    s.on("2025-04-02").enroll(&b, person("林 湊", "1999-09-09"), None, "2025-04-01", 3);
    s.on("2025-04-02").link(card("minato"), &b);
    s.on("2025-04-03").insurer(
        employer_a(),
        EventBody::CoverageStarted {
            member: a.clone(),
            start: d("2025-04-15"),
            copay_tenths: 3,
            elderly_certificate: false,
        },
    );
    insta::assert_snapshot!(report(
        &s,
        &[
            ("card on 2025-04-10", by_card("minato"), "2025-04-10", None),
            ("key A on 2025-04-20 (two overlapping starts)", by_key(&a), "2025-04-20", None),
        ]
    ));
}

#[test]
fn s15_partial_replication_answers_unknown() {
    // Proves: a clinic that replicates only some insurers answers "unknown" for members of
    // others and for cards it cannot resolve — never "no match".
    let mut s = Story::new();
    let here = member(employer_a(), "1701", 0);
    let elsewhere = member(employer_b(), "1702", 0);
    s.on("2025-01-01").enroll(&here, person("斎藤 結衣", "2001-01-01"), None, "2025-01-01", 3);
    s.replicate_only(&[employer_a()]);
    insta::assert_snapshot!(report(
        &s,
        &[
            ("member of a replicated insurer", by_key(&here), "2025-06-01", None),
            ("member of an insurer not replicated here", by_key(&elsewhere), "2025-06-01", None),
            ("unknown card", by_card("someone"), "2025-06-01", None),
        ]
    ));
}
