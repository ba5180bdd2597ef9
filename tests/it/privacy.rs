//! Sealed member records (schema 2) through the sans-IO nodes: a clinic synced from a sealed
//! hub holds no member's name, kana, address or key in any file, yet opens the present
//! patient's record by card or by member key and birth date; sealed answers equal plaintext
//! ones (the rules that need hidden fields apply once opened); an erasure order destroys the
//! keys everywhere, checks then say "member data erased", and no stale key store brings a key
//! back.

use std::collections::BTreeMap;

use shikaku_core::keystore::Presented;
use shikaku_core::seal::KdfParams;
use shikaku_core::{
    AnswerCode, CheckQuery, Date, Event, EventBody, InsurerNumber, MemberKey, Namespace, Person,
    SignedEvent, Signer,
};
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_log::storage::Directory;
use shikaku_node::{MemberData, Node, NodeConfig, PeerIdentity, Role};

use crate::node::deliver;

pub const SEED: u64 = 16;

/// A generated world, plaintext and sealed.
pub struct Worlds {
    pub plain: Vec<SignedEvent>,
    pub sealed: Vec<SignedEvent>,
    pub keys: shikaku_core::keystore::KeyStore,
    pub insurers: Vec<InsurerNumber>,
    pub now_ms: u64,
}

pub fn worlds(members: usize) -> Worlds {
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, SEED)).unwrap();
    let (sealed, keys) = shikaku_gen::seal_generated(&g, SEED, KdfParams::LIGHT).unwrap();
    Worlds {
        insurers: g.insurers.iter().map(|(i, _)| *i).collect(),
        now_ms: g.last_hlc.physical_ms() + 60_000,
        plain: g.events,
        sealed,
        keys,
    }
}

/// Every person of the plaintext world: key, person, cards.
pub fn people(
    events: &[SignedEvent],
) -> BTreeMap<MemberKey, (Person, Vec<shikaku_core::CardToken>)> {
    let mut out: BTreeMap<MemberKey, (Person, Vec<shikaku_core::CardToken>)> = BTreeMap::new();
    for e in events {
        match &e.event().body {
            EventBody::MemberRegistered { member, person, .. }
            | EventBody::DemographicsChanged { member, person, .. } => {
                out.entry(member.clone()).or_insert_with(|| (person.clone(), Vec::new())).0 =
                    person.clone();
            }
            EventBody::CardLinked { card, member } => {
                if let Some(entry) = out.get_mut(member) {
                    entry.1.push(*card);
                }
            }
            _ => {}
        }
    }
    out
}

/// A hub and one clinic (subscribed to the first insurer) in memory.
pub struct Pair {
    pub hub: Node<FaultDirectory>,
    pub clinic: Node<FaultDirectory>,
    pub clinic_disk: FaultDirectory,
    pub clinic_signer: Signer,
    pub hub_signer: Signer,
    pub insurer: InsurerNumber,
    pub now_ms: u64,
    conn: u64,
}

impl Pair {
    pub fn new(
        events: &[SignedEvent],
        keys: Option<&shikaku_core::keystore::KeyStore>,
        w: &Worlds,
    ) -> Pair {
        let hub_signer = Signer::derived("shikaku test hub", b"privacy");
        let mut config = NodeConfig::new(Role::Hub, "hub");
        config.insurers = w.insurers.iter().copied().collect();
        let mut hub =
            Node::open(FaultDirectory::new(FaultConfig::default(), 1), hub_signer.clone(), config)
                .unwrap();
        hub.import(w.now_ms, events).unwrap();
        if let Some(keys) = keys {
            hub.import_keys(keys).unwrap();
        }
        let clinic_signer = Signer::derived("shikaku test clinic", b"privacy");
        let clinic_disk = FaultDirectory::new(FaultConfig::default(), 2);
        let clinic = Node::open(
            clinic_disk.clone(),
            clinic_signer.clone(),
            Pair::clinic_config(w.insurers[0]),
        )
        .unwrap();
        let mut pair = Pair {
            hub,
            clinic,
            clinic_disk,
            clinic_signer,
            hub_signer,
            insurer: w.insurers[0],
            now_ms: w.now_ms,
            conn: 0,
        };
        pair.sync();
        pair
    }

    fn clinic_config(insurer: InsurerNumber) -> NodeConfig {
        let mut config = NodeConfig::new(Role::Clinic, "clinic-p");
        config.insurers = [insurer].into_iter().collect();
        config
    }

    /// Connects (again), moves frames until quiet, disconnects.
    pub fn sync(&mut self) {
        self.conn += 1;
        let conn = self.conn;
        self.hub.handle_connected(
            self.now_ms,
            conn,
            PeerIdentity {
                role: Role::Clinic,
                name: "clinic-p".into(),
                node: self.clinic_signer.node_id(),
            },
        );
        self.clinic.handle_connected(
            self.now_ms,
            conn,
            PeerIdentity { role: Role::Hub, name: "hub".into(), node: self.hub_signer.node_id() },
        );
        loop {
            let mut progress = false;
            while let Some(frame) = self.clinic.poll_transmit(self.now_ms, conn) {
                deliver(&mut self.hub, self.now_ms, conn, &frame);
                progress = true;
            }
            while let Some(frame) = self.hub.poll_transmit(self.now_ms, conn) {
                deliver(&mut self.clinic, self.now_ms, conn, &frame);
                progress = true;
            }
            while let Some(out) = self.hub.poll_event() {
                if let shikaku_node::Output::Close { reason, .. } = out {
                    panic!("hub closed the session: {reason}");
                }
            }
            while let Some(out) = self.clinic.poll_event() {
                if let shikaku_node::Output::Close { reason, .. } = out {
                    panic!("clinic closed the session: {reason}");
                }
            }
            if !progress {
                break;
            }
        }
        self.hub.handle_disconnected(self.now_ms, conn);
        self.clinic.handle_disconnected(self.now_ms, conn);
        self.clinic.handle_tick(self.now_ms);
    }

    pub fn reopen_clinic(&mut self) {
        self.clinic = Node::open(
            self.clinic_disk.clone(),
            self.clinic_signer.clone(),
            Pair::clinic_config(self.insurer),
        )
        .unwrap();
    }

    pub fn check(&mut self, presented: Presented, date: Date) -> shikaku_node::PresentedAnswer {
        self.now_ms += 1;
        let mut out = self.clinic.check_presented(self.now_ms, &[(presented, date)]).unwrap();
        out.pop().unwrap()
    }
}

/// Every byte of every file in a fault directory, concatenated.
pub fn all_bytes(disk: &FaultDirectory) -> Vec<u8> {
    let mut disk = disk.clone();
    let mut out = Vec::new();
    for name in disk.list().unwrap() {
        if let Some(bytes) = disk.read_whole(&name).unwrap() {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// The needles found in `haystack` (one pass, Aho-Corasick).
pub fn found(haystack: &[u8], needles: &[String]) -> Vec<String> {
    let needles: Vec<&String> = needles.iter().filter(|n| !n.is_empty()).collect();
    let automaton = aho_corasick::AhoCorasick::new(&needles).unwrap();
    let mut hits: Vec<String> =
        automaton.find_iter(haystack).map(|m| needles[m.pattern().as_usize()].clone()).collect();
    hits.sort();
    hits.dedup();
    hits
}

/// The identifying strings of a person: name, kana, address, member key text, symbol:number.
pub fn needles(key: &MemberKey, person: &Person) -> Vec<String> {
    let mut out =
        vec![person.name.clone(), person.kana.clone(), person.address.clone(), key.to_string()];
    if !key.symbol.is_empty() {
        out.push(format!("{}:{}", key.symbol, key.number));
    }
    out
}

fn today(now_ms: u64) -> Date {
    Date((now_ms / 86_400_000) as i32)
}

#[test]
fn a_synced_clinic_names_no_one_yet_opens_the_present_patients_record() {
    let w = worlds(400);
    let mut pair = Pair::new(&w.sealed, Some(&w.keys), &w);
    let people = people(&w.plain);
    let ours: Vec<(&MemberKey, &(Person, Vec<shikaku_core::CardToken>))> =
        people.iter().filter(|(k, _)| k.insurer == pair.insurer).collect();
    assert!(ours.len() > 50, "the first insurer has members");
    assert!(pair.clinic.key_store().wraps_len() > ours.len(), "wraps synced to the clinic");
    assert_eq!(pair.clinic.key_store().data_keys_len(), 0, "no data key ever leaves the hub");

    // Zero hits for any member's identifying text in any file of the clinic.
    let bytes = all_bytes(&pair.clinic_disk);
    assert!(bytes.len() > 10_000);
    let all: Vec<String> = people.iter().flat_map(|(k, (p, _))| needles(k, p)).collect();
    assert_eq!(found(&bytes, &all), Vec::<String>::new(), "clinic files hold member data");

    // The present patient: by card, and by member key and birth date.
    let date = today(pair.now_ms);
    let (key, (person, cards)) =
        ours.iter().find(|(_, (_, cards))| !cards.is_empty()).copied().unwrap();
    let by_card = pair.check(Presented::Card(*cards.last().unwrap()), date);
    match &by_card.member_data {
        MemberData::Opened(record) => {
            assert_eq!(record.person.name, person.name);
            assert_eq!(&record.key, key);
        }
        other => panic!("card did not open the record: {other:?}"),
    }
    let by_key = pair.check(Presented::Key { key: key.clone(), birth: person.birth_date }, date);
    assert!(matches!(&by_key.member_data, MemberData::Opened(r) if r.person.name == person.name));
    // The same with the Argon2id secrets derived beforehand (the runtime does it off the
    // node's thread).
    let params = pair.clinic.key_store().key_params(key.insurer);
    assert_eq!(params, vec![KdfParams::LIGHT]);
    let secrets = vec![(
        params[0],
        shikaku_core::seal::key_secrets(key, person.birth_date, params[0]).unwrap(),
    )];
    let derived = pair
        .check(Presented::KeyDerived { key: key.clone(), birth: person.birth_date, secrets }, date);
    assert!(matches!(&derived.member_data, MemberData::Opened(r) if r.person.name == person.name));
    assert_eq!(derived.answer.query, by_key.answer.query);
    assert_eq!(by_key.answer.code, by_card.answer.code);
    // A wrong birth date opens nothing and finds nobody.
    let wrong =
        pair.check(Presented::Key { key: key.clone(), birth: person.birth_date.add_days(1) }, date);
    assert_eq!(wrong.answer.code, AnswerCode::NoMatch);
    assert_eq!(wrong.member_data, MemberData::NoMember);

    // The check records name the member by tag and reference only, in schema 2, and the hub
    // holds them; still no identifying text in any clinic file.
    pair.sync();
    let own = Namespace::Clinic(pair.clinic_signer.node_id());
    assert_eq!(pair.hub.namespace_state(&own), pair.clinic.namespace_state(&own));
    let bytes = all_bytes(&pair.clinic_disk);
    assert_eq!(
        found(&bytes, &all),
        Vec::<String>::new(),
        "after checks clinic files hold member data"
    );
    // The search would see them: the hub's (plaintext-holding) world does contain them.
    let plain: Vec<u8> = w.plain.iter().flat_map(|e| e.canonical_bytes().to_vec()).collect();
    assert!(found(&plain, &needles(key, person)).contains(&person.name));
    // The hub (insurer side) opens any record with the data keys it holds.
    let reference = by_card.answer.member.clone().unwrap();
    assert!(shikaku_core::seal::is_member_ref(&reference));
    assert_eq!(pair.hub.open_member_record(&reference).unwrap().person.name, person.name);
}

#[test]
fn sealed_answers_equal_plaintext_answers_once_opened() {
    let w = worlds(600);
    let mut plain = Pair::new(&w.plain, None, &w);
    let mut sealed = Pair::new(&w.sealed, Some(&w.keys), &w);
    let people = people(&w.plain);
    let mut compared = 0;
    let dates = [Date::from_ymd(2025, 6, 1).unwrap(), Date::from_ymd(2026, 10, 1).unwrap()];
    let insurer = plain.insurer;
    for (key, (person, cards)) in people.iter().filter(|(k, _)| k.insurer == insurer) {
        for date in dates {
            let mut presented = vec![Presented::Key { key: key.clone(), birth: person.birth_date }];
            presented.extend(cards.iter().map(|c| Presented::Card(*c)));
            for p in presented {
                let a = plain.check(p.clone(), date).answer;
                let b = sealed.check(p, date).answer;
                assert_eq!(
                    (
                        a.code,
                        a.coverage,
                        a.copay_tenths,
                        a.end_reason,
                        a.dependant,
                        a.limit_category.clone()
                    ),
                    (
                        b.code,
                        b.coverage,
                        b.copay_tenths,
                        b.end_reason,
                        b.dependant,
                        b.limit_category.clone()
                    ),
                    "sealed and plaintext answers differ for a member on {date}"
                );
                assert_eq!(a.member.is_some(), b.member.is_some());
                compared += 1;
            }
        }
    }
    assert!(compared > 200, "compared {compared}");
}

/// An insurer-signed erasure order for `reference`, numbered after the insurer's last event.
pub fn erasure_order(w: &Worlds, hub: &Node<FaultDirectory>, reference: &MemberKey) -> SignedEvent {
    let insurer = reference.insurer;
    let signer = shikaku_gen::insurer_signer(SEED, insurer);
    let last = w
        .sealed
        .iter()
        .filter(|e| e.event().namespace == Namespace::Insurer(insurer))
        .max_by_key(|e| e.event().origin_seq)
        .unwrap();
    signer
        .sign_sealed(Event {
            namespace: Namespace::Insurer(insurer),
            origin: last.event().origin,
            origin_seq: last.event().origin_seq + 1,
            hlc: shikaku_core::Hlc::new(w.now_ms, 0),
            author: signer.public(),
            body: EventBody::MemberErased {
                member: reference.clone(),
                key_tags: hub.key_store().key_tags_of(reference),
                reason: "retention period over".into(),
            },
        })
        .unwrap()
}

#[test]
fn an_erasure_order_destroys_the_keys_everywhere_and_no_stale_store_brings_them_back() {
    let w = worlds(400);
    let mut pair = Pair::new(&w.sealed, Some(&w.keys), &w);
    let people = people(&w.plain);
    let (key, (person, cards)) = people
        .iter()
        .find(|(k, (_, cards))| k.insurer == pair.insurer && !cards.is_empty())
        .unwrap();
    let card = *cards.last().unwrap();
    let date = today(pair.now_ms);
    let before = pair.check(Presented::Card(card), date);
    let reference = before.answer.member.clone().unwrap();
    assert!(matches!(before.member_data, MemberData::Opened(_)));
    let stale_keys = pair.clinic_disk.clone().read_whole(shikaku_node::KEYS_FILE).unwrap().unwrap();

    let order = erasure_order(&w, &pair.hub, &reference);
    pair.hub.import(pair.now_ms, &[order]).unwrap();
    assert!(pair.hub.key_store().is_erased(&reference));
    assert!(pair.hub.open_member_record(&reference).is_none(), "the hub's data key is gone");
    pair.sync();
    assert!(pair.clinic.key_store().is_erased(&reference));

    // Checks answer from the pseudonymous facts and say the data is erased; by card and by
    // key and birth date alike. Nothing opens.
    let after = pair.check(Presented::Card(card), date);
    assert_eq!(after.member_data, MemberData::Erased);
    assert_eq!(after.answer.code, before.answer.code, "eligibility facts still answer");
    let by_key = pair.check(Presented::Key { key: key.clone(), birth: person.birth_date }, date);
    assert_eq!(by_key.member_data, MemberData::Erased);
    assert_eq!(by_key.answer.member.as_ref(), Some(&reference));
    assert!(pair.clinic.key_store().wraps_for(&shikaku_core::seal::card_tag(&card).0).is_empty());

    // A stale key store (a backup from before the erasure) put back: reopening applies the
    // erasure again from the log, and a merge with the hub's store cannot resurrect it.
    pair.clinic_disk.write_atomic(shikaku_node::KEYS_FILE, &stale_keys).unwrap();
    pair.reopen_clinic();
    let reopened = pair.check(Presented::Card(card), date);
    assert_eq!(reopened.member_data, MemberData::Erased, "a stale key store resurrected a key");
    pair.sync();
    assert_eq!(pair.check(Presented::Card(card), date).member_data, MemberData::Erased);
    // The hub, given the clinic's stale store back as an import, refuses the erased wraps.
    let stale = shikaku_core::keystore::KeyStore::decode_file(&stale_keys).unwrap();
    pair.hub.import_keys(&stale).unwrap();
    assert!(pair.hub.key_store().is_erased(&reference));
    assert!(pair.hub.open_member_record(&reference).is_none());

    // Every log still verifies: the ciphertext stays, ids and chains are untouched.
    let own = Namespace::Insurer(pair.insurer);
    assert_eq!(pair.hub.namespace_state(&own), pair.clinic.namespace_state(&own));
    // The reconciliation report still balances — every check of the erased member re-derives
    // from pseudonymous facts — and lists the member as erased.
    let events = pair.hub.ledger().read_from(1, usize::MAX).unwrap();
    let reveal =
        shikaku_core::sealer::reveal_from(events.iter().map(|(_, e)| e), pair.hub.key_store());
    assert!(
        !reveal.members.contains_key(&reference),
        "the hub reveals nothing of the erased member"
    );
    let report = shikaku_reconcile::compute_revealed(
        &events,
        &Default::default(),
        pair.now_ms,
        Some(&reveal),
    );
    assert_eq!(report.totals.erased_members, 1);
    assert_eq!(report.erased, vec![reference.to_string()]);
    assert_eq!(report.totals.checks, 4, "the checks synced before the last check");
    // It balances: the check answered with the record opened, before the erasure, used the
    // birth date the erasure destroyed, so it is listed as not re-derivable; the checks after
    // it re-derive exactly.
    assert_eq!(report.totals.rederived + report.not_rederivable.len() as u64, report.totals.checks);
    assert_eq!(report.not_rederivable.len(), 1, "{:?}", report.not_rederivable);
    assert!(shikaku_reconcile::render_text(&report).contains("members' data erased"));
    let _ = CheckQuery::Card(card);
}

fn files_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn real_processes_a_synced_clinic_names_no_one_and_an_erasure_reaches_it_over_quic() {
    use crate::cli::{run, temp_dir};
    use crate::field_trial::{finish, serve, sigterm};
    use shikaku_api::client::http_get;
    use std::time::Duration;
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let dir = temp_dir("privacy-real");
    let (ca, hub, clinic) = (dir.join("ca"), dir.join("hub"), dir.join("clinic"));
    let (stream, store, keys, public) =
        (dir.join("w.jsonl"), dir.join("insurers.keys"), dir.join("keys"), dir.join("public.keys"));
    assert_eq!(run(&["ca", "init", "--ca-dir", &p(&ca)]).0, 0);
    for (data, role, name) in [(&hub, "hub", "hub-1"), (&clinic, "clinic", "front-desk")] {
        let args = [
            "--data-dir",
            &p(data),
            "ca",
            "issue",
            "--ca-dir",
            &p(&ca),
            "--role",
            role,
            "--name",
            name,
        ];
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&[
        "gen",
        "--members",
        "300",
        "--seed",
        &SEED.to_string(),
        "--sealed",
        "--kdf",
        "light",
        "--key-store-out",
        &p(&store),
        "--insurer-key-dir",
        &p(&keys),
        "--keys-out",
        &p(&public),
        "--out",
        &p(&stream),
    ]);
    assert_eq!(code, 0, "{err}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, _, err) = run(&[
        "--data-dir",
        &p(&hub),
        "hub",
        "import",
        &p(&stream),
        "--key-store",
        &p(&store),
        "--insurer-keys",
        &p(&public),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("data keys and"), "{err}");

    // The plaintext world of the same seed: what must never appear at the clinic.
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(300, SEED)).unwrap();
    let people = people(&g.events);
    let insurer = g.insurers[0].0;
    let all: Vec<String> = people.iter().flat_map(|(k, (p, _))| needles(k, p)).collect();

    let (hub_child, first, hub_lines) = serve(&[
        "--data-dir",
        &p(&hub),
        "hub",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--insurer-keys",
        &p(&public),
    ]);
    let addr = first.split(" listening on ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let hub_api = loop {
        let line = hub_lines.recv_timeout(Duration::from_secs(30)).unwrap();
        if let Some(rest) = line.split("insurer API on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let (clinic_child, first, _clinic_lines) = serve(&[
        "--data-dir",
        &p(&clinic),
        "clinic",
        "serve",
        "--hub",
        &addr,
        "--insurer",
        &insurer.to_string(),
        "--api",
        "127.0.0.1:0",
    ]);
    let url = first.split("check API on ").nth(1).unwrap().trim().to_owned();
    let start = shikaku_cli::clock::Stopwatch::start();
    let ask = |path: &str| http_get(&url, path).unwrap_or_default();
    let (key, (person, cards)) =
        people.iter().find(|(k, (_, cards))| k.insurer == insurer && !cards.is_empty()).unwrap();
    let card = cards.last().unwrap().to_string();
    loop {
        let answer = ask(&format!("/v1/check?card={card}"));
        if ask("/v1/health").contains("\"in_sync\":true")
            && answer.contains("\"member_data\":\"opened\"")
        {
            assert!(answer.contains(&person.name), "the present patient's name is shown: {answer}");
            break;
        }
        assert!(start.seconds() < 60.0, "the clinic syncs and opens the record: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let by_key = ask(&format!("/v1/check?member={key}&birth_date={}", person.birth_date));
    assert!(
        by_key.contains("\"member_data\":\"opened\"") && by_key.contains(&person.name),
        "{by_key}"
    );
    let (status, without_birth) =
        shikaku_api::client::http_request(&url, "GET", &format!("/v1/check?member={key}"), None)
            .unwrap();
    assert_eq!(status, 400, "{without_birth}");
    assert!(
        without_birth.contains("birth date"),
        "a sealed insurer needs the birth date: {without_birth}"
    );
    let metrics_before = ask("/metrics");

    // The insurer orders the member erased; the order goes into the running hub and reaches
    // the clinic over QUIC.
    let order = dir.join("erase.jsonl");
    let (code, _, err) = run(&[
        "insurer",
        "erase",
        "--key",
        &p(&keys.join(format!("{insurer}.key"))),
        "--member",
        &key.to_string(),
        "--birth-date",
        &person.birth_date.to_string(),
        "--kdf",
        "light",
        "--reason",
        "wrongful registration",
        "--out",
        &p(&order),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["hub", "import", &p(&order), "--hub", &hub_api]);
    assert_eq!(code, 0, "{out}{err}");
    let start = shikaku_cli::clock::Stopwatch::start();
    let erased = loop {
        let answer = ask(&format!("/v1/check?card={card}"));
        if answer.contains("\"member_data\":\"erased\"") {
            break answer;
        }
        assert!(start.seconds() < 60.0, "the erasure reaches the clinic: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!erased.contains(&person.name), "{erased}");
    let by_key = ask(&format!("/v1/check?member={key}&birth_date={}", person.birth_date));
    assert!(by_key.contains("\"member_data\":\"erased\""), "{by_key}");
    assert!(!by_key.contains(&person.name), "{by_key}");
    let metrics = ask("/metrics");

    sigterm(&clinic_child);
    let (code, clinic_out, clinic_err) = finish(clinic_child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{clinic_err}");
    sigterm(&hub_child);
    let (code, _, hub_err) = finish(hub_child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{hub_err}");

    // Zero hits in every file of the clinic's data directory, its logs and its metrics.
    let files = files_under(&clinic);
    assert!(files.len() > 10_000);
    assert_eq!(found(&files, &all), Vec::<String>::new(), "clinic files hold member data");
    let logs = format!("{clinic_out}{clinic_err}{metrics_before}{metrics}");
    assert_eq!(
        found(logs.as_bytes(), &all),
        Vec::<String>::new(),
        "clinic logs or metrics hold member data"
    );
    // Not even the hub (the insurer's side) can open the erased record any more: its data key
    // is gone from the hub's key store file too.
    let hub_store = shikaku_core::keystore::KeyStore::decode_file(
        &std::fs::read(hub.join("log").join(shikaku_node::KEYS_FILE)).unwrap(),
    )
    .unwrap();
    let reference = shikaku_core::seal::member_ref(
        &shikaku_core::sealer::ref_secret_of(&shikaku_gen::insurer_signer(SEED, insurer)),
        key,
    );
    assert!(hub_store.is_erased(&reference));
    assert!(hub_store.data_key(&reference).is_none());
    assert!(hub_store.data_keys_len() > 100, "only that member's key is gone");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ledger_upgrade_seals_a_schema_1_hub_ledger_in_place() {
    use crate::cli::{run, temp_dir};
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let dir = temp_dir("privacy-upgrade");
    let (stream, keys, data) = (dir.join("w.jsonl"), dir.join("keys"), dir.join("hub"));
    let (code, _, err) = run(&[
        "gen",
        "--members",
        "300",
        "--seed",
        "5",
        "--insurer-key-dir",
        &p(&keys),
        "--out",
        &p(&stream),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&["--data-dir", &p(&data), "ledger", "import", &p(&stream)]).0, 0);
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(300, 5)).unwrap();
    let people = people(&g.events);
    let all: Vec<String> = people.iter().flat_map(|(k, (p, _))| needles(k, p)).collect();
    assert!(!found(&files_under(&data.join("log")), &all).is_empty(), "schema 1 is plaintext");

    // Without a key for every insurer nothing is touched.
    let one = keys.join(format!("{}.key", g.insurers[0].0));
    let (code, _, err) = run(&[
        "--data-dir",
        &p(&data),
        "ledger",
        "upgrade",
        "--insurer-key",
        &p(&one),
        "--kdf",
        "light",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no insurer key given for insurer"), "{err}");
    assert!(!data.join("log.schema1").exists());

    let (code, out, err) = run(&[
        "--data-dir",
        &p(&data),
        "ledger",
        "upgrade",
        "--insurer-key",
        &p(&keys),
        "--kdf",
        "light",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upgraded") && out.contains("in the clear"), "{out}");
    assert!(data.join("log.schema1").exists());
    assert_eq!(found(&files_under(&data.join("log")), &all), Vec::<String>::new(), "sealed");
    let (code, out, err) = run(&["--data-dir", &p(&data), "ledger", "verify"]);
    assert_eq!(code, 0, "{out}{err}");

    // The upgraded hub opens every member with its data keys; every event is now schema 2.
    let taken = shikaku_node::data_dir::DataDir::take(&data, false).unwrap().unwrap();
    let mut config = NodeConfig::new(Role::Hub, "hub");
    config.insurers = g.insurers.iter().map(|(i, _)| *i).collect();
    let (hub, _lock) = taken.open_node(config).unwrap();
    assert_eq!(hub.ledger().len() as usize, g.events.len());
    let mut opened = 0;
    for (key, (person, _)) in people.iter().take(40) {
        let signer = shikaku_gen::insurer_signer(5, key.insurer);
        let reference =
            shikaku_core::seal::member_ref(&shikaku_core::sealer::ref_secret_of(&signer), key);
        let record = hub.open_member_record(&reference).expect("the hub opens the record");
        assert_eq!((&record.key, &record.person.name), (key, &person.name));
        opened += 1;
    }
    assert_eq!(opened, 40);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_clinic_cannot_bring_the_hub_an_erasure_order_it_cannot_vouch_for() {
    // The erased set merges both ways, so a clinic's orders reach the hub — but only orders
    // signed by a key registered for the insurer, or already in the hub's ledger. An order a
    // tampered clinic signed itself is refused one by one (counted), the session goes on, and
    // nothing is erased at the hub.
    let w = worlds(300);
    let mut pair = Pair::new(&w.sealed, Some(&w.keys), &w);
    let people = people(&w.plain);
    let (key, _) = people.iter().find(|(k, _)| k.insurer == pair.insurer).unwrap();
    let signer = shikaku_gen::insurer_signer(SEED, key.insurer);
    let reference =
        shikaku_core::seal::member_ref(&shikaku_core::sealer::ref_secret_of(&signer), key);
    let forger = Signer::derived("shikaku test forger", b"clinic");
    let forged = forger
        .sign_sealed(Event {
            namespace: Namespace::Insurer(key.insurer),
            origin: forger.node_id(),
            origin_seq: 1,
            hlc: shikaku_core::Hlc::new(w.now_ms, 0),
            author: forger.public(),
            body: EventBody::MemberErased {
                member: reference.clone(),
                key_tags: vec![],
                reason: "forged".into(),
            },
        })
        .unwrap();
    // Planted in the clinic's own key store file (whoever holds the disk can do that).
    let mut disk = pair.clinic_disk.clone();
    let mut store = shikaku_core::keystore::KeyStore::decode_file(
        &disk.read_whole(shikaku_node::KEYS_FILE).unwrap().unwrap(),
    )
    .unwrap();
    store.erase(&forged).unwrap();
    disk.write_atomic(shikaku_node::KEYS_FILE, &store.encode_file()).unwrap();
    pair.reopen_clinic();
    let refused_before = pair.hub.counters().refusals.get("invalid").copied().unwrap_or(0);
    pair.sync();
    assert!(
        !pair.hub.key_store().is_erased(&reference),
        "a clinic's forged order erased a member at the hub"
    );
    assert!(pair.hub.open_member_record(&reference).is_some());
    let refused = pair.hub.counters().refusals.get("invalid").copied().unwrap_or(0);
    assert_eq!(refused, refused_before + 1, "the order is refused and counted");
}
