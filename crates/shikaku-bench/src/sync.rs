//! `shikaku bench sync`: clinic ↔ hub sync over real QUIC on loopback (mutual TLS, real
//! ledgers on disk), each case beside the `negentropy` crate reconciling the same sets in memory
//! and a naive send-everything baseline, measured in the same run; then how many concurrently
//! syncing clinic connections one hub holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shikaku_core::{Namespace, SignedEvent, Signer};
use shikaku_gen::Rng;
use shikaku_log::fs::FileDirectory;
use shikaku_log::{Log, LogConfig};
use shikaku_net::runtime::FileNode;
use shikaku_net::{tls, ClinicService, Clock, HubService, Runtime};
use shikaku_node::{Level, Node, NodeConfig, Role};
use shikaku_protocol::negentropy::Item;

use shikaku_net::clock::Stopwatch;

/// A deployment's CA and the nodes' directories under one root.
pub(crate) struct Net {
    ca: PathBuf,
    root: PathBuf,
}

impl Net {
    /// A fresh CA under `root`.
    pub(crate) fn new(root: &Path) -> Result<Net> {
        let net = Net { ca: root.join("ca"), root: root.to_owned() };
        tls::ca_init(&net.ca)?;
        Ok(net)
    }

    pub(crate) fn tls(&self, role: Role, name: &str, signer: &Signer) -> Result<tls::TlsFiles> {
        let out = self.root.join(name).join("tls");
        tls::ca_issue(&self.ca, role, name, signer.node_id(), &out)?;
        tls::load(&out)
    }

    pub(crate) fn node(
        &self,
        role: Role,
        name: &str,
        signer: &Signer,
        insurers: &[shikaku_core::InsurerNumber],
    ) -> Result<FileNode> {
        let mut config = NodeConfig::new(role, name);
        config.insurers = insurers.iter().copied().collect();
        self.node_with(name, signer, config)
    }

    /// A node named `name` opened with `config`.
    pub(crate) fn node_with(
        &self,
        name: &str,
        signer: &Signer,
        config: NodeConfig,
    ) -> Result<FileNode> {
        let dir = FileDirectory::new(self.root.join(name).join("log"))?;
        Ok(Node::open(dir, signer.clone(), config)?)
    }
}

/// One measured sync.
struct Measured {
    seconds: f64,
    frame_bytes: u64,
    udp_bytes: u64,
    round_trips: u32,
}

/// Runs the clinic's service until it is in sync with the hub on every namespace.
async fn sync_once(
    rt: &Arc<Runtime>,
    hub_rt: &Arc<Runtime>,
    tls_files: &tls::TlsFiles,
    hub: std::net::SocketAddr,
    namespaces: &[Namespace],
) -> Result<Measured> {
    let before = rt.stats.snapshot();
    rt.resume();
    let watch = Stopwatch::start();
    let service = ClinicService::start(rt.clone(), tls_files, &[hub])?;
    let round_trips = loop {
        let (in_sync, rts) = rt.with_node(|n, _| (n.in_sync(), n.session_round_trips()));
        if in_sync {
            let same = namespaces.iter().all(|ns| {
                rt.with_node(|n, _| n.namespace_state(ns))
                    == hub_rt.with_node(|n, _| n.namespace_state(ns))
            });
            if same {
                break rts.unwrap_or(0);
            }
        }
        if watch.seconds() > 600.0 {
            bail!("no convergence within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let seconds = watch.seconds();
    service.shutdown().await;
    let after = rt.stats.snapshot();
    Ok(Measured {
        seconds,
        frame_bytes: (after.0 - before.0) + (after.1 - before.1),
        udp_bytes: (after.2 - before.2) + (after.3 - before.3),
        round_trips,
    })
}

fn items_by_ns(events: &[SignedEvent]) -> BTreeMap<Namespace, Vec<Item>> {
    let mut out: BTreeMap<Namespace, Vec<Item>> = BTreeMap::new();
    for e in events {
        out.entry(e.event().namespace)
            .or_default()
            .push(Item { timestamp: e.event().hlc.0, id: e.id().0 });
    }
    for items in out.values_mut() {
        items.sort_unstable();
        items.dedup();
    }
    out
}

/// The `negentropy` crate reconciling `client` against `hub`, per namespace: total bytes, and
/// round trips of the longest namespace plus one for fetching what was missing.
fn negentropy_crate(
    client: &BTreeMap<Namespace, Vec<Item>>,
    hub: &BTreeMap<Namespace, Vec<Item>>,
) -> Result<(u64, u32)> {
    let (mut bytes, mut max_rounds) = (0u64, 0u32);
    for (ns, hub_items) in hub {
        let client_items = client.get(ns).map_or(&[][..], Vec::as_slice);
        let outcome = crate::reconcile::reference(client_items, hub_items, 0)?;
        bytes += outcome.bytes as u64;
        let rounds = outcome.round_trips + usize::from(outcome.missing > 0);
        max_rounds = max_rounds.max(rounds as u32);
    }
    Ok((bytes, max_rounds))
}

fn wire_bytes(events: &[SignedEvent]) -> u64 {
    events.iter().map(|e| (2 + e.canonical_bytes().len() + 64) as u64).sum()
}

struct Row {
    case: String,
    ours: Measured,
    payload: u64,
    reference: (u64, u32),
    send_all: u64,
}

fn print_rows(out: &mut dyn Write, rows: &[Row]) -> Result<()> {
    writeln!(
        out,
        "{:<34} {:>10} {:>12} {:>12} {:>5} {:>14} {:>5} {:>14} {:>9}",
        "case", "events", "session B", "UDP B", "RT", "negentropy B", "RT", "send-all B", "wall s"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<34} {:>10} {:>12} {:>12} {:>5} {:>14} {:>5} {:>14} {:>9.2}",
            r.case,
            r.payload,
            r.ours.frame_bytes,
            r.ours.udp_bytes,
            r.ours.round_trips,
            r.reference.0,
            r.reference.1,
            r.send_all,
            r.ours.seconds
        )?;
    }
    Ok(())
}

/// Runs the benchmark with a hub of `events` events and `clinics` concurrent clinics.
pub fn run(
    dir: &Path,
    events: usize,
    week: usize,
    random: usize,
    clinics: usize,
    out: &mut dyn Write,
) -> Result<()> {
    if events < week + random + 10 {
        bail!("--events must exceed --week + --random");
    }
    let root = crate::log::fresh_dir(dir, "sync")?;
    let net = Net::new(&root)?;
    let watch = Stopwatch::start();
    let all = crate::log::events_for(events)?;
    let insurers: Vec<_> = items_by_ns(&all)
        .keys()
        .filter_map(|ns| match ns {
            Namespace::Insurer(i) => Some(*i),
            Namespace::Clinic(_) => None,
        })
        .collect();
    writeln!(
        out,
        "generated {} signed events in {} insurer namespaces in {:.1} s (not measured)",
        all.len(),
        insurers.len(),
        watch.seconds()
    )?;
    let namespaces: Vec<Namespace> = insurers.iter().map(|i| Namespace::Insurer(*i)).collect();
    let tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = tokio.block_on(async {
        let hub_signer = Signer::derived("shikaku bench sync", b"hub");
        let hub_tls = net.tls(Role::Hub, "hub", &hub_signer)?;
        let hub_rt = Runtime::new(net.node(Role::Hub, "hub", &hub_signer, &insurers)?, Clock::wall(), Level::Warn);
        let old = all.len() - week - 1;
        hub_rt.with_node(|n, now| n.import(now, &all[..old]))?;
        let service = HubService::start(hub_rt.clone(), &hub_tls, "127.0.0.1:0".parse()?)?;
        let addr = service.local_addr()?;
        let mut rows = Vec::new();

        // Clinic A: synced with the older history first (setup, not measured).
        let a_signer = Signer::derived("shikaku bench sync", b"clinic-a");
        let a_tls = net.tls(Role::Clinic, "clinic-a", &a_signer)?;
        let a = Runtime::new(net.node(Role::Clinic, "clinic-a", &a_signer, &insurers)?, Clock::wall(), Level::Warn);
        sync_once(&a, &hub_rt, &a_tls, addr, &namespaces).await?;
        let held = items_by_ns(&all[..old]);
        let send_all_old = wire_bytes(&all[..old]);

        // 1. In sync.
        let m = sync_once(&a, &hub_rt, &a_tls, addr, &namespaces).await?;
        rows.push(Row { case: "in sync".into(), ours: m, payload: 0, reference: negentropy_crate(&held, &held)?, send_all: send_all_old });

        // 2. One new event.
        hub_rt.with_node(|n, now| n.import(now, &all[old..=old]))?;
        let hub_items = items_by_ns(&all[..=old]);
        let m = sync_once(&a, &hub_rt, &a_tls, addr, &namespaces).await?;
        rows.push(Row { case: "one new event".into(), ours: m, payload: wire_bytes(&all[old..=old]), reference: negentropy_crate(&held, &hub_items)?, send_all: wire_bytes(&all[..=old]) });

        // 3. A week offline: the newest `week` events missing.
        hub_rt.with_node(|n, now| n.import(now, &all[old + 1..]))?;
        let full = items_by_ns(&all);
        let m = sync_once(&a, &hub_rt, &a_tls, addr, &namespaces).await?;
        let week_payload = wire_bytes(&all[old + 1..]);
        rows.push(Row { case: format!("week offline ({week} newest missing)"), ours: m, payload: week_payload, reference: negentropy_crate(&hub_items, &full)?, send_all: wire_bytes(&all) });
        let week_row = rows.len() - 1;

        // 4. Restored from a copy missing `random` random events (no receipts: cursor unknown).
        let b_signer = Signer::derived("shikaku bench sync", b"clinic-b");
        let b_tls = net.tls(Role::Clinic, "clinic-b", &b_signer)?;
        let mut rng = Rng::new(7);
        let mut missing = std::collections::HashSet::new();
        while missing.len() < random {
            missing.insert((rng.next_u64() % all.len() as u64) as usize);
        }
        let kept: Vec<SignedEvent> = all.iter().enumerate().filter(|(i, _)| !missing.contains(i)).map(|(_, e)| e.clone()).collect();
        {
            let mut log = Log::open(FileDirectory::new(root.join("clinic-b").join("log"))?, LogConfig::new(b_signer.node_id()))?;
            for chunk in kept.chunks(65_536) {
                log.append(chunk)?;
            }
        }
        let b = Runtime::new(net.node(Role::Clinic, "clinic-b", &b_signer, &insurers)?, Clock::wall(), Level::Warn);
        let lost: Vec<SignedEvent> = all.iter().enumerate().filter(|(i, _)| missing.contains(i)).map(|(_, e)| e.clone()).collect();
        let m = sync_once(&b, &hub_rt, &b_tls, addr, &namespaces).await?;
        rows.push(Row { case: format!("restore: {random} random missing"), ours: m, payload: wire_bytes(&lost), reference: negentropy_crate(&items_by_ns(&kept), &full)?, send_all: wire_bytes(&all) });
        drop(b);

        // 5. A fresh clinic's initial sync of everything.
        let c_signer = Signer::derived("shikaku bench sync", b"clinic-c");
        let c_tls = net.tls(Role::Clinic, "clinic-c", &c_signer)?;
        let c = Runtime::new(net.node(Role::Clinic, "clinic-c", &c_signer, &insurers)?, Clock::wall(), Level::Warn);
        let m = sync_once(&c, &hub_rt, &c_tls, addr, &namespaces).await?;
        let initial_rate = all.len() as f64 / m.seconds;
        rows.push(Row { case: format!("initial sync ({} events)", all.len()), ours: m, payload: wire_bytes(&all), reference: negentropy_crate(&BTreeMap::new(), &full)?, send_all: wire_bytes(&all) });
        drop(c);
        drop(a);

        writeln!(out, "\nsync over QUIC on loopback, hub holding {} events (session B = frame bytes both ways; UDP B = with QUIC/TLS; negentropy B = the negentropy crate reconciling the same sets in memory, ids only; send-all B = every event's bytes)", all.len())?;
        print_rows(out, &rows)?;
        let w = &rows[week_row];
        let overhead = (w.ours.frame_bytes.saturating_sub(w.payload)) as f64 / week as f64;
        let udp_overhead = (w.ours.udp_bytes.saturating_sub(w.payload)) as f64 / week as f64;
        writeln!(out, "\nweek offline: {overhead:.1} session bytes per event beyond the event bytes ({udp_overhead:.1} with QUIC/TLS); target <= 25")?;
        writeln!(out, "initial sync: {initial_rate:.0} signature-verified events/s stored durably; target >= 50,000")?;
        let i = &rows[0].ours;
        writeln!(out, "in sync: {} session bytes ({} UDP), {} round trip(s); targets <= 400 bytes, <= 1 round trip", i.frame_bytes, i.udp_bytes, i.round_trips)?;
        writeln!(out, "one new event: {} round trip(s); target 1", rows[1].ours.round_trips)?;

        service.shutdown().await;
        drop(hub_rt);
        connections(&net, clinics, out).await
    });
    drop(tokio);
    let _ = std::fs::remove_dir_all(&root);
    result
}

pub(crate) fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// How many concurrently syncing clinics one hub holds: `clinics` clinics connect at once, each
/// syncs a small insurer, stays connected, and receives a live push.
async fn connections(net: &Net, clinics: usize, out: &mut dyn Write) -> Result<()> {
    if clinics == 0 {
        return Ok(());
    }
    let world = shikaku_gen::generate(&shikaku_gen::GenConfig::new(60, 5))?;
    let ns_items = items_by_ns(&world.events);
    let (small, _) = ns_items.iter().min_by_key(|(_, v)| v.len()).context("an insurer")?;
    let Namespace::Insurer(insurer) = *small else { bail!("no insurer") };
    let (initial, later): (Vec<SignedEvent>, Vec<SignedEvent>) = {
        let mine: Vec<SignedEvent> =
            world.events.iter().filter(|e| e.event().namespace == *small).cloned().collect();
        let cut = mine.len() - 1;
        (mine[..cut].to_vec(), mine[cut..].to_vec())
    };
    let hub_signer = Signer::derived("shikaku bench sync", b"hub-2");
    let hub_tls = net.tls(Role::Hub, "hub-2", &hub_signer)?;
    let hub_rt = Runtime::new(
        net.node(Role::Hub, "hub-2", &hub_signer, &[insurer])?,
        Clock::wall(),
        Level::Warn,
    );
    hub_rt.with_node(|n, now| n.import(now, &initial))?;
    let service = HubService::start(hub_rt.clone(), &hub_tls, "127.0.0.1:0".parse()?)?;
    let addr = service.local_addr()?;
    let rss_before = rss_mb();
    let watch = Stopwatch::start();
    let mut nodes = Vec::with_capacity(clinics);
    for i in 0..clinics {
        let name = format!("c{i}");
        let signer = Signer::derived("shikaku bench sync clinic", name.as_bytes());
        let tls_files = net.tls(Role::Clinic, &name, &signer)?;
        let rt = Runtime::new(
            net.node(Role::Clinic, &name, &signer, &[insurer])?,
            Clock::wall(),
            Level::Warn,
        );
        let service = ClinicService::start(rt.clone(), &tls_files, &[addr])?;
        nodes.push((rt, service));
    }
    loop {
        let synced = nodes.iter().filter(|(rt, _)| rt.with_node(|n, _| n.in_sync())).count();
        if synced == clinics {
            break;
        }
        if watch.seconds() > 300.0 {
            writeln!(out, "only {synced} of {clinics} clinics in sync after 300 s")?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_synced = watch.seconds();
    let held = hub_rt.with_node(|n, _| n.connections());
    let watch = Stopwatch::start();
    hub_rt.with_node(|n, now| n.import(now, &later))?;
    let target = hub_rt.with_node(|n, _| n.namespace_state(small));
    loop {
        let done = nodes
            .iter()
            .filter(|(rt, _)| rt.with_node(|n, _| n.namespace_state(small)) == target)
            .count();
        if done == clinics || watch.seconds() > 120.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let push = watch.seconds();
    let rss = rss_mb();
    writeln!(
        out,
        "\nconcurrent clinics: {held} of {clinics} connections held by one hub; {clinics} clinics (ledger, certificate, QUIC endpoint each) started, connected and synced {} events each in {all_synced:.1} s; one live-pushed event reached all in {:.0} ms; process RSS {rss:.0} MB ({:.0} MB before the clinics; hub and clinics share the process)",
        initial.len(),
        push * 1000.0,
        rss_before
    )?;
    let closing: Vec<_> =
        nodes.into_iter().map(|(_, service)| tokio::spawn(service.shutdown())).collect();
    for handle in closing {
        let _ = handle.await;
    }
    service.shutdown().await;
    Ok(())
}
