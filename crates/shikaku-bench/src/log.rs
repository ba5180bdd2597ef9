//! `shikaku bench log`: the ledger's durable append throughput against the raw disk and
//! SQLite, measured in the same run on the same disk with the same events and batches.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use shikaku_core::{NodeId, SignedEvent};
use shikaku_log::fs::FileDirectory;
use shikaku_log::{Log, LogConfig};

use shikaku_net::clock::Stopwatch;

const BATCHES: [usize; 4] = [1, 64, 512, 4096];

/// `count` generated signed events (about three per member), in record-time order.
pub(crate) fn events_for(count: usize) -> Result<Vec<SignedEvent>> {
    // About 3 events per member: generate enough members, keep the first `count` events.
    let members = (count / 3 + 10).min(2_000_000);
    let generated = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, 99))?;
    let mut events = generated.events;
    events.truncate(count);
    Ok(events)
}

/// An empty directory `root/name`.
pub(crate) fn fresh_dir(root: &Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn shikaku_rate(root: &Path, events: &[SignedEvent], batch: usize) -> Result<(f64, u64)> {
    let dir = fresh_dir(root, &format!("log-{batch}"))?;
    let mut log = Log::open(FileDirectory::new(&dir)?, LogConfig::new(NodeId([1; 32])))?;
    let watch = Stopwatch::start();
    for chunk in events.chunks(batch) {
        log.append(chunk)?;
    }
    let seconds = watch.seconds();
    let bytes = log.stats()?.record_bytes;
    drop(log);
    std::fs::remove_dir_all(&dir)?;
    Ok((events.len() as f64 / seconds, bytes))
}

/// The raw disk limit: the same number of bytes per batch, written sequentially into a
/// preallocated file, one fdatasync per batch.
fn raw_rate(root: &Path, events: usize, batch: usize, bytes: u64) -> Result<f64> {
    let dir = fresh_dir(root, &format!("raw-{batch}"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))?;
    file.set_len(bytes + 1024 * 1024)?;
    file.sync_all()?;
    let per_event = (bytes as usize).div_ceil(events.max(1));
    let buffer = vec![0x5au8; per_event * batch];
    let mut offset = 0u64;
    let watch = Stopwatch::start();
    let mut written = 0;
    while written < events {
        let n = batch.min(events - written);
        file.write_all_at(&buffer[..per_event * n], offset)?;
        file.sync_data()?;
        offset += (per_event * n) as u64;
        written += n;
    }
    let seconds = watch.seconds();
    std::fs::remove_dir_all(&dir)?;
    Ok(events as f64 / seconds)
}

fn sqlite_rate(root: &Path, events: &[SignedEvent], batch: usize) -> Result<f64> {
    let dir = fresh_dir(root, &format!("sqlite-{batch}"))?;
    let mut db = rusqlite::Connection::open(dir.join("events.db"))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute("CREATE TABLE events (id BLOB PRIMARY KEY, body BLOB NOT NULL)", [])?;
    let watch = Stopwatch::start();
    for chunk in events.chunks(batch) {
        let tx = db.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO events (id, body) VALUES (?1, ?2)")?;
            for event in chunk {
                insert.execute(rusqlite::params![&event.id().0[..], event.canonical_bytes()])?;
            }
        }
        tx.commit()?;
    }
    let seconds = watch.seconds();
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    Ok(events.len() as f64 / seconds)
}

/// The `p` quantile of sorted nanosecond samples, in microseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    crate::percentile(sorted, p) as f64 / 1e3
}

/// Runs the benchmark.
pub fn run(root: &Path, count: usize, scan_events: usize, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    writeln!(out, "bench log: {count} events per run, files under {}", root.display())?;
    let watch = Stopwatch::start();
    let events = events_for(count.max(scan_events))?;
    writeln!(
        out,
        "generated {} signed events in {:.1} s (not measured)",
        events.len(),
        watch.seconds()
    )?;
    writeln!(
        out,
        "\n{:>6} {:>14} {:>14} {:>9} {:>14} {:>10}",
        "batch", "shikaku ev/s", "raw disk ev/s", "% of raw", "SQLite ev/s", "× SQLite"
    )?;
    for batch in BATCHES {
        let n = if batch == 1 { (count / 10).min(3_000) } else { count.min(events.len()) };
        let subset = &events[..n];
        let (ours, bytes) = shikaku_rate(root, subset, batch)?;
        let raw = raw_rate(root, n, batch, bytes)?;
        let sqlite = sqlite_rate(root, subset, batch)?;
        writeln!(
            out,
            "{batch:>6} {ours:>14.0} {raw:>14.0} {:>8.0}% {sqlite:>14.0} {:>9.1}×",
            100.0 * ours / raw,
            ours / sqlite
        )?;
    }

    // Latency of one durable append against one fdatasync of the same size.
    let dir = fresh_dir(root, "latency")?;
    let mut log = Log::open(FileDirectory::new(dir.join("log"))?, LogConfig::new(NodeId([2; 32])))?;
    let mut appends = Vec::new();
    for event in events.iter().take(1_000) {
        let watch = Stopwatch::start();
        log.append(std::slice::from_ref(event))?;
        appends.push(watch.nanos());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("raw"))?;
    file.set_len(64 * 1024 * 1024)?;
    file.sync_all()?;
    let mut syncs = Vec::new();
    let record = vec![7u8; 640];
    for i in 0..1_000u64 {
        let watch = Stopwatch::start();
        file.write_all_at(&record, i * 640)?;
        file.sync_data()?;
        syncs.push(watch.nanos());
    }
    appends.sort_unstable();
    syncs.sort_unstable();
    writeln!(
        out,
        "\nsingle durable append p50 {:.0} µs (p99 {:.0} µs); one write+fdatasync p50 {:.0} µs (p99 {:.0} µs); ratio {:.2}×",
        percentile(&appends, 0.5),
        percentile(&appends, 0.99),
        percentile(&syncs, 0.5),
        percentile(&syncs, 0.99),
        percentile(&appends, 0.5) / percentile(&syncs, 0.5)
    )?;
    drop(log);
    std::fs::remove_dir_all(&dir)?;

    // Recovery scan: open (verify every record's checksum, chain and id) a ledger.
    let n = scan_events.min(events.len());
    let dir = fresh_dir(root, "scan")?;
    {
        let mut log = Log::open(FileDirectory::new(&dir)?, LogConfig::new(NodeId([3; 32])))?;
        for chunk in events[..n].chunks(4096) {
            log.append(chunk)?;
        }
    }
    let watch = Stopwatch::start();
    let log = Log::open(FileDirectory::new(&dir)?, LogConfig::new(NodeId([3; 32])))?;
    let seconds = watch.seconds();
    writeln!(
        out,
        "recovery scan on open: {} records in {seconds:.2} s = {:.0} records/s (checksums, chain, ids, indexes)",
        log.recovery().records,
        log.recovery().records as f64 / seconds
    )?;
    drop(log);
    std::fs::remove_dir_all(&dir)?;
    let _ = std::fs::remove_dir(root);
    Ok(())
}

/// Builds a ledger of `count` synthetic events (registration, coverage start and card link
/// per member; signed on two threads), checkpoints it, then measures opening it with the
/// index checkpoint and projection snapshot against a full scan and fold.
pub fn open(root: &Path, count: u64, out: &mut dyn Write) -> Result<()> {
    use shikaku_core::{
        CardToken, Date, Event, EventBody, Hlc, InsurerNumber, MemberKey, Namespace, Person,
        Relationship, Sex, Signer,
    };
    let dir = fresh_dir(root, "open")?;
    writeln!(out, "bench open: building a ledger of {count} events in {}", dir.display())?;
    let insurer = InsurerNumber::with_check_digit(613_001);
    let signer = Signer::derived("shikaku bench open", b"insurer");
    let hub = Signer::derived("shikaku bench open", b"hub").node_id();
    let start = Date::from_ymd(2020, 4, 1).unwrap_or(Date(18_353));
    let make = |i: u64| -> Result<SignedEvent> {
        let member = i / 3;
        let key = MemberKey::new(insurer, "1", &format!("{member:09}"), 0)?;
        let body = match i % 3 {
            0 => EventBody::MemberRegistered {
                member: key,
                person: Person {
                    name: "試験 太郎".into(),
                    kana: "シケン タロウ".into(),
                    sex: Sex::Male,
                    birth_date: Date(3_000 + (member % 15_000) as i32),
                    address: "東京都千代田区".into(),
                    municipality: 131_016,
                },
                relationship: Relationship::Insured,
            },
            1 => EventBody::CoverageStarted {
                member: key,
                start,
                copay_tenths: 3,
                elderly_certificate: false,
            },
            _ => EventBody::CardLinked {
                card: CardToken(*blake3::hash(&member.to_le_bytes()).as_bytes()),
                member: key,
            },
        };
        Ok(signer.sign(Event {
            namespace: Namespace::Insurer(insurer),
            origin: hub,
            origin_seq: i + 1,
            hlc: Hlc::new(1_600_000_000_000 + i / 16, (i % 16) as u16),
            author: signer.public(),
            body,
        })?)
    };
    let store_dir = dir.join("data");
    let watch = Stopwatch::start();
    {
        let mut store = shikaku_node::data_dir::Store::open(&store_dir)?;
        let chunk = 100_000u64;
        let mut next = 0u64;
        while next < count {
            let end = (next + chunk).min(count);
            let middle = next + (end - next) / 2;
            let (a, b) = std::thread::scope(|scope| {
                let first = scope.spawn(|| (next..middle).map(make).collect::<Result<Vec<_>>>());
                let second = (middle..end).map(make).collect::<Result<Vec<_>>>();
                (first.join(), second)
            });
            let mut events = a.map_err(|_| anyhow::anyhow!("signing thread panicked"))??;
            events.extend(b?);
            store.append(&events)?;
            next = end;
        }
        let built = watch.seconds();
        let watch = Stopwatch::start();
        store.checkpoint()?;
        writeln!(
            out,
            "built in {built:.0} s; index checkpoint and projection snapshot written in {:.1} s",
            watch.seconds()
        )?;
        // A tail appended after the checkpoint, as after a day of work.
        let tail: Vec<SignedEvent> = (count..count + 3_000).map(make).collect::<Result<_>>()?;
        store.append(&tail)?;
    }
    let watch = Stopwatch::start();
    let store = shikaku_node::data_dir::Store::open(&store_dir)?;
    let opened = watch.seconds();
    let projection = store.projection(shikaku_core::Replication::All)?;
    let with_checkpoint = watch.seconds();
    let checkpoint_note = store.log().recovery().checkpoint.clone().unwrap_or_default();
    let digest = projection.digest();
    drop(projection);
    drop(store);
    // The node as `hub serve` opens it: checkpoint and node snapshot, then the checkpoint
    // alone (the fold of every event, which is what serving did before the node read its
    // snapshot), then neither (full scan and fold).
    let log_dir = store_dir.join("log");
    let node_key = shikaku_node::data_dir::node_identity(&store_dir, false)?
        .ok_or_else(|| anyhow::anyhow!("the bench ledger lost its node key"))?;
    let open_node = |what: &str| -> Result<(f64, [u8; 32], String)> {
        let watch = Stopwatch::start();
        let node = shikaku_node::Node::open(
            FileDirectory::new(&log_dir)?,
            node_key.clone(),
            shikaku_node::NodeConfig::new(shikaku_node::Role::Hub, what),
        )?;
        let seconds = watch.seconds();
        let note = node.open_note().to_owned();
        Ok((seconds, node.projection().digest(), note))
    };
    let (node_snapshot, node_digest, node_note) = open_node("snapshot")?;
    let snapshot_path = log_dir.join(shikaku_node::snapshot::NODE_SNAPSHOT_FILE);
    let snapshot_bytes = std::fs::read(&snapshot_path)?;
    std::fs::remove_file(&snapshot_path)?;
    let (node_fold, fold_digest, fold_note) = open_node("checkpoint")?;
    // Baseline: the same ledger without its checkpoint and snapshot.
    std::fs::remove_file(log_dir.join(shikaku_log::checkpoint::INDEX_CHECKPOINT_FILE))?;
    let (node_scan, scan_digest, _) = open_node("scan")?;
    let watch = Stopwatch::start();
    let store = shikaku_node::data_dir::Store::open(&store_dir)?;
    let scanned = watch.seconds();
    let projection = store.projection(shikaku_core::Replication::All)?;
    let without = watch.seconds();
    writeln!(out, "\n{:<46} {:>12} {:>12}", "", "checkpoint", "full scan")?;
    writeln!(out, "{:<46} {:>11.2}s {:>11.2}s", "open the log (indexes ready)", opened, scanned)?;
    writeln!(
        out,
        "{:<46} {:>11.2}s {:>11.2}s",
        "open + projection ready to answer checks", with_checkpoint, without
    )?;
    writeln!(
        out,
        "checkpoint: {checkpoint_note}; projection digests equal: {}",
        digest == projection.digest()
    )?;
    writeln!(
        out,
        "\nnode restart (Node::open, as `hub serve` / `clinic serve`; node snapshot {} MB):",
        snapshot_bytes.len() / 1_000_000
    )?;
    writeln!(out, "{:<46} {:>11.2}s", "  checkpoint + node snapshot", node_snapshot)?;
    writeln!(out, "{:<46} {:>11.2}s", "  checkpoint, fold every event (before)", node_fold)?;
    writeln!(out, "{:<46} {:>11.2}s", "  full scan and fold", node_scan)?;
    writeln!(
        out,
        "  {node_note}; then {fold_note}; digests equal: {}",
        node_digest == fold_digest && fold_digest == scan_digest && scan_digest == digest
    )?;
    drop(projection);
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    let _ = std::fs::remove_dir(root);
    Ok(())
}
