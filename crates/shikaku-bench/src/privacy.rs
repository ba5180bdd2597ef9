//! `shikaku bench privacy`: what sealing costs and what it protects, in one run — the
//! per-guess cost of the member-key tag (Argon2id) beside the light parameters, the guess space
//! of a realistic insurer and so the core-years to open a stolen clinic ledger in bulk, the
//! insurer's cost of sealing (members/s), the fold's speed and memory per member sealed beside
//! schema 1, and reception's check latency at an offline clinic by card and by member key
//! (the KDF included) beside the projection alone.

use std::io::Write;

use anyhow::{Context, Result};
use shikaku_core::keystore::Presented;
use shikaku_core::seal::{self, KdfParams};
use shikaku_core::{Date, EventBody, Freshness, Hlc, MemberKey, Projection, Replication, Signer};
use shikaku_log::storage::Directory as _;
use shikaku_net::clock::Stopwatch;
use shikaku_node::{Node, NodeConfig, Role};

use crate::alloc_counter::live_bytes;
use crate::percentile;

/// Seconds in a year (365.25 days).
const YEAR_S: f64 = 365.25 * 86_400.0;

/// The guess space of a realistic 20,000-member health insurance society, stated.
pub struct GuessSpace {
    /// Symbols (記号, employer office codes) an attacker must try: those in use, assumed known.
    pub symbols: f64,
    /// Numbers (番号) per symbol an attacker must try.
    pub numbers: f64,
    /// Branch numbers (枝番) in use.
    pub branches: f64,
    /// Birth dates: every day of 0–100 years.
    pub birth_dates: f64,
}

impl GuessSpace {
    /// 1,000 symbols in use (known to the attacker), numbers 1–999 within a symbol (members
    /// per office are 20 on average, but numbers are issued over decades and not reused),
    /// branches 00–05, and 36,525 birth dates.
    pub const REALISTIC: GuessSpace =
        GuessSpace { symbols: 1_000.0, numbers: 999.0, branches: 6.0, birth_dates: 36_525.0 };

    /// Every guess.
    pub fn size(&self) -> f64 {
        self.symbols * self.numbers * self.branches * self.birth_dates
    }
}

fn time_kdf(params: KdfParams, runs: usize) -> Result<Vec<u64>> {
    let key: MemberKey = "06130017:12:1001:00".parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut micros = Vec::with_capacity(runs);
    for i in 0..runs {
        let watch = Stopwatch::start();
        let birth = Date(3000 + i as i32);
        std::hint::black_box(seal::key_secrets(&key, birth, params)?);
        micros.push(watch.nanos() / 1000);
    }
    micros.sort_unstable();
    Ok(micros)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Runs the benchmark.
pub fn run(
    members: usize,
    fold_members: usize,
    checks: usize,
    params: KdfParams,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(
        out,
        "bench privacy: chosen parameters {params}; light (tests, demo) {}",
        KdfParams::LIGHT
    )?;

    // 1. Per-guess cost.
    let chosen = time_kdf(params, 20)?;
    let light = time_kdf(KdfParams::LIGHT, 200)?;
    let per_guess_s = percentile(&chosen, 0.5) as f64 / 1e6;
    writeln!(
        out,
        "member-key tag, one guess: {params}: p50 {:.1} ms, p99 {:.1} ms; light: p50 {:.3} ms (baseline)",
        ms(percentile(&chosen, 0.5)),
        ms(percentile(&chosen, 0.99)),
        ms(percentile(&light, 0.5))
    )?;

    // 2. Guess space and bulk cost.
    let space = GuessSpace::REALISTIC;
    let guesses = space.size();
    let core_years = guesses * per_guess_s / YEAR_S;
    writeln!(
        out,
        "guess space of a 20,000-member insurer: {} symbols × {} numbers × {} branches × {} birth dates = {:.2e} guesses, each tested against every tag at once (one salt per insurer)",
        space.symbols, space.numbers, space.branches, space.birth_dates, guesses
    )?;
    writeln!(
        out,
        "opening a stolen ledger's member-key tags in bulk: {:.2e} guesses × {:.1} ms = {:.0} core-years (light parameters: {:.1} core-years); the card path rests on the token's 256 bits",
        guesses,
        per_guess_s * 1e3,
        core_years,
        guesses * (percentile(&light, 0.5) as f64 / 1e6) / YEAR_S
    )?;

    // 3. The insurer's cost of sealing, at the chosen parameters.
    let watch = Stopwatch::start();
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, 9))?;
    let gen_s = watch.seconds();
    let watch = Stopwatch::start();
    let (sealed, keys) = shikaku_gen::seal_generated(&g, 9, params)?;
    let seal_s = watch.seconds();
    let registered = keys.data_keys_len();
    let rate = registered as f64 / seal_s;
    writeln!(
        out,
        "sealing {members} members ({} events) at {params}: {seal_s:.1} s = {rate:.1} members/s on one core (generating and signing them in plaintext took {gen_s:.1} s); the M tier's 1.6M members: {:.1} core-hours",
        sealed.len(),
        1_600_000.0 / rate / 3600.0
    )?;

    // 4. Fold speed and memory per member: schema 1 beside schema 2, same world (light
    // parameters: the KDF is not part of the fold).
    let watch = Stopwatch::start();
    let big = shikaku_gen::generate(&shikaku_gen::GenConfig::new(fold_members, 10))?;
    let (big_sealed, _) = shikaku_gen::seal_generated(&big, 10, KdfParams::LIGHT)?;
    writeln!(
        out,
        "fold world: {fold_members} members, {} events (built in {:.1} s)",
        big.events.len(),
        watch.seconds()
    )?;
    for (label, events) in [("schema 1 (baseline)", &big.events), ("schema 2 sealed", &big_sealed)]
    {
        let before = live_bytes();
        let watch = Stopwatch::start();
        let mut projection = Projection::new(Replication::All);
        for event in events.iter() {
            projection.apply(event);
        }
        projection.shrink_to_fit();
        let fold_s = watch.seconds();
        let bytes = live_bytes().saturating_sub(before);
        let bytes_held: usize = events.iter().map(|e| e.canonical_bytes().len() + 64).sum();
        writeln!(
            out,
            "  fold {label}: {:.0} events/s, projection {:.0} bytes per member; events on the wire/disk {:.0} bytes per member",
            events.len() as f64 / fold_s,
            bytes as f64 / fold_members as f64,
            bytes_held as f64 / fold_members as f64
        )?;
        drop(projection);
    }

    // 5. Reception latency at an offline clinic on real files (its check record fsynced).
    let dir = std::env::temp_dir().join(format!("shikaku-bench-privacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let insurer = g.insurers[0].0;
    let clinic = Signer::derived("shikaku bench privacy", b"clinic");
    {
        let mut log = shikaku_log::Log::open(
            shikaku_log::fs::FileDirectory::new(&dir)?,
            shikaku_log::LogConfig::new(clinic.node_id()),
        )?;
        let ours: Vec<_> = sealed
            .iter()
            .filter(|e| e.event().namespace == shikaku_core::Namespace::Insurer(insurer))
            .cloned()
            .collect();
        for chunk in ours.chunks(4096) {
            log.append(chunk)?;
        }
        let mut store = shikaku_core::keystore::KeyStore::new([1; 16]);
        let (items, _) = keys.items_since(0, usize::MAX, |i| i == insurer);
        store
            .merge_items(items, |_| {
                Err(shikaku_core::keystore::KeyStoreError::Order("none".into()))
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        log.directory_mut().write_atomic(shikaku_node::KEYS_FILE, &store.encode_file())?;
    }
    let mut config = NodeConfig::new(Role::Clinic, "bench");
    config.insurers = [insurer].into_iter().collect();
    let mut node = Node::open(shikaku_log::fs::FileDirectory::new(&dir)?, clinic, config)?;
    let mut patients: Vec<(MemberKey, Date, Option<shikaku_core::CardToken>)> = Vec::new();
    let mut cards: std::collections::BTreeMap<MemberKey, shikaku_core::CardToken> =
        Default::default();
    for e in &g.events {
        if let EventBody::CardLinked { card, member } = &e.event().body {
            cards.insert(member.clone(), *card);
        }
    }
    for e in &g.events {
        if let EventBody::MemberRegistered { member, person, .. } = &e.event().body {
            if member.insurer == insurer {
                patients.push((member.clone(), person.birth_date, cards.get(member).copied()));
            }
        }
    }
    let date = Date::from_ymd(2026, 10, 1).unwrap_or(Date(0));
    let now_ms = g.last_hlc.physical_ms() + 60_000;
    let (mut by_card, mut by_key, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    let mut rng = shikaku_gen::Rng::new(11);
    let mut opened = 0u64;
    for i in 0..checks {
        let (key, birth, card) = &patients[rng.below(patients.len() as u64) as usize];
        if let Some(card) = card {
            let watch = Stopwatch::start();
            let answer =
                node.check_presented(now_ms + i as u64, &[(Presented::Card(*card), date)])?;
            by_card.push(watch.nanos() / 1000);
            opened +=
                u64::from(matches!(answer[0].member_data, shikaku_node::MemberData::Opened(_)));
        }
        let watch = Stopwatch::start();
        let answer = node.check_presented(
            now_ms + i as u64,
            &[(Presented::Key { key: key.clone(), birth: *birth }, date)],
        )?;
        by_key.push(watch.nanos() / 1000);
        opened += u64::from(matches!(answer[0].member_data, shikaku_node::MemberData::Opened(_)));
        // Baseline: the projection alone on the pseudonymous query (no KDF, no record).
        let query = answer[0].answer.query.clone();
        let watch = Stopwatch::start();
        std::hint::black_box(node.projection().check(
            &query,
            date,
            Hlc(u64::MAX),
            Freshness::default(),
        ));
        baseline.push(watch.nanos() / 1000);
    }
    for list in [&mut by_card, &mut by_key, &mut baseline] {
        list.sort_unstable();
    }
    writeln!(
        out,
        "reception at an offline clinic ({} members of insurer {insurer}, real files, each check's record fsynced; {opened} records opened):",
        patients.len()
    )?;
    for (label, list) in [
        ("projection alone (baseline)", &baseline),
        ("by card (tag, unwrap, open)", &by_card),
        ("by member key + birth date (Argon2id, unwrap, open)", &by_key),
    ] {
        writeln!(
            out,
            "  {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} checks)",
            ms(percentile(list, 0.5)),
            ms(percentile(list, 0.99)),
            ms(list.last().copied().unwrap_or(0)),
            list.len()
        )?;
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
