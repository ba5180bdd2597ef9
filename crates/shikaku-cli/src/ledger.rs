//! `shikaku ledger verify` and `shikaku ledger stats`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::store::Store;
use shikaku_core::text::jst;

/// Verifies the ledger; with `repair`, rebuilds a clean ledger from every readable event.
/// Returns the exit status: 0 intact (or repaired), 1 damaged.
pub fn verify(data_dir: &Path, repair: bool, out: &mut dyn Write) -> Result<i32> {
    let store = Store::open_existing(data_dir)?;
    let recovery = store.log().recovery().clone();
    if let Some((segment, offset, bytes)) = &recovery.truncated_tail {
        writeln!(
            out,
            "recovered: cut a torn tail that was never acknowledged ({segment} offset {offset}, {bytes} bytes)"
        )?;
    }
    // `Log::verify` reports the damage recovery found on open first — including loss that
    // durable evidence proves (an index checkpoint naming more events than were found) — so it
    // is damage even when every record that is left verifies.
    let report = store.log().verify();
    writeln!(
        out,
        "{} records verified ({} signatures), {} segments",
        report.records, report.signatures, recovery.segments
    )?;
    if report.problems.is_empty() {
        writeln!(out, "ledger intact")?;
        return Ok(0);
    }
    writeln!(out, "DAMAGED: first problem: {}", report.problems[0])?;
    for problem in report.problems.iter().skip(1).take(20) {
        writeln!(out, "  also: {problem}")?;
    }
    if !repair {
        writeln!(out, "run `shikaku ledger verify --repair` to rebuild a clean ledger from every readable event")?;
        return Ok(1);
    }
    let events = store.events()?;
    let missing = store.log().head() - 1 - events.len() as u64;
    drop(store);
    let log_dir = data_dir.join("log");
    let mut n = 1;
    let kept = loop {
        let candidate = data_dir.join(format!("log.damaged-{n}"));
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    std::fs::rename(&log_dir, &kept)
        .with_context(|| format!("moving the damaged log to {}", kept.display()))?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all())?;
    let mut fresh = Store::open(data_dir)?;
    for chunk in events.chunks(4096) {
        fresh.append(chunk)?;
    }
    let report = fresh.log().verify();
    writeln!(
        out,
        "repaired: rebuilt the ledger from {} readable events ({} verified); {missing} events were unreadable and must be re-fetched from the hub; the damaged log is kept in {}",
        events.len(),
        report.records,
        kept.display()
    )?;
    Ok(if report.problems.is_empty() { 0 } else { 1 })
}

/// Prints ledger statistics.
pub fn stats(data_dir: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let store = Store::open_existing(data_dir)?;
    let stats = store.log().stats()?;
    let recovery = store.log().recovery();
    if json {
        let value = serde_json::json!({
            "node": store.node().to_string(),
            "segments": stats.segments,
            "events": stats.events,
            "next_position": stats.next_seq,
            "record_bytes": stats.record_bytes,
            "file_bytes": stats.file_bytes,
            "streams": stats.streams,
            "first_hlc": stats.hlc_range.map(|r| r.0 .0),
            "last_hlc": stats.hlc_range.map(|r| r.1 .0),
            "damaged": stats.damaged.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "truncated_tail_bytes": recovery.truncated_tail.as_ref().map(|t| t.2),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(out, "node           {}", store.node())?;
    writeln!(out, "segments       {}", stats.segments)?;
    writeln!(out, "events         {} (next position {})", stats.events, stats.next_seq)?;
    writeln!(out, "record bytes   {}", stats.record_bytes)?;
    writeln!(out, "file bytes     {} (preallocated)", stats.file_bytes)?;
    writeln!(out, "streams        {}", stats.streams)?;
    if let Some((first, last)) = stats.hlc_range {
        writeln!(out, "recorded       {} … {}", jst(first.physical_ms()), jst(last.physical_ms()))?;
    }
    if stats.damaged.is_empty() {
        match recovery.checkpoint.as_deref() {
            Some(note) if note.starts_with("used") => writeln!(
                out,
                "damage         none found on open; records the index checkpoint covers were not re-read ({note}): `shikaku ledger verify` re-reads every one"
            )?,
            _ => writeln!(out, "damage         none")?,
        }
    } else {
        for damage in &stats.damaged {
            writeln!(out, "damage         {damage}")?;
        }
    }
    Ok(())
}

/// A namespace as typed on the command line: `insurer:NUMBER` (or just the 6/8-digit number)
/// or `clinic:NODE-ID` (or just the 64 hex digits).
pub fn parse_namespace(text: &str) -> Result<shikaku_core::Namespace> {
    let text = text.trim();
    let (kind, value) = match text.split_once(':') {
        Some((kind, value)) => (Some(kind), value),
        None => (None, text),
    };
    match kind {
        Some("insurer") | None if value.len() <= 8 => Ok(shikaku_core::Namespace::Insurer(
            value.parse().with_context(|| format!("namespace {text:?}"))?,
        )),
        Some("clinic") | None => {
            let id = shikaku_core::hex::decode_array::<32>(value).with_context(|| {
                format!("namespace {text:?}: a clinic is named by its 64-hex node id")
            })?;
            Ok(shikaku_core::Namespace::Clinic(shikaku_core::NodeId(id)))
        }
        Some(other) => anyhow::bail!(
            "namespace {text:?}: {other:?} is no namespace kind (insurer:NUMBER or clinic:NODE-ID)"
        ),
    }
}

/// The namespace as `shikaku ledger digest` prints it.
pub fn namespace_text(ns: &shikaku_core::Namespace) -> String {
    match ns {
        shikaku_core::Namespace::Insurer(i) => format!("insurer:{i}"),
        shikaku_core::Namespace::Clinic(node) => format!("clinic:{node}"),
    }
}

/// `shikaku ledger digest`: the projection digest (protocol/LOG-FORMAT.md) of the events held
/// — of one namespace's events with `--namespace` — and each namespace's count and Negentropy
/// fingerprint (SPEC.md, the numbers a complete receipt carries), so two nodes' holdings can
/// be compared by hand.
pub fn digest(
    data_dir: &Path,
    namespace: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    use std::collections::BTreeMap;
    let only = namespace.map(parse_namespace).transpose()?;
    let store = Store::open_existing(data_dir)?;
    let mut projection = shikaku_core::Projection::new(shikaku_core::Replication::All);
    let mut namespaces: BTreeMap<
        shikaku_core::Namespace,
        shikaku_protocol::negentropy::Accumulator,
    > = BTreeMap::new();
    let mut events = 0u64;
    let mut next = 1;
    loop {
        let batch = store.log().read_from(next, 65_536)?;
        let Some((last, _)) = batch.last() else { break };
        next = last + 1;
        for (_, e) in &batch {
            let ns = e.event().namespace;
            if only.is_some_and(|only| only != ns) {
                continue;
            }
            namespaces.entry(ns).or_default().add(&e.id().0);
            projection.apply(e);
            events += 1;
        }
    }
    if let Some(only) = only {
        namespaces.entry(only).or_default();
    }
    let digest = shikaku_core::hex::encode(&projection.digest());
    if json {
        let list: Vec<serde_json::Value> = namespaces
            .iter()
            .map(|(ns, acc)| {
                serde_json::json!({
                    "namespace": namespace_text(ns),
                    "count": acc.count(),
                    "fingerprint": shikaku_core::hex::encode(&acc.fingerprint()),
                })
            })
            .collect();
        let value = serde_json::json!({
            "events": events,
            "projection_digest": digest,
            "namespaces": list,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(out, "projection digest {digest} over {events} events")?;
    for (ns, acc) in &namespaces {
        writeln!(
            out,
            "{}  count {}  fingerprint {}",
            namespace_text(ns),
            acc.count(),
            shikaku_core::hex::encode(&acc.fingerprint())
        )?;
    }
    Ok(())
}
