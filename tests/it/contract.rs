//! The protocol as a contract (issue 12): what the independent client found the hub doing
//! that the specification does not allow, each reproduced through the sans-IO node exactly as
//! a peer would drive it (frames in, frames out).

use shikaku_core::{CheckMode, CheckQuery, Event, EventBody, Hlc, Namespace, SignedEvent};
use shikaku_node::{prepare, Inbound, PeerIdentity, Role};
use shikaku_protocol::wire::{Ack, Hello};
use shikaku_protocol::wire::{Message, Subscription};

use crate::node::{deliver, World};

/// Every frame the hub has queued for `conn`, decoded.
fn drain(w: &mut World, conn: u64) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(frame) = w.hub.poll_transmit(w.now_ms, conn) {
        if let Inbound::Message(m) = prepare(&frame[4..], w.now_ms) {
            out.push(m);
        }
    }
    out
}

#[test]
fn the_receipt_file_is_121_byte_receipts_and_sorted_namespaces() {
    // Proves item 1: the receipt in the file is 121 bytes (SPEC.md said 118) and the
    // namespace list is written sorted, as the scope digest reads it.
    let mut w = World::new(200, 1);
    w.clinics[0] = {
        let mut config = w.clinic_config(0);
        // Subscribed in descending order, so an unsorted write would show.
        config.insurers = w.insurers.iter().copied().collect();
        shikaku_node::Node::open(w.clinic_disks[0].clone(), w.clinic_signers[0].clone(), config)
            .unwrap()
    };
    w.connect(0);
    w.run();
    w.clinics[0].persist_receipts().unwrap();
    let bytes = w.clinic_disks[0].durable_image("receipts.shk").unwrap();
    assert_eq!(&bytes[..8], b"SHKRCPT2");
    let receipt_at = 8 + 32 + 32;
    // The receipt, then (version 2) the last sync time and the acknowledged own sequence.
    let count_at = receipt_at + 121 + 16;
    let count = u32::from_le_bytes(bytes[count_at..count_at + 4].try_into().unwrap()) as usize;
    assert_eq!(count, w.insurers.len() + 1, "every insurer and the own namespace");
    let mut namespaces = Vec::new();
    let mut at = count_at + 4;
    for _ in 0..count {
        let tag = bytes[at];
        let len = if tag == 1 { 5 } else { 33 };
        namespaces.push(bytes[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(at + 32, bytes.len(), "then the 32-byte checksum, nothing else");
    let key = |ns: &Vec<u8>| match ns[0] {
        1 => (1u8, u32::from_le_bytes(ns[1..5].try_into().unwrap()), Vec::new()),
        _ => (2u8, 0, ns[1..].to_vec()),
    };
    let mut sorted = namespaces.clone();
    sorted.sort_by_key(key);
    assert_eq!(namespaces, sorted, "sorted by tag, then insurer number, then node id");
    assert_eq!(
        &bytes[receipt_at..receipt_at + 16],
        &shikaku_protocol::wire::scope_digest(
            &std::iter::once(Namespace::Clinic(w.clinic_signers[0].node_id()))
                .chain(w.insurers.iter().map(|i| Namespace::Insurer(*i)))
                .collect::<Vec<_>>()
        )[..],
        "the receipt's scope leads the 121 bytes"
    );
}

fn hello(cursor: u64, insurer: shikaku_core::InsurerNumber) -> Message {
    Message::Hello(Hello {
        version: 1,
        role: Role::Clinic,
        frame_max: 1 << 20,
        cursor,
        subscriptions: vec![Subscription { namespace: Namespace::Insurer(insurer), cursor: None }],
        prefetch: vec![],
    })
}

#[test]
fn a_cursor_beyond_the_hubs_log_is_unknown_and_no_receipt_claims_more_than_it_holds() {
    // Proves item 2: a clinic whose cursor was above the hub's head got a *complete* receipt
    // at that position — a claim about events the hub never held. The cursor is now treated
    // as unknown (counted as `cursor_ahead_of_log`), and every receipt's position is at most
    // the hub's head.
    let mut w = World::new(150, 1);
    let head = w.hub.ledger().head() - 1;
    let conn = 41;
    w.hub.handle_connected(
        w.now_ms,
        conn,
        PeerIdentity {
            role: Role::Clinic,
            name: "clinic-0".into(),
            node: w.clinic_signers[0].node_id(),
        },
    );
    deliver(&mut w.hub, w.now_ms, conn, &hello(head + 1_000, w.insurers[0]).to_frame());
    let messages = drain(&mut w, conn);
    let receipts: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Receipt(r) => Some(*r),
            _ => None,
        })
        .collect();
    assert!(!receipts.is_empty(), "{messages:?}");
    for r in &receipts {
        assert!(r.position <= head, "receipt at {} above the head {head}", r.position);
    }
    let complete = receipts.iter().find(|r| r.complete).expect("a complete receipt");
    assert_eq!(complete.position, head);
    // Nothing was assumed held: the complete receipt counts every event of the namespaces.
    let expected = w.hub.namespace_state(&Namespace::Insurer(w.insurers[0])).count();
    assert_eq!(complete.count, expected);
    assert_eq!(w.hub.counters().refusals.get("cursor_ahead_of_log"), Some(&1));
}

/// A check record of clinic `i` numbered `seq`, signed by the clinic.
fn record(w: &World, i: usize, seq: u64, service_day: i32) -> SignedEvent {
    let signer = &w.clinic_signers[i];
    let me = signer.node_id();
    signer
        .sign(Event {
            namespace: Namespace::Clinic(me),
            origin: me,
            origin_seq: seq,
            hlc: Hlc::end_of_ms(w.now_ms - 1_000),
            author: signer.public(),
            body: EventBody::CheckPerformed {
                query: CheckQuery::Card(shikaku_core::CardToken([7; 32])),
                service_date: shikaku_core::Date(service_day),
                mode: CheckMode::Offline,
                knowledge: Hlc::end_of_ms(w.now_ms - 1_000),
                hub_position: 0,
                code: shikaku_core::AnswerCode::Unknown,
                answer_hash: shikaku_core::AnswerHash([0; 32]),
                decided_by: vec![],
            },
        })
        .unwrap()
}

#[test]
fn a_hub_refuses_a_second_event_under_a_used_origin_sequence() {
    // Proves item 3: the hub stored a second, different event with origin_seq 1 from the same
    // clinic. Now a used number is refused (reason 5, detail `origin_seq_reused`, counted),
    // in the same batch and across batches, while the same event again is a duplicate.
    let mut w = World::new(100, 1);
    w.connect(0);
    w.run();
    let conn = w.links[0].unwrap();
    let wire = |e: &SignedEvent| {
        shikaku_protocol::wire::event_to_wire(
            e.schema_version(),
            e.canonical_bytes(),
            &e.signature(),
        )
    };
    let first = record(&w, 0, 1, 20_000);
    let second = record(&w, 0, 1, 20_001);
    let third = record(&w, 0, 2, 20_002);
    let frame =
        Message::Events { events: vec![wire(&first), wire(&second), wire(&third)] }.to_frame();
    deliver(&mut w.hub, w.now_ms, conn, &frame);
    let acks: Vec<_> = drain(&mut w, conn)
        .into_iter()
        .filter_map(|m| match m {
            Message::Ack(Ack { own_seq, stored, refused }) => Some((own_seq, stored, refused)),
            _ => None,
        })
        .collect();
    let (own_seq, stored, refused) = &acks[0];
    assert_eq!((*own_seq, *stored), (2, 2), "{acks:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].index, 1);
    assert_eq!(refused[0].reason, shikaku_protocol::wire::RefusalReason::Invalid);
    assert!(refused[0].detail.starts_with("origin_seq_reused"), "{}", refused[0].detail);
    // Across batches: another event numbered 2 is refused, the same event 2 is a duplicate.
    let fourth = record(&w, 0, 2, 20_003);
    let frame = Message::Events { events: vec![wire(&third), wire(&fourth)] }.to_frame();
    deliver(&mut w.hub, w.now_ms, conn, &frame);
    let refused: Vec<_> = drain(&mut w, conn)
        .into_iter()
        .filter_map(|m| match m {
            Message::Ack(Ack { refused, .. }) => Some(refused),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(refused.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1], "{refused:?}");
    assert_eq!(w.hub.counters().refusals.get("origin_seq_reused"), Some(&2));
    let own = Namespace::Clinic(w.clinic_signers[0].node_id());
    assert_eq!(w.hub.namespace_state(&own).count(), 2);
}

#[test]
fn a_restarted_clinic_never_reuses_a_number_its_lost_tail_had() {
    // Proves the clinic's half of item 3: a clinic whose disk lost the tail the hub already
    // holds (restored from a backup) and that records offline before reconnecting numbered
    // its new records like the lost ones — which the hub now refuses. After a restart it
    // numbers above a gap until the hub confirms, so both sides converge with nothing refused.
    let mut w = World::new(200, 1);
    let (backup, own) = w.backup_before_four_checks();
    assert_eq!(w.hub.namespace_state(&own).count(), 7);
    // Restored, and checking offline before it reaches the hub again.
    w.reopen_clinic(0, backup);
    w.now_ms += 60_000;
    w.check(0, (2026, 1, 7)).unwrap();
    w.check(0, (2026, 1, 7)).unwrap();
    w.connect(0);
    w.run();
    w.assert_converged(0);
    assert_eq!(w.hub.namespace_state(&own).count(), 9, "3 + 4 lost and re-fetched + 2 new");
    assert_eq!(w.hub.counters().refusals.get("origin_seq_reused"), None);
    assert_eq!(w.clinics[0].unacked_own(), 0, "sparse numbers count as records, not as a span");
    assert!(w.clinics[0].in_sync());
}

#[test]
fn an_insurer_signs_its_own_events_and_a_hub_that_registered_its_key_imports_them() {
    // Proves the insurer half of issue 12: `insurer key init` writes a 0600 secret key (never
    // printed) and an INSURER=KEY public line; `insurer sign` turns unsigned lines into signed
    // events numbered on from its state file with increasing clock stamps; a hub with that key
    // registered imports them, and one with another key refuses them.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::cli::temp_dir("insurer-sign");
    let key = dir.join("kyokai.key");
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let (code, out, err) =
        crate::cli::run(&["insurer", "key", "init", "--insurer", "06130017", "--key", &p(&key)]);
    assert_eq!(code, 0, "{err}");
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret_hex = secret.lines().find_map(|l| l.strip_prefix("secret=")).unwrap();
    assert!(!out.contains(secret_hex), "the secret is never printed: {out}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let public = std::fs::read_to_string(dir.join("kyokai.key.pub")).unwrap();
    assert!(public.starts_with("06130017=") && out.contains(public.trim()), "{public} / {out}");
    let (code, _, err) =
        crate::cli::run(&["insurer", "key", "init", "--insurer", "06130017", "--key", &p(&key)]);
    assert_eq!(code, 2);
    assert!(err.contains("never overwritten"), "{err}");

    let unsigned = [
        r#"{"body":{"type":"member_registered","member":"06130017:12:5001:00","person":{"name":"佐藤 一郎","kana":"サトウ イチロウ","sex":"male","birth_date":"1980-02-03","address":"東京都千代田区1-1","municipality":131016},"relationship":{"kind":"insured"}}}"#,
        r#"{"v":1,"namespace":{"insurer":"06130017"},"body":{"type":"coverage_started","member":"06130017:12:5001:00","start":"2026-04-01","copay_tenths":3,"elderly_certificate":false}}"#,
        r#"{"body":{"type":"card_linked","card":"1111111111111111111111111111111111111111111111111111111111111111","member":"06130017:12:5001:00"}}"#,
    ];
    let input = dir.join("changes.jsonl");
    std::fs::write(&input, unsigned.join("\n") + "\n").unwrap();
    let signed = dir.join("signed.jsonl");
    let (code, _, err) =
        crate::cli::run(&["insurer", "sign", "--key", &p(&key), &p(&input), "--out", &p(&signed)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("signed 3 events (origin_seq 1–3)"), "{err}");
    let second = dir.join("more.jsonl");
    std::fs::write(&second, unsigned[2].to_owned() + "\n").unwrap();
    let (code, more, err) = crate::cli::run(&["insurer", "sign", "--key", &p(&key), &p(&second)]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<String> = std::fs::read_to_string(&signed)
        .unwrap()
        .lines()
        .chain(more.lines())
        .map(str::to_owned)
        .collect();
    let events: Vec<SignedEvent> =
        lines.iter().map(|l| shikaku_cli::jsonl::decode(l, None).unwrap()).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.event().origin_seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "numbering continues from the state file");
    assert!(events.windows(2).all(|w| w[0].event().hlc < w[1].event().hlc), "clock stamps rise");
    let registered = public.trim().split('=').nth(1).unwrap().to_owned();
    assert!(events.iter().all(|e| shikaku_core::hex::encode(&e.event().author.0) == registered));
    // A line for another insurer stops the run before anything is written or numbered.
    let wrong = dir.join("wrong.jsonl");
    std::fs::write(&wrong, r#"{"namespace":{"insurer":"33120015"},"body":{"type":"consent_given","member":"33120015:1:2:00"}}"#).unwrap();
    let (code, out, err) = crate::cli::run(&["insurer", "sign", "--key", &p(&key), &p(&wrong)]);
    assert_eq!(code, 2);
    assert!(out.is_empty() && err.contains("line 1"), "{out} / {err}");

    // Imported by a hub that registered the key; refused by one that registered another.
    let all = dir.join("all.jsonl");
    std::fs::write(&all, lines.join("\n") + "\n").unwrap();
    let hub = dir.join("hub");
    let pubfile = dir.join("kyokai.key.pub");
    let (code, out, err) = crate::cli::run(&[
        "--data-dir",
        &p(&hub),
        "hub",
        "import",
        &p(&all),
        "--insurer-keys",
        &p(&pubfile),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("imported 4 new events"), "{out}");
    let other = dir.join("other.pub");
    let stranger = shikaku_core::Signer::derived("someone else", b"x").public();
    std::fs::write(&other, format!("06130017={}\n", shikaku_core::hex::encode(&stranger.0)))
        .unwrap();
    let (code, _, err) = crate::cli::run(&[
        "--data-dir",
        &p(&dir.join("hub2")),
        "hub",
        "import",
        &p(&all),
        "--insurer-keys",
        &p(&other),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("line 1: "), "{err}");
    // Without a registry the hub accepts any valid signature, and says so.
    let (code, _, err) =
        crate::cli::run(&["--data-dir", &p(&dir.join("hub3")), "hub", "import", &p(&all)]);
    assert_eq!(code, 0);
    assert!(err.starts_with("warning: no --insurer-keys"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ledger_digest_agrees_between_two_nodes_holding_one_namespace() {
    // Proves item 6: `ledger digest --namespace` gives the same projection digest, count and
    // fingerprint on two ledgers that hold the same events of that namespace among different
    // others, and the fingerprint is the one a complete receipt would carry.
    let dir = crate::cli::temp_dir("ledger-digest");
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(400, 8)).unwrap();
    let insurer = g.insurers[0].0;
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let lines: Vec<String> = g.events.iter().map(shikaku_cli::jsonl::encode).collect();
    let mine: Vec<String> = g
        .events
        .iter()
        .filter(|e| e.event().namespace == Namespace::Insurer(insurer))
        .map(shikaku_cli::jsonl::encode)
        .collect();
    let (everything, only) = (dir.join("all.jsonl"), dir.join("one.jsonl"));
    std::fs::write(&everything, lines.join("\n") + "\n").unwrap();
    std::fs::write(&only, mine.join("\n") + "\n").unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_eq!(crate::cli::run(&["--data-dir", &p(&a), "ledger", "import", &p(&everything)]).0, 0);
    assert_eq!(crate::cli::run(&["--data-dir", &p(&b), "ledger", "import", &p(&only)]).0, 0);
    let ns = format!("insurer:{insurer}");
    let digest = |data: &std::path::Path| {
        let (code, out, err) = crate::cli::run(&[
            "--data-dir",
            &p(data),
            "ledger",
            "digest",
            "--namespace",
            &ns,
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let (da, db) = (digest(&a), digest(&b));
    assert_eq!(da, db);
    assert_eq!(da["namespaces"][0]["count"], mine.len());
    let mut acc = shikaku_protocol::negentropy::Accumulator::default();
    for e in g.events.iter().filter(|e| e.event().namespace == Namespace::Insurer(insurer)) {
        acc.add(&e.id().0);
    }
    assert_eq!(da["namespaces"][0]["fingerprint"], shikaku_core::hex::encode(&acc.fingerprint()));
    let (_, whole, _) = crate::cli::run(&["--data-dir", &p(&a), "ledger", "digest"]);
    assert_eq!(whole.lines().count(), 1 + g.insurers.len(), "{whole}");
    assert!(whole.starts_with("projection digest "), "{whole}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_unsigned_examples_sign_and_import() {
    // Proves the examples of EVENTS-JSONL.md ("Unsigned events") stay true: every line of
    // examples/unsigned-insurer-events.jsonl signs, and a hub with the key imports all of them.
    let dir = crate::cli::temp_dir("unsigned-examples");
    let p = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let key = dir.join("k.key");
    assert_eq!(
        crate::cli::run(&["insurer", "key", "init", "--insurer", "06130017", "--key", &p(&key)]).0,
        0
    );
    let examples =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/unsigned-insurer-events.jsonl");
    let lines = std::fs::read_to_string(examples).unwrap().lines().count();
    let signed = dir.join("signed.jsonl");
    let (code, _, err) =
        crate::cli::run(&["insurer", "sign", "--key", &p(&key), examples, "--out", &p(&signed)]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = crate::cli::run(&[
        "--data-dir",
        &p(&dir.join("hub")),
        "hub",
        "import",
        &p(&signed),
        "--insurer-keys",
        &p(&dir.join("k.key.pub")),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("imported {lines} new events from {lines} lines")), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
