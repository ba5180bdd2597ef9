//! The deterministic simulator: the same seed gives the same bytes; a hostile day keeps every
//! invariant; planted bugs are caught.

use shikaku_sim::{run, Faults, SimConfig};

fn small(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed, 4);
    cfg.members = 600;
    cfg.duration_ms = 3 * 3_600_000;
    cfg.checks_per_day = 400.0;
    cfg
}

/// `sim/scenarios/hub-outage.toml` on the small shape, 16 simulated hours.
pub(crate) fn hub_outage() -> SimConfig {
    let mut cfg = small(5);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sim/scenarios/hub-outage.toml"
    ))
    .unwrap();
    shikaku_cli::sim::apply_scenario(&mut cfg, &text).unwrap();
    cfg.duration_ms = 16 * 3_600_000;
    cfg
}

#[test]
fn the_same_seed_gives_byte_identical_output() {
    let a = run(&small(7));
    let b = run(&small(7));
    assert_eq!(a.lines, b.lines);
    assert_eq!(a.lines[0], "seed 7", "every run prints its seed first");
    let c = run(&small(8));
    assert_ne!(a.lines, c.lines, "another seed, another run");
}

#[test]
fn a_hostile_run_keeps_every_invariant() {
    for seed in 1..=3 {
        let outcome = run(&small(seed));
        assert!(outcome.violations.is_empty(), "seed {seed}:\n{}", outcome.lines.join("\n"));
        assert!(outcome.lines.iter().any(|l| l.starts_with("nodes:")), "{:?}", outcome.lines);
    }
}

#[test]
fn a_calm_run_has_no_offline_answers() {
    let mut cfg = small(3);
    cfg.faults = Faults::none();
    let outcome = run(&cfg);
    assert!(outcome.violations.is_empty(), "{}", outcome.lines.join("\n"));
    let workload = outcome.lines.iter().find(|l| l.starts_with("workload:")).unwrap();
    assert!(workload.contains("(0 offline)"), "{workload}");
}

#[test]
fn planted_bugs_are_caught_within_a_few_seeds() {
    // The planted bugs, and one fault the checkers must report rather than survive silently:
    // a hub whose disk lies about fsync loses what it acknowledged.
    use shikaku_sim::{Plant, Scripted};
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Case {
        Bug(Plant),
        HubDiskLies,
    }
    for case in [
        Case::Bug(Plant::MergeDropsConcurrent),
        Case::Bug(Plant::CheckIgnoresKnowledge),
        Case::HubDiskLies,
        Case::Bug(Plant::CursorOffByOne),
        Case::Bug(Plant::CheckIgnoresVoids),
    ] {
        let caught = (1..=3).find_map(|seed| {
            let mut cfg = small(seed);
            match case {
                Case::Bug(plant) => cfg.plant = Some(plant),
                Case::HubDiskLies => cfg.faults.hub_disk.lying_fsync = 1.0,
            }
            if case == Case::Bug(Plant::CursorOffByOne) {
                // Clean reconnects, no damage: any repair betrays the fast path.
                cfg.faults = Faults::none();
                cfg.script.push((
                    3_600_000,
                    Scripted::Partition { clinics: vec![], duration_ms: 600_000 },
                ));
            } else {
                cfg.script.push((3_600_000, Scripted::Crash(None)));
            }
            if case == Case::Bug(Plant::CheckIgnoresVoids) {
                // Voided facts concern few members: check often enough to meet them.
                cfg.checks_per_day = 4_000.0;
            }
            let outcome = run(&cfg);
            outcome.violations.first().map(|v| (seed, v.invariant))
        });
        let (seed, invariant) =
            caught.unwrap_or_else(|| panic!("{case:?} was not caught within 3 seeds"));
        println!("{case:?}: caught at seed {seed} by \"{invariant}\"");
    }
}

#[test]
fn scenario_files_script_faults_and_the_html_report_draws_them() {
    let outcome = run(&hub_outage());
    assert!(outcome.violations.is_empty(), "{}", outcome.lines.join("\n"));
    let workload = outcome.lines.iter().find(|l| l.starts_with("workload:")).unwrap();
    assert!(!workload.contains("(0 offline)"), "the outage forces offline answers: {workload}");
    let html = shikaku_sim::html(&outcome);
    assert!(
        html.starts_with("<!doctype html>")
            && html.contains("<svg")
            && html.contains("partitioned")
            && html.contains("crash at")
    );
    // Bad scenarios are refused with the reason.
    let err = shikaku_cli::sim::apply_scenario(
        &mut small(1),
        "[[partition]]\nfrom = \"10:00\"\nuntil = \"09:00\"\n",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("the end must come after the start"), "{err:#}");
    let err = shikaku_cli::sim::apply_scenario(&mut small(1), "colour = \"red\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
}

#[test]
fn the_insurer_re_derives_every_answer_clinics_gave_during_a_hostile_day() {
    // Invariant 3 seen from the insurer's side: after crashes, partitions, bit rot, lying and
    // full disks and skewed clocks, every check record at the hub re-derives, from the hub's
    // events, to exactly the answer hash the clinic recorded. And the report is deterministic.
    for seed in 1..=3 {
        let cfg = SimConfig { keep_hub_ledger: true, ..small(seed) };
        let outcome = run(&cfg);
        assert!(outcome.violations.is_empty(), "seed {seed}");
        let report =
            shikaku_reconcile::compute_at_last_event(&outcome.hub_events, &outcome.clinic_names);
        let t = &report.totals;
        assert!(t.checks > 50, "seed {seed}: {t:?}");
        assert!(report.not_rederivable.is_empty(), "seed {seed}: {:?}", report.not_rederivable);
        assert_eq!(t.rederived, t.checks, "seed {seed}");
        assert_eq!(report.clinics.len(), 4, "seed {seed}");
        let again = run(&cfg);
        let twice =
            shikaku_reconcile::compute_at_last_event(&again.hub_events, &again.clinic_names);
        assert_eq!(shikaku_reconcile::render_text(&report), shikaku_reconcile::render_text(&twice));
    }
}

#[test]
fn the_hub_outage_scenario_reconciles_to_a_snapshotted_report() {
    let outcome = run(&SimConfig { keep_hub_ledger: true, ..hub_outage() });
    let report =
        shikaku_reconcile::compute_at_last_event(&outcome.hub_events, &outcome.clinic_names);
    assert!(report.not_rederivable.is_empty(), "{:?}", report.not_rederivable);
    assert!(report.totals.contradicted_offline > 0, "{:?}", report.totals);
    insta::assert_snapshot!("hub_outage_reconciliation", shikaku_reconcile::render_text(&report));
}

#[test]
fn sealed_worlds_keep_every_invariant_and_re_derive_with_the_hubs_keys() {
    // The simulator on sealed data (schema 2): reception presents member keys with birth
    // dates, clinics open records through their synced key stores under hostile faults, every
    // answer equals the reference projection with what that clinic could open, and the
    // insurer's reconciliation re-derives every check with what its data keys reveal.
    for seed in 1..=3 {
        let mut cfg = small(seed);
        cfg.sealed = true;
        cfg.keep_hub_ledger = true;
        let outcome = run(&cfg);
        assert!(outcome.violations.is_empty(), "seed {seed}: {}", outcome.lines.join("\n"));
        let reveal = outcome.hub_reveal.as_ref().expect("a sealed run reveals at the hub");
        assert!(reveal.members.len() > 500, "seed {seed}: the hub opens its members");
        let last = outcome.hub_events.iter().map(|(_, e)| e.event().hlc.physical_ms()).max();
        let report = shikaku_reconcile::compute_revealed(
            &outcome.hub_events,
            &outcome.clinic_names,
            last.unwrap_or(0),
            Some(reveal),
        );
        assert!(report.totals.checks > 50, "seed {seed}");
        assert_eq!(report.totals.rederived, report.totals.checks, "seed {seed}");
        // Every clinic record and every insurer fact is schema 2: nothing names a member in
        // the clear.
        for (_, e) in &outcome.hub_events {
            assert_eq!(
                e.schema_version(),
                2,
                "seed {seed}: a {} in schema 1",
                e.event().body.type_name()
            );
        }
    }
}
