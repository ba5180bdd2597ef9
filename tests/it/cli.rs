//! The `shikaku` command end to end, run in-process through `shikaku_cli::run`: generation is
//! deterministic, import keeps good lines and names bad ones, export round-trips
//! byte-identically, `check` answers (snapshotted), the demo completes, and a 100,000-member
//! import agrees with an independent recomputation on 1,000 random members.

use shikaku_core::{AnswerCode, CheckQuery, Date, EventBody, Freshness, Hlc, Replication};

use crate::reference::Reference;

pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = shikaku_cli::run(
        std::iter::once("shikaku").chain(args.iter().copied()),
        &mut out,
        &mut err,
    );
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

pub(crate) fn temp_dir(name: &str) -> crate::scratch::Scratch {
    crate::scratch::Scratch::new(name)
}

#[test]
fn gen_is_deterministic_and_seed_sensitive() {
    let (code, a, _) = run(&["gen", "--members", "300", "--seed", "5"]);
    assert_eq!(code, 0);
    let (_, b, _) = run(&["gen", "--members", "300", "--seed", "5"]);
    let (_, c, _) = run(&["gen", "--members", "300", "--seed", "6"]);
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, another stream");
    assert!(a.lines().count() > 900, "a realistic stream has several events per member");
}

#[test]
fn import_export_round_trip_is_byte_identical() {
    // Proves: export(import(gen)) == gen sorted by (hlc, id) — which gen already is — and a
    // second import of the same file adds nothing.
    let dir = temp_dir("roundtrip");
    let stream = dir.join("in.jsonl");
    let data = dir.join("data");
    let (code, _, _) =
        run(&["gen", "--members", "500", "--seed", "9", "--out", stream.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, out, err) =
        run(&["--data-dir", data.to_str().unwrap(), "ledger", "import", stream.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines = std::fs::read_to_string(&stream).unwrap();
    let count = lines.lines().count();
    assert_eq!(
        out.trim(),
        format!("imported {count} new events from {count} lines (0 already present, 0 rejected)")
    );
    let (_, again, _) =
        run(&["--data-dir", data.to_str().unwrap(), "ledger", "import", stream.to_str().unwrap()]);
    assert_eq!(
        again.trim(),
        format!("imported 0 new events from {count} lines ({count} already present, 0 rejected)")
    );
    let (code, exported, _) = run(&["--data-dir", data.to_str().unwrap(), "ledger", "export"]);
    assert_eq!(code, 0);
    assert_eq!(exported, lines);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn import_names_bad_lines_and_keeps_good_ones() {
    // Proves: with 5% malformed lines, every damaged line is rejected with its line number and
    // a reason, every intact line is stored, and the exit status says something was refused.
    let dir = temp_dir("malformed");
    let clean = dir.join("clean.jsonl");
    let dirty = dir.join("dirty.jsonl");
    let data = dir.join("data");
    run(&["gen", "--members", "400", "--seed", "3", "--out", clean.to_str().unwrap()]);
    run(&[
        "gen",
        "--members",
        "400",
        "--seed",
        "3",
        "--malformed",
        "0.05",
        "--out",
        dirty.to_str().unwrap(),
    ]);
    let clean_lines: Vec<String> =
        std::fs::read_to_string(&clean).unwrap().lines().map(String::from).collect();
    let dirty_text = std::fs::read_to_string(&dirty).unwrap();
    let damaged: Vec<usize> = dirty_text
        .lines()
        .enumerate()
        .filter(|(i, line)| *line != clean_lines[*i])
        .map(|(i, _)| i + 1)
        .collect();
    assert!(damaged.len() > 20, "the generator damaged {} lines", damaged.len());
    let (code, out, err) =
        run(&["--data-dir", data.to_str().unwrap(), "ledger", "import", dirty.to_str().unwrap()]);
    assert_eq!(code, 1);
    let reported: Vec<usize> = err
        .lines()
        .map(|l| l.strip_prefix("line ").unwrap().split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(reported, damaged, "exactly the damaged lines are reported, in order");
    for reason in [
        "not a valid event line",
        "unknown schema version 9",
        "does not verify",
        "does not match its content",
        "check digit",
    ] {
        assert!(err.contains(reason), "some line is rejected for {reason:?}:\n{err}");
    }
    let kept = clean_lines.len() - damaged.len();
    assert!(out.contains(&format!("imported {kept} new events")), "{out}");
    let (_, exported, _) = run(&["--data-dir", data.to_str().unwrap(), "ledger", "export"]);
    let expected: Vec<&str> = clean_lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !damaged.contains(&(i + 1)))
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(exported.lines().collect::<Vec<_>>(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_answers_by_card_and_key() {
    let dir = temp_dir("check");
    let stream = dir.join("in.jsonl");
    let data = dir.join("data");
    run(&["gen", "--members", "200", "--seed", "4", "--out", stream.to_str().unwrap()]);
    run(&["--data-dir", data.to_str().unwrap(), "ledger", "import", stream.to_str().unwrap()]);
    let text = std::fs::read_to_string(&stream).unwrap();
    let events: Vec<shikaku_core::SignedEvent> =
        text.lines().map(|l| shikaku_cli::jsonl::decode(l, None).unwrap()).collect();
    let member = events
        .iter()
        .find_map(|e| match &e.event().body {
            EventBody::CoverageStarted { member, .. } => Some(member),
            _ => None,
        })
        .unwrap();
    let member = member.to_string();
    let data = data.to_str().unwrap();
    let (code, human, err) =
        run(&["--data-dir", data, "check", "--member", &member, "--date", "2025-06-01"]);
    assert_eq!(code, 0, "{err}");
    let (_, json, _) =
        run(&["--data-dir", data, "check", "--member", &member, "--date", "2025-06-01", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    insta::assert_snapshot!("check_human", human);
    insta::assert_json_snapshot!("check_json", value);
    let (code, _, err) = run(&["--data-dir", data, "check", "--member", "06130018:1:2:00"]);
    assert_eq!(code, 2);
    assert!(err.contains("check digit 8, expected 7"), "{err}");
    let (code, _, err) = run(&["--data-dir", data, "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("--card") && err.contains("--member"), "{err}");
    drop(dir);
}

#[test]
fn help_is_useful() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in ["demo", "gen", "ledger", "check", "bench"] {
        assert!(help.contains(command), "{help}");
    }
    let (_, check_help, _) = run(&["check", "--help"]);
    assert!(check_help.contains("never a My Number"), "{check_help}");
}

#[test]
fn demo_runs_to_completion() {
    let dir = temp_dir("demo");
    let (code, out, err) = run(&["demo", "--members", "3000", "--workdir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{out}");
    for needle in [
        "in sync",
        "all three clinics had it",
        "Offline since",
        "PENDING SUCCESSOR",
        "INVALID — A NEWER COVERAGE EXISTS",
        "namespaces with the hub's fingerprint",
        "Checks the converged truth contradicts",
        "offline  card",
        "refund 1/10 of the fee to the patient",
        "withdraw the claim",
        "UNRESOLVED",
        "Conflicts waiting for a decision",
        "reception page of aoba-hospital",
        "member data sealed (event schema 2)",
        "light Argon2id parameters",
        "  patient     ",
        "names shown on today's screens: 0 found",
        "aiko logs in (POST /v1/login",
        "a mistyped password is refused: wrong name or password",
        "The member's access report: who checked the patient who changed jobs",
        "admin view (GET /v1/audit): ren made",
        "receipt computer uses the terminal's folder interface",
        "Demo finished",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
    // The records system's folder round trips: valid online, then valid and flagged offline.
    let online = out.split("drops a request file for the regular patient").nth(1).unwrap();
    let online = online.split("──").next().unwrap();
    assert!(online.contains("<QualificationValidity>1</QualificationValidity>"), "{online}");
    assert!(online.contains("<Offline>0</Offline>"), "{online}");
    let offline = out.split("asks again through the folder during the outage").nth(1).unwrap();
    let offline = offline.split("──").next().unwrap();
    assert!(offline.contains("<QualificationValidity>1</QualificationValidity>"), "{offline}");
    assert!(offline.contains("<ProcessingResultCode>SHK100</ProcessingResultCode>"), "{offline}");
    assert!(offline.contains("<Offline>1</Offline>"), "{offline}");
    // The job changer's access report after the outage day: their offline checks, one of them
    // contradicted, all at the pharmacy where they presented themselves — and no staff names.
    let report = out.split("The member's access report").nth(1).unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| l.contains(" JST ")).collect();
    assert!(rows.iter().filter(|r| r.contains("offline")).count() >= 2, "{report}");
    assert!(rows.iter().any(|r| r.contains("offline") && r.contains("contradicted")), "{report}");
    assert!(rows.iter().all(|r| r.contains("midori-pharmacy") && !r.contains("ren")), "{report}");
    let page = std::fs::read_to_string(dir.join("member-accesses.html")).unwrap();
    assert!(page.contains("Who checked your eligibility record"), "{page}");
    // The reports stay in the work directory given.
    let json = std::fs::read_to_string(dir.join("reconciliation.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Ten at the reception pages, two through the receipt computer's folder.
    assert_eq!(report["totals"]["checks"], 12, "every check of the day reached the report: {json}");
    // The job changer's card answered unknown offline is now listed too (covered by the new insurer).
    assert_eq!(report["totals"]["contradicted_offline"], 4, "{json}");
    assert_eq!(report["totals"]["unresolved_declarations"], 1, "{json}");
    assert_eq!(report["totals"]["rederived"], report["totals"]["checks"], "{json}");
    let html = std::fs::read_to_string(dir.join("reconciliation.html")).unwrap();
    assert!(html.contains("<h1>Reconciliation</h1>"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hundred_thousand_members_agree_with_an_independent_recomputation() {
    // Proves: `gen --members 100000` imports completely, and for 1,000 random members on random
    // service dates the projection's answer (covered or not, copay) equals the naive reference
    // model's, which re-reads the raw events for each question.
    let dir = temp_dir("100k");
    let stream = dir.join("in.jsonl");
    let data = dir.join("data");
    let (code, _, _) =
        run(&["gen", "--members", "100000", "--seed", "42", "--out", stream.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, out, err) =
        run(&["--data-dir", data.to_str().unwrap(), "ledger", "import", stream.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 rejected"), "{out}");
    let store = shikaku_cli::store::Store::open(&data).unwrap();
    let events = &store.events().unwrap();
    let projection = store.projection(Replication::All).unwrap();
    let members: Vec<&shikaku_core::MemberKey> = events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::MemberRegistered { member, .. } => Some(member),
            _ => None,
        })
        .collect();
    assert!(members.len() >= 100_000);
    // Index events by member for the reference (it stays naive per member).
    let mut by_member: std::collections::HashMap<
        &shikaku_core::MemberKey,
        Vec<shikaku_core::SignedEvent>,
    > = Default::default();
    let voids: Vec<shikaku_core::SignedEvent> = events
        .iter()
        .filter(|e| {
            matches!(
                e.event().body,
                EventBody::EventVoided { .. } | EventBody::EventSuperseded { .. }
            )
        })
        .cloned()
        .collect();
    for e in events {
        if let EventBody::MemberRegistered { member, .. }
        | EventBody::CoverageStarted { member, .. }
        | EventBody::CoverageEnded { member, .. }
        | EventBody::CopayRatioSet { member, .. } = &e.event().body
        {
            by_member.entry(member).or_default().push(e.clone());
        }
    }
    let mut rng = shikaku_gen::Rng::new(1234);
    let start = Date::from_ymd(2025, 1, 1).unwrap();
    let mut disagreements = Vec::new();
    let mut valid = 0;
    for _ in 0..1000 {
        let member = members[rng.below(members.len() as u64) as usize];
        let date = start.add_days(rng.below(700) as i32);
        let mut mine = by_member[member].clone();
        mine.extend(voids.iter().cloned());
        // Dependants need their insured person's events too.
        for e in by_member[member].clone() {
            if let EventBody::MemberRegistered {
                relationship: shikaku_core::Relationship::Dependant { insured },
                ..
            } = &e.event().body
            {
                mine.extend(by_member.get(insured).into_iter().flatten().cloned());
            }
        }
        let expected = Reference::new(&mine).expected(member, date);
        let answer = projection.check(
            &CheckQuery::Member(member.clone()),
            date,
            Hlc(u64::MAX),
            Freshness::default(),
        );
        let covered = answer.code == AnswerCode::Valid;
        valid += usize::from(covered);
        if covered != expected.covered || (covered && answer.copay_tenths != expected.copay) {
            disagreements.push(format!(
                "{member} on {date}: projection {:?}/{:?}, reference {expected:?}",
                answer.code, answer.copay_tenths
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(valid > 500 && valid < 1000, "a realistic mix of answers: {valid} valid of 1000");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_names_real_file_damage_and_repair_rebuilds() {
    // Proves, on real files: a flipped bit in a segment is found by `ledger verify` (exit 1,
    // segment and offset named) and never served; `--repair` rebuilds a ledger that verifies
    // and keeps the damaged one aside; a torn tail (garbage after the last record) is cut on
    // open and reported; `stats --json` reports the state.
    let dir = temp_dir("verify");
    let stream = dir.join("in.jsonl");
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    run(&["gen", "--members", "300", "--seed", "8", "--out", stream.to_str().unwrap()]);
    run(&["--data-dir", data_s, "ledger", "import", stream.to_str().unwrap()]);
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ledger intact"), "{out}");
    let (_, stats, _) = run(&["--data-dir", data_s, "ledger", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let total = stats["events"].as_u64().unwrap();
    assert_eq!(stats["damaged"].as_array().unwrap().len(), 0);
    // A torn tail: garbage written after the last record, as a crash mid-write leaves it.
    let segment = data.join("log").join("segment-0000000000.shk");
    let mut image = std::fs::read(&segment).unwrap();
    let end = image.iter().rposition(|&b| b != 0).unwrap() + 1;
    image[end + 16..end + 16 + 300].fill(0xAB);
    image[end..end + 4].copy_from_slice(&400u32.to_le_bytes());
    std::fs::write(&segment, &image).unwrap();
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cut a torn tail"), "{out}");
    // A flipped bit in the middle.
    let mut image = std::fs::read(&segment).unwrap();
    image[4000] ^= 0x10;
    std::fs::write(&segment, &image).unwrap();
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED: first problem: segment-0000000000.shk offset"), "{out}");
    let (_, exported, _) = run(&["--data-dir", data_s, "ledger", "export"]);
    assert!((exported.lines().count() as u64) < total, "the damaged event is not served");
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify", "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("must be re-fetched from the hub"), "{out}");
    assert!(data.join("log.damaged-1").is_dir());
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify"]);
    assert_eq!(code, 0, "{out}");
    // Importing the stream again restores what the damage took.
    run(&["--data-dir", data_s, "ledger", "import", stream.to_str().unwrap()]);
    let (_, stats, _) = run(&["--data-dir", data_s, "ledger", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["events"].as_u64().unwrap(), total);
    // A misdirected write: record 5's bytes land where record 12 was.
    let segment = data.join("log").join("segment-0000000000.shk");
    let mut image = std::fs::read(&segment).unwrap();
    let mut offsets = Vec::new();
    let mut at = 128;
    while offsets.len() < 14 {
        offsets.push(at);
        at += u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
    }
    let donor = image[offsets[5]..offsets[6]].to_vec();
    image[offsets[12]..offsets[12] + donor.len()].copy_from_slice(&donor);
    std::fs::write(&segment, &image).unwrap();
    let (code, out, _) = run(&["--data-dir", data_s, "ledger", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("segment-0000000000.shk offset {}", offsets[12])), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gen_writes_insurer_keys_that_serve_commands_read() {
    let dir = temp_dir("keys");
    let keys = dir.join("keys.txt");
    let (code, _, err) = run(&[
        "gen",
        "--members",
        "200",
        "--seed",
        "4",
        "--out",
        dir.join("w.jsonl").to_str().unwrap(),
        "--keys-out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let parsed = shikaku_cli::read_insurer_keys(&keys).unwrap();
    assert!(parsed.len() >= 2, "every generated insurer has a key");
    std::fs::write(&keys, "06130017=nothex\n").unwrap();
    let err = shikaku_cli::read_insurer_keys(&keys).unwrap_err();
    assert!(
        format!("{err:#}").contains("line 1: the key must be 64 hexadecimal digits"),
        "{err:#}"
    );
}

#[test]
fn a_hub_import_leaves_the_node_snapshot_serving_starts_from() {
    let dir = temp_dir("import-snapshot");
    let events = dir.join("events.jsonl");
    let keys = dir.join("keys.txt");
    let hub = dir.join("hub");
    let (code, _, err) = run(&[
        "gen",
        "--members",
        "2000",
        "-o",
        events.to_str().unwrap(),
        "--keys-out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "--data-dir",
        hub.to_str().unwrap(),
        "hub",
        "import",
        events.to_str().unwrap(),
        "--insurer-keys",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(hub.join("log").join(shikaku_node::snapshot::NODE_SNAPSHOT_FILE).exists());
    let config = shikaku_node::NodeConfig::new(shikaku_node::Role::Hub, "hub");
    let (node, _lock) = shikaku_node::data_dir::open_node(&hub, config).unwrap();
    assert!(node.open_note().starts_with("node snapshot at position"), "{}", node.open_note());
    assert!(node.open_note().ends_with(", 0 events folded"), "{}", node.open_note());
    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();
}
