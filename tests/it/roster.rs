//! `shikaku insurer diff` (issue 18, item 3): two snapshots of the example roster CSV turned
//! into signed events — the dry-run table as a snapshot, a second run publishing nothing new,
//! refusals by file and line — and the round trip from the diff through `hub import` into a
//! real hub, synced by a real clinic, answered through its folder interface.

use std::path::Path;
use std::time::Duration;

use crate::cli::{run, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn insurer_diff_publishes_each_change_once_and_refuses_lines_by_number() {
    let dir = temp_dir("roster-diff");
    let key = dir.join("ins.key");
    assert_eq!(run(&["insurer", "key", "init", "--insurer", "06130017", "--key", s(&key)]).0, 0);
    let (old, new) = (example("roster-2026-11-30.csv"), example("roster-2026-12-01.csv"));
    let diff = |extra: &[&str]| {
        let mut args = vec!["insurer", "diff", "--key", s(&key), "--as-of", "2026-12-01"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (code, table, _) = diff(&["--current", &old, "--dry-run"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("roster_first_export_dry_run", table);
    assert!(!dir.join("ins.key.state").exists(), "a dry run signs nothing");
    let first = dir.join("first.jsonl");
    let (code, _, err) = diff(&["--current", &old, "-o", s(&first)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("4 members changed: signed 10 events (origin_seq 1–10)"), "{err}");
    let (code, table, _) = diff(&["--previous", &old, "--current", &new, "--dry-run"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("roster_difference_dry_run", table);
    let second = dir.join("second.jsonl");
    let (code, _, err) = diff(&["--previous", &old, "--current", &new, "-o", s(&second)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("signed 8 events (origin_seq 11–18)"), "{err}");
    let text = std::fs::read_to_string(&second).unwrap();
    for kind in [
        "demographics_changed",
        "coverage_ended",
        "copay_ratio_set",
        "limit_category_set",
        "member_registered",
        "card_linked",
    ] {
        assert!(text.contains(&format!("\"type\":\"{kind}\"")), "{kind} in {text}");
    }
    assert!(
        text.contains("\"reason\":\"job_change\"") && text.contains("\"loss_date\":\"2026-12-01\"")
    );
    // Running it again publishes nothing new.
    let third = dir.join("third.jsonl");
    let (code, _, err) = diff(&["--previous", &old, "--current", &new, "-o", s(&third)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing new to publish (5 changes already published)"), "{err}");
    assert_eq!(std::fs::read_to_string(&third).unwrap(), "");
    let (_, table, _) = diff(&["--previous", &old, "--current", &new, "--dry-run"]);
    assert!(table.contains("0 members changed: 0 events would be published"), "{table}");

    // Refusals, each by file and line; the good lines are published; exit status 1.
    let header = std::fs::read_to_string(&new).unwrap().lines().next().unwrap().to_owned();
    let rows = std::fs::read_to_string(&new)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let bad = [
        header.clone(),
        rows[0].clone(),                                             // 2: fine (unchanged)
        rows[1].replace("dependant,06130017", "insured,06130017"),   // 3: insured with insured_key
        rows[2].replace("2026-12-01,job_change", "2026-12-01,"),     // 4: end without reason
        rows[3].replace(",2,A04,", ",4,A04,"),                       // 5: copay 4
        rows[4].replace("22bb2e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7", "123456789018"), // 6: My Number
        "06130017:記A1:1005:00,伊藤 五郎,イトウ ゴロウ,male,1999-02-30,東京都,131016,insured,,,,,,,".into(), // 7: no such day
        "06130018:記A1:1006:00,x,x,male,1999-01-01,x,131016,insured,,,,,,,".into(), // 8: check digit
        "06130017:記A1:1007:00,x,x,male,1999-01-01,x,131016,insured,,2026-01-01,,,3,,".into(), // 9: fine, new
        "06130017:記A1:1007:00,x,x,male,1999-01-01,x,131016,insured,,2026-01-01,,,3,,".into(), // 10: twice
        "too,few,fields".into(),                                      // 11
    ];
    let bad_path = dir.join("bad.csv");
    std::fs::write(&bad_path, bad.join("\n") + "\n").unwrap();
    let fourth = dir.join("fourth.jsonl");
    let (code, _, err) = diff(&["--previous", &new, "--current", s(&bad_path), "-o", s(&fourth)]);
    assert_eq!(code, 1, "{err}");
    for (line, words) in [
        (3, "insured_key is only for a dependant"),
        (4, "end_reason"),
        (5, "copay_tenths must be 1, 2 or 3"),
        (6, "Individual Number"),
        (7, "birth_date must be a date"),
        (8, "member_key must be"),
        (9, "the same member_key as line 10"),
        (10, "the same member_key as line 9"),
        (11, "3 fields where the header has 15"),
    ] {
        let needle = format!("refused: current line {line}: ");
        let found = err
            .lines()
            .find(|l| l.starts_with(&needle))
            .unwrap_or_else(|| panic!("line {line} refused: {err}"));
        assert!(found.contains(words), "{found}");
    }
    assert!(
        err.contains("refused: previous line"),
        "the members refused now are not judged missing silently: {err}"
    );
    for name in ["山田", "佐藤", "高橋", "伊藤", "1999-02-30"] {
        assert!(!err.contains(name), "no member data in refusals: {err}");
    }
    // Nothing changed on line 2 and every other line was refused: nothing to publish.
    assert_eq!(std::fs::read_to_string(&fourth).unwrap(), "");
    let absent = dir.join("absent.csv");
    let (code, _, err) = run(&["insurer", "diff", "--key", s(&key), "--current", s(&absent)]);
    assert_eq!(code, 2, "an error, not a refusal: {err}");
    assert!(err.contains("absent.csv"), "{err}");
}

#[test]
fn a_roster_difference_reaches_a_receipt_computer_through_hub_import_and_the_folder() {
    use crate::field_trial::{finish, serve, sigterm};
    let dir = temp_dir("roster-trip");
    let (hub, clinic, ovs) = (dir.join("hub"), dir.join("clinic"), dir.join("ovs"));
    let key = dir.join("ins.key");
    assert_eq!(run(&["insurer", "key", "init", "--insurer", "06130017", "--key", s(&key)]).0, 0);
    let (old, new) = (example("roster-2026-11-30.csv"), example("roster-2026-12-01.csv"));
    let (first, second) = (dir.join("first.jsonl"), dir.join("second.jsonl"));
    let base = ["insurer", "diff", "--key", s(&key), "--as-of", "2026-12-01"];
    let mut args = base.to_vec();
    args.extend(["--current", &old, "-o", s(&first)]);
    assert_eq!(run(&args).0, 0);
    let mut args = base.to_vec();
    args.extend(["--previous", &old, "--current", &new, "-o", s(&second)]);
    assert_eq!(run(&args).0, 0);
    crate::field_trial::certify_hub_and_clinic(&dir);
    let public = dir.join("ins.key.pub");
    for file in [&first, &second] {
        let (code, out, err) =
            run(&["--data-dir", s(&hub), "hub", "import", s(file), "--insurer-keys", s(&public)]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("0 rejected"), "{out}");
    }
    let (hub_child, addr, _) = crate::field_trial::serve_hub(&hub);
    let (clinic_child, _, lines) = serve(&[
        "--data-dir",
        s(&clinic),
        "clinic",
        "serve",
        "--hub",
        &addr,
        "--insurer",
        "06130017",
        "--insurer-keys",
        s(&public),
        "--api",
        "127.0.0.1:0",
        "--ovs-dir",
        s(&ovs),
        "--ovs-lang",
        "en",
    ]);
    assert!(lines.recv_timeout(Duration::from_secs(30)).unwrap().starts_with("folder interface"));
    let request = |name: &str, search: &str, consent: &str| {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><XmlMsg><MessageHeader><QualificationConfirmationDate>20261201</QualificationConfirmationDate><ArbitraryFileIdentifier>{name}</ArbitraryFileIdentifier></MessageHeader><MessageBody><QualificationConfirmSearchInfo>{search}<LimitApplicationCertificateRelatedConsFlg>{consent}</LimitApplicationCertificateRelatedConsFlg></QualificationConfirmSearchInfo></MessageBody></XmlMsg>"
        );
        let staging = ovs.join(format!(".{name}"));
        std::fs::write(&staging, xml).unwrap();
        std::fs::rename(&staging, ovs.join("req").join(format!("{name}req.xml"))).unwrap();
    };
    let card_data = |number: &str, birth: &str| {
        format!("<InsurerNumber>06130017</InsurerNumber><InsuredCardSymbol>記A1</InsuredCardSymbol><InsuredIdentificationNumber>{number}</InsuredIdentificationNumber><InsuredBranchNumber>00</InsuredBranchNumber><Birthdate>{birth}</Birthdate>")
    };
    // Wait until the clinic holds the roster (the last event signed).
    let start = shikaku_net::clock::Stopwatch::start();
    let answer = |name: &str| -> String {
        let path = ovs.join("res").join(format!("{name}res.xml"));
        while !path.exists() {
            assert!(start.seconds() < 60.0, "no answer {name}");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&path).unwrap()
    };
    let value = |xml: &str, element: &str| -> String {
        xml.split(&format!("<{element}>"))
            .nth(1)
            .and_then(|r| r.split(&format!("</{element}>")).next())
            .unwrap_or("")
            .to_owned()
    };
    loop {
        request("probe", &card_data("1004", "19980707"), "0");
        let probe = answer("probe");
        std::fs::remove_file(ovs.join("res/proberes.xml")).unwrap();
        if value(&probe, "QualificationValidity") == "1" {
            break;
        }
        assert!(start.seconds() < 60.0, "the clinic syncs the roster: {probe}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Enrolled in the second export, found by card data and by its card.
    request("new", &card_data("1004", "19980707"), "0");
    let enrolled = answer("new");
    assert_eq!(value(&enrolled, "Name"), "高橋 四郎");
    assert_eq!(value(&enrolled, "InsuredCardValidDate"), "20261201");
    request("card", "<ShikakuCardToken>22bb2e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7</ShikakuCardToken>", "0");
    assert_eq!(value(&answer("card"), "InsuredIdentificationNumber"), "1004");
    // Lost coverage on 2026-12-01 (job change): invalid, reason 03, last day 2026-11-30.
    request("lost", &card_data("1002", "19750930"), "0");
    let lost = answer("lost");
    assert_eq!(value(&lost, "QualificationValidity"), "2");
    assert_eq!(value(&lost, "ReasonOfLoss"), "03");
    assert_eq!(value(&lost, "InsuredCardExpirationDate"), "20261130");
    // The copay and limit category changed from 2026-12-01; the category shown with consent.
    request("copay", &card_data("1003", "19900120"), "1");
    let copay = answer("copay");
    assert_eq!(value(&copay, "InsuredPartialContributionRatio"), "020");
    assert_eq!(value(&copay, "LimitApplicationCertificateClassificationFlag"), "A04");
    // The move: the new address.
    request("moved", &card_data("1001", "19800401"), "0");
    assert_eq!(value(&answer("moved"), "Address"), "東京都千代田区神田1-2");
    for child in [clinic_child, hub_child] {
        sigterm(&child);
        let (code, _, err) = finish(child, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{err}");
    }
}
