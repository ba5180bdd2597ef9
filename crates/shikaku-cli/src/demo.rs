//! `shikaku demo`: the ledger story on embedded defaults, narrated.
//!
//! Generate an S-tier insurer world → import it through the real import path → check a card on
//! several service dates and record times (including a patient who just changed jobs and whose
//! new insurer has not registered them yet) → an insurer publishes a retroactive termination →
//! the re-check shows the difference and which earlier answer it contradicts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use shikaku_core::{
    Answer, AnswerCode, CardToken, CheckQuery, Date, EndReason, Event, EventBody, Freshness, Hlc,
    HlcClock, MemberKey, Namespace, Projection, Replication, SignedEvent,
};

use crate::clock::{self, Stopwatch};
use crate::store::Store;
use crate::{import, jsonl, render};

/// Arguments of `shikaku demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Persons on the generated insurer roster (S tier: 20,000).
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Seed of the generated world.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Working directory for the demo's ledger (default: a fresh temporary directory that is
    /// removed afterwards).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
}

struct Narrator<'a> {
    out: &'a mut dyn Write,
    step: u32,
}

impl Narrator<'_> {
    fn step(&mut self, title: &str) -> Result<()> {
        self.step += 1;
        writeln!(self.out, "\n── {}. {title}", self.step)?;
        Ok(())
    }

    fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "   {text}")?;
        Ok(())
    }

    fn answer(&mut self, caption: &str, answer: &Answer) -> Result<()> {
        writeln!(self.out, "\n   ▶ {caption}")?;
        for line in render::answer(answer).lines() {
            writeln!(self.out, "     {line}")?;
        }
        Ok(())
    }
}

fn end_of_day(date: Date) -> Hlc {
    Hlc::end_of_ms(date.add_days(1).start_unix_ms_jst().saturating_sub(1))
}

/// The job-change story found in the generated data.
struct JobChange {
    card: CardToken,
    old: MemberKey,
    new: MemberKey,
    day: Date,
    end_recorded: Hlc,
    registered: Hlc,
}

fn find_job_change(events: &[SignedEvent]) -> Option<JobChange> {
    use std::collections::HashMap;
    let mut card_of: HashMap<&MemberKey, CardToken> = HashMap::new();
    let mut ended: HashMap<&MemberKey, (Date, Hlc)> = HashMap::new();
    let mut started: HashMap<&MemberKey, (Date, Hlc)> = HashMap::new();
    for event in events {
        match &event.event().body {
            EventBody::CardLinked { card, member } => {
                card_of.entry(member).or_insert(*card);
            }
            EventBody::CoverageEnded { member, loss_date, reason: EndReason::JobChange } => {
                ended.insert(member, (*loss_date, event.event().hlc));
            }
            EventBody::CoverageStarted { member, start, .. } => {
                started.insert(member, (*start, event.event().hlc));
            }
            _ => {}
        }
    }
    let mut best: Option<JobChange> = None;
    for event in events {
        let EventBody::CardLinked { card, member: new } = &event.event().body else { continue };
        let Some((start, registered)) = started.get(new) else { continue };
        for (old, (loss, end_recorded)) in &ended {
            if card_of.get(old) != Some(card) || *old == new || loss != start {
                continue;
            }
            let end_day = Date::from_unix_ms_jst(end_recorded.physical_ms());
            let registered_day = Date::from_unix_ms_jst(registered.physical_ms());
            let lag = registered_day.0 - end_day.0.max(loss.0);
            let dependant_free = old.branch == 0;
            if lag >= 10 && dependant_free && best.as_ref().is_none_or(|b| b.old > **old) {
                best = Some(JobChange {
                    card: *card,
                    old: (*old).clone(),
                    new: new.clone(),
                    day: *loss,
                    end_recorded: *end_recorded,
                    registered: *registered,
                });
            }
        }
    }
    best
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
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("creating demo directory {}", workdir.display()))?;
    let result = story(args, &workdir, out);
    if temporary {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    result?;
    writeln!(out, "\nDemo finished in {:.1} s.", total.seconds())?;
    Ok(0)
}

fn story(args: &DemoArgs, workdir: &std::path::Path, out: &mut dyn Write) -> Result<()> {
    let mut n = Narrator { out, step: 0 };
    writeln!(n.out, "shikaku demo — an offline-first eligibility ledger, ledger-only story")?;
    writeln!(n.out, "(ledger in {}; nothing here is real personal data)", workdir.display())?;

    n.step("An insurer world is generated (S tier)")?;
    let watch = Stopwatch::start();
    let config = shikaku_gen::GenConfig::new(args.members, args.seed);
    let generated = shikaku_gen::generate(&config)?;
    n.say(&format!(
        "{} members across {} insurers → {} signed events from {} to {} ({:.1} s)",
        args.members,
        generated.insurers.len(),
        generated.events.len(),
        config.start,
        config.end,
        watch.seconds()
    ))?;
    let stream = workdir.join("insurer-stream.jsonl");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&stream)?);
        for event in &generated.events {
            writeln!(file, "{}", jsonl::encode(event))?;
        }
        file.flush()?;
    }

    n.step("The clinic imports the stream into its ledger")?;
    let watch = Stopwatch::start();
    let mut rejected = Vec::new();
    let summary = import(workdir, &stream.to_string_lossy(), &mut rejected)?;
    n.say(&format!("{summary}; every signature and id verified ({:.1} s)", watch.seconds()))?;
    let mut store = Store::open(workdir)?;
    let projection = store.projection(Replication::All)?;
    let now_ms = clock::now_ms();
    let fresh = Freshness { now_ms, last_hub_sync_ms: None, hub_position: None };

    n.step("A patient who just changed jobs")?;
    let story = find_job_change(&store.events()?).ok_or_else(|| {
        anyhow!("the generated world has no job change with registration lag; try another --seed")
    })?;
    let card = CheckQuery::Card(story.card);
    let end_day = Date::from_unix_ms_jst(story.end_recorded.physical_ms()).max(story.day);
    let registered_day = Date::from_unix_ms_jst(story.registered.physical_ms());
    n.say(&format!(
        "Left employer insurer {} on {}; the new insurer {} registered them only on {} ({} days later).",
        story.old.insurer,
        story.day,
        story.new.insurer,
        registered_day,
        registered_day.0 - story.day.0
    ))?;
    let before = story.day.add_days(-7);
    n.answer(
        &format!("Card check for a visit on {before}, as the ledger knows it today"),
        &projection.check(&card, before, Hlc(u64::MAX), fresh),
    )?;
    let lag_as_of = end_of_day(end_day);
    let during_lag = projection.check(&card, end_day, lag_as_of, fresh);
    n.answer(
        &format!(
            "Visit on {end_day}, as known that day (the new insurer has not registered them yet)"
        ),
        &during_lag,
    )?;

    n.step("Reception records the patient's self-declaration")?;
    let clinic = shikaku_core::Signer::derived("shikaku demo clinic", &args.seed.to_le_bytes());
    let mut clinic_clock = HlcClock::new();
    let declared_at = clinic_clock.tick(lag_as_of.physical_ms().saturating_sub(3_600_000))?;
    let declaration = clinic.sign(Event {
        namespace: Namespace::Clinic(clinic.node_id()),
        origin: clinic.node_id(),
        origin_seq: 1,
        hlc: declared_at,
        author: clinic.public(),
        body: EventBody::SelfDeclarationRecorded {
            query: card.clone(),
            declared_insurer: Some(story.new.insurer),
            declared_start: story.day,
        },
    })?;
    let mut projection = projection;
    projection.apply(&declaration);
    store.append(std::slice::from_ref(&declaration))?;
    n.answer(
        &format!("Visit on {end_day}, as known that day, after the self-declaration"),
        &projection.check(&card, end_day, lag_as_of, fresh),
    )?;
    let now_answer = projection.check(&card, end_day, Hlc(u64::MAX), fresh);
    n.answer(
        &format!(
            "The same visit ({end_day}) as known today: the new insurer registered retroactively"
        ),
        &now_answer,
    )?;
    n.answer(
        "The old paper card's member key for that visit, as known today",
        &projection.check(&CheckQuery::Member(story.old.clone()), end_day, Hlc(u64::MAX), fresh),
    )?;

    n.step("A retroactive termination arrives")?;
    let config_end = config.end;
    let service = config_end.add_days(-20);
    let (target_card, target) = find_valid_card(&projection, &generated.events, service, fresh)
        .ok_or_else(|| anyhow!("no valid insured card found for the retroactive story"))?;
    let earlier_as_of = end_of_day(config_end.add_days(-1));
    let earlier = projection.check(&CheckQuery::Card(target_card), service, earlier_as_of, fresh);
    n.answer(
        &format!(
            "The clinic's check on {service}, answered on {} with what it knew then",
            config_end.add_days(-1)
        ),
        &earlier,
    )?;
    let insurer_signer = shikaku_gen::insurer_signer(args.seed, target.insurer);
    let mut insurer_clock = HlcClock::resume(generated.last_hlc);
    let recorded = insurer_clock.tick(now_ms)?;
    let loss = service.add_days(-10);
    let retro = insurer_signer.sign(Event {
        namespace: Namespace::Insurer(target.insurer),
        origin: generated.hub,
        origin_seq: u64::MAX / 2,
        hlc: recorded,
        author: insurer_signer.public(),
        body: EventBody::CoverageEnded {
            member: target.clone(),
            loss_date: loss,
            reason: EndReason::Retirement,
        },
    })?;
    // One writer at a time: release the ledger before the import opens it.
    drop(store);
    let retro_file = workdir.join("retroactive.jsonl");
    std::fs::write(&retro_file, format!("{}\n", jsonl::encode(&retro)))?;
    let mut rejected = Vec::new();
    let summary = import(workdir, &retro_file.to_string_lossy(), &mut rejected)?;
    n.say(&format!(
        "Insurer {} reports, on {}, that coverage ended on {loss} (retirement reported late): {summary}",
        target.insurer,
        render::jst(recorded.physical_ms())
    ))?;
    let store = Store::open(workdir)?;
    let projection = store.projection(Replication::All)?;
    let again_then =
        projection.check(&CheckQuery::Card(target_card), service, earlier_as_of, fresh);
    let again_now = projection.check(&CheckQuery::Card(target_card), service, Hlc(u64::MAX), fresh);
    n.answer(
        &format!("Re-check of the {service} visit as known then (unchanged: history is kept)"),
        &again_then,
    )?;
    n.answer(&format!("Re-check of the {service} visit as known now"), &again_now)?;
    if earlier.code == AnswerCode::Valid && again_now.code != AnswerCode::Valid {
        n.say(&format!(
            "→ The earlier VALID answer is contradicted by event {}: the claim for the {service} visit needs adjusting (copay was {} tenths; the insurer's share is not due).",
            &retro.id().to_string()[..12],
            earlier.copay_tenths.unwrap_or(0)
        ))?;
    }
    let same = again_then.hash() == earlier.hash();
    n.say(&format!(
        "→ Bitemporal: the answer \"as known then\" has the same hash as the original ({}).",
        if same { "identical" } else { "DIFFERENT — this would be a bug" }
    ))?;

    n.step("Across the ledger")?;
    let watch = Stopwatch::start();
    let mut tally: std::collections::BTreeMap<AnswerCode, u64> = Default::default();
    let cards: Vec<CardToken> = store
        .events()?
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::CardLinked { card, .. } => Some(*card),
            _ => None,
        })
        .collect();
    for card in &cards {
        let answer = projection.check(&CheckQuery::Card(*card), service, Hlc(u64::MAX), fresh);
        *tally.entry(answer.code).or_default() += 1;
    }
    let per_check_us = watch.seconds() * 1e6 / cards.len().max(1) as f64;
    n.say(&format!(
        "{} card checks for {service} in {:.2} s ({per_check_us:.1} µs each):",
        cards.len(),
        watch.seconds()
    ))?;
    for (code, count) in tally {
        n.say(&format!(
            "  {:<36} {count}",
            render::code_text(code).split(" (").next().unwrap_or("")
        ))?;
    }
    let conflicts = projection.conflicts(Hlc(u64::MAX));
    n.say(&format!(
        "{} conflicts waiting for an insurer's decision; projection digest {}",
        conflicts.len(),
        &shikaku_core::hex::encode(&projection.digest())[..16]
    ))?;
    Ok(())
}

fn find_valid_card(
    projection: &Projection,
    events: &[SignedEvent],
    service: Date,
    fresh: Freshness,
) -> Option<(CardToken, MemberKey)> {
    events.iter().find_map(|event| {
        let EventBody::CardLinked { card, member } = &event.event().body else { return None };
        if member.branch != 0
            || member.insurer.is_late_stage_elderly()
            || member.insurer.is_national_health_insurance()
        {
            return None;
        }
        let answer = projection.check(&CheckQuery::Card(*card), service, Hlc(u64::MAX), fresh);
        (answer.code == AnswerCode::Valid && answer.member.as_ref() == Some(member))
            .then(|| (*card, member.clone()))
    })
}
