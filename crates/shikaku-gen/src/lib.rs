//! shikaku-gen: a seeded, realistic synthetic insurer event stream.
//!
//! The same `(members, seed)` always gives the same events, byte for byte: the random stream is
//! a seeded xoshiro256**, keys are derived from the seed, and time is simulated (no clock
//! reads). The stream covers a roster of insured persons and dependants across
//! employees' insurers, national health insurance and the late-stage elderly system; card
//! links; job changes whose new insurer registers weeks late; moves between municipalities;
//! retirements; transfers at 75; deaths; copay and limit-category changes; and corrections
//! (voids and supersessions), including wrong-person card linkages that get revoked.

use shikaku_core::{
    CardToken, CheckQuery, Date, EndReason, Event, EventBody, Hlc, HlcClock, InsurerNumber,
    MemberKey, Namespace, NodeId, Person, Relationship, Sex, SignedEvent, Signer,
};
use std::collections::BTreeMap;

pub mod names;
pub mod rng;

pub use rng::Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of persons on the initial roster (dependants included).
    pub members: usize,
    /// Seed for everything.
    pub seed: u64,
    /// First day of the simulated period (roster loaded then).
    pub start: Date,
    /// Day after the last day of the simulated period.
    pub end: Date,
}

impl GenConfig {
    /// The default period: fiscal 2025 up to 2026-11-01.
    pub fn new(members: usize, seed: u64) -> GenConfig {
        GenConfig {
            members,
            seed,
            start: Date::from_ymd(2025, 4, 1).unwrap_or(Date(20_179)),
            end: Date::from_ymd(2026, 11, 1).unwrap_or(Date(20_758)),
        }
    }
}

/// Why generation failed (only for configurations it cannot honour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenError(pub String);

impl std::fmt::Display for GenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GenError {}

/// Kinds of insurer in the generated world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InsurerKind {
    Employees,
    NationalHealth,
    LateStage,
}

#[derive(Debug)]
struct Insurer {
    number: InsurerNumber,
    kind: InsurerKind,
    signer: Signer,
    next_number: u32,
}

/// The generated stream with the identities that signed it.
#[derive(Debug)]
pub struct Generated {
    /// Events sorted by record time `(hlc, id)`.
    pub events: Vec<SignedEvent>,
    /// The hub node that originated the events.
    pub hub: NodeId,
    /// Insurers and their public keys.
    pub insurers: Vec<(InsurerNumber, shikaku_core::AuthorKey)>,
    /// The last record time in the stream.
    pub last_hlc: Hlc,
}

/// One event before it is timestamped and signed.
#[derive(Debug)]
struct Draft {
    record_ms: u64,
    order: u64,
    insurer: usize,
    body: EventBody,
}

/// A person of the generated world and their current coverage.
#[derive(Debug, Clone)]
struct PersonState {
    person: Person,
    card: Option<CardToken>,
    key: MemberKey,
    insurer: usize,
    dependants: Vec<usize>,
    insured_of: Option<usize>,
    covered: bool,
}

struct World {
    rng: Rng,
    insurers: Vec<Insurer>,
    people: Vec<PersonState>,
    drafts: Vec<Draft>,
    order: u64,
    config: GenConfig,
}

const DAY_MS: u64 = 86_400_000;

impl World {
    fn emit(&mut self, insurer: usize, day: Date, body: EventBody) {
        // Office hours 09:00–17:00 JST on the record day.
        let ms = day.start_unix_ms_jst() + 9 * 3_600_000 + self.rng.below(8 * 3_600_000);
        self.emit_at(insurer, ms, body);
    }

    fn emit_at(&mut self, insurer: usize, record_ms: u64, body: EventBody) {
        self.order += 1;
        self.drafts.push(Draft { record_ms, order: self.order, insurer, body });
    }

    fn pick_insurer(&mut self, kind: InsurerKind, except: Option<usize>) -> usize {
        let candidates: Vec<usize> = (0..self.insurers.len())
            .filter(|&i| self.insurers[i].kind == kind && Some(i) != except)
            .collect();
        // Generation always creates at least two insurers of each kind.
        candidates[self.rng.below(candidates.len() as u64) as usize]
    }

    fn new_key(&mut self, insurer: usize, branch: u8, symbol_seed: u32) -> MemberKey {
        let ins = &mut self.insurers[insurer];
        ins.next_number += 1;
        let symbol = match ins.kind {
            InsurerKind::LateStage => String::new(),
            InsurerKind::NationalHealth => format!("国{:03}", symbol_seed % 1000),
            InsurerKind::Employees => format!("{}", 1000 + symbol_seed % 9000),
        };
        let number = format!("{:07}", ins.next_number);
        MemberKey::new(ins.number, &symbol, &number, branch)
            .unwrap_or_else(|_| unreachable_key(ins.number))
    }

    fn copay_for(&self, birth: Date, on: Date, late_stage: bool) -> u8 {
        let age = age_on(birth, on);
        if late_stage {
            if age % 10 == 7 {
                3
            } else {
                1
            }
        } else if !(6..70).contains(&age) {
            2
        } else {
            3
        }
    }

    /// Registers a person at an insurer from `start`, recorded `lag_days` later.
    fn enroll(&mut self, p: usize, insurer: usize, key: MemberKey, start: Date, lag_days: u64) {
        let record = start.add_days(lag_days as i32);
        let record_ms = record.start_unix_ms_jst() + 10 * 3_600_000 + self.rng.below(6 * 3_600_000);
        let relationship = match self.people[p].insured_of {
            Some(insured) => Relationship::Dependant { insured: self.people[insured].key.clone() },
            None => Relationship::Insured,
        };
        let person = self.people[p].person.clone();
        let late_stage = self.insurers[insurer].kind == InsurerKind::LateStage;
        let copay = self.copay_for(person.birth_date, start, late_stage);
        self.people[p].key = key.clone();
        self.people[p].insurer = insurer;
        self.people[p].covered = true;
        self.emit_at(
            insurer,
            record_ms,
            EventBody::MemberRegistered { member: key.clone(), person, relationship },
        );
        self.emit_at(
            insurer,
            record_ms + 1,
            EventBody::CoverageStarted {
                member: key.clone(),
                start,
                copay_tenths: copay,
                elderly_certificate: age_on(self.people[p].person.birth_date, start) >= 70,
            },
        );
        if let Some(card) = self.people[p].card {
            // Most card holders link within a few days of registration.
            let link_ms = record_ms + (1 + self.rng.below(5)) * DAY_MS;
            self.emit_at(insurer, link_ms, EventBody::CardLinked { card, member: key });
        }
    }

    fn end(&mut self, p: usize, loss: Date, reason: EndReason, record: Date) {
        if !self.people[p].covered {
            return;
        }
        self.people[p].covered = false;
        let key = self.people[p].key.clone();
        let insurer = self.people[p].insurer;
        self.emit(
            insurer,
            record,
            EventBody::CoverageEnded { member: key, loss_date: loss, reason },
        );
    }
}

fn unreachable_key(insurer: InsurerNumber) -> MemberKey {
    MemberKey { insurer, symbol: String::new(), number: "0".into(), branch: 0 }
}

/// Age in whole years on a date.
pub fn age_on(birth: Date, on: Date) -> i32 {
    let (by, bm, bd) = birth.ymd();
    let (y, m, d) = on.ymd();
    y - by - i32::from((m, d) < (bm, bd))
}

/// The secret-key context for generated identities (never used for real deployments).
const KEY_CONTEXT: &str = "shikaku-gen 2026-11 synthetic identities";

/// The signer of a generated insurer, reproducible from the seed.
pub fn insurer_signer(seed: u64, insurer: InsurerNumber) -> Signer {
    Signer::from_secret(insurer_secret(seed, insurer))
}

/// The secret signing key of a generated insurer (`gen --insurer-key-dir` writes it as an
/// `insurer key` file, so the synthetic world's insurers can sign and erase).
pub fn insurer_secret(seed: u64, insurer: InsurerNumber) -> [u8; 32] {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend_from_slice(&insurer.value().to_le_bytes());
    blake3::derive_key(KEY_CONTEXT, &material)
}

/// The generated hub's node identity.
pub fn hub_signer(seed: u64) -> Signer {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend_from_slice(b"hub");
    Signer::derived(KEY_CONTEXT, &material)
}

/// A card token derived from the seed and a person index (stands in for a keyed hash of the
/// card certificate's serial; never derived from a My Number).
pub fn card_token(seed: u64, person: usize) -> CardToken {
    let mut hasher = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(person as u64).to_le_bytes());
    CardToken(*hasher.finalize().as_bytes())
}

fn build_insurers(seed: u64, members: usize) -> Vec<Insurer> {
    let mut insurers = Vec::new();
    let mut add = |number: InsurerNumber, kind: InsurerKind| {
        insurers.push(Insurer {
            number,
            kind,
            signer: insurer_signer(seed, number),
            next_number: 0,
        })
    };
    // Employees' insurers: the association (協会けんぽ, law 01) and societies (law 06),
    // about one per 20k members as in Japan.
    add(InsurerNumber::with_check_digit(113_001), InsurerKind::Employees);
    let societies = (members / 20_000).clamp(2, 200) as u32;
    for i in 0..societies {
        add(InsurerNumber::with_check_digit(613_000 + i * 7 + 1), InsurerKind::Employees);
    }
    // Municipal national health insurance (6 digits) and late-stage elderly (law 39).
    let cities = (members / 15_000).clamp(3, 300) as u32;
    for i in 0..cities {
        add(InsurerNumber::nhi_with_check_digit(13_100 + i * 3 + 1), InsurerKind::NationalHealth);
    }
    add(InsurerNumber::with_check_digit(3_913_001), InsurerKind::LateStage);
    add(InsurerNumber::with_check_digit(3_914_001), InsurerKind::LateStage);
    insurers
}

/// Generates the stream. Deterministic in `config`.
pub fn generate(config: &GenConfig) -> Result<Generated, GenError> {
    if config.members == 0 || config.members > 50_000_000 {
        return Err(GenError(format!("--members must be 1..=50000000, got {}", config.members)));
    }
    if config.end <= config.start.add_days(30) {
        return Err(GenError("the generated period must be longer than 30 days".into()));
    }
    let mut world = World {
        rng: Rng::new(config.seed),
        insurers: build_insurers(config.seed, config.members),
        people: Vec::with_capacity(config.members),
        drafts: Vec::with_capacity(config.members * 4),
        order: 0,
        config: config.clone(),
    };
    roster(&mut world);
    life_events(&mut world);
    finish(world)
}

fn random_person(rng: &mut Rng, start: Date, age_years: i32, municipality: u32) -> Person {
    let sex = if rng.below(2) == 0 { Sex::Male } else { Sex::Female };
    let (surname, surname_kana) = names::SURNAMES[rng.below(names::SURNAMES.len() as u64) as usize];
    let given_list = if sex == Sex::Male { names::GIVEN_MALE } else { names::GIVEN_FEMALE };
    let (given, given_kana) = given_list[rng.below(given_list.len() as u64) as usize];
    let birth = start.add_days(-(age_years * 365 + rng.below(365) as i32));
    let (town, block) = names::TOWNS[rng.below(names::TOWNS.len() as u64) as usize];
    Person {
        name: format!("{surname} {given}"),
        kana: format!("{surname_kana} {given_kana}"),
        sex,
        birth_date: birth,
        address: format!("{town}{}丁目{}-{}", 1 + rng.below(5), 1 + rng.below(30), block),
        municipality,
    }
}

fn municipality_of(insurer: &Insurer) -> u32 {
    insurer.number.value() / 10 * 10 % 1_000_000
}

fn roster(world: &mut World) {
    let start = world.config.start;
    let mut p = 0;
    while p < world.config.members {
        let age = world.rng.age();
        let remaining = world.config.members - p;
        let (kind, family) = if age >= 75 {
            (InsurerKind::LateStage, 0)
        } else if (20..65).contains(&age) && world.rng.chance(0.7) {
            let family = if world.rng.chance(0.35) { 1 + world.rng.below(3) as usize } else { 0 };
            (InsurerKind::Employees, family.min(remaining - 1))
        } else {
            let family = if world.rng.chance(0.2) { 1 } else { 0 };
            (InsurerKind::NationalHealth, family.min(remaining - 1))
        };
        let insurer = world.pick_insurer(kind, None);
        let municipality = municipality_of(&world.insurers[insurer]);
        let symbol_seed = world.rng.below(1 << 20) as u32;
        let head = p;
        let person = random_person(&mut world.rng, start, age, municipality);
        let card = world.rng.chance(0.85).then(|| card_token(world.config.seed, head));
        let key = world.new_key(insurer, 0, symbol_seed);
        world.people.push(PersonState {
            person,
            card,
            key: key.clone(),
            insurer,
            dependants: Vec::new(),
            insured_of: None,
            covered: false,
        });
        let enrolled = start.add_days(-(world.rng.below(3650) as i32));
        let lag = world.rng.below(3);
        let joined = enrolled.max(world.people[head].person.birth_date);
        enroll_at(world, head, insurer, key.clone(), joined, lag);
        for branch in 1..=family {
            let dep_age = if branch == 1 && world.rng.chance(0.6) {
                (age + world.rng.below(7) as i32 - 3).clamp(20, 74)
            } else {
                world.rng.below(18) as i32
            };
            let dp = world.people.len();
            let mut person = random_person(&mut world.rng, start, dep_age, municipality);
            // A family shares the head's surname: in kanji and in kana alike (the kana must
            // read the name it stands beside).
            let head_person = &world.people[head].person;
            person.name = format!(
                "{} {}",
                head_person.name.split(' ').next().unwrap_or("佐藤"),
                person.name.split(' ').nth(1).unwrap_or("花子")
            );
            person.kana = format!(
                "{} {}",
                head_person.kana.split(' ').next().unwrap_or("サトウ"),
                person.kana.split(' ').nth(1).unwrap_or("ハナコ")
            );
            let card = world.rng.chance(0.8).then(|| card_token(world.config.seed, dp));
            let ins = &world.insurers[insurer];
            let dep_key = MemberKey::new(ins.number, &key.symbol, &key.number, branch as u8)
                .unwrap_or_else(|_| unreachable_key(ins.number));
            world.people.push(PersonState {
                person,
                card,
                key: dep_key.clone(),
                insurer,
                dependants: Vec::new(),
                insured_of: Some(head),
                covered: false,
            });
            world.people[head].dependants.push(dp);
            let dep_joined = joined.max(world.people[dp].person.birth_date);
            enroll_at(world, dp, insurer, dep_key, dep_joined, lag);
        }
        p = world.people.len();
    }
}

/// Roster enrolments are recorded just before the simulated period starts.
fn enroll_at(world: &mut World, p: usize, insurer: usize, key: MemberKey, start: Date, lag: u64) {
    let record = world.config.start.add_days(-1 - lag as i32);
    let lag_days = (record.0 - start.0).max(0) as u64;
    world.enroll(p, insurer, key, start, lag_days);
}

fn life_events(world: &mut World) {
    let start = world.config.start;
    let days = (world.config.end.0 - start.0) as u64;
    let heads: Vec<usize> =
        (0..world.people.len()).filter(|&p| world.people[p].insured_of.is_none()).collect();
    for p in heads {
        let day = start.add_days(world.rng.below(days - 30) as i32);
        let kind = world.insurers[world.people[p].insurer].kind;
        let birth = world.people[p].person.birth_date;
        let birthday75 = birth.add_years(75);
        let roll = world.rng.unit();
        if kind != InsurerKind::LateStage && birthday75 >= start && birthday75 < world.config.end {
            transfer_at_75(world, p, birthday75);
        } else if kind == InsurerKind::Employees && roll < 0.06 {
            job_change(world, p, day);
        } else if kind == InsurerKind::Employees && roll < 0.08 {
            retirement(world, p, day);
        } else if kind == InsurerKind::NationalHealth && roll < 0.05 {
            move_municipality(world, p, day);
        } else if roll < 0.085 {
            death(world, p, day);
        } else if roll < 0.11 {
            copay_change(world, p, day);
        } else if roll < 0.14 {
            limit_category(world, p, day);
        } else if roll < 0.15 {
            correction(world, p, day);
        } else if roll < 0.152 {
            wrong_person_linkage(world, p, day);
        }
    }
}

fn family_of(world: &World, p: usize) -> Vec<usize> {
    let mut all = vec![p];
    all.extend(world.people[p].dependants.iter().copied());
    all
}

fn job_change(world: &mut World, p: usize, day: Date) {
    let old = world.people[p].insurer;
    let family = family_of(world, p);
    for &q in &family {
        let record = day.add_days(world.rng.below(10) as i32);
        world.end(q, day, EndReason::JobChange, record);
    }
    // The new employer's insurer registers the family weeks late (the 資格無効 problem).
    let new = world.pick_insurer(InsurerKind::Employees, Some(old));
    let lag = 5 + world.rng.below(45);
    enroll_family(world, &family, new, day, lag);
}

/// Enrolls a family at a new insurer from `day`, recorded `lag` days later: the insured person
/// under a new key (branch 00), dependants under the same symbol and number, branches 01….
fn enroll_family(world: &mut World, family: &[usize], insurer: usize, day: Date, lag: u64) {
    let symbol_seed = world.rng.below(1 << 20) as u32;
    let key = world.new_key(insurer, 0, symbol_seed);
    world.enroll(family[0], insurer, key.clone(), day, lag);
    for (i, &q) in family.iter().skip(1).enumerate() {
        let number = world.insurers[insurer].number;
        let dep_key = MemberKey::new(number, &key.symbol, &key.number, (i + 1) as u8)
            .unwrap_or_else(|_| unreachable_key(number));
        world.enroll(q, insurer, dep_key, day, lag);
    }
}

fn retirement(world: &mut World, p: usize, day: Date) {
    let family = family_of(world, p);
    for &q in &family {
        let record = day.add_days(world.rng.below(7) as i32);
        world.end(q, day, EndReason::Retirement, record);
    }
    let nhi = world.pick_insurer(InsurerKind::NationalHealth, None);
    let lag = 3 + world.rng.below(20);
    for &q in &family {
        world.people[q].insured_of = None;
        let symbol_seed = world.rng.below(1 << 20) as u32;
        let key = world.new_key(nhi, 0, symbol_seed);
        world.enroll(q, nhi, key, day, lag);
    }
}

fn move_municipality(world: &mut World, p: usize, day: Date) {
    let old = world.people[p].insurer;
    let family = family_of(world, p);
    let new = world.pick_insurer(InsurerKind::NationalHealth, Some(old));
    let municipality = municipality_of(&world.insurers[new]);
    for &q in &family {
        let mut person = world.people[q].person.clone();
        person.municipality = municipality;
        person.address = format!("{}(転居)", person.address);
        let key = world.people[q].key.clone();
        world.emit(
            old,
            day,
            EventBody::DemographicsChanged { member: key, effective: day, person: person.clone() },
        );
        world.people[q].person = person;
        let record = day.add_days(world.rng.below(5) as i32);
        world.end(q, day, EndReason::MoveOutOfMunicipality, record);
    }
    let lag = world.rng.below(14);
    enroll_family(world, &family, new, day, lag);
}

fn transfer_at_75(world: &mut World, p: usize, birthday: Date) {
    let record = birthday.add_days(world.rng.below(20) as i32);
    world.end(p, birthday, EndReason::Age75, record);
    let late = world.pick_insurer(InsurerKind::LateStage, None);
    world.people[p].insured_of = None;
    let symbol_seed = world.rng.below(1 << 20) as u32;
    let key = world.new_key(late, 0, symbol_seed);
    let lag = world.rng.below(10);
    world.enroll(p, late, key, birthday, lag);
}

fn death(world: &mut World, p: usize, day: Date) {
    let family = family_of(world, p);
    let record = day.add_days(2 + world.rng.below(14) as i32);
    world.end(p, day.add_days(1), EndReason::Death, record);
    // Dependants lose coverage with the insured person; the insurer reports them too.
    for &q in family.iter().skip(1) {
        world.end(q, day.add_days(1), EndReason::Other, record);
    }
}

fn copay_change(world: &mut World, p: usize, day: Date) {
    let key = world.people[p].key.clone();
    let insurer = world.people[p].insurer;
    // A mid-month change (e.g. income reassessment): from the 16th.
    let (y, m, _) = day.ymd();
    let effective = Date::from_ymd(y, m, 16).unwrap_or(day);
    let copay = if world.insurers[insurer].kind == InsurerKind::LateStage { 2 } else { 3 };
    world.emit(
        insurer,
        effective.add_days(-3),
        EventBody::CopayRatioSet { member: key, effective, copay_tenths: copay },
    );
}

fn limit_category(world: &mut World, p: usize, day: Date) {
    let key = world.people[p].key.clone();
    let insurer = world.people[p].insurer;
    let category = format!("A{:02}", 1 + world.rng.below(6));
    world.emit(insurer, day, EventBody::LimitCategorySet { member: key, effective: day, category });
}

fn correction(world: &mut World, p: usize, day: Date) {
    // A copay ratio entered wrongly is superseded by the right one a few days later.
    let key = world.people[p].key.clone();
    let insurer = world.people[p].insurer;
    world.emit(
        insurer,
        day,
        EventBody::CopayRatioSet { member: key.clone(), effective: day, copay_tenths: 1 },
    );
    let index = world.drafts.len() - 1;
    let fix_day = day.add_days(1 + world.rng.below(10) as i32);
    world.emit(
        insurer,
        fix_day,
        EventBody::CopayRatioSet { member: key.clone(), effective: day, copay_tenths: 3 },
    );
    let replacement_index = world.drafts.len() - 1;
    // The target ids are filled in by `finish` once both drafts are signed; `order` carries
    // the two draft indices until then.
    let record_ms = world.drafts[replacement_index].record_ms + 1;
    world.emit_at(
        insurer,
        record_ms,
        EventBody::EventSuperseded {
            subject: CheckQuery::Member(key),
            target: shikaku_core::EventId([0; 32]),
            replacement: shikaku_core::EventId([0; 32]),
        },
    );
    let last = world.drafts.len() - 1;
    world.drafts[last].order = (index as u64) << 32 | replacement_index as u64;
}

fn wrong_person_linkage(world: &mut World, p: usize, day: Date) {
    // Someone else's card was linked to this member by mistake, then revoked.
    let other = world.rng.below(world.people.len() as u64) as usize;
    let Some(card) = world.people[other].card else { return };
    if other == p {
        return;
    }
    let key = world.people[p].key.clone();
    let insurer = world.people[p].insurer;
    world.emit(insurer, day, EventBody::CardLinked { card, member: key.clone() });
    let revoke_day = day.add_days(3 + world.rng.below(20) as i32);
    world.emit(
        insurer,
        revoke_day,
        EventBody::WrongPersonLinkageRevoked {
            card,
            member: key,
            reason: "linked to the wrong person at registration".into(),
        },
    );
}

fn finish(world: World) -> Result<Generated, GenError> {
    let World { insurers, mut drafts, config, .. } = world;
    // Supersessions refer to drafts by index; remember them before sorting.
    let mut draft_ids: Vec<usize> = (0..drafts.len()).collect();
    draft_ids.sort_by_key(|&i| (drafts[i].record_ms, i));
    let mut order_of = vec![0usize; drafts.len()];
    for (position, &i) in draft_ids.iter().enumerate() {
        order_of[i] = position;
    }
    let hub = hub_signer(config.seed);
    let hub_id = hub.node_id();
    let mut clock = HlcClock::new();
    let mut seqs: BTreeMap<InsurerNumber, u64> = BTreeMap::new();
    let mut signed: Vec<Option<SignedEvent>> = (0..drafts.len()).map(|_| None).collect();
    for &i in &draft_ids {
        let draft = &mut drafts[i];
        if let EventBody::EventSuperseded { target, replacement, .. } = &mut draft.body {
            let target_draft = (draft.order >> 32) as usize;
            let replacement_draft = (draft.order & 0xFFFF_FFFF) as usize;
            let resolve =
                |d: usize| -> Result<shikaku_core::EventId, GenError> {
                    signed.get(d).and_then(|s| s.as_ref()).map(SignedEvent::id).ok_or_else(|| {
                        GenError("correction refers to an event not yet signed".into())
                    })
                };
            if order_of[target_draft] > order_of[i] || order_of[replacement_draft] > order_of[i] {
                return Err(GenError("correction ordered before its target".into()));
            }
            *target = resolve(target_draft)?;
            *replacement = resolve(replacement_draft)?;
        }
        let insurer = &insurers[draft.insurer];
        let hlc = clock.tick(draft.record_ms).map_err(|e| GenError(format!("clock: {e}")))?;
        let seq = seqs.entry(insurer.number).or_insert(0);
        *seq += 1;
        let event = Event {
            namespace: Namespace::Insurer(insurer.number),
            origin: hub_id,
            origin_seq: *seq,
            hlc,
            author: insurer.signer.public(),
            body: draft.body.clone(),
        };
        let signed_event = insurer
            .signer
            .sign(event)
            .map_err(|e| GenError(format!("generated an invalid event: {e}")))?;
        signed[i] = Some(signed_event);
    }
    let mut events: Vec<SignedEvent> = draft_ids.iter().filter_map(|&i| signed[i].take()).collect();
    events.sort_by_key(SignedEvent::order_key);
    Ok(Generated {
        last_hlc: events.last().map(|e| e.event().hlc).unwrap_or_default(),
        events,
        hub: hub_id,
        insurers: insurers.iter().map(|i| (i.number, i.signer.public())).collect(),
    })
}

/// A generated world with its member data sealed (schema 2): the insurer events re-sealed and
/// re-signed by each insurer's key, and the insurers' key store (data keys and wraps). Data
/// keys and nonces come from a generator seeded by `seed` — reproducible synthetic data only;
/// a real insurer seals with the operating system's random source (`shikaku ledger upgrade`).
pub fn seal_generated(
    generated: &Generated,
    seed: u64,
    params: shikaku_core::seal::KdfParams,
) -> Result<(Vec<SignedEvent>, shikaku_core::keystore::KeyStore), GenError> {
    let signers: BTreeMap<InsurerNumber, Signer> = generated
        .insurers
        .iter()
        .map(|(number, _)| (*number, insurer_signer(seed, *number)))
        .collect();
    let mut rng = Rng::new(seed ^ 0x5eed_5ea1_0000_0002);
    let mut id = [0u8; 16];
    fill_from(&mut rng, &mut id);
    let mut store = shikaku_core::keystore::KeyStore::new(id);
    let mut fill = |out: &mut [u8]| fill_from(&mut rng, out);
    let upgraded =
        shikaku_core::sealer::upgrade(&generated.events, &signers, params, &mut store, &mut fill)
            .map_err(|e| GenError(format!("sealing the generated world: {e}")))?;
    let mut events = upgraded.events;
    events.sort_by_key(SignedEvent::order_key);
    Ok((events, store))
}

fn fill_from(rng: &mut Rng, out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}
