//! The scaled-out hub's sans-IO logic in the simulator (`shikaku_sim::frontends`): several
//! front-ends over a seeded model of the shared log — unavailable, late or failed
//! acknowledgements, repeats kept past the deduplication window, crashes, a lagging front-end —
//! with clinics moving between them; and a lagging front-end's handling of a `Hello`, step by
//! step. The real log, over real NATS servers, is `jetstream`.

use shikaku_core::Namespace;
use shikaku_sim::frontends::{run, Model};

#[test]
fn front_ends_over_a_shared_log_agree_and_lose_nothing_acknowledged() {
    // Twelve seeds here; `shikaku sim front-ends --seeds A..B` runs more (CI: 40).
    let (mut failures, mut crashes, mut acknowledged, mut repeats) = (0, 0, 0, 0);
    for seed in 1..=12 {
        let stats = run(seed, 400).unwrap_or_else(|violation| panic!("{violation}"));
        failures += stats.publish_failures;
        crashes += stats.crashes;
        acknowledged += stats.acknowledged;
        repeats += stats.log_messages - stats.events;
    }
    // The faults happened: failed publishes, crashes, repeats the front-ends skipped, and
    // records acknowledged during the faults (all found again).
    assert!(
        failures > 0 && crashes > 0 && repeats > 0 && acknowledged > 0,
        "{failures} {crashes} {repeats} {acknowledged}"
    );
    // The same seed, the same run.
    assert_eq!(run(2, 200), run(2, 200));
}

#[test]
fn a_lagging_front_end_holds_a_clinics_hello_then_claims_only_what_it_holds() {
    let mut m = Model::new(3, 2, 1);
    m.follow(0, usize::MAX / 2).unwrap();
    m.connect(0, 0);
    m.pump();
    assert!(m.clinics[0].in_sync());
    let held = m.clinics[0].namespace_state(&Namespace::Insurer(m.insurer));
    // Front-end 1 has applied nothing: the clinic's Hello waits there...
    m.connect(0, 1);
    m.pump();
    assert!(!m.clinics[0].in_sync(), "no Welcome while the front-end lags");
    // ...and is answered as soon as it has caught up, trusting the cursor.
    m.now_ms += 1_000;
    m.follow(1, usize::MAX / 2).unwrap();
    m.pump();
    assert!(m.clinics[0].in_sync(), "answered once caught up");
    assert_eq!(m.fronts[1].node.counters().refusals.get("cursor_ahead_of_log"), None);

    // Still lagging after LAGGING_HELLO_WAIT_MS: the session is closed ("catching up") so
    // the clinic goes to another front-end — never answered as if it held more.
    let mut m = Model::new(3, 2, 1);
    m.follow(0, usize::MAX / 2).unwrap();
    m.connect(0, 0);
    m.pump();
    m.follow(1, 50).unwrap();
    m.connect(0, 1);
    m.pump();
    assert!(m.links[0].is_some(), "held, not answered");
    m.now_ms += shikaku_node::node::LAGGING_HELLO_WAIT_MS + 1;
    m.fronts[1].node.handle_tick(m.now_ms);
    m.pump();
    assert_eq!(m.fronts[1].node.counters().refusals.get("catching_up"), Some(&1));
    assert!(m.links[0].is_none(), "closed");
    assert!(!m.clinics[0].in_sync());
    assert_eq!(m.clinics[0].namespace_state(&Namespace::Insurer(m.insurer)), held, "nothing lost");
    m.follow(1, usize::MAX / 2).unwrap();
    m.connect(0, 1);
    m.pump();
    assert!(m.clinics[0].in_sync());
}

#[test]
fn a_front_end_whose_scrub_finds_rot_stops_serving_so_clinics_go_elsewhere() {
    // A front-end cannot re-fetch a record at its position: once its scrub finds one rotten,
    // it closes its sessions, refuses new ones naming the damage, and applies no more of the
    // stream (its positions would drift from the other front-ends') until rebuilt.
    use shikaku_log::storage::Directory as _;
    let mut m = Model::new(3, 2, 1);
    m.follow(0, usize::MAX / 2).unwrap();
    // A snapshot and checkpoint, then a restart: the records they cover are scrubbed later.
    m.fronts[0].node.write_snapshot(m.now_ms).unwrap();
    m.restart(0).unwrap();
    m.follow(0, usize::MAX / 2).unwrap();
    m.connect(0, 0);
    m.pump();
    assert!(m.clinics[0].in_sync());
    let disk = m.disk(0).clone();
    let segment = disk.list().unwrap().into_iter().find(|f| f.starts_with("segment-")).unwrap();
    disk.flip_bit(&segment, 4096, 3);
    m.now_ms += 1_000;
    m.fronts[0].node.handle_tick(m.now_ms);
    m.pump();
    let damage = m.fronts[0].node.front_end_damage().map(str::to_owned);
    assert!(damage.is_some(), "the scrub found the rotten record");
    assert!(m.links[0].is_none(), "the session was closed");
    let applied = m.fronts[0].node.stream_applied();
    m.follow(0, usize::MAX / 2).unwrap();
    assert_eq!(m.fronts[0].node.stream_applied(), applied, "no more of the stream applied");
    m.connect(0, 0);
    m.pump();
    assert!(m.links[0].is_none(), "a new session is refused");
    assert_eq!(m.fronts[0].node.counters().refusals.get("front_end_damaged"), Some(&1));
    // The other front-end serves the clinic.
    m.follow(1, usize::MAX / 2).unwrap();
    m.connect(0, 1);
    m.pump();
    assert!(m.clinics[0].in_sync());
}
