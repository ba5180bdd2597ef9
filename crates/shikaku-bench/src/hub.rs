//! `shikaku bench hub`: the scaled-out hub against the embedded one, in the same run, on a
//! NATS JetStream cluster the caller runs (docs/DEPLOY.md; the stream must be empty): import
//! throughput into the embedded hub's ledger vs publishing into the replicated stream (what
//! `hub import --store` does) and each front-end following the stream into its ledger; a fresh
//! clinic's initial sync from an embedded hub vs from a front-end; then many clinics spread
//! over two front-ends — connected, synced, and one live-pushed event's latency to all.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shikaku_core::{Namespace, SignedEvent, Signer};
use shikaku_net::clock::Stopwatch;
use shikaku_net::jetstream::{self, NatsOptions};
use shikaku_net::{ClinicService, Clock, HubService, Runtime};
use shikaku_node::{Level, Role};

use crate::sync::Net;

/// Events imported per node command / published per call.
const BATCH: usize = 4096;

/// Runs the benchmark.
pub fn run(
    dir: &Path,
    members: usize,
    clinics: usize,
    nats: &NatsOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let root = crate::log::fresh_dir(dir, "hub")?;
    let net = Net::new(&root)?;
    let watch = Stopwatch::start();
    let world = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, 7))?;
    let events = world.events;
    writeln!(
        out,
        "generated {members} members: {} signed events in {:.1} s (not measured)",
        events.len(),
        watch.seconds()
    )?;
    let tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = tokio.block_on(async { measure(&net, &events, clinics, nats, out).await });
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn measure(
    net: &Net,
    events: &[SignedEvent],
    clinics: usize,
    nats: &NatsOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let client = jetstream::connect(nats).await?;
    let report = jetstream::init_stream(&client, jetstream::REPLICAS_MIN).await?;
    if report.messages > 0 {
        bail!(
            "bench hub needs an empty stream {} (it holds {} events)",
            jetstream::STREAM_NAME,
            report.messages
        );
    }
    writeln!(
        out,
        "stream {} on nats-server {}: {} replicas",
        jetstream::STREAM_NAME,
        report.server,
        report.replicas
    )?;

    // 1. Import: the embedded hub's ledger (the baseline) vs publishing into the stream.
    let insurers: Vec<_> = events
        .iter()
        .filter_map(|e| match e.event().namespace {
            Namespace::Insurer(i) => Some(i),
            Namespace::Clinic(_) => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let embedded_signer = Signer::derived("shikaku bench hub", b"embedded");
    let embedded_tls = net.tls(Role::Hub, "embedded", &embedded_signer)?;
    let mut embedded = net.node(Role::Hub, "embedded", &embedded_signer, &insurers)?;
    let watch = Stopwatch::start();
    for batch in events.chunks(BATCH) {
        embedded.import(shikaku_net::clock::now_ms(), batch)?;
    }
    let embedded_s = watch.seconds();
    let publisher = jetstream::Publisher::new(&client);
    let watch = Stopwatch::start();
    for batch in events.chunks(BATCH) {
        publisher.publish(batch).await.map_err(|f| anyhow::anyhow!("{}", f.error))?;
    }
    let stream_s = watch.seconds();
    let rate = |s: f64| events.len() as f64 / s.max(1e-9);
    writeln!(out, "\nimport of {} events:", events.len())?;
    writeln!(out, "  embedded hub (its ledger, fsync per batch of {BATCH}): {embedded_s:.1} s, {:.0} events/s", rate(embedded_s))?;
    writeln!(out, "  into the R3 stream (pipelined, {} in flight, sync_interval always): {stream_s:.1} s, {:.0} events/s", jetstream::PUBLISH_WINDOW, rate(stream_s))?;

    // 2. Two front-ends follow the stream into their ledgers.
    let mut fronts = Vec::new();
    for name in ["front-a", "front-b"] {
        let signer = Signer::derived("shikaku bench hub", name.as_bytes());
        let tls = net.tls(Role::Hub, name, &signer)?;
        let mut config = shikaku_node::NodeConfig::new(Role::Hub, name);
        config.follows_stream = true;
        let node = net.node_with(name, &signer, config)?;
        let rt = Runtime::new(node, Clock::wall(), Level::Warn);
        let (stream, identity) = jetstream::open_stream(&client, jetstream::REPLICAS_MIN).await?;
        let watch = Stopwatch::start();
        let front = jetstream::FrontEnd::start(rt.clone(), &client, stream, identity).await?;
        let total = events.len() as u64;
        while rt.call(|n, _| n.stream_applied()).await < total {
            if watch.seconds() > 3600.0 {
                bail!("{name} did not catch up within an hour");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = watch.seconds();
        writeln!(
            out,
            "  {name} follows the stream into its ledger: {s:.1} s, {:.0} events/s",
            rate(s)
        )?;
        let service = HubService::start(rt.clone(), &tls, "127.0.0.1:0".parse()?)?;
        fronts.push((rt, service, front));
    }
    let embedded_rt = Runtime::new(embedded, Clock::wall(), Level::Warn);
    let embedded_service =
        HubService::start(embedded_rt.clone(), &embedded_tls, "127.0.0.1:0".parse()?)?;

    // 3. A fresh clinic's initial sync of the largest insurer: embedded hub vs front-end.
    let size = |i: &shikaku_core::InsurerNumber| {
        events.iter().filter(|e| e.event().namespace == Namespace::Insurer(*i)).count()
    };
    let largest = insurers.iter().copied().max_by_key(size).context("an insurer")?;
    let ns = Namespace::Insurer(largest);
    let held = embedded_rt.call(move |n, _| n.namespace_state(&ns).count()).await;
    writeln!(out, "\na fresh clinic's initial sync of insurer {largest} ({held} events):")?;
    for (label, hub_rt, addr) in [
        ("embedded hub", embedded_rt.clone(), embedded_service.local_addr()?),
        ("front-end over the stream", fronts[0].0.clone(), fronts[0].1.local_addr()?),
    ] {
        let name = format!("fresh-{}", label.split(' ').next().unwrap_or("x"));
        let signer = Signer::derived("shikaku bench hub clinic", name.as_bytes());
        let tls = net.tls(Role::Clinic, &name, &signer)?;
        let rt = Runtime::new(
            net.node(Role::Clinic, &name, &signer, &[largest])?,
            Clock::wall(),
            Level::Warn,
        );
        let watch = Stopwatch::start();
        let service = ClinicService::start(rt.clone(), &tls, &[addr])?;
        let target = hub_rt.call(move |n, _| n.namespace_state(&ns)).await;
        while !(rt.call(|n, _| n.in_sync()).await
            && rt.call(move |n, _| n.namespace_state(&ns)).await == target)
        {
            if watch.seconds() > 600.0 {
                bail!("no initial sync within 10 minutes from the {label}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writeln!(out, "  from the {label}: {:.2} s", watch.seconds())?;
        service.shutdown().await;
    }
    embedded_service.shutdown().await;

    // 4. Many clinics over the two front-ends (each given both addresses, half starting with
    // each), a small insurer each; then one event published into the stream.
    let smallest = insurers.iter().copied().min_by_key(size).context("an insurer")?;
    let small_ns = Namespace::Insurer(smallest);
    let addrs = [fronts[0].1.local_addr()?, fronts[1].1.local_addr()?];
    let watch = Stopwatch::start();
    let mut nodes: Vec<(Arc<Runtime>, ClinicService)> = Vec::with_capacity(clinics);
    for i in 0..clinics {
        let name = format!("c{i}");
        let signer = Signer::derived("shikaku bench hub clinic", name.as_bytes());
        let tls = net.tls(Role::Clinic, &name, &signer)?;
        let rt = Runtime::new(
            net.node(Role::Clinic, &name, &signer, &[smallest])?,
            Clock::wall(),
            Level::Warn,
        );
        let order = if i % 2 == 0 { [addrs[0], addrs[1]] } else { [addrs[1], addrs[0]] };
        let service = ClinicService::start(rt.clone(), &tls, &order)?;
        nodes.push((rt, service));
    }
    loop {
        let mut synced = 0;
        for (rt, _) in &nodes {
            if rt.call(|n, _| n.in_sync()).await {
                synced += 1;
            }
        }
        if synced == clinics {
            break;
        }
        if watch.seconds() > 600.0 {
            writeln!(out, "only {synced} of {clinics} clinics in sync after 600 s")?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced_s = watch.seconds();
    let per_front = [
        fronts[0].0.call(|n, _| n.connections()).await,
        fronts[1].0.call(|n, _| n.connections()).await,
    ];
    // One new event of the small insurer, into the stream: how long until every clinic has it.
    let signer = Signer::derived("shikaku bench hub", b"late insurer key");
    let last = events.iter().rev().find(|e| e.event().namespace == small_ns).context("an event")?;
    let mut late = last.event().clone();
    late.origin = signer.node_id();
    late.author = signer.public();
    late.origin_seq = 1;
    late.hlc = shikaku_core::Hlc::new(shikaku_net::clock::now_ms(), 0);
    let late = signer.sign(late)?;
    let watch = Stopwatch::start();
    publisher
        .publish(std::slice::from_ref(&late))
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.error))?;
    let id = late.id();
    let mut latencies = Vec::with_capacity(clinics);
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    while !pending.is_empty() && watch.seconds() < 120.0 {
        let mut still = Vec::new();
        for i in pending {
            if nodes[i].0.call(move |n, _| n.ledger().position_of(&id).is_some()).await {
                latencies.push((watch.seconds() * 1000.0) as u64);
            } else {
                still.push(i);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies.sort_unstable();
    writeln!(
        out,
        "\n{clinics} clinics over two front-ends ({} + {} sessions): started, connected and synced in {synced_s:.1} s; one event published into the stream reached {} of them: p50 {} ms, p99 {} ms, max {} ms; process RSS {:.0} MB",
        per_front[0],
        per_front[1],
        latencies.len(),
        crate::percentile(&latencies, 0.5),
        crate::percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        crate::sync::rss_mb()
    )?;
    let closing: Vec<_> = nodes.into_iter().map(|(_, s)| tokio::spawn(s.shutdown())).collect();
    for handle in closing {
        let _ = handle.await;
    }
    for (_, service, front) in fronts {
        service.shutdown().await;
        front.stop();
    }
    Ok(())
}
