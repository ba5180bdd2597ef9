//! What the field trial of issue 11 found, one test per defect: each reproduces what a user hit
//! (real processes and real signals where the defect was about them) and fails without its fix.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shikaku_cli::clock::Stopwatch;

use shikaku_core::{
    AnswerCode, AnswerHash, CheckMode, CheckQuery, Date, EventBody, Hlc, MemberKey, Namespace,
    Replication,
};

use crate::story::{card, d, employer_a, employer_b, member, person, Story};

const CHILD_ENV: &str = "SHIKAKU_FIELD_TRIAL_CHILD_ARGS";

/// Entry point of the child processes: the real command line with the parent's arguments.
#[test]
#[ignore = "run only as a child process of the field trial's tests"]
fn child_cli() {
    let Ok(args) = std::env::var(CHILD_ENV) else { return };
    let args: Vec<&str> = args.split('\u{1f}').collect();
    shikaku_cli::init_logging();
    let code = shikaku_cli::run(
        std::iter::once("shikaku").chain(args.iter().copied()),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}

/// The command line as a real process (this test binary re-executed as `child_cli`).
pub(crate) fn spawn(args: &[&str], stdin: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "field_trial::child_cli", "--ignored", "--nocapture", "--quiet"])
        .env(CHILD_ENV, args.join("\u{1f}"))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits at most `limit` for the child; kills it (by its PID) if it is still running.
pub(crate) fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let start = Stopwatch::start();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.seconds() > limit.as_secs_f64() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read as _;
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status.and_then(|s| s.code()), out, err)
}

use crate::cli::{run, temp_dir};

/// A generated world of `members` imported into a fresh ledger: (directory, stream, data dir).
pub(crate) fn imported_ledger(
    name: &str,
    members: usize,
) -> (crate::scratch::Scratch, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let stream = dir.join("w.jsonl");
    let members = members.to_string();
    run(&["gen", "--members", &members, "--seed", "2", "--out", s(&stream)]);
    let data = dir.join("data");
    let (code, _, err) = run(&["--data-dir", s(&data), "ledger", "import", s(&stream)]);
    assert_eq!(code, 0, "{err}");
    (dir, stream, data)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn importing_a_directory_fails_at_once_naming_it_and_leaves_no_data_dir() {
    // Proves item 1: `ledger import DIR`, `hub import DIR` and `ledger import - < DIR` used to
    // spin forever (EISDIR in a loop) holding the lock; now each exits within seconds, with
    // status 2 and a message naming the path and the reason, and creates no data directory.
    let dir = temp_dir("import-dir");
    let input = dir.join("not-a-file");
    std::fs::create_dir_all(&input).unwrap();
    for (label, args, stdin) in [
        ("ledger import DIR", vec!["ledger", "import", s(&input)], None),
        ("hub import DIR", vec!["hub", "import", s(&input)], None),
        ("ledger import - < DIR", vec!["ledger", "import", "-"], Some(&input)),
    ] {
        let data = dir.join(label.replace(' ', "_"));
        let mut full = vec!["--data-dir", s(&data)];
        full.extend(args);
        let stdin = match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).unwrap()),
            None => Stdio::null(),
        };
        let (code, _, err) = finish(spawn(&full, stdin), Duration::from_secs(30));
        assert_eq!(code, Some(2), "{label}: exits with status 2 (it used to spin): {err}");
        assert!(err.contains("directory"), "{label}: the reason is named: {err}");
        if stdin_is_named(label) {
            assert!(err.contains("standard input"), "{label}: {err}");
        } else {
            assert!(err.contains(s(&input)), "{label}: the path is named: {err}");
        }
        assert!(!data.exists(), "{label}: no empty data directory is left behind");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn stdin_is_named(label: &str) -> bool {
    label.contains(" - ")
}

#[test]
fn import_accepts_a_byte_order_mark_and_names_columns_not_parser_lines() {
    // Proves item 11: a UTF-8 BOM before the first record is skipped (it was "not a JSON
    // object"), a JSON error names its column without the parser's own "line 1", and a bare
    // number for --as-of is refused instead of answering as of 1970.
    let dir = temp_dir("bom");
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(20, 4)).unwrap();
    let lines: Vec<String> = g.events.iter().map(shikaku_cli::jsonl::encode).collect();
    let mut text = format!("\u{feff}{}\n", lines[0]);
    let broken = &lines[1][..lines[1].len() - 5];
    text.push_str(broken);
    text.push('\n');
    let file = dir.join("bom.jsonl");
    std::fs::write(&file, text).unwrap();
    let data = dir.join("data");
    let (code, out, err) = run(&["--data-dir", s(&data), "ledger", "import", s(&file)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("imported 1 new events from 2 lines"), "the BOM line is read: {out}");
    assert!(err.starts_with("line 2: "), "{err}");
    assert!(!err.contains("at line 1"), "the parser's own line number is gone: {err}");
    assert!(err.contains("(column "), "the column is kept: {err}");

    let as_of = |when: &str| {
        run(&["--data-dir", s(&data), "check", "--member", "06130017:1:1:00", "--as-of", when])
    };
    let (code, out, err) = as_of("1780000000");
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("bare number") && err.contains("RFC 3339"), "{err}");
    let (code, _, err) = as_of("2026-01-05T10:30:00+09:00");
    assert_eq!(code, 0, "an RFC 3339 time is accepted: {err}");
    assert_eq!(
        shikaku_cli::parse_rfc3339_ms("2026-01-05T01:30:00.250Z").unwrap(),
        shikaku_cli::parse_rfc3339_ms("2026-01-05T10:30:00.25+09:00").unwrap()
    );
    assert_eq!(shikaku_cli::parse_rfc3339_ms("1970-01-01T00:00:01Z").unwrap(), 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_local_ledger_answers_unknown_for_an_insurer_it_never_held() {
    // Proves item 6: a member key of an insurer absent from the ledger was answered `no_match`
    // (a claim the ledger cannot make); it is `unknown`, as the clinic service answers.
    let (dir, stream, data) = imported_ledger("unknown-insurer", 100);
    // 33120015 (the check-digit example of the rules) is no insurer of the generated world.
    let (code, out, _) =
        run(&["--data-dir", s(&data), "check", "--member", "33120015:1:2:00", "--json"]);
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["code"], "unknown", "{out}");
    // A member key of an insurer it does hold, that does not exist, is still no match.
    let held = std::fs::read_to_string(&stream).unwrap();
    let insurer = held.split("\"member\":\"").nth(1).unwrap().split(':').next().unwrap().to_owned();
    let (_, out, _) = run(&[
        "--data-dir",
        s(&data),
        "check",
        "--member",
        &format!("{insurer}:x:999999999:00"),
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["code"], "no_match", "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn typed_keys_are_normalised_and_invisible_characters_refused() {
    // Proves item 7's key rules: full-width digits and surrounding spaces are normalised and
    // said so; bidi overrides and zero-width characters are refused in keys and in names.
    let (query, notes) =
        shikaku_cli::parse_typed_query(None, Some(" ０６１３００１７ : 国971 : １２３ : ００ "))
            .unwrap();
    assert_eq!(query, CheckQuery::Member("06130017:国971:123:00".parse::<MemberKey>().unwrap()));
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("full-width") && notes[1].contains("spaces"), "{notes:?}");
    for bad in ["06130017:1\u{202e}2:3:00", "06130017:12:3\u{200b}:00", "06130017:\u{feff}1:3:00"] {
        let e = bad.parse::<MemberKey>().unwrap_err().to_string();
        assert!(e.contains("invisible format"), "{bad:?}: {e}");
    }
    // A name with a right-to-left override is no valid event: it cannot be signed, so it
    // never gets into a ledger (and a received one fails the same validation).
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(1, 1)).unwrap();
    let mut event = g.events[0].event().clone();
    let EventBody::MemberRegistered { person, .. } = &mut event.body else {
        panic!("the first generated event registers a member");
    };
    person.name = "山田\u{202e}太郎".into();
    let insurer = match event.namespace {
        Namespace::Insurer(i) => i,
        Namespace::Clinic(_) => unreachable!(),
    };
    let signer = shikaku_gen::insurer_signer(1, insurer);
    event.author = signer.public();
    let e = signer.sign(event).unwrap_err().to_string();
    assert!(e.contains("invisible format"), "{e}");
}

#[test]
fn check_paths_url_encode_every_character_a_key_may_hold() {
    // Proves item 7: symbols with &, +, %, #, = or kanji went into query strings unencoded;
    // the path now decodes back to exactly the key, for every character class keys allow.
    for symbol in ["a&b", "1+2", "50%", "#9", "x=y", "国971", "ｶﾅ", "記号/?", "é"] {
        let key = MemberKey::new("06130017".parse().unwrap(), symbol, "12+3", 1).unwrap();
        let path = shikaku_api::client::check_path_for(
            &CheckQuery::Member(key.clone()),
            Some(d("2026-01-05")),
            None,
        );
        let query = path.strip_prefix("/v1/check?").unwrap();
        assert!(!query.contains(['#', ' ']) && query.is_ascii(), "{path}");
        let decoded: Vec<(String, String)> = form_urlencoded_pairs(query);
        assert_eq!(decoded[0], ("member".to_owned(), key.to_string()), "{path}");
        assert_eq!(decoded[1], ("date".to_owned(), "2026-01-05".to_owned()));
    }
}

/// Decodes `application/x-www-form-urlencoded` independently of the encoder under test.
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (decode(k), decode(v))
        })
        .collect()
}

#[test]
fn help_texts_are_true() {
    // Proves item 12: `check --help`'s example key passes its own check digit, `bench
    // reconcile` and `bench log` have their own texts, and `demo --help` describes this demo.
    let (_, help, _) = run(&["check", "--help"]);
    let example = help.split("e.g. ").nth(1).unwrap().split_whitespace().next().unwrap();
    let example = example.trim_end_matches('.');
    example.parse::<MemberKey>().unwrap_or_else(|e| panic!("{example}: {e}"));
    let (_, reconcile, _) = run(&["bench", "reconcile", "--help"]);
    assert!(reconcile.contains("Set reconciliation"), "{reconcile}");
    assert!(!reconcile.contains("Durable append"), "{reconcile}");
    let (_, log, _) = run(&["bench", "log", "--help"]);
    assert!(log.contains("Durable append throughput"), "{log}");
    let (_, demo, _) = run(&["demo", "--help"]);
    assert!(demo.contains("three clinics") && demo.contains("reconciliation"), "{demo}");
    assert!(!demo.contains("publish a retroactive change and show"), "{demo}");
    let (_, serve, _) = run(&["hub", "serve", "--help"]);
    assert!(serve.contains("SIGTERM"), "{serve}");
    // The demo's counts read as English ("1 offline checks" did not).
    assert_eq!(shikaku_core::text::count(1, "offline check", "offline checks"), "1 offline check");
    assert_eq!(shikaku_core::text::count(3, "offline check", "offline checks"), "3 offline checks");
}

#[test]
fn broken_pipes_end_quietly_and_json_errors_are_json() {
    // Proves item 12's EPIPE (`shikaku … | head` printed "error: Broken pipe") and item 9's
    // JSON errors with --json.
    let (dir, _, data) = imported_ledger("epipe", 3000);
    let mut child = spawn(&["--data-dir", s(&data), "ledger", "export"], Stdio::null());
    // The reader reads one line and goes away, as `head -1` does.
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    while !first.starts_with('{') {
        first.clear();
        assert!(reader.read_line(&mut first).unwrap() > 0, "the export printed nothing");
    }
    drop(reader);
    let (code, _, err) = finish(child, Duration::from_secs(60));
    assert!(first.starts_with('{'), "{first}");
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");

    let (code, out, err) =
        run(&["--data-dir", s(&data), "check", "--member", "nonsense", "--json"]);
    assert_eq!(code, 2);
    assert!(err.is_empty(), "{err}");
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(value["error"].as_str().unwrap().contains("INSURER:SYMBOL:NUMBER:BRANCH"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generated_kana_read_the_names_they_stand_beside() {
    // Proves item 13: a dependant took the head's kanji surname but kept a kana surname of its
    // own (山口 隆 / ワタナベ タカシ). Every generated person's kana now reads their name.
    use shikaku_gen::names::{GIVEN_FEMALE, GIVEN_MALE, SURNAMES};
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(3_000, 13)).unwrap();
    let mut people = 0;
    for e in &g.events {
        let person = match &e.event().body {
            EventBody::MemberRegistered { person, .. } => person,
            EventBody::DemographicsChanged { person, .. } => person,
            _ => continue,
        };
        let (surname, given) = person.name.split_once(' ').unwrap();
        let (surname_kana, given_kana) = person.kana.split_once(' ').unwrap();
        assert!(
            SURNAMES.iter().any(|(k, kana)| *k == surname && *kana == surname_kana),
            "{} / {}",
            person.name,
            person.kana
        );
        assert!(
            GIVEN_MALE
                .iter()
                .chain(GIVEN_FEMALE)
                .any(|(k, kana)| *k == given && *kana == given_kana),
            "{} / {}",
            person.name,
            person.kana
        );
        people += 1;
    }
    assert!(people > 2_000, "{people}");
}

#[test]
fn checks_stay_online_while_a_live_push_and_the_clinics_own_records_are_in_flight() {
    // Proves item 3: a check recorded while the previous check's record was still on its way
    // to the hub made the next receipt disagree, so the clinic dropped out of sync and recorded
    // the following checks as offline with staleness 0. Frames are moved one at a time between
    // checks and an insurer event is pushed live in the middle: every check is online.
    let mut w = crate::node::World::new(200, 1);
    w.connect(0);
    w.run();
    assert!(w.clinics[0].in_sync());
    let insurer = w.insurers[0];
    let signer = shikaku_gen::insurer_signer(11, insurer);
    let subject = w
        .events
        .iter()
        .find_map(|e| e.event().body.membership_subject().filter(|m| m.insurer == insurer).cloned())
        .unwrap();
    let hub_id = w.hub.node_id();
    for round in 0..12u64 {
        // A busy counter: a check, its record goes up, the next check is answered before
        // the hub's receipt for the first record comes down.
        w.now_ms += 1_000;
        w.check(0, (2026, 1, 5)).unwrap();
        w.step(true);
        w.check(0, (2026, 1, 5)).unwrap();
        if round == 4 {
            let event = signer
                .sign(shikaku_core::Event {
                    namespace: Namespace::Insurer(insurer),
                    origin: hub_id,
                    origin_seq: 1 << 40,
                    hlc: Hlc::end_of_ms(w.now_ms),
                    author: signer.public(),
                    body: EventBody::CopayRatioSet {
                        member: subject.clone(),
                        effective: Date::from_ymd(2026, 2, 1).unwrap(),
                        copay_tenths: 2,
                    },
                })
                .unwrap();
            w.hub.import(w.now_ms, &[event]).unwrap();
        }
        w.step(false);
        w.step(false);
    }
    w.run();
    w.assert_converged(0);
    let counters = w.clinics[0].counters();
    let offline: u64 =
        counters.checks_by.iter().filter(|((_, online), _)| !online).map(|(_, n)| n).sum();
    assert_eq!(offline, 0, "checks by (code, online): {:?}", counters.checks_by);
    assert!(w.clinics[0].in_sync());
}

/// A history for the report: insurer A and B, a clinic replicating only A.
struct ReportStory {
    story: Story,
}

impl ReportStory {
    /// The hub's ledger: every event with its position (record order).
    fn ledger(&self) -> Vec<(u64, shikaku_core::SignedEvent)> {
        self.story.events.iter().cloned().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect()
    }

    /// The clinic checks `query` on `service` replicating `held`, and records the check as a
    /// clinic node does (same cut-off, the answer's hash, hub position = events held).
    fn check(
        &mut self,
        query: CheckQuery,
        service: &str,
        held: &[shikaku_core::InsurerNumber],
    ) -> AnswerCode {
        let mut p =
            shikaku_core::Projection::new(Replication::Insurers(held.iter().copied().collect()));
        let mut position = 0;
        for (i, e) in self.story.events.iter().enumerate() {
            let keep = match e.event().namespace {
                Namespace::Insurer(n) => held.contains(&n),
                Namespace::Clinic(_) => true,
            };
            if keep {
                p.apply(e);
            }
            position = i as u64 + 1;
        }
        let day_ms = self.story.events.last().unwrap().event().hlc.physical_ms() + 60_000;
        let as_of = Hlc::end_of_ms(day_ms);
        let answer = p.check(&query, d(service), as_of, shikaku_core::Freshness::default());
        self.story.clinic(EventBody::CheckPerformed {
            query,
            service_date: d(service),
            mode: CheckMode::Offline,
            knowledge: as_of,
            hub_position: position,
            code: answer.code,
            answer_hash: AnswerHash(answer.hash().0),
            decided_by: answer.decided_by.clone(),
        });
        answer.code
    }
}

#[test]
fn the_report_lists_unknowns_now_covered_revoked_links_used_and_card_conflicts() {
    // Proves item 5: (a) a card answered `unknown` at a clinic replicating only insurer A,
    // which the truth answers as covered by insurer B, is listed as a billing question;
    // (b) a check through a card link later revoked as a wrong-person linkage is listed in its
    // own section; (c) a card linked to members of two insurers, met by a check, is in the
    // conflict queue.
    let (a, b) = (employer_a(), employer_b());
    let mut r = ReportStory { story: Story::new() };
    r.story.on("2026-01-05");
    let alice = member(a, "1", 0);
    let bob = member(b, "2", 0);
    let carol = member(a, "3", 0);
    let dave = member(b, "4", 0);
    r.story.enroll(&alice, person("佐藤 花子", "1980-01-01"), None, "2020-04-01", 3);
    r.story.enroll(&bob, person("鈴木 一郎", "1975-01-01"), None, "2021-04-01", 3);
    r.story.enroll(&carol, person("高橋 誠", "1990-01-01"), None, "2019-04-01", 3);
    r.story.enroll(&dave, person("田中 蓮", "1992-01-01"), None, "2019-04-01", 3);
    // (a) Bob's card, known only at insurer B.
    r.story.link(card("bob"), &bob);
    // (b) A card wrongly linked to Alice.
    r.story.link(card("wrong"), &alice);
    // (c) One card linked to Carol (A) and Dave (B).
    r.story.link(card("shared"), &carol);
    r.story.link(card("shared"), &dave);
    r.story.on("2026-01-06");
    assert_eq!(r.check(CheckQuery::Card(card("bob")), "2026-01-06", &[a]), AnswerCode::Unknown);
    assert_eq!(r.check(CheckQuery::Card(card("wrong")), "2026-01-06", &[a]), AnswerCode::Valid);
    assert_eq!(
        r.check(CheckQuery::Card(card("shared")), "2026-01-06", &[a, b]),
        AnswerCode::MultipleMatches
    );
    r.story.on("2026-01-20");
    r.story.insurer(
        a,
        EventBody::WrongPersonLinkageRevoked {
            card: card("wrong"),
            member: alice.clone(),
            reason: "registered to the wrong person".into(),
        },
    );
    let report = shikaku_reconcile::compute_at_last_event(&r.ledger(), &Default::default());
    let unknown = report
        .contradicted
        .iter()
        .find(|c| c.check.answered == AnswerCode::Unknown)
        .expect("the unknown now covered is listed");
    assert_eq!(unknown.truth, AnswerCode::Valid);
    assert!(unknown.action.contains(&format!("claim 7/10 from insurer {b}")), "{}", unknown.action);
    assert_eq!(report.revoked_link_uses.len(), 1, "{:?}", report.revoked_link_uses);
    assert_eq!(report.revoked_link_uses[0].linked_member, alice);
    assert!(
        report.conflicts.iter().any(|c| matches!(c,
            shikaku_core::Conflict::MultipleMembers { card: t, members } if *t == card("shared") && members.len() == 2)),
        "{:?}",
        report.conflicts
    );
    let text = shikaku_reconcile::render_text(&report);
    assert!(text.contains("Checks that used a card link later revoked"), "{text}");
    assert!(text.contains(&alice.to_string()), "{text}");

    // Issue 17: Alice's access report lists the check through the wrongly linked card,
    // flagged; Bob's lists the unknown now covered as contradicted; an insurer-A account's
    // report has nothing of Bob's.
    use shikaku_reconcile::access::member_accesses;
    let alices = member_accesses(&report, "alice", std::slice::from_ref(&alice), None, None);
    assert_eq!(alices.accesses.len(), 1, "{alices:?}");
    assert!(alices.accesses[0].wrong_person_link && alices.accesses[0].by == "card");
    let page = shikaku_reconcile::access::accesses_html(&alices);
    assert!(page.contains("A card was linked to your record by mistake"), "{page}");
    let bobs = member_accesses(&report, "bob", std::slice::from_ref(&bob), None, None);
    assert_eq!(bobs.accesses.len(), 1, "{bobs:?}");
    assert!(bobs.accesses[0].contradicted && !bobs.accesses[0].wrong_person_link);
    assert_eq!(bobs.accesses[0].answered, AnswerCode::Unknown);
    let day = |d: &str| d.parse::<shikaku_core::Date>().unwrap();
    let later =
        member_accesses(&report, "bob", std::slice::from_ref(&bob), Some(day("2026-01-07")), None);
    assert!(later.accesses.is_empty(), "--from filters by the day of the check");
    let only_a = report.scoped(&[a].into_iter().collect());
    assert!(only_a.contradicted.iter().all(|c| c.check.answered != AnswerCode::Unknown));
    assert!(!serde_json::to_string(&only_a).unwrap().contains(&bob.to_string()));
    // Alice's check; the shared card's check answered no single member, so it belongs to no
    // insurer's count — its conflict (Carol of A, Dave of B) is in A's conflict queue.
    assert_eq!(only_a.totals.checks, 1, "{:?}", only_a.totals);
    assert!(only_a
        .conflicts
        .iter()
        .any(|c| matches!(c, shikaku_core::Conflict::MultipleMembers { .. })));
}

#[test]
fn the_reports_staleness_is_bounded_by_what_the_simulator_measured() {
    // Proves item 4: the report dated the events a clinic had not received by their record
    // times, and counted insurers the clinic never subscribed to, so `sim run --seed 1
    // --clinics 2 --duration 2h --reconcile` said 49,766,585 s where the simulator measured
    // 3 s. The hub held an event only after its clinics' last sync, so the report's staleness
    // can never exceed the staleness the clinic's own answers claimed (plus the clock skew the
    // hub tolerates), clinic by clinic.
    let mut cfg = shikaku_sim::SimConfig::new(1, 2);
    cfg.duration_ms = 2 * 3_600_000;
    cfg.keep_hub_ledger = true;
    let outcome = shikaku_sim::run(&cfg);
    assert!(outcome.violations.is_empty(), "{}", outcome.lines.join("\n"));
    let report =
        shikaku_reconcile::compute_at_last_event(&outcome.hub_events, &outcome.clinic_names);
    assert!(!report.clinics.is_empty());
    for row in &report.clinics {
        let i: usize = row.clinic.strip_prefix("clinic-").unwrap().parse().unwrap();
        let measured = outcome
            .timeline
            .iter()
            .filter_map(|(_, who, mark)| match (who, mark) {
                (shikaku_sim::Who::Clinic(c), shikaku_sim::Mark::Check { staleness_s, .. })
                    if *c == i =>
                {
                    *staleness_s
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        assert!(
            row.max_staleness_s <= measured + 120,
            "{}: the report says {} s, the simulator measured at most {measured} s",
            row.clinic,
            row.max_staleness_s
        );
    }
}

/// Starts `hub serve` or `clinic serve` as a real process; returns it with the first line it
/// printed and a reader of the rest.
pub(crate) fn serve(args: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = spawn(args, Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The test harness's own "running 1 test" comes first.
    let first = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the service starts");
        if !line.is_empty() && !line.starts_with("running ") {
            break line;
        }
    };
    (child, first, rx)
}

/// A CA in `dir/ca` and certificates for a hub (`dir/hub`, "hub-1") and a clinic
/// (`dir/clinic`, "front-desk"), as an operator makes them; returns the CA's folder.
pub(crate) fn certify_hub_and_clinic(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    assert_eq!(run(&["ca", "init", "--ca-dir", s(&ca)]).0, 0);
    for (node, role, name) in [("hub", "hub", "hub-1"), ("clinic", "clinic", "front-desk")] {
        let data = dir.join(node);
        let args = ["--data-dir", s(&data), "ca", "issue", "--ca-dir", s(&ca), "--role", role];
        let mut args = args.to_vec();
        args.extend(["--name", name]);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
    }
    ca
}

/// `hub serve` on a free loopback port: the process, its QUIC address and its further lines.
pub(crate) fn serve_hub(data: &Path) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let (child, first, lines) =
        serve(&["--data-dir", s(data), "hub", "serve", "--listen", "127.0.0.1:0"]);
    let addr = first.split(" listening on ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    (child, addr, lines)
}

pub(crate) fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_shuts_hub_and_clinic_down_cleanly_and_persists_their_files() {
    // Proves item 2: SIGTERM (how systemd, Docker and Kubernetes stop services) used to kill
    // `hub serve` and `clinic serve` without a clean shutdown, so receipts and clinic-names
    // were not written. Real processes, a real signal: both say "shutting down (SIGTERM)",
    // exit 0, and leave their files.
    let dir = temp_dir("sigterm");
    let (hub, clinic) = (dir.join("hub"), dir.join("clinic"));
    let stream = dir.join("w.jsonl");
    certify_hub_and_clinic(&dir);
    run(&["gen", "--members", "300", "--seed", "3", "--out", s(&stream)]);
    let (code, _, err) = run(&["--data-dir", s(&hub), "hub", "import", s(&stream)]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&stream).unwrap();
    let insurer = text.split("\"member\":\"").nth(1).unwrap().split(':').next().unwrap().to_owned();

    let (hub_child, addr, hub_lines) = serve_hub(&hub);
    let (clinic_child, first, clinic_lines) = serve(&[
        "--data-dir",
        s(&clinic),
        "clinic",
        "serve",
        "--hub",
        &addr,
        "--insurer",
        &insurer,
        "--api",
        "127.0.0.1:0",
    ]);
    let url = first.split("check API on ").nth(1).unwrap().trim().to_owned();
    let start = Stopwatch::start();
    loop {
        let health = shikaku_api::client::http_get(&url, "/v1/health").unwrap_or_default();
        if health.contains("\"in_sync\":true") {
            break;
        }
        assert!(start.seconds() < 60.0, "the clinic syncs: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }

    sigterm(&hub_child);
    let said = hub_lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(said, "shutting down (SIGTERM)");
    let (code, _, err) = finish(hub_child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let names = std::fs::read_to_string(hub.join(shikaku_cli::serve::CLINIC_NAMES_FILE)).unwrap();
    assert!(names.trim_end().ends_with(" front-desk"), "{names}");

    sigterm(&clinic_child);
    let said = clinic_lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(said, "shutting down (SIGTERM)");
    let (code, _, err) = finish(clinic_child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    assert!(clinic.join("log").join("receipts.shk").exists(), "the receipt was persisted");
    // Service logs carry an RFC 3339 time on every line (item 14).
    assert!(err.lines().any(|l| !l.trim().is_empty()), "the clinic logged its session");
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let stamp = line.split_whitespace().next().unwrap();
        assert!(shikaku_cli::parse_rfc3339_ms(stamp).is_ok(), "no timestamp: {line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_scripted_partition_lasts_as_scripted_under_the_hostile_fault_mix() {
    // Proves the held-out scenario finding: random partitions that started inside a scripted
    // one replaced its end by their own, so a 10-hour scripted cut healed within minutes under
    // `faults = "hostile"`. Cuts now add up: the clinics' answers reach the staleness the
    // script implies, as they do under calm faults.
    let scripted_ms = 10 * 3_600_000;
    let max_staleness = |faults: shikaku_sim::Faults| {
        let mut cfg = shikaku_sim::SimConfig::new(3, 2);
        cfg.members = 600;
        cfg.duration_ms = 12 * 3_600_000;
        cfg.checks_per_day = 400.0;
        cfg.faults = faults;
        cfg.faults.partitions_per_day = 48.0;
        cfg.faults.partition_mean_ms = 60_000;
        cfg.script.push((
            3_600_000,
            shikaku_sim::Scripted::Partition { clinics: vec![0, 1], duration_ms: scripted_ms },
        ));
        let outcome = shikaku_sim::run(&cfg);
        assert!(outcome.violations.is_empty(), "{}", outcome.lines.join("\n"));
        outcome
            .timeline
            .iter()
            .filter_map(|(_, who, mark)| match (who, mark) {
                (shikaku_sim::Who::Clinic(0), shikaku_sim::Mark::Check { staleness_s, .. }) => {
                    *staleness_s
                }
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let hostile = max_staleness(shikaku_sim::Faults::hostile());
    let expected_s = scripted_ms / 1000;
    assert!(
        hostile >= expected_s * 9 / 10,
        "a scripted 10 h cut under hostile faults gave at most {hostile} s of staleness"
    );
}

#[test]
fn the_simulation_report_has_an_hour_axis_contradicted_answers_and_a_histogram() {
    // Proves the timeline finding: the HTML had no time axis, clipped its last label and did
    // not mark answers the converged truth contradicted. The hub-outage scenario with a late
    // retirement contradicts offline answers; the page marks them, labels hours, keeps the
    // "faults healed" label inside the picture and shows a staleness histogram.
    let cfg = crate::sim::hub_outage();
    let outcome = shikaku_sim::run(&cfg);
    let html = shikaku_sim::html(&outcome);
    assert!(html.contains(">0 h</text>") && html.contains(">8 h</text>"), "an hour axis");
    assert!(html.contains("id=\"staleness-histogram\""), "a staleness histogram");
    assert!(html.contains("in sync (0 s)"));
    let healed = html.split("faults healed</text>").next().unwrap();
    let label = healed.rsplit("<text ").next().unwrap();
    assert!(label.contains("text-anchor=\"end\""), "the last label stays inside: {label}");
    let contradicted = outcome
        .timeline
        .iter()
        .filter(|(_, _, m)| matches!(m, shikaku_sim::Mark::Check { contradicted: true, .. }))
        .count();
    assert!(contradicted > 0, "the outage's late changes contradict some offline answers");
    assert_eq!(html.matches("class=\"contradicted\"").count(), contradicted);
}

/// A member of the clinic's insurer with a limit category on `date`, in the generated world.
fn member_with_limit(d: &crate::net::Deployment, date: Date) -> MemberKey {
    let mut p = shikaku_core::Projection::new(Replication::All);
    for e in &d.events {
        p.apply(e);
    }
    d.events
        .iter()
        .find_map(|e| match &e.event().body {
            EventBody::LimitCategorySet { member, .. } if member.insurer == d.insurers[0] => {
                let a = p.check(
                    &CheckQuery::Member(member.clone()),
                    date,
                    Hlc(u64::MAX),
                    Default::default(),
                );
                (a.code == AnswerCode::Valid && a.limit_category_withheld).then(|| member.clone())
            }
            _ => None,
        })
        .expect("a covered member with a limit category")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_api_records_consent_and_answers_every_error_as_json() {
    // Proves items 8 and 10 (and 7 end to end): consent is recorded through the API and the
    // CLI (the limit category then shows; after withdrawal "withheld: consent withdrawn on
    // DATE"); a wrong content type is a JSON 415, a missing field a JSON 400 naming it, a
    // declaration for a member the clinic has no record of a 404 naming the key; `check
    // --node` against something that is no shikaku node names the URL; a symbol with kanji
    // goes through `check --node` intact.
    use crate::net::{cli, http};
    let running = crate::api::Running::start("field-trial-api", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let member = member_with_limit(&running.d, date);
    let url = running.url.clone();
    let key = member.to_string();
    let ask = |url: String, key: String| async move {
        let (code, out, err) =
            cli(&["check", "--node", &url, "--member", &key, "--date", "2026-10-15"]).await;
        assert_eq!(code, 0, "{err}");
        out
    };
    let before = ask(url.clone(), key.clone()).await;
    assert!(before.contains("withheld: no consent recorded"), "{before}");
    let (code, out, err) = cli(&["consent", "--node", &url, "--member", &key]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("consent given for {key}")), "{out}");
    let given = ask(url.clone(), key.clone()).await;
    assert!(given.contains("(shown with the patient's consent)"), "{given}");
    let body = format!("{{\"member\":\"{key}\",\"consent\":\"withdrawn\"}}");
    let reply = http(&url, "POST /v1/consents", &body).await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let withdrawn = ask(url.clone(), key.clone()).await;
    let today = Date::from_unix_ms_jst(running.clinic.clock().now_ms());
    assert!(withdrawn.contains(&format!("withheld: consent withdrawn on {today}")), "{withdrawn}");

    // Errors are JSON with the documented status.
    let raw = |request: &'static str, content_type: &'static str, body: &'static str| {
        let host = url.trim_start_matches("http://").to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(&host).unwrap();
                write!(
                    s,
                    "{request} HTTP/1.1\r\nHost: {host}\r\nX-Shikaku-Client: test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).unwrap();
                text
            })
            .await
            .unwrap()
        }
    };
    let json_of = |response: &str| -> (u16, serde_json::Value) {
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}")))
    };
    let (status, e) = json_of(&raw("POST /v1/declarations", "text/plain", "{}").await);
    assert_eq!((status, e["error"].as_str()), (415, Some("unsupported_media_type")), "{e}");
    let (status, e) = json_of(
        &raw("POST /v1/declarations", "application/json", "{\"member\":\"06130017:1:2:00\"}").await,
    );
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["field"], "declared_start", "{e}");
    assert_eq!(e["error"], "missing_field", "{e}");
    let (status, e) = json_of(
        &raw(
            "POST /v1/declarations",
            "application/json",
            "{\"member\":\"06130017:nobody:999999:00\",\"declared_start\":\"2026-10-01\"}",
        )
        .await,
    );
    assert_eq!(status, 404, "{e}");
    assert!(e["message"].as_str().unwrap().contains("06130017:nobody:999999:00"), "{e}");
    let (status, e) = json_of(&raw("GET /v1/nothing-here", "text/plain", "").await);
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")), "{e}");

    // `check --node` at a server that is not a shikaku node: say which URL, and what it is not.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = other.accept().unwrap();
        // Read the whole request (closing with unread bytes would reset the connection).
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let _ = s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
    });
    let (code, _, err) = cli(&["check", "--node", &other_url, "--member", &key]).await;
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{other_url}/v1/check?member=")), "{err}");
    assert!(err.contains("probably not a shikaku node"), "{err}");
    server.join().unwrap();

    // A symbol with kanji goes through `check --node` as it is.
    let kanji = running.d.events.iter().find_map(|e| {
        e.event()
            .body
            .membership_subject()
            .filter(|m| m.insurer == running.d.insurers[0] && !m.symbol.is_ascii())
            .cloned()
    });
    if let Some(kanji) = kanji {
        let (code, out, err) =
            cli(&["check", "--node", &url, "--member", &kanji.to_string(), "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["query"]["member"], kanji.to_string(), "{out}");
    }
    running.shutdown().await;
}

#[test]
fn a_ledger_in_use_suggests_asking_the_running_node() {
    // Proves item 9's last point: the lock message says how to reach a running node.
    let dir = temp_dir("in-use");
    let _held = shikaku_cli::store::Store::open(&dir).unwrap();
    let (code, _, err) = run(&["--data-dir", s(&dir), "check", "--member", "06130017:1:2:00"]);
    assert_eq!(code, 2);
    assert!(err.contains("in use by another shikaku process") && err.contains("--node"), "{err}");
}
