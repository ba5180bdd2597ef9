//! Damage is never silent (issue 13, items 1–3): an answer from a damaged ledger says so;
//! durable evidence of more than recovery found is loss, not a torn tail; every command names
//! what it withheld and exits non-zero.

use std::process::Stdio;
use std::time::Duration;

use shikaku_core::{AnswerCode, CheckQuery, Date, Freshness, Hlc, Replication};

use crate::cli::run;
use crate::field_trial::{finish, spawn};

fn p(path: &std::path::Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// The byte offset of the payload of the record holding `id` in `image` (the id sits at
/// offset 32 of its record header, the payload at 160).
fn payload_offset(image: &[u8], id: &shikaku_core::EventId) -> Option<usize> {
    let at = image.windows(32).position(|w| w == id.0)?;
    Some(at - 32 + 160)
}

#[test]
fn an_answer_from_a_damaged_ledger_says_so_until_the_hub_repairs_it() {
    // Proves item 1: one flipped byte in the record that decides a member's coverage made an
    // offline clinic answer `invalid` for a covered member, with nothing in the answer, the
    // health or the metrics. The rule now: while damage found on open is not repaired (no
    // session has been in sync since), every answer carries it — field, text line, FHIR
    // extension, page — and the metrics count it; the answer keeps the code the readable
    // events give. After the hub re-sends the events, answers are whole again.
    let mut w = crate::node::World::new(200, 1);
    w.connect(0);
    w.run();
    // A covered member and the coverage-start event that decides it.
    let date = Date::from_ymd(2026, 1, 5).unwrap();
    let (member, decider) = w
        .events
        .iter()
        .find_map(|e| match &e.event().body {
            shikaku_core::EventBody::CoverageStarted { member, .. }
                if member.insurer == w.insurers[0] =>
            {
                let a = w.clinics[0].projection().check(
                    &CheckQuery::Member(member.clone()),
                    date,
                    Hlc(u64::MAX),
                    Freshness::default(),
                );
                (a.code == AnswerCode::Valid && a.decided_by.contains(&e.id()))
                    .then(|| (member.clone(), e.id()))
            }
            _ => None,
        })
        .expect("a covered member");
    w.disconnect(0);
    w.clinics[0].persist_receipts().unwrap();
    let disk = w.clinic_disks[0].clone_durable();
    let segment = "segment-0000000000.shk";
    let at = payload_offset(&disk.durable_image(segment).unwrap(), &decider).unwrap();
    disk.flip_bit(segment, at as u64 + 7, 3);
    w.reopen_clinic(0, disk);
    let query = CheckQuery::Member(member.clone());
    let damaged = w.clinics[0].check(w.now_ms, &query, date).unwrap();
    let note = damaged.damage.expect("the answer carries the damage");
    assert!(note.ranges >= 1);
    assert_eq!(note.refetch, shikaku_core::RefetchState::Pending);
    let text = shikaku_core::text::answer(&damaged);
    assert!(text.contains("LEDGER DAMAGED"), "{text}");
    println!("answer given from the damaged ledger:\n{text}");
    let fhir = shikaku_api::fhir::coverage_eligibility_response(&damaged, w.now_ms).to_string();
    assert!(fhir.contains("ledger-damage"), "{fhir}");
    let metrics = shikaku_api::metrics::metrics_text(&w.clinics[0], w.now_ms);
    assert!(metrics.contains("shikaku_ledger_damaged_ranges 1"), "{metrics}");
    // The hub re-sends what was lost: answers are whole again, and say so by saying nothing.
    w.connect(0);
    w.run();
    assert!(w.clinics[0].in_sync());
    let repaired = w.clinics[0].check(w.now_ms, &query, date).unwrap();
    assert_eq!(repaired.code, AnswerCode::Valid);
    assert!(repaired.damage.is_none());
    let metrics = shikaku_api::metrics::metrics_text(&w.clinics[0], w.now_ms);
    assert!(metrics.contains("shikaku_ledger_damaged_ranges 0"), "{metrics}");
}

/// A generated world imported into a fresh ledger, with its index checkpoint and projection
/// snapshot written: (directory, data dir, events).
fn checkpointed_ledger(name: &str) -> (crate::scratch::Scratch, std::path::PathBuf, usize) {
    let (dir, stream, data) = crate::field_trial::imported_ledger(name, 600);
    let mut store = shikaku_cli::store::Store::open(&data).unwrap();
    store.checkpoint().unwrap();
    (dir, data, std::fs::read_to_string(stream).unwrap().lines().count())
}

#[test]
fn durable_evidence_of_more_events_than_recovery_found_is_reported_as_loss() {
    // Proves item 2 with real processes: truncating, zero-filling or deleting the last segment
    // made `ledger verify` say "intact" or "cut a torn tail that was never acknowledged" while
    // the index checkpoint on the same disk proved the events existed. Now it is damage,
    // named with its evidence, and verify exits 1; `check` answers carry it and exit 1.
    let (dir, original, events) = checkpointed_ledger("evidence");
    let segment = "log/segment-0000000000.shk";
    let image = std::fs::read(original.join(segment)).unwrap();
    let data_end = image.iter().rposition(|&b| b != 0).unwrap() + 1;
    for (case, damage) in [("truncated", 0), ("zero-filled", 1), ("deleted", 2)] {
        let data = dir.join(case);
        crate::net::copy_dir(&original, &data);
        let file = data.join(segment);
        match damage {
            0 => std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len((data_end / 2) as u64)
                .unwrap(),
            1 => {
                let mut bytes = std::fs::read(&file).unwrap();
                bytes[data_end / 2..data_end].fill(0);
                std::fs::write(&file, bytes).unwrap();
            }
            _ => std::fs::remove_file(&file).unwrap(),
        }
        let (code, out, err) = finish(
            spawn(&["--data-dir", &p(&data), "ledger", "verify"], Stdio::null()),
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(1), "{case}: {out}{err}");
        assert!(!out.contains("ledger intact"), "{case}: {out}");
        assert!(!out.contains("never acknowledged"), "{case}: {out}");
        assert!(out.contains("the index checkpoint records"), "{case}: {out}");
        assert!(out.contains(&format!("records {events} events")), "{case}: {out}");
        let (code, out, _) =
            run(&["--data-dir", &p(&data), "check", "--member", "06130017:1:1:00"]);
        assert_eq!(code, 1, "{case}: a local answer from a damaged ledger exits 1: {out}");
        assert!(out.contains("LEDGER DAMAGED") && out.contains("ledger verify --repair"), "{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_serves_what_verifies_names_what_it_withheld_and_exits_1() {
    // Proves item 3: a damaged record the checkpoint covered made `export` exit 2 with no line
    // at all (another ledger skipped it with exit 0), and `stats` said no damage. Now export
    // writes every event that verifies, names what it withheld and exits 1, and stats says
    // which records it did not re-read.
    let (dir, data, events) = checkpointed_ledger("export-damage");
    let segment = data.join("log/segment-0000000000.shk");
    let mut bytes = std::fs::read(&segment).unwrap();
    let store = shikaku_cli::store::Store::open_existing(&data).unwrap();
    let victim = store.log().id_at(10).unwrap();
    drop(store);
    let at = payload_offset(&bytes, &victim).unwrap();
    bytes[at + 5] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (code, out, err) = run(&["--data-dir", &p(&data), "ledger", "export"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out.lines().count(), events - 1, "every other event is exported");
    assert!(err.contains("withheld (damaged): position 10"), "{err}");
    let (code, out, _) = run(&["--data-dir", &p(&data), "ledger", "stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("not re-read") && out.contains("ledger verify"), "{out}");
    let (code, out, _) = run(&["--data-dir", &p(&data), "ledger", "verify"]);
    assert_eq!(code, 1, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = Replication::All;
}
