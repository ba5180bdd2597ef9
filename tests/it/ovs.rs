//! The folder interface (issue 18): the request vectors of protocol/vectors/ovs decoded
//! (UTF-8, Shift_JIS, card token, and every malformed case with its error code), then real
//! files in a real folder answered by a real clinic synced over QUIC — 1,000 requests from 4
//! concurrent writers each answered once, Shift_JIS, malformed requests moved to `err`, the
//! offline flag while the hub is down, the consent flag — and a real clinic process killed
//! with SIGKILL while answering, which answers every request once after its restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shikaku_api::ovs::{parse_request, Charset, OvsFolder, OvsOptions, RequestKind};
use shikaku_core::{Date, EventBody, MemberKey};

use crate::api::{cast, Running};

fn vector(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/vectors/ovs").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_request_vectors_decode_and_every_malformed_one_is_refused_by_name() {
    let utf8 = parse_request(&vector("card-data-utf8.xml")).unwrap();
    assert_eq!(utf8.charset, Charset::Utf8);
    assert_eq!(utf8.service_date, Date::from_ymd(2026, 12, 1).unwrap());
    assert_eq!(utf8.institution, "1312345678");
    assert_eq!(utf8.file_id, "受付-0001");
    assert_eq!(utf8.consent, Some(true));
    let key: MemberKey = "131045:国220:0000001:00".parse().unwrap();
    assert_eq!(
        utf8.kind,
        RequestKind::CardData { key: key.clone(), birth: Date::from_ymd(1958, 5, 10).unwrap() }
    );
    // The padded national health insurance number is echoed as written.
    assert!(utf8.search_info.contains(&("InsurerNumber".into(), "  131045".into())));

    let sjis = parse_request(&vector("card-data-shift_jis.xml")).unwrap();
    assert_eq!(sjis.charset, Charset::ShiftJis);
    assert_eq!(sjis.file_id, "受付－０００２　髙橋", "Windows-31J's 髙 decodes");
    assert_eq!(sjis.kind, utf8.kind);

    let card = parse_request(&vector("card-token.xml")).unwrap();
    assert!(matches!(card.kind, RequestKind::Card(_)));
    assert_eq!(card.consent, None);

    let manifest: serde_json::Value = serde_json::from_slice(&vector("malformed.json")).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let error = parse_request(case["xml"].as_str().unwrap().as_bytes()).expect_err(name);
        assert_eq!(error.code, case["code"].as_str().unwrap(), "{name}: {error:?}");
        let names = case["message_names"].as_str().unwrap();
        assert!(error.en.contains(names), "{name}: {:?} names {names:?}", error.en);
        // The Japanese message is Japanese: element names, but no English sentence.
        assert!(error.ja.chars().any(|c| c > '\u{3000}'), "{name}: {:?}", error.ja);
        for english in [" is ", " not ", " the ", " must "] {
            assert!(!error.ja.contains(english), "{name}: {:?}", error.ja);
        }
        for message in [&error.en, &error.ja] {
            assert!(!message.contains("0000001") && !message.contains("19580510"), "{message}");
        }
    }
    // What a receipt computer writes with the library's writer reads back the same.
    for (kind, consent) in [(utf8.kind.clone(), Some(true)), (card.kind.clone(), None)] {
        let written = shikaku_api::ovs::xml::request_xml(&kind, utf8.service_date, "w-1", consent);
        let read = parse_request(written.as_bytes()).unwrap();
        assert_eq!((read.kind, read.consent, read.file_id.as_str()), (kind, consent, "w-1"));
        assert_eq!(read.service_date, utf8.service_date);
    }
    // Too large to read at all.
    let big = vec![b' '; shikaku_api::ovs::xml::REQUEST_MAX + 1];
    assert_eq!(parse_request(&big).unwrap_err().code, "SHK905");
}

/// A request by insurance-card data.
fn card_data_request(key: &MemberKey, birth: Date, date: Date, id: &str, consent: &str) -> String {
    let insurer = format!("{:>8}", key.insurer.to_string());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<XmlMsg><MessageHeader>
<QualificationConfirmationDate>{}</QualificationConfirmationDate>
<MedicalInstitutionCode>1312345678</MedicalInstitutionCode>
<ArbitraryFileIdentifier>{id}</ArbitraryFileIdentifier>
</MessageHeader><MessageBody><QualificationConfirmSearchInfo>
<InsurerNumber>{insurer}</InsurerNumber>
<InsuredCardSymbol>{}</InsuredCardSymbol>
<InsuredIdentificationNumber>{}</InsuredIdentificationNumber>
<InsuredBranchNumber>{:02}</InsuredBranchNumber>
<Birthdate>{}</Birthdate>
<LimitApplicationCertificateRelatedConsFlg>{consent}</LimitApplicationCertificateRelatedConsFlg>
</QualificationConfirmSearchInfo></MessageBody></XmlMsg>
"#,
        shikaku_api::ovs::xml::date8(date),
        key.symbol,
        key.number,
        key.branch,
        shikaku_api::ovs::xml::date8(birth),
    )
}

/// Drops a request the way a careful client does: written beside `req`, renamed into it.
fn drop_request(dir: &Path, name: &str, bytes: &[u8]) {
    let staging = dir.join(format!(".writing-{name}"));
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, dir.join("req").join(name)).unwrap();
}

/// The text of the first `<name>` element of an answer.
fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    match xml.split_once(&open) {
        Some((_, rest)) => rest.split_once(&format!("</{name}>")).map_or("", |(text, _)| text),
        None => "",
    }
}

/// A receipt computer reading answers: every answer file in `res` is read, decoded as its
/// declaration says, counted by name and removed, as clinic software does.
struct Reader {
    seen: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(res: PathBuf) -> Reader {
        let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<String>>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir(&res).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let bytes = std::fs::read(entry.path()).unwrap();
                    let text = if bytes.windows(9).any(|w| w == b"Shift_JIS") {
                        encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned()
                    } else {
                        String::from_utf8(bytes).unwrap()
                    };
                    assert!(text.trim_end().ends_with("</XmlMsg>"), "never half a file: {name}");
                    std::fs::remove_file(entry.path()).unwrap();
                    s.lock().unwrap().entry(name).or_default().push(text);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Reader { seen, stop, thread: Some(thread) }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().values().map(Vec::len).sum()
    }

    fn answer(&self, name: &str) -> Option<String> {
        self.seen.lock().unwrap().get(name).and_then(|v| v.last().cloned())
    }

    async fn wait_for(&self, n: usize, limit_s: u64) {
        for _ in 0..limit_s * 20 {
            if self.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} answers of {n} after {limit_s} s", self.count());
    }

    fn stop(mut self) -> BTreeMap<String, Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// Members of the generated world with their birth dates.
fn births(events: &[shikaku_core::SignedEvent]) -> BTreeMap<MemberKey, Date> {
    events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::MemberRegistered { member, person, .. } => {
                Some((member.clone(), person.birth_date))
            }
            _ => None,
        })
        .collect()
}

fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let masked = [
            "ProcessExecutionTime",
            "LastHubSyncTime",
            "StalenessSeconds",
            "AnswerHash",
            "LimitApplicationCertificateRelatedConsTime",
        ]
        .iter()
        .find(|n| line.trim_start().starts_with(&format!("<{n}>")));
        match masked {
            Some(name) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}<{name}>[masked]</{name}>"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_1000_requests_from_4_writers_is_answered_once_each_and_bad_ones_go_to_err() {
    let mut running = Running::start("ovs-folder", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member, invalid) = cast(&running.d, date);
    let births = births(&running.d.events);
    let dir = running.d.root.join("ovs");
    let data = running.d.root.join("front-desk");
    let options = OvsOptions::new(&dir, &data);
    let records_before = running.clinic.with_node(|n, _| n.own_records().0.len());

    // What a clinic that died mid-answer leaves, finished at start without a new answer:
    // a journalled answer still in staging (published now), one already renamed (its request
    // removed now), and a staging file never journalled (removed; its request is answered).
    for sub in ["req", "res", "err"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let journal = data.join(shikaku_api::ovs::folder::JOURNAL_FILE);
    let id = |name: &str, bytes: &[u8]| {
        let mut h = blake3::Hasher::new();
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(bytes);
        h.finalize().to_hex().to_string()
    };
    let hex = |text: &str| shikaku_core::hex::encode(text.as_bytes());
    let staged_req = card_data_request(&member, births[&member], date, "crash-1", "0");
    let renamed_req = card_data_request(&member, births[&member], date, "crash-2", "0");
    let unjournalled_req = card_data_request(&member, births[&member], date, "crash-3", "0");
    std::fs::write(dir.join("req/c1req.xml"), &staged_req).unwrap();
    std::fs::write(dir.join("req/c2req.xml"), &renamed_req).unwrap();
    std::fs::write(dir.join("req/c3req.xml"), &unjournalled_req).unwrap();
    let (id1, id2, id3) = (
        id("c1req.xml", staged_req.as_bytes()),
        id("c2req.xml", renamed_req.as_bytes()),
        id("c3req.xml", unjournalled_req.as_bytes()),
    );
    std::fs::write(dir.join(format!("res/.shikaku-{id1}.tmp")), "<XmlMsg>staged</XmlMsg>\n")
        .unwrap();
    std::fs::write(dir.join("res/c2res.xml"), "<XmlMsg>renamed</XmlMsg>\n").unwrap();
    std::fs::write(dir.join(format!("res/.shikaku-{id3}.tmp")), "<XmlMsg>half").unwrap();
    // A damaged journal refuses the start, naming the line; nothing is touched.
    std::fs::write(
        &journal,
        format!("shikaku-ovs-journal 1\nA {id1} ok {}\nX\n", hex("c1res.xml")),
    )
    .unwrap();
    let refused = OvsFolder::start(running.clinic.clone(), options.clone()).err().unwrap();
    assert!(refused.to_string().contains("line 3 is damaged"), "{refused}");
    assert!(dir.join(format!("res/.shikaku-{id1}.tmp")).exists());
    // The journal as the crash left it (its last line cut short).
    std::fs::write(
        &journal,
        format!(
            "shikaku-ovs-journal 1\nA {id1} ok {}\nA {id2} ok {}\nA {id3}",
            hex("c1res.xml"),
            hex("c2res.xml")
        ),
    )
    .unwrap();
    let folder = OvsFolder::start(running.clinic.clone(), options).unwrap();
    assert_eq!(folder.stats.recovered.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("res/c1res.xml")).unwrap(),
        "<XmlMsg>staged</XmlMsg>\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("res/c2res.xml")).unwrap(),
        "<XmlMsg>renamed</XmlMsg>\n"
    );
    assert!(!dir.join("req/c1req.xml").exists() && !dir.join("req/c2req.xml").exists());
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), "shikaku-ovs-journal 1\n");
    let reader = Reader::start(dir.join("res"));
    reader.wait_for(3, 30).await;
    let crash3 = reader.answer("c3res.xml").unwrap();
    assert_eq!(element(&crash3, "ArbitraryFileIdentifier"), "crash-3", "answered after restart");
    assert_eq!(
        running.clinic.with_node(|n, _| n.own_records().0.len()),
        records_before + 1,
        "only the unjournalled request was checked again"
    );
    let records_before = records_before + 1;
    let answered_before = reader.count();

    // 4 writers, 250 requests each, every one a different patient of the clinic's insurer.
    let patients: Vec<(MemberKey, Date)> = births
        .iter()
        .filter(|(k, _)| k.insurer == running.d.insurers[0])
        .map(|(k, b)| (k.clone(), *b))
        .collect();
    assert!(patients.len() >= 100, "{}", patients.len());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (dir, patients) = (dir.clone(), patients.clone());
            std::thread::spawn(move || {
                for i in 0..250 {
                    let (key, birth) = &patients[(w * 250 + i) % patients.len()];
                    let id = format!("w{w}-{i:03}");
                    let xml = card_data_request(key, *birth, date, &id, "0");
                    drop_request(&dir, &format!("OQSsiimm01req_{w}{i:03}.xml"), xml.as_bytes());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    reader.wait_for(answered_before + 1000, 120).await;
    {
        let seen = reader.seen.lock().unwrap();
        assert_eq!(seen.len(), answered_before + 1000);
        for (name, answers) in seen.iter().filter(|(n, _)| n.starts_with("OQSsiimm01res_")) {
            assert_eq!(answers.len(), 1, "{name} answered once");
            let (w, i) = name.trim_start_matches("OQSsiimm01res_").split_at(1);
            let id = format!("w{w}-{}", i.trim_end_matches(".xml"));
            assert_eq!(element(&answers[0], "ArbitraryFileIdentifier"), id, "{name}");
            assert_eq!(element(&answers[0], "SegmentOfResult"), "1", "{name}");
        }
    }
    let records = running.clinic.with_node(|n, _| n.own_records().0.len());
    assert_eq!(records - records_before, 1000, "each answered request is a recorded check");
    assert_eq!(std::fs::read_dir(dir.join("req")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.join("err")).unwrap().count(), 0);

    // A valid member by card data, its answer in full; by card token; an invalid member;
    // Shift_JIS; the consent flag.
    let birth = births[&member];
    let xml = card_data_request(&member, birth, date, "受付-1", "1");
    drop_request(&dir, "OQSsiimm01req_valid.xml", xml.as_bytes());
    let token = format!(
        "<XmlMsg><MessageHeader><QualificationConfirmationDate>{}</QualificationConfirmationDate><ArbitraryFileIdentifier>face-1</ArbitraryFileIdentifier></MessageHeader><MessageBody><QualificationConfirmSearchInfo><ShikakuCardToken>{card}</ShikakuCardToken></QualificationConfirmSearchInfo></MessageBody></XmlMsg>",
        shikaku_api::ovs::xml::date8(date)
    );
    drop_request(&dir, "OQSmuimm01req_card.xml", token.as_bytes());
    let xml = card_data_request(&invalid, births[&invalid], date, "受付-2", "0");
    drop_request(&dir, "OQSsiimm01req_invalid.xml", xml.as_bytes());
    let sjis = card_data_request(&member, birth, date, "受付－３　髙橋", "0")
        .replace("encoding=\"UTF-8\"", "encoding=\"Shift_JIS\"");
    drop_request(&dir, "OQSsiimm01req_sjis.xml", &encoding_rs::SHIFT_JIS.encode(&sjis).0);
    reader.wait_for(answered_before + 1004, 30).await;
    let valid = reader.answer("OQSsiimm01res_valid.xml").unwrap();
    insta::assert_snapshot!("ovs_valid_answer", mask(&valid));
    assert_eq!(element(&valid, "QualificationValidity"), "1");
    assert_eq!(element(&valid, "InsuredIdentificationNumber"), member.number);
    let by_card = reader.answer("OQSmuimm01res_card.xml").unwrap();
    assert_eq!(element(&by_card, "ReferenceClassification"), "1");
    assert_eq!(element(&by_card, "QualificationValidity"), "1");
    assert_eq!(element(&by_card, "InsuredIdentificationNumber"), member.number);
    let answer = reader.answer("OQSsiimm01res_invalid.xml").unwrap();
    assert_eq!(element(&answer, "QualificationValidity"), "2");
    assert_ne!(element(&answer, "InsuredCardExpirationDate"), "");
    assert_ne!(element(&answer, "ReasonOfLoss"), "");
    // Consent given at the counter (flag 1) was recorded before the check, which then showed
    // the limit category; a later request with flag 0 does not show it.
    let consents = running.clinic.with_node(|n, _| {
        n.own_records()
            .0
            .iter()
            .filter(|e| matches!(&e.event().body, EventBody::ConsentGiven { member: m } if *m == member))
            .count()
    });
    assert_eq!(consents, 1, "the consent flag is recorded as the patient's consent");
    assert_eq!(element(&valid, "LimitApplicationCertificateRelatedConsFlg"), "1");
    let sjis = reader.answer("OQSsiimm01res_sjis.xml").unwrap();
    assert!(!sjis.contains("LimitApplicationCertificateRelatedInfo"), "flag 0: not shown");
    assert_eq!(element(&sjis, "CharacterCodeIdentifier"), "1");
    assert_eq!(element(&sjis, "ArbitraryFileIdentifier"), "受付－３　髙橋");
    assert_eq!(element(&sjis, "Name"), element(&valid, "Name"));

    // Malformed requests: an error answer each (abnormal end, the code, a message naming the
    // problem), the request moved to err. One is cut short; it is refused only after it has
    // not changed for a while.
    let manifest: serde_json::Value = serde_json::from_slice(&vector("malformed.json")).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        drop_request(&dir, &format!("bad{i:02}req.xml"), case["xml"].as_str().unwrap().as_bytes());
    }
    reader.wait_for(answered_before + 1004 + cases.len(), 30).await;
    for (i, case) in cases.iter().enumerate() {
        let answer = reader.answer(&format!("bad{i:02}res.xml")).unwrap();
        assert_eq!(element(&answer, "SegmentOfResult"), "9", "{}", case["case"]);
        assert_eq!(element(&answer, "ErrorCode"), case["code"].as_str().unwrap());
        assert!(!element(&answer, "ErrorMessage").is_empty());
        assert!(dir.join("err").join(format!("bad{i:02}req.xml")).exists());
    }
    let refused = reader.answer("bad00res.xml").unwrap();
    insta::assert_snapshot!("ovs_error_answer", mask(&refused));

    // The hub goes down: the answer says offline, in its code, message and extension.
    running.stop_hub().await;
    let xml = card_data_request(&member, birth, date, "受付-4", "0");
    drop_request(&dir, "OQSsiimm01req_offline.xml", xml.as_bytes());
    reader.wait_for(answered_before + 1005 + cases.len(), 30).await;
    let offline = reader.answer("OQSsiimm01res_offline.xml").unwrap();
    assert_eq!(element(&offline, "QualificationValidity"), "1");
    assert_eq!(element(&offline, "ProcessingResultCode"), "SHK100");
    assert!(element(&offline, "ProcessingResultMessage").contains("オフライン応答"), "{offline}");
    assert_eq!(element(&offline, "Offline"), "1");
    assert_ne!(element(&offline, "LastHubSyncTime"), "");

    let seen = reader.stop();
    assert!(seen.values().all(|answers| answers.len() == 1), "every request answered once");
    folder.shutdown().await;
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("res")).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "no staging file left: {leftovers:?}");
    running.shutdown().await;
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_clinic_killed_while_answering_answers_every_request_once_after_restart() {
    use crate::cli::run;
    use crate::field_trial::{finish, serve, sigterm};
    let dir = crate::cli::temp_dir("ovs-kill");
    let (hub, clinic, ovs) = (dir.join("hub"), dir.join("clinic"), dir.join("ovs"));
    let stream = dir.join("w.jsonl");
    crate::field_trial::certify_hub_and_clinic(&dir);
    assert_eq!(run(&["gen", "--members", "400", "--seed", "5", "--out", s(&stream)]).0, 0);
    let (code, _, err) = run(&["--data-dir", s(&hub), "hub", "import", s(&stream)]);
    assert_eq!(code, 0, "{err}");
    let mut patients = Vec::new();
    for line in std::fs::read_to_string(&stream).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        if value["body"]["type"] == "member_registered" {
            let key: MemberKey = value["body"]["member"].as_str().unwrap().parse().unwrap();
            let birth: Date =
                value["body"]["person"]["birth_date"].as_str().unwrap().parse().unwrap();
            patients.push((key, birth));
        }
    }
    let insurer = patients[0].0.insurer;
    patients.retain(|(k, _)| k.insurer == insurer);
    let (hub_child, addr, _) = crate::field_trial::serve_hub(&hub);
    let insurer_text = insurer.to_string();
    let clinic_args = [
        "--data-dir",
        s(&clinic),
        "clinic",
        "serve",
        "--hub",
        &addr,
        "--insurer",
        &insurer_text,
        "--api",
        "127.0.0.1:0",
        "--ovs-dir",
        s(&ovs),
    ];
    let (mut clinic_child, first, lines) = serve(&clinic_args);
    assert!(first.contains("check API on"), "{first}");
    let folder_line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(folder_line.starts_with("folder interface: requests in "), "{folder_line}");

    // 400 requests dropped at once; the clinic is killed (SIGKILL) while answering them.
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reader = Reader::start(ovs.join("res"));
    for i in 0..400 {
        let (key, birth) = &patients[i % patients.len()];
        let xml = card_data_request(key, *birth, date, &format!("k-{i}"), "0");
        drop_request(&ovs, &format!("OQSsiimm01req_{i:04}.xml"), xml.as_bytes());
    }
    runtime.block_on(reader.wait_for(20, 60));
    clinic_child.kill().unwrap();
    clinic_child.wait().unwrap();
    let answered_before = reader.count();
    assert!(answered_before < 400, "killed while answering ({answered_before} answered)");

    let (clinic_child, _, lines) = serve(&clinic_args);
    let folder_line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(folder_line.starts_with("folder interface:"), "{folder_line}");
    runtime.block_on(reader.wait_for(400, 120));
    std::thread::sleep(Duration::from_millis(500));
    let seen = reader.stop();
    assert_eq!(seen.len(), 400, "every request answered");
    for (name, answers) in &seen {
        assert_eq!(answers.len(), 1, "{name} answered once across the kill");
        assert_eq!(element(&answers[0], "SegmentOfResult"), "1", "{name}");
    }
    assert_eq!(std::fs::read_dir(ovs.join("req")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(ovs.join("err")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(ovs.join("res")).unwrap().count(), 0, "no staging file left");

    for child in [clinic_child, hub_child] {
        sigterm(&child);
        let (code, _, err) = finish(child, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{err}");
    }
}
