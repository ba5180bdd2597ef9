//! The sans-IO node state machines driven directly, hub and clinic exchanging frames in memory
//! (no sockets): initial and incremental sync, offline writes, restore from an old backup,
//! damage repair, authorization refusals, malformed frames, and the wire format's round trips.

use shikaku_core::{CheckQuery, Date, InsurerNumber, Namespace, SignedEvent, Signer};
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_node::{prepare, Inbound, Node, NodeConfig, PeerIdentity, Role};
use shikaku_protocol::wire::{Ack, Hello, Welcome};
use shikaku_protocol::wire::{FrameSplitter, Message, FRAME_BYTES_MAX};

/// A hub and clinics wired together in memory.
pub struct World {
    pub hub: Node<FaultDirectory>,
    pub hub_disk: FaultDirectory,
    pub clinics: Vec<Node<FaultDirectory>>,
    pub clinic_disks: Vec<FaultDirectory>,
    pub hub_signer: Signer,
    pub clinic_signers: Vec<Signer>,
    /// Connection per clinic (its id on both sides), if connected.
    pub links: Vec<Option<u64>>,
    next_conn: u64,
    pub now_ms: u64,
    pub events: Vec<SignedEvent>,
    pub insurers: Vec<InsurerNumber>,
    /// Bytes moved each way (hub→clinic, clinic→hub).
    pub bytes: (u64, u64),
    /// Members of other insurers clinics prefetch.
    pub prefetch: Vec<shikaku_core::MemberKey>,
    /// Connections the hub closed.
    pub closed: Vec<u64>,
}

pub fn generated(members: usize, seed: u64) -> (Vec<SignedEvent>, Vec<InsurerNumber>, u64) {
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, seed)).unwrap();
    let insurers = g.insurers.iter().map(|(i, _)| *i).collect();
    (g.events, insurers, g.last_hlc.physical_ms() + 60_000)
}

impl World {
    /// A hub holding a generated world and `clinics` clinics subscribed to the first insurer.
    pub fn new(members: usize, clinics: usize) -> World {
        let (events, insurers, now_ms) = generated(members, 11);
        let hub_signer = Signer::derived("shikaku test hub", b"hub");
        let mut config = NodeConfig::new(Role::Hub, "hub");
        config.insurers = insurers.iter().copied().collect();
        config.batch_events = 256;
        let hub_disk = FaultDirectory::new(FaultConfig::default(), 1);
        let mut hub = Node::open(hub_disk.clone(), hub_signer.clone(), config).unwrap();
        hub.import(now_ms, &events).unwrap();
        let mut world = World {
            hub,
            hub_disk,
            clinics: Vec::new(),
            clinic_disks: Vec::new(),
            hub_signer,
            clinic_signers: Vec::new(),
            links: Vec::new(),
            next_conn: 1,
            now_ms,
            events,
            insurers,
            bytes: (0, 0),
            prefetch: Vec::new(),
            closed: Vec::new(),
        };
        for i in 0..clinics {
            let signer = Signer::derived("shikaku test clinic", &[i as u8]);
            let disk = FaultDirectory::new(FaultConfig::default(), 100 + i as u64);
            let node = Node::open(disk.clone(), signer.clone(), world.clinic_config(i)).unwrap();
            world.clinics.push(node);
            world.clinic_disks.push(disk);
            world.clinic_signers.push(signer);
            world.links.push(None);
        }
        world
    }

    pub fn clinic_config(&self, i: usize) -> NodeConfig {
        let mut config = NodeConfig::new(Role::Clinic, &format!("clinic-{i}"));
        config.insurers = [self.insurers[0]].into_iter().collect();
        config.prefetch = self.prefetch.clone();
        config
    }

    pub fn reopen_clinic(&mut self, i: usize, disk: FaultDirectory) {
        self.disconnect(i);
        let config = self.clinic_config(i);
        self.clinics[i] = Node::open(disk.clone(), self.clinic_signers[i].clone(), config).unwrap();
        self.clinic_disks[i] = disk;
    }

    pub fn connect(&mut self, i: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let clinic_id = PeerIdentity {
            role: Role::Clinic,
            name: format!("clinic-{i}"),
            node: self.clinic_signers[i].node_id(),
        };
        let hub_id =
            PeerIdentity { role: Role::Hub, name: "hub".into(), node: self.hub_signer.node_id() };
        self.hub.handle_connected(self.now_ms, conn, clinic_id);
        self.clinics[i].handle_connected(self.now_ms, conn, hub_id);
        self.links[i] = Some(conn);
    }

    pub fn disconnect(&mut self, i: usize) {
        if let Some(conn) = self.links[i].take() {
            self.hub.handle_disconnected(self.now_ms, conn);
            self.clinics[i].handle_disconnected(self.now_ms, conn);
        }
    }

    /// Moves frames until nobody has anything to send. Returns frames moved.
    pub fn run(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let mut progress = false;
            for i in 0..self.clinics.len() {
                let Some(conn) = self.links[i] else { continue };
                while let Some(frame) = self.clinics[i].poll_transmit(self.now_ms, conn) {
                    self.bytes.1 += frame.len() as u64;
                    deliver(&mut self.hub, self.now_ms, conn, &frame);
                    progress = true;
                    moved += 1;
                }
                while let Some(frame) = self.hub.poll_transmit(self.now_ms, conn) {
                    self.bytes.0 += frame.len() as u64;
                    deliver(&mut self.clinics[i], self.now_ms, conn, &frame);
                    progress = true;
                    moved += 1;
                }
            }
            while let Some(out) = self.hub.poll_event() {
                if let shikaku_node::Output::Close { conn, .. } = out {
                    self.closed.push(conn);
                }
            }
            for c in &mut self.clinics {
                while c.poll_event().is_some() {}
            }
            if !progress {
                return moved;
            }
        }
    }

    /// Moves at most one frame on every link: clinic → hub when `up`, else hub → clinic
    /// (frames not moved stay in flight).
    pub fn step(&mut self, up: bool) {
        for i in 0..self.clinics.len() {
            let Some(conn) = self.links[i] else { continue };
            if up {
                if let Some(frame) = self.clinics[i].poll_transmit(self.now_ms, conn) {
                    deliver(&mut self.hub, self.now_ms, conn, &frame);
                }
            } else if let Some(frame) = self.hub.poll_transmit(self.now_ms, conn) {
                deliver(&mut self.clinics[i], self.now_ms, conn, &frame);
            }
        }
        while self.hub.poll_event().is_some() {}
        for c in &mut self.clinics {
            while c.poll_event().is_some() {}
        }
    }

    /// A check at clinic `i` for a member of the subscribed insurer.
    pub fn check(
        &mut self,
        i: usize,
        (y, m, d): (i32, u32, u32),
    ) -> Result<shikaku_core::Answer, shikaku_node::NodeError> {
        let member = some_member(self);
        self.clinics[i].check(
            self.now_ms,
            &CheckQuery::Member(member),
            Date::from_ymd(y, m, d).unwrap(),
        )
    }

    pub fn assert_converged(&self, i: usize) {
        let clinic = &self.clinics[i];
        for ns in [
            Namespace::Insurer(self.insurers[0]),
            Namespace::Clinic(self.clinic_signers[i].node_id()),
        ] {
            assert_eq!(
                clinic.namespace_state(&ns),
                self.hub.namespace_state(&ns),
                "namespace {ns:?} differs"
            );
        }
    }
}

/// Splits a frame and hands it to the node the way the runtime does.
pub fn deliver(node: &mut Node<FaultDirectory>, now_ms: u64, conn: u64, frame: &[u8]) {
    let mut splitter = FrameSplitter::new(FRAME_BYTES_MAX);
    splitter.push(frame);
    match splitter.next_frame() {
        Ok(Some(body)) => node.handle_inbound(now_ms, conn, prepare(&body, now_ms)),
        Ok(None) => panic!("incomplete frame"),
        Err(e) => node.handle_stream_error(conn, &e),
    }
}

fn some_member(world: &World) -> shikaku_core::MemberKey {
    world
        .events
        .iter()
        .find_map(|e| {
            e.event().body.membership_subject().filter(|m| m.insurer == world.insurers[0]).cloned()
        })
        .unwrap()
}

#[test]
fn initial_then_incremental_sync_and_offline_writes() {
    let mut w = World::new(300, 1);
    w.connect(0);
    w.run();
    w.assert_converged(0);
    assert!(w.clinics[0].in_sync());
    let subscribed = w.hub.namespace_state(&Namespace::Insurer(w.insurers[0])).count();
    assert!(subscribed > 100, "the subscribed insurer has events ({subscribed})");
    // Nothing of other insurers was sent.
    for other in &w.insurers[1..] {
        assert_eq!(w.clinics[0].namespace_state(&Namespace::Insurer(*other)).count(), 0);
    }

    // In sync: a reconnect costs one round trip (Hello → Welcome + receipts).
    w.disconnect(0);
    w.connect(0);
    let before = w.bytes;
    w.run();
    assert!(w.clinics[0].in_sync());
    let (down, up) = (w.bytes.0 - before.0, w.bytes.1 - before.1);
    assert!(down + up <= 600, "in-sync reconnect cost {down}+{up} bytes");

    // Offline: checks are answered and recorded; after reconnecting they reach the hub.
    w.disconnect(0);
    w.now_ms += 3_600_000;
    let member = some_member(&w);
    let answer = w.clinics[0]
        .check(w.now_ms, &CheckQuery::Member(member), Date::from_ymd(2026, 1, 5).unwrap())
        .unwrap();
    assert_eq!(answer.knowledge.staleness_s, Some(3600), "offline answers say how stale they are");
    w.connect(0);
    w.run();
    w.assert_converged(0);
    assert_eq!(w.hub.namespace_state(&Namespace::Clinic(w.clinic_signers[0].node_id())).count(), 1);

    // Live push: a new insurer event reaches the connected clinic without a new session.
    let online = w.check(0, (2026, 1, 5)).unwrap();
    assert_eq!(online.knowledge.staleness_s, Some(0));
    w.run();
    w.assert_converged(0);
}

impl World {
    /// Clinic 0 synced, three checks recorded and sent, a backup of its disk taken, then four
    /// more checks the hub also holds: returns the backup and the clinic's own namespace.
    pub fn backup_before_four_checks(&mut self) -> (FaultDirectory, Namespace) {
        self.connect(0);
        self.run();
        for _ in 0..3 {
            self.check(0, (2026, 1, 5)).unwrap();
        }
        self.run();
        self.clinics[0].persist_receipts().unwrap();
        let backup = self.clinic_disks[0].clone_durable();
        for _ in 0..4 {
            self.check(0, (2026, 1, 6)).unwrap();
        }
        self.run();
        self.clinics[0].persist_receipts().unwrap();
        (backup, Namespace::Clinic(self.clinic_signers[0].node_id()))
    }
}

#[test]
fn restore_from_old_backup_and_damage_are_repaired_without_reset() {
    let mut w = World::new(200, 1);
    let (backup, own) = w.backup_before_four_checks();
    assert_eq!(w.hub.namespace_state(&own).count(), 7);
    // The clinic is restored from the backup: it lost 4 of its own events.
    w.reopen_clinic(0, backup);
    assert_eq!(w.clinics[0].namespace_state(&own).count(), 3);
    w.connect(0);
    w.run();
    w.assert_converged(0);
    assert_eq!(w.clinics[0].namespace_state(&own).count(), 7);
    assert!(w.clinics[0].in_sync());
}

#[test]
fn unauthorized_and_tampered_events_are_refused_and_counted() {
    let mut w = World::new(100, 2);
    w.connect(0);
    w.run();
    let conn = w.links[0].unwrap();
    // Clinic 0 tries to write an insurer event and an event in clinic 1's namespace.
    let insurer_event =
        w.events.iter().find(|e| e.event().namespace == Namespace::Insurer(w.insurers[0])).unwrap();
    let wire = |e: &SignedEvent| {
        shikaku_protocol::wire::event_to_wire(
            e.schema_version(),
            e.canonical_bytes(),
            &e.signature(),
        )
    };
    let mut tampered = wire(insurer_event);
    let last = tampered.len() - 70;
    tampered[last] ^= 1;
    let frame = Message::Events { events: vec![wire(insurer_event), tampered] }.to_frame();
    deliver(&mut w.hub, w.now_ms, conn, &frame);
    let refusals = &w.hub.counters().refusals;
    assert_eq!(refusals.get("not_writable"), Some(&1), "{refusals:?}");
    assert_eq!(refusals.get("invalid"), Some(&1), "{refusals:?}");
    // The session survives refusals: an Ack names both.
    let mut ack = None;
    while let Some(f) = w.hub.poll_transmit(w.now_ms, conn) {
        if let Inbound::Message(Message::Ack(Ack { refused, .. })) = prepare(&f[4..], w.now_ms) {
            ack = Some(refused);
        }
    }
    assert_eq!(ack.unwrap().len(), 2);

    // Asking to read clinic 1's namespace is refused in the handshake.
    let hello = Message::Hello(Hello {
        version: 1,
        role: Role::Clinic,
        frame_max: 1 << 20,
        cursor: 0,
        subscriptions: vec![shikaku_protocol::wire::Subscription {
            namespace: Namespace::Clinic(w.clinic_signers[1].node_id()),
            cursor: None,
        }],
        prefetch: vec![],
    });
    let conn2 = 77;
    w.hub.handle_connected(
        w.now_ms,
        conn2,
        PeerIdentity {
            role: Role::Clinic,
            name: "clinic-0".into(),
            node: w.clinic_signers[0].node_id(),
        },
    );
    deliver(&mut w.hub, w.now_ms, conn2, &hello.to_frame());
    assert_eq!(w.hub.counters().refusals.get("other_clinic"), Some(&1));
    let welcome = w.hub.poll_transmit(w.now_ms, conn2).unwrap();
    match prepare(&welcome[4..], w.now_ms) {
        Inbound::Message(Message::Welcome(Welcome { verdicts, .. })) => {
            assert_eq!(verdicts, vec![Some(shikaku_protocol::wire::RefusalReason::OtherClinic)]);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[test]
fn malformed_frames_close_only_that_session() {
    let mut w = World::new(50, 2);
    w.connect(0);
    w.connect(1);
    w.run();
    let conn0 = w.links[0].unwrap();
    // Unknown message type.
    deliver(&mut w.hub, w.now_ms, conn0, &[1, 0, 0, 0, 0x7f]);
    let mut closed = false;
    while let Some(out) = w.hub.poll_event() {
        if let shikaku_node::Output::Close { conn, .. } = out {
            assert_eq!(conn, conn0);
            closed = true;
        }
    }
    assert!(closed);
    // An oversized frame length is refused before buffering.
    let mut splitter = FrameSplitter::new(1 << 20);
    splitter.push(&(64u32 << 20).to_le_bytes());
    let err = splitter.next_frame().unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // Clinic 1 is still served.
    w.check(1, (2026, 1, 5)).unwrap();
    w.run();
    w.assert_converged(1);
}

#[test]
fn damaged_ledger_range_is_refetched_from_the_hub_and_verified() {
    let mut w = World::new(200, 1);
    w.connect(0);
    w.run();
    w.clinics[0].persist_receipts().unwrap();
    let ns = Namespace::Insurer(w.insurers[0]);
    let before = w.clinics[0].namespace_state(&ns);
    // Bit rot in the middle of the clinic's first segment.
    let disk = w.clinic_disks[0].clone();
    disk.flip_bit("segment-0000000000.shk", 40_000, 3);
    w.reopen_clinic(0, disk);
    assert!(!w.clinics[0].ledger().recovery().damaged.is_empty(), "the damage is found on open");
    assert!(
        w.clinics[0].namespace_state(&ns).count() < before.count(),
        "damaged events are not served"
    );
    w.connect(0);
    w.run();
    w.assert_converged(0);
    assert_eq!(w.clinics[0].namespace_state(&ns), before);
    assert!(w.clinics[0].counters().repaired_events >= 1);
    assert!(w.clinics[0].in_sync());
}

#[test]
fn partial_replication_answers_unknown_outside_and_prefetches_appointments() {
    let mut w = World::new(300, 0);
    let other = w.insurers[1];
    let mut members = w.events.iter().filter_map(|e| {
        e.event().body.membership_subject().filter(|m| m.insurer == other).cloned()
    });
    let booked = members.next().unwrap();
    let walk_in = members.find(|m| *m != booked).unwrap();
    w.prefetch = vec![booked.clone()];
    let signer = Signer::derived("shikaku test clinic", b"prefetch");
    let disk = FaultDirectory::new(FaultConfig::default(), 9);
    w.clinics.push(Node::open(disk.clone(), signer.clone(), w.clinic_config(0)).unwrap());
    w.clinic_disks.push(disk);
    w.clinic_signers.push(signer);
    w.links.push(None);
    w.connect(0);
    w.run();
    assert!(w.clinics[0].in_sync());
    let date = Date::from_ymd(2026, 1, 5).unwrap();
    let now = w.now_ms;
    let unknown = w.clinics[0].check(now, &CheckQuery::Member(walk_in), date).unwrap();
    assert_eq!(
        unknown.code,
        shikaku_core::AnswerCode::Unknown,
        "outside what is replicated: unknown, never no match"
    );
    let prefetched = w.clinics[0].check(now, &CheckQuery::Member(booked.clone()), date).unwrap();
    assert_ne!(prefetched.code, shikaku_core::AnswerCode::Unknown);
    assert!(!prefetched.decided_by.is_empty(), "answered from the prefetched events");
    // Only that member's events came: the rest of the insurer was not replicated.
    let held = w.clinics[0].namespace_state(&Namespace::Insurer(other)).count();
    let all = w.hub.namespace_state(&Namespace::Insurer(other)).count();
    assert!(held > 0 && held < all, "{held} of {all}");
}

#[test]
fn a_newer_session_replaces_the_older_and_silent_connections_time_out() {
    let mut w = World::new(50, 1);
    w.connect(0);
    w.run();
    let old = w.links[0].unwrap();
    // The clinic reconnects (say, after a network change) before the old connection died.
    w.connect(0);
    w.run();
    assert_eq!(w.closed, vec![old], "only the older session is closed");
    assert!(w.clinics[0].in_sync());
    // A connection that never says Hello is closed after the handshake timeout.
    let silent = 99;
    let peer = PeerIdentity {
        role: Role::Clinic,
        name: "silent".into(),
        node: shikaku_core::NodeId([5; 32]),
    };
    w.hub.handle_connected(w.now_ms, silent, peer);
    w.hub.handle_tick(w.now_ms + 5_000);
    assert!(!std::iter::from_fn(|| w.hub.poll_event())
        .any(|o| matches!(o, shikaku_node::Output::Close { conn: 99, .. })));
    w.hub.handle_tick(w.now_ms + 11_000);
    assert!(std::iter::from_fn(|| w.hub.poll_event())
        .any(|o| matches!(o, shikaku_node::Output::Close { conn: 99, .. })));
}

#[test]
fn insurer_events_must_be_signed_by_the_insurers_registered_key() {
    let mut w = World::new(150, 0);
    let insurer = w.insurers[0];
    let right = shikaku_gen::insurer_signer(11, insurer).public();
    let wrong = Signer::derived("not the insurer", b"x").public();
    // A hub with a key registry refuses to import events signed by another key.
    let mut config = NodeConfig::new(Role::Hub, "strict-hub");
    config.insurers = w.insurers.iter().copied().collect();
    config.insurer_keys.insert(insurer, [wrong].into_iter().collect());
    let mut strict = Node::open(
        FaultDirectory::new(FaultConfig::default(), 3),
        Signer::derived("h", b"2"),
        config,
    )
    .unwrap();
    let err = strict.import(w.now_ms, &w.events).unwrap_err();
    assert!(err.to_string().contains("not one registered for that insurer"), "{err}");
    assert_eq!(strict.ledger().len(), 0, "nothing of the refused batch is stored");
    // A clinic with the registry refuses what the (permissive) hub relays if the key is wrong …
    for (key, accepted) in [(wrong, false), (right, true)] {
        let signer = Signer::derived("shikaku test clinic", format!("{accepted}").as_bytes());
        let disk = FaultDirectory::new(FaultConfig::default(), 4);
        let mut config = w.clinic_config(0);
        config.insurer_keys.insert(insurer, [key].into_iter().collect());
        w.clinics = vec![Node::open(disk.clone(), signer.clone(), config).unwrap()];
        w.clinic_disks = vec![disk];
        w.clinic_signers = vec![signer];
        w.links = vec![None];
        w.connect(0);
        w.run();
        let refused = w.clinics[0].counters().refusals.get("wrong_author").copied().unwrap_or(0);
        // … and accepts everything with the right one.
        assert_eq!(refused == 0, accepted, "refusals: {refused}");
        assert_eq!(w.clinics[0].in_sync(), accepted);
        w.disconnect(0);
    }
}

#[test]
fn a_node_opened_from_its_snapshot_is_the_node_a_full_fold_gives() {
    use shikaku_log::storage::Directory as _;
    use shikaku_node::snapshot::NODE_SNAPSHOT_FILE;
    let mut w = World::new(300, 1);
    w.connect(0);
    w.run();
    w.disconnect(0);
    w.now_ms += 60_000;
    w.check(0, (2026, 1, 5)).unwrap();
    w.connect(0);
    w.run();
    // Snapshots at this point, then more on top that only a fold after the snapshot sees.
    w.hub.write_snapshot(w.now_ms).unwrap();
    w.clinics[0].write_snapshot(w.now_ms).unwrap();
    w.now_ms += 60_000;
    w.check(0, (2026, 1, 6)).unwrap();
    w.run();
    w.disconnect(0);
    let hub_config = {
        let mut c = NodeConfig::new(Role::Hub, "hub");
        c.insurers = w.insurers.iter().copied().collect();
        c
    };
    let clinic_config = w.clinic_config(0);
    let (hub_running, clinic_running) =
        (w.hub.derived_state_digest(), w.clinics[0].derived_state_digest());
    for (disk, signer, config, running) in [
        (w.hub_disk.clone(), w.hub_signer.clone(), hub_config, hub_running),
        (w.clinic_disks[0].clone(), w.clinic_signers[0].clone(), clinic_config, clinic_running),
    ] {
        let mut from_snapshot = Node::open(disk.clone(), signer.clone(), config.clone()).unwrap();
        assert!(
            from_snapshot.open_note().starts_with("node snapshot at position"),
            "{}",
            from_snapshot.open_note()
        );
        assert!(!from_snapshot.open_note().ends_with(", 0 events folded"), "a tail was folded");
        let mut bare = disk.clone();
        bare.remove(NODE_SNAPSHOT_FILE).unwrap();
        let mut folded = Node::open(disk.clone(), signer, config).unwrap();
        assert_eq!(folded.open_note().split(',').next(), Some("no node snapshot"));
        assert_eq!(from_snapshot.derived_state_digest(), folded.derived_state_digest());
        assert_eq!(from_snapshot.derived_state_digest(), running);
    }

    // A snapshot that does not verify is ignored, said so, and the log is folded.
    let mut disk = w.clinic_disks[0].clone();
    let clinic = Node::open(disk.clone(), w.clinic_signers[0].clone(), w.clinic_config(0));
    let mut clinic = clinic.unwrap();
    clinic.write_snapshot(w.now_ms).unwrap();
    let mut bytes = disk.read_whole(NODE_SNAPSHOT_FILE).unwrap().unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    disk.write_atomic(NODE_SNAPSHOT_FILE, &bytes).unwrap();
    drop(clinic);
    let mut reopened =
        Node::open(disk.clone(), w.clinic_signers[0].clone(), w.clinic_config(0)).unwrap();
    assert!(
        reopened
            .open_note()
            .starts_with("node snapshot not used (node snapshot checksum mismatch)"),
        "{}",
        reopened.open_note()
    );
    assert_eq!(reopened.derived_state_digest(), clinic_running);

    // The restarted clinic is in sync with the hub in one round trip.
    w.reopen_clinic(0, disk);
    w.connect(0);
    w.run();
    assert!(w.clinics[0].in_sync());
    w.assert_converged(0);
}

#[test]
fn only_sessions_whose_grants_cover_a_new_event_are_woken() {
    let mut w = World::new(300, 2);
    w.connect(0);
    w.connect(1);
    w.run();
    w.hub.take_dirty();
    // An event of an insurer neither clinic subscribes to wakes no session.
    let other = w.insurers[1];
    let unsubscribed = w
        .events
        .iter()
        .find(|e| e.event().namespace == Namespace::Insurer(other))
        .cloned()
        .unwrap();
    // A copy of a generated event, renumbered and re-signed by its insurer: new to the hub.
    let fresh = |e: &SignedEvent, seq: u64, now_ms: u64| {
        let Namespace::Insurer(insurer) = e.event().namespace else { unreachable!() };
        let mut event = e.event().clone();
        event.origin_seq = seq;
        event.hlc = shikaku_core::Hlc::new(now_ms, 0);
        shikaku_gen::insurer_signer(11, insurer).sign(event).unwrap()
    };
    w.hub.import(w.now_ms, &[fresh(&unsubscribed, 1_000_000, w.now_ms)]).unwrap();
    assert_eq!(w.hub.take_dirty(), Vec::<u64>::new(), "nobody subscribes to insurer {other}");
    // One of the subscribed insurer wakes both clinics' sessions.
    let subscribed = w
        .events
        .iter()
        .find(|e| e.event().namespace == Namespace::Insurer(w.insurers[0]))
        .cloned()
        .unwrap();
    w.hub.import(w.now_ms, &[fresh(&subscribed, 1_000_001, w.now_ms)]).unwrap();
    let mut woken = w.hub.take_dirty();
    woken.sort_unstable();
    assert_eq!(woken, vec![w.links[0].unwrap(), w.links[1].unwrap()]);
    w.run();
    w.assert_converged(0);
    w.assert_converged(1);
}
