//! `shikaku demo`: a hub and three clinics on loopback QUIC, one scripted day, narrated.
//!
//! Generate an S-tier world (20,000 members) → a throwaway CA issues certificates → the hub
//! imports the insurers' events → three clinics (each with its reception page and API) sync
//! over QUIC with mutual TLS → online checks; an insurer publishes a job change, pushed live →
//! the hub becomes unreachable; insurers keep publishing (a late retirement report, a copay
//! correction) → offline checks, including the patient who just changed jobs (invalid → a
//! self-declaration → pending successor) → the hub is back; the new insurer registers the
//! patient → every clinic converges (namespace fingerprints equal to the hub's) → the
//! reconciliation report says which offline answers were wrong and what is owed → the demo
//! searches a clinic's data directory for the names it showed, and finds none.
//!
//! The world is sealed (event schema 2): clinics hold member data only as ciphertext and open
//! the present patient's record with the card, or the member key and birth date. The demo uses
//! light Argon2id parameters and says so.
//!
//! Every check goes through a clinic's HTTP API, the same one the reception page uses. The
//! demo's clock is shifted so the day reads 08:50–13:00 JST today; all nodes share it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use shikaku_core::{
    AnswerCode, CardToken, CheckQuery, Date, EndReason, Event, EventBody, Freshness, Hlc, HlcClock,
    InsurerNumber, MemberKey, Namespace, NodeId, Person, Projection, Replication, SignedEvent,
};
use shikaku_net::{Clock, Runtime};
use shikaku_node::Level;

use crate::clock::{self, Stopwatch};
use crate::serve;
use shikaku_api::cluster;
use shikaku_api::staff::StaffRole;
use shikaku_core::keystore::KeyStore;
use shikaku_core::seal::KdfParams;
use shikaku_core::sealer::{ref_secret_of, Sealer};
use shikaku_core::text::hhmm;

/// Arguments of `shikaku demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Persons on the generated insurer roster (S tier: 20,000).
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Seed of the generated world.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Working directory for the nodes' ledgers, certificates and the report (default: a fresh
    /// temporary directory, removed afterwards unless --keep-running).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Stay up after the story (hub, clinics, reception pages, report) until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub keep_running: bool,
}

/// The clinics of the story.
const CLINICS: [&str; 3] = ["sakura-clinic", "midori-pharmacy", "aoba-hospital"];
/// The receptionist on duty at each clinic.
const RECEPTIONISTS: [&str; 3] = ["aiko", "ren", "yui"];

struct Narrator<'a> {
    out: &'a mut dyn Write,
    step: u32,
    clock: Arc<Clock>,
}

impl Narrator<'_> {
    fn step(&mut self, title: &str) -> Result<()> {
        self.step += 1;
        let time = hhmm(self.clock.now_ms());
        writeln!(self.out, "\n── {}. [{time}] {title}", self.step)?;
        self.out.flush()?;
        Ok(())
    }

    fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "   {text}")?;
        self.out.flush()?;
        Ok(())
    }

    fn block(&mut self, caption: &str, text: &str) -> Result<()> {
        writeln!(self.out, "\n   ▶ {caption}")?;
        for line in text.lines() {
            writeln!(self.out, "     {line}")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<i32> {
    let total = Stopwatch::start();
    let (workdir, temporary) = match &args.workdir {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "shikaku-demo-{}-{}",
                std::process::id(),
                clock::now_ms()
            ));
            (dir, true)
        }
    };
    if workdir.join("hub").exists() {
        bail!("{} already holds a demo; give an empty or new --workdir", workdir.display());
    }
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("creating demo directory {}", workdir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = story(args, &workdir, temporary && !args.keep_running, &rt, out);
    drop(rt);
    if temporary && !args.keep_running {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    result?;
    writeln!(out, "\nDemo finished in {:.1} s.", total.seconds())?;
    Ok(0)
}

/// The patients of the story, found in the generated world.
struct Cast {
    /// Valid, checked online.
    regular: (CardToken, MemberKey),
    /// Changes jobs: loses coverage at A before the outage, registered by B after it.
    job_changer: (CardToken, MemberKey, Person),
    /// Retirement reported late, during the outage.
    retired: (CardToken, MemberKey),
    /// Copay ratio corrected during the outage.
    copay: (CardToken, MemberKey),
    /// No coverage today; declares a new employer that never registers them.
    uncovered: MemberKey,
}

fn find_cast(events: &[SignedEvent], today: Date) -> Result<Cast> {
    let mut projection = Projection::new(Replication::All);
    let mut persons: BTreeMap<MemberKey, Person> = BTreeMap::new();
    for e in events {
        projection.apply(e);
        if let EventBody::MemberRegistered { member, person, .. } = &e.event().body {
            persons.insert(member.clone(), person.clone());
        }
    }
    let fresh = Freshness::default();
    let mut valid: Vec<(CardToken, MemberKey)> = Vec::new();
    let mut uncovered = None;
    let mut seen = std::collections::BTreeSet::new();
    for e in events {
        let EventBody::CardLinked { card, member } = &e.event().body else { continue };
        if !seen.insert(*card) {
            continue;
        }
        let a = projection.check(&CheckQuery::Card(*card), today, Hlc(u64::MAX), fresh);
        if uncovered.is_none() && member.branch == 0 {
            let by_key = CheckQuery::Member(member.clone());
            let k = projection.check(&by_key, today, Hlc(u64::MAX), fresh);
            if k.code == AnswerCode::Invalid && k.conflicts.is_empty() {
                uncovered = Some(member.clone());
            }
        }
        let employer = !member.insurer.is_late_stage_elderly()
            && !member.insurer.is_national_health_insurance();
        if a.code == AnswerCode::Valid
            && a.member.as_ref() == Some(member)
            && member.branch == 0
            && employer
            && a.copay_tenths == Some(3)
            && a.conflicts.is_empty()
            && a.dependant == Some(false)
            && valid.iter().all(|(_, m)| m != member)
        {
            valid.push((*card, member.clone()));
        }
        if valid.len() >= 4 && uncovered.is_some() {
            break;
        }
    }
    if valid.len() < 4 {
        bail!("the generated world has too few valid employees' cards; try another --seed");
    }
    let uncovered =
        uncovered.ok_or_else(|| anyhow!("no uncovered member in the generated world"))?;
    let job = valid[1].clone();
    let person = persons
        .get(&job.1)
        .cloned()
        .ok_or_else(|| anyhow!("no registration found for {}", job.1))?;
    Ok(Cast {
        regular: valid[0].clone(),
        job_changer: (job.0, job.1, person),
        retired: valid[2].clone(),
        copay: valid[3].clone(),
        uncovered,
    })
}

/// Signs insurer events as the insurers do (their keys from the world's seed).
struct Publisher {
    seed: u64,
    origin: NodeId,
    seq: u64,
    clock: HlcClock,
    /// Each insurer's sealer, and the key store its new data keys and wraps go into (handed
    /// to the hub with the events).
    sealers: BTreeMap<InsurerNumber, Sealer>,
    keys: KeyStore,
    rng: shikaku_gen::Rng,
}

impl Publisher {
    fn sign(
        &mut self,
        now_ms: u64,
        insurer: InsurerNumber,
        body: EventBody,
    ) -> Result<SignedEvent> {
        let signer = shikaku_gen::insurer_signer(self.seed, insurer);
        let sealer = self
            .sealers
            .entry(insurer)
            .or_insert_with(|| Sealer::new(ref_secret_of(&signer), KdfParams::LIGHT));
        let rng = &mut self.rng;
        let mut fill = |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(8) {
                let word = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        };
        let body = sealer.seal_body(&body, &BTreeMap::new(), &mut self.keys, &mut fill)?;
        self.seq += 1;
        Ok(signer.sign_sealed(Event {
            namespace: Namespace::Insurer(insurer),
            origin: self.origin,
            origin_seq: self.seq,
            hlc: self.clock.tick(now_ms)?,
            author: signer.public(),
            body,
        })?)
    }
}

/// What reception types or scans: a card token or a member key.
enum Presented<'a> {
    Card(&'a CardToken),
    Key(&'a MemberKey),
}

/// A receptionist's login at one clinic.
struct Login {
    staff: String,
    password: String,
    cookie: String,
}

/// Reception: what patients present, every name the screens showed today, and who is logged
/// in where.
struct Reception {
    /// The world's people (the birth date a patient gives with a member key).
    persons: BTreeMap<MemberKey, Person>,
    /// Names shown on reception screens (searched for in a clinic's files at the end).
    shown: Vec<String>,
    /// By clinic API URL.
    logins: BTreeMap<String, Login>,
    /// Logins again after a session ended idle.
    relogins: u64,
}

impl Reception {
    /// A request at a clinic's API in the receptionist's session, logging in again when the
    /// session ended (15 idle minutes).
    fn request(
        &mut self,
        clinic: &cluster::Clinic,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let login = self
            .logins
            .get_mut(&clinic.url)
            .ok_or_else(|| anyhow!("nobody is logged in at {}", clinic.name))?;
        let (status, reply) = shikaku_api::client::request_in_session(
            &clinic.url,
            method,
            path,
            body,
            &login.cookie,
        )?;
        if status != 401 {
            return Ok((status, reply));
        }
        login.cookie = shikaku_api::client::login(&clinic.url, &login.staff, &login.password)?;
        self.relogins += 1;
        shikaku_api::client::request_in_session(&clinic.url, method, path, body, &login.cookie)
    }

    /// Asks a clinic's API (a member key with the patient's birth date); returns the answer's
    /// code, its text and the whole reply.
    fn ask(
        &mut self,
        clinic: &cluster::Clinic,
        who: Presented<'_>,
        date: Date,
    ) -> Result<(String, String, serde_json::Value)> {
        let path = match who {
            Presented::Card(card) => {
                shikaku_api::client::check_path_for(&CheckQuery::Card(*card), Some(date), None)
            }
            Presented::Key(key) => {
                let birth = self
                    .persons
                    .get(key)
                    .map(|p| p.birth_date)
                    .ok_or_else(|| anyhow!("no birth date known for a demo patient"))?;
                shikaku_api::client::check_path_for(
                    &CheckQuery::Member(key.clone()),
                    Some(date),
                    None,
                ) + &format!("&birth_date={birth}")
            }
        };
        let (status, body) = self.request(clinic, "GET", &path, None)?;
        if status != 200 {
            bail!("{}", shikaku_api::client::status_error(&clinic.url, &path, status, &body));
        }
        let value: serde_json::Value =
            serde_json::from_str(&body).context("the answer is not JSON")?;
        let code = value["answer"]["code"].as_str().unwrap_or_default().to_owned();
        let text = value["text"].as_str().unwrap_or_default().to_owned();
        if let Some(name) = value["person"]["name"].as_str() {
            if !self.shown.iter().any(|n| n == name) {
                self.shown.push(name.to_owned());
            }
        }
        Ok((code, text, value))
    }
}

fn story(
    args: &DemoArgs,
    workdir: &Path,
    removed_on_exit: bool,
    rt: &tokio::runtime::Runtime,
    out: &mut dyn Write,
) -> Result<()> {
    let _enter = rt.enter();
    // The demo day: today (JST), starting 08:50; every node reads this shifted clock.
    let wall = clock::now_ms();
    let today = Date::from_unix_ms_jst(wall);
    let clock = Clock::wall();
    let start = today.start_unix_ms_jst() + (8 * 60 + 50) * 60_000;
    clock.advance(start as i64 - wall as i64);
    let level = match std::env::var("SHIKAKU_LOG") {
        Ok(_) => shikaku_net::runtime::log_level_from_env(),
        Err(_) => Level::Warn,
    };
    let mut n = Narrator { out, step: 0, clock: clock.clone() };
    writeln!(n.out, "shikaku demo — an insurer hub and three clinics on loopback QUIC, one day")?;
    writeln!(n.out, "(work directory {}; nothing here is real personal data)", workdir.display())?;

    n.step("An S-tier insurer world is generated")?;
    let watch = Stopwatch::start();
    let config = shikaku_gen::GenConfig::new(args.members, args.seed);
    let generated = shikaku_gen::generate(&config)?;
    n.say(&format!(
        "{} members across {} insurers → {} signed events ({:.1} s)",
        args.members,
        generated.insurers.len(),
        generated.events.len(),
        watch.seconds()
    ))?;
    let cast = find_cast(&generated.events, today)?;
    let watch = Stopwatch::start();
    let (sealed_events, insurer_keys) =
        shikaku_gen::seal_generated(&generated, args.seed, KdfParams::LIGHT)?;
    n.say(&format!(
        "member data sealed (event schema 2): names, kana, addresses, birth dates and member keys travel and rest at clinics only as ciphertext, {} per-member data keys stay with the insurers ({:.1} s)",
        insurer_keys.data_keys_len(),
        watch.seconds()
    ))?;
    n.say(&format!(
        "  (this demo seals with light Argon2id parameters, {}, to start in seconds; production uses {})",
        KdfParams::LIGHT,
        KdfParams::RECEPTION
    ))?;
    let mut desk = Reception {
        persons: persons_of(&generated.events),
        shown: Vec::new(),
        logins: BTreeMap::new(),
        relogins: 0,
    };
    let sealed_world = shikaku_gen::Generated {
        events: sealed_events,
        hub: generated.hub,
        insurers: generated.insurers.clone(),
        last_hlc: generated.last_hlc,
    };

    n.step("A throwaway CA certifies the hub and three clinics (mutual TLS)")?;
    let ca_dir = workdir.join("ca");
    cluster::certify(workdir, &ca_dir, &CLINICS)?;
    n.say(&format!("CA in {}; node keys and certificates in each node's tls/", ca_dir.display()))?;

    n.step("The hub imports the insurers' events")?;
    let watch = Stopwatch::start();
    let hub_dir = workdir.join("hub");
    let local = cluster::Local { root: workdir, clock: &clock, level };
    let mut hub = cluster::start_hub(&local, &sealed_world)?;
    hub.runtime.with_node(|h, _| h.import_keys(&insurer_keys))?;
    n.say(&format!(
        "{} events verified and stored durably ({:.1} s); insurer keys registered for {} insurers",
        hub.runtime.with_node(|h, _| h.ledger().len()),
        watch.seconds(),
        generated.insurers.len()
    ))?;
    let (hub_rt, hub_addr) = (hub.runtime.clone(), hub.addr);
    let hub_api = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let report_url = format!("http://{}/v1/reconcile", hub_api.local_addr()?);
    // The insurer's staff have accounts scoped to their insurers; every use is recorded.
    let mut accounts = shikaku_api::insurer_auth::AccountsFile::load(&hub_dir)?;
    let counter_insurer = cast.job_changer.1.insurer;
    let counter_token = accounts.add("counter-desk", &[counter_insurer], clock.now_ms())?;
    accounts.save(&hub_dir)?;
    let hub_auth =
        Arc::new(shikaku_api::insurer_auth::HubAuth::open(&hub_dir, true, clock.clone())?);
    let hub_router = shikaku_api::hub::hub_router_with(hub_rt.clone(), hub_auth);
    let hub_server = tokio::spawn(async move {
        let options = shikaku_api::serve::ApiOptions::default();
        shikaku_api::serve::serve_guarded(hub_api, hub_router, &options).await
    });
    let hub_url = report_url.trim_end_matches("/v1/reconcile").to_owned();
    n.say(&format!(
        "hub listening on {hub_addr} (QUIC, ALPN shikaku/1); insurer API at {report_url}"
    ))?;

    n.step("Three clinics start, each with its reception page, and sync")?;
    // Each clinic's admin has given reception an account (Argon2id password, role reception)
    // and kept one for themself (role admin).
    let mut staff_passwords = Vec::new();
    for (name, receptionist) in CLINICS.iter().zip(RECEPTIONISTS) {
        let dir = workdir.join(name);
        let mut file = shikaku_api::staff::StaffFile::load(&dir)?;
        let password = shikaku_api::staff::new_password()?;
        file.add(receptionist, &[StaffRole::Reception], &password, clock.now_ms())?;
        let admin_password = shikaku_api::staff::new_password()?;
        file.add("director", &[StaffRole::Admin], &admin_password, clock.now_ms())?;
        file.save(&dir)?;
        staff_passwords.push((password, admin_password));
    }
    let watch = Stopwatch::start();
    let all_insurers: std::collections::BTreeSet<InsurerNumber> =
        generated.insurers.iter().map(|(i, _)| *i).collect();
    let mut clinics: Vec<cluster::Clinic> = Vec::new();
    for name in CLINICS {
        clinics.push(cluster::start_clinic(
            rt,
            &local,
            name,
            all_insurers.clone(),
            cluster::keys_of(&generated),
            hub_addr,
        )?);
    }
    cluster::wait_until("every clinic is in sync", 300.0, || {
        clinics.iter().all(|c| c.runtime.with_node(|n, _| n.in_sync()))
    })?;
    for c in &clinics {
        let events = c.runtime.with_node(|n, _| n.ledger().len());
        n.say(&format!("{:<16} reception page {}/   {events} events, in sync", c.name, c.url))?;
    }
    n.say(&format!(
        "all three verified every signature and hold a signed completeness receipt ({:.1} s)",
        watch.seconds()
    ))?;
    // The first clinic's receipt computer talks to it through the terminal's folder
    // interface, as it would to the real terminal.
    let oqs = workdir.join(format!("{}-receipt-computer", CLINICS[0]));
    let folder = shikaku_api::ovs::OvsFolder::start(
        clinics[0].runtime.clone(),
        shikaku_api::ovs::OvsOptions::new(&oqs, &workdir.join(CLINICS[0])),
    )?;
    n.say(&format!(
        "{}'s receipt computer uses the terminal's folder interface: requests in {}, answers in {}",
        CLINICS[0],
        oqs.join("req").display(),
        oqs.join("res").display()
    ))?;

    clock.advance(20 * 60_000);
    n.step("Morning: reception logs in")?;
    for ((c, receptionist), (password, _)) in
        clinics.iter().zip(RECEPTIONISTS).zip(&staff_passwords)
    {
        let cookie = shikaku_api::client::login(&c.url, receptionist, password)?;
        desk.logins.insert(
            c.url.clone(),
            Login { staff: receptionist.to_owned(), password: password.clone(), cookie },
        );
        n.say(&format!(
            "{:<16} {receptionist} logs in (POST /v1/login: an HttpOnly, Secure, SameSite=Strict session cookie that ends after 15 idle minutes)",
            c.name
        ))?;
    }
    let wrong = shikaku_api::client::login(&clinics[0].url, RECEPTIONISTS[0], "not-the-password");
    n.say(&format!(
        "a mistyped password is refused: {}",
        wrong
            .err()
            .map(|e| e.to_string().rsplit(": ").next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    ))?;
    n.say("every check, declaration and consent from now on is signed with the receptionist's pseudonymous staff id")?;

    n.step("Morning: checks online")?;
    let (_, text, _) = desk.ask(&clinics[0], Presented::Card(&cast.regular.0), today)?;
    n.block(&format!("{}: a regular patient's card", clinics[0].name), &text)?;
    let (_, text, _) = desk.ask(&clinics[2], Presented::Card(&cast.copay.0), today)?;
    n.block(&format!("{}: another patient", clinics[2].name), &text)?;
    let answer = folder_request(&oqs, &cast.regular.1, &desk, today, "rc-0001")?;
    n.block(
        &format!("{}: the receipt computer drops a request file for the regular patient (insurance-card data and birth date) and reads the answer", clinics[0].name),
        &answer,
    )?;

    clock.advance(30 * 60_000);
    n.step("An insurer reports a job change; the hub pushes it live")?;
    let mut publisher = Publisher {
        seed: args.seed,
        origin: generated.hub,
        seq: generated.events.iter().map(|e| e.event().origin_seq).max().unwrap_or(0),
        clock: HlcClock::resume(generated.last_hlc),
        sealers: BTreeMap::new(),
        keys: KeyStore::new([0xde; 16]),
        rng: shikaku_gen::Rng::new(args.seed ^ 0xdead_5ea1),
    };
    let (job_card, old_key, person) = cast.job_changer.clone();
    let job_day = today.add_days(-4);
    let ended = publisher.sign(
        clock.now_ms(),
        old_key.insurer,
        EventBody::CoverageEnded {
            member: old_key.clone(),
            loss_date: job_day,
            reason: EndReason::JobChange,
        },
    )?;
    publish(&hub_rt, std::slice::from_ref(&ended), &publisher.keys)?;
    let pushed = cluster::wait_until("every clinic holds the job change", 30.0, || {
        clinics
            .iter()
            .all(|c| c.runtime.with_node(|n, _| n.ledger().position_of(&ended.id()).is_some()))
    })?;
    n.say(&format!(
        "insurer {} ended {}'s coverage on {job_day} (job change); all three clinics had it {:.2} s later",
        old_key.insurer, old_key, pushed
    ))?;

    clock.advance(10 * 60_000);
    n.step("Outage: the hub becomes unreachable")?;
    let outage_ms = clock.now_ms();
    hub.stop(rt);
    cluster::wait_until("every clinic notices", 30.0, || {
        clinics.iter().all(|c| c.runtime.with_node(|n, _| !n.in_sync()))
    })?;
    n.say("the hub's QUIC endpoint is closed; the clinics keep retrying in the background")?;
    n.say("insurers keep publishing to the hub meanwhile:")?;
    let retired_key = cast.retired.1.clone();
    let retro_loss = today.add_days(-10);
    let copay_key = cast.copay.1.clone();
    let copay_from = today.add_days(-2);
    clock.advance(5 * 60_000);
    let during = vec![
        publisher.sign(
            clock.now_ms(),
            retired_key.insurer,
            EventBody::CoverageEnded {
                member: retired_key.clone(),
                loss_date: retro_loss,
                reason: EndReason::Retirement,
            },
        )?,
        publisher.sign(
            clock.now_ms(),
            copay_key.insurer,
            EventBody::CopayRatioSet {
                member: copay_key.clone(),
                effective: copay_from,
                copay_tenths: 2,
            },
        )?,
    ];
    publish(&hub_rt, &during, &publisher.keys)?;
    n.say(&format!(
        "  · insurer {}: {retired_key} retired on {retro_loss} (reported late, today)",
        retired_key.insurer
    ))?;
    n.say(&format!(
        "  · insurer {}: {copay_key}'s copay ratio is 2 tenths from {copay_from} (correction)",
        copay_key.insurer
    ))?;

    clock.advance(35 * 60_000);
    n.step("Offline checks (answers say how old they are)")?;
    let (_, text, _) = desk.ask(&clinics[0], Presented::Card(&cast.retired.0), today)?;
    n.block(
        &format!("{}: the patient whose retirement the clinic has not heard of", clinics[0].name),
        &text,
    )?;
    let (_, text, _) = desk.ask(&clinics[2], Presented::Card(&cast.copay.0), today)?;
    n.block(&format!("{}: the patient whose copay was corrected", clinics[2].name), &text)?;
    let answer = folder_request(&oqs, &cast.regular.1, &desk, today, "rc-0002")?;
    n.block(
        &format!(
            "{}: the receipt computer asks again through the folder during the outage",
            clinics[0].name
        ),
        &answer,
    )?;
    let (_, health) = desk.request(&clinics[1], "GET", "/v1/health", None)?;
    let health: serde_json::Value = serde_json::from_str(&health)?;
    n.say(&format!(
        "{}'s reception banner: amber, \"Offline since {}\" (staleness {} s)",
        clinics[1].name,
        hhmm(health["last_hub_sync_ms"].as_u64().unwrap_or(outage_ms)),
        health["staleness_s"]
    ))?;

    clock.advance(10 * 60_000);
    n.step("The patient who just changed jobs, offline")?;
    let (_, text, _) = desk.ask(&clinics[1], Presented::Card(&job_card), today)?;
    n.block(
        &format!("{}: the card of the patient who changed jobs (this clinic replicates 8 insurers, not all of Japan's, so a newer coverage could exist elsewhere)", clinics[1].name),
        &text,
    )?;
    let (code, text, checked) = desk.ask(&clinics[1], Presented::Key(&old_key), today)?;
    // The clinic names the member by the reference its check found (the ledger is sealed).
    let reference = checked["answer"]["query"]["member"].as_str().unwrap_or_default().to_owned();
    n.block("their eligibility certificate (資格確認書), by member key", &text)?;
    if code != "invalid" {
        bail!("the job changer's old member key answered {code}, not invalid");
    }
    let new_insurer = self_declarations(
        &mut n,
        &mut desk,
        &clinics,
        &generated,
        (&old_key, &reference, job_day),
        (&cast, today),
    )?;

    clock.advance(70 * 60_000);
    n.step("Recovery: the hub is reachable again; the new insurer registers the patient")?;
    hub.restart()?;
    let new_key = MemberKey {
        insurer: new_insurer,
        symbol: "8801".to_owned(),
        number: format!("{}", 40_000 + args.seed % 10_000),
        branch: 0,
    };
    let registered = vec![
        publisher.sign(
            clock.now_ms(),
            new_insurer,
            EventBody::MemberRegistered {
                member: new_key.clone(),
                person,
                relationship: shikaku_core::Relationship::Insured,
            },
        )?,
        publisher.sign(
            clock.now_ms(),
            new_insurer,
            EventBody::CoverageStarted {
                member: new_key.clone(),
                start: job_day,
                copay_tenths: 3,
                elderly_certificate: false,
            },
        )?,
        publisher.sign(
            clock.now_ms(),
            new_insurer,
            EventBody::CardLinked { card: job_card, member: new_key.clone() },
        )?,
    ];
    publish(&hub_rt, &registered, &publisher.keys)?;
    n.say(&format!(
        "insurer {new_insurer} registers them as {new_key}, covered from {job_day} (retroactively: reported four days late)"
    ))?;
    let waited = cluster::wait_until("every clinic is back in sync", 120.0, || {
        clinics.iter().all(|c| c.runtime.with_node(|n, _| n.in_sync()))
    })?;
    n.say(&format!(
        "all three clinics reconnected and synced {waited:.1} s after the hub came back"
    ))?;

    n.step("Convergence")?;
    converge(&mut n, &clinics, &hub_rt)?;
    let (_, text, _) = desk.ask(&clinics[1], Presented::Card(&job_card), today)?;
    n.block(&format!("{}: the job changer's card, online again", clinics[1].name), &text)?;
    let (_, text, _) = desk.ask(&clinics[1], Presented::Key(&old_key), today)?;
    n.block("and their old member key", &text)?;

    clock.advance(10 * 60_000);
    n.step("Reconciliation at the insurer")?;
    // The last checks' records reach the hub asynchronously: the report waits for them.
    cluster::wait_until("the hub holds every clinic's records", 60.0, || {
        records_at_hub(&clinics, &hub_rt)
    })?;
    reconciliation(
        &mut n,
        rt,
        (&hub_rt, &hub_dir, &report_url),
        &clinics,
        (workdir, removed_on_exit),
    )?;

    n.step("The member's access report: who checked the patient who changed jobs")?;
    let path = format!(
        "/v1/members/{}/accesses?format=table",
        form_urlencoded::byte_serialize(old_key.to_string().as_bytes()).collect::<String>()
    );
    let table = shikaku_api::client::http_get_with_token(&hub_url, &path, Some(&counter_token))?;
    n.block(
        &format!(
            "insurer {counter_insurer}'s counter, account counter-desk (GET {hub_url}/v1/members/…/accesses; the same as `shikaku member accesses`)"
        ),
        &table,
    )?;
    let html_path = path.replace("format=table", "format=html");
    let page =
        shikaku_api::client::http_get_with_token(&hub_url, &html_path, Some(&counter_token))?;
    let page_file = workdir.join("member-accesses.html");
    std::fs::write(&page_file, page)?;
    n.say(&format!("the printable page to hand the member: {}", page_file.display()))?;
    if !table.contains("offline") || !table.contains("contradicted") {
        bail!("the access report shows no offline or no contradicted check; the story went wrong");
    }
    let (_, admin_password) = &staff_passwords[1];
    let admin = shikaku_api::client::login(&clinics[1].url, "director", admin_password)?;
    let (_, audit) =
        shikaku_api::client::request_in_session(&clinics[1].url, "GET", "/v1/audit", None, &admin)?;
    let audit: serde_json::Value = serde_json::from_str(&audit).context("the audit view")?;
    for row in audit["staff"].as_array().into_iter().flatten().filter(|r| r["checks"] != 0) {
        n.say(&format!(
            "{}'s admin view (GET /v1/audit): {} made {} checks, {} by member key; {}",
            clinics[1].name,
            row["name"].as_str().unwrap_or_default(),
            row["checks"],
            row["key_lookups"],
            if row["flagged"] == true { "FLAGGED" } else { "no anomaly flag" }
        ))?;
    }
    if desk.relogins > 0 {
        n.say(&format!(
            "(reception logged in again {} after sessions ended idle over the outage)",
            shikaku_core::text::count(desk.relogins, "time", "times")
        ))?;
    }
    if !args.keep_running {
        n.say("these pages answer only while the demo runs: `shikaku demo --keep-running` keeps")?;
        n.say("the hub and clinics up after the story, until Ctrl-C")?;
    }

    if args.keep_running {
        n.say("")?;
        n.say("Everything stays up until Ctrl-C (the day's clock keeps running).")?;
        rt.block_on(crate::serve::shutdown_signal())?;
    }
    n.step("Shutting down cleanly")?;
    rt.block_on(folder.shutdown());
    for c in &mut clinics {
        c.shutdown(rt);
    }
    hub_server.abort();
    hub.stop(rt);
    n.say("clinics and hub closed their sessions and persisted their receipts")?;

    n.step("What a stolen reception PC gives away")?;
    let clinic_dir = workdir.join(CLINICS[0]);
    let (files, bytes, found) = search_names(&clinic_dir, &desk.shown)?;
    n.say(&format!(
        "searched all {files} files ({bytes} bytes) of {}'s data directory for the {} names shown on today's screens: {} found",
        CLINICS[0],
        desk.shown.len(),
        found.len()
    ))?;
    if desk.shown.is_empty() {
        bail!("no name was shown today; the story went wrong");
    }
    if !found.is_empty() {
        bail!("a clinic file holds a name shown today: sealing failed");
    }
    n.say("the ledger holds every member of 8 insurers, sealed: without the card or the key and birth date, no name")?;
    Ok(())
}

/// A receipt computer's request through the folder interface: a request file by insurance-card
/// data renamed into `req`, its answer read from `res` (and removed, as the receipt computer
/// does); the answer's telling lines.
fn folder_request(
    oqs: &Path,
    key: &MemberKey,
    desk: &Reception,
    today: Date,
    id: &str,
) -> Result<String> {
    let birth = desk.persons.get(key).map(|p| p.birth_date).context("the patient's birth date")?;
    let kind = shikaku_api::ovs::RequestKind::CardData { key: key.clone(), birth };
    let xml = shikaku_api::ovs::xml::request_xml(&kind, today, id, Some(false));
    let name = format!("OQSsiimm01req_{}.xml", id.replace('-', ""));
    let staging = oqs.join(format!(".{name}"));
    std::fs::write(&staging, xml)?;
    std::fs::rename(&staging, oqs.join("req").join(&name))?;
    let answer_path = oqs.join("res").join(shikaku_api::ovs::xml::answer_name(&name));
    let watch = Stopwatch::start();
    while !answer_path.exists() {
        if watch.seconds() > 30.0 {
            bail!("the folder interface gave no answer to {name} in 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let answer = std::fs::read_to_string(&answer_path)?;
    std::fs::remove_file(&answer_path)?;
    let wanted = [
        "ArbitraryFileIdentifier",
        "SegmentOfResult",
        "ProcessingResultCode",
        "ProcessingResultMessage",
        "QualificationValidity",
        "Name",
        "InsuredPartialContributionRatio",
        "Offline",
        "LastHubSyncTime",
        "Freshness",
    ];
    let mut lines = vec![format!("req/{name} → res/{}", shikaku_api::ovs::xml::answer_name(&name))];
    for line in answer.lines() {
        let trimmed = line.trim();
        if wanted
            .iter()
            .any(|w| trimmed.starts_with(&format!("<{w}>")) || trimmed == format!("<{w}/>"))
        {
            lines.push(format!("  {trimmed}"));
        }
    }
    Ok(lines.join("\n"))
}

/// Two self-declarations at reception: the job changer names their new insurer (which
/// registers them later), another patient names an employer that never does. Returns the job
/// changer's new insurer.
fn self_declarations(
    n: &mut Narrator<'_>,
    desk: &mut Reception,
    clinics: &[cluster::Clinic],
    generated: &shikaku_gen::Generated,
    (old_key, reference, job_day): (&MemberKey, &str, Date),
    (cast, today): (&Cast, Date),
) -> Result<InsurerNumber> {
    let new_insurer = generated
        .insurers
        .iter()
        .map(|(i, _)| *i)
        .find(|i| {
            *i != old_key.insurer && !i.is_national_health_insurance() && !i.is_late_stage_elderly()
        })
        .ok_or_else(|| anyhow!("the world has a single employer insurer"))?;
    let body = serde_json::json!({
        "member": reference,
        "declared_insurer": new_insurer.to_string(),
        "declared_start": job_day.to_string(),
    });
    let (status, reply) =
        desk.request(&clinics[1], "POST", "/v1/declarations", Some(&body.to_string()))?;
    if status != 201 {
        bail!("the self-declaration was refused ({status}): {reply}");
    }
    n.say(&format!(
        "the patient says they joined insurer {new_insurer} on {job_day}: reception records a self-declaration (POST /v1/declarations → {status})"
    ))?;
    let (_, text, _) = desk.ask(&clinics[1], Presented::Key(old_key), today)?;
    n.block("checked again", &text)?;
    let (code, _, checked) = desk.ask(&clinics[2], Presented::Key(&cast.uncovered), today)?;
    let body = serde_json::json!({
        "member": checked["answer"]["query"]["member"].as_str().unwrap_or_default(),
        "declared_start": today.add_days(-1).to_string(),
    });
    let (status, reply) =
        desk.request(&clinics[2], "POST", "/v1/declarations", Some(&body.to_string()))?;
    if status != 201 {
        bail!("the second self-declaration was refused ({status}): {reply}");
    }
    n.say(&format!(
        "{}: another patient answers {code} and declares a new employer, who never registers them",
        clinics[2].name
    ))?;
    Ok(new_insurer)
}

/// Whether the hub holds every clinic's own records.
fn records_at_hub(clinics: &[cluster::Clinic], hub_rt: &Runtime) -> bool {
    clinics.iter().all(|c| {
        let (me, own) = c.runtime.with_node(|n, _| {
            let me = Namespace::Clinic(n.node_id());
            (me, n.namespace_state(&me))
        });
        hub_rt.with_node(|h, _| h.namespace_state(&me)) == own
    })
}

/// "Convergence": every clinic's namespaces carry the hub's fingerprints and its records,
/// offline checks included, are at the hub.
fn converge(n: &mut Narrator<'_>, clinics: &[cluster::Clinic], hub_rt: &Runtime) -> Result<()> {
    cluster::wait_until("the hub holds every clinic's records", 60.0, || {
        records_at_hub(clinics, hub_rt)
    })?;
    for c in clinics {
        let (namespaces, same, own, offline) = c.runtime.with_node(|n, _| {
            let namespaces = n.namespaces();
            let same = namespaces
                .iter()
                .filter(|ns| {
                    hub_rt.with_node(|h, _| h.namespace_state(ns)) == n.namespace_state(ns)
                })
                .count();
            let me = Namespace::Clinic(n.node_id());
            let own = n.namespace_state(&me);
            (
                namespaces.len(),
                same,
                own,
                n.counters()
                    .checks_by
                    .iter()
                    .filter(|((_, online), _)| !online)
                    .map(|(_, c)| *c)
                    .sum::<u64>(),
            )
        });
        n.say(&format!(
            "{:<16} {same}/{namespaces} namespaces with the hub's fingerprint; its {} records (incl. {}) at the hub",
            c.name,
            own.count(),
            shikaku_core::text::count(offline, "offline check", "offline checks")
        ))?;
        if same != namespaces {
            bail!("{} has not converged with the hub", c.name);
        }
    }
    Ok(())
}

/// "Reconciliation at the insurer": the report over the hub's ledger, printed and written as
/// HTML and JSON beside the work directory's nodes.
fn reconciliation(
    n: &mut Narrator<'_>,
    rt: &tokio::runtime::Runtime,
    (hub_rt, hub_dir, report_url): (&Runtime, &Path, &str),
    clinics: &[cluster::Clinic],
    (workdir, removed_on_exit): (&Path, bool),
) -> Result<()> {
    // Clinics are named from their certificates, as the hub saw them (and remembered for a
    // `shikaku reconcile` on its stopped ledger).
    serve::save_clinic_names(hub_dir, &hub_rt.with_node(|h, _| h.peer_names().clone()))?;
    let report = rt.block_on(shikaku_api::hub::hub_report(hub_rt))?;
    for line in shikaku_reconcile::render_text(&report).lines() {
        writeln!(n.out, "   {line}")?;
    }
    let html = workdir.join("reconciliation.html");
    let json = workdir.join("reconciliation.json");
    std::fs::write(&html, shikaku_reconcile::render_html(&report))?;
    std::fs::write(&json, shikaku_reconcile::render(&report, "json")?)?;
    if report.totals.contradicted_offline == 0 {
        bail!("the reconciliation found no contradicted offline answer; the story went wrong");
    }
    n.say("")?;
    n.say(&format!(
        "report: {report_url}?format=html (also {} and {}{})",
        html.display(),
        json.display(),
        if removed_on_exit {
            "; the work directory is removed on exit: give --workdir to keep it"
        } else {
            ""
        }
    ))?;
    for c in clinics {
        n.say(&format!("reception page of {:<16} {}/", c.name, c.url))?;
    }
    Ok(())
}

/// Stores insurer events at the running hub (its import path: keys and namespaces checked),
/// which pushes them live to connected clinics.
fn publish(hub: &Runtime, events: &[SignedEvent], keys: &KeyStore) -> Result<()> {
    hub.with_node(|h, _| h.import_keys(keys)).context("the hub refused the insurer's keys")?;
    hub.with_node(|h, now| h.import(now, events))
        .context("the hub refused the insurer's events")?;
    Ok(())
}

/// Every person of the plaintext world, by member key (what the demo's patients tell reception).
fn persons_of(events: &[SignedEvent]) -> BTreeMap<MemberKey, Person> {
    let mut persons = BTreeMap::new();
    for e in events {
        if let EventBody::MemberRegistered { member, person, .. }
        | EventBody::DemographicsChanged { member, person, .. } = &e.event().body
        {
            persons.insert(member.clone(), person.clone());
        }
    }
    persons
}

/// Searches every file under `dir` for each of `names`; returns (files, bytes, names found).
fn search_names(dir: &Path, names: &[String]) -> Result<(u64, u64, Vec<String>)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut found: Vec<String> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).with_context(|| format!("reading {}", at.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files += 1;
            bytes += data.len() as u64;
            for name in names {
                let needle = name.as_bytes();
                if !found.contains(name) && data.windows(needle.len()).any(|w| w == needle) {
                    found.push(name.clone());
                }
            }
        }
    }
    Ok((files, bytes, found))
}
