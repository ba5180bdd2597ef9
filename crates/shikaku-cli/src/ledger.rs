//! `shikaku ledger verify`, `stats`, `digest` and `upgrade` (schema 1 to sealed schema 2).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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

/// `shikaku ledger upgrade`: converts a hub's schema-1 ledger in place to schema 2 (sealed
/// member data). Every insurer event is sealed with its insurer's key (`keys`: insurer key
/// files) and re-signed with the same origin, sequence and clock; clinic records stay in
/// schema 1 (only their clinic can sign them; the hub, the insurer's side, may hold them).
/// Data keys come from the operating system's random source. The old ledger is kept beside
/// the new one as `log.schema1` — it holds member data in the clear, and the command says so.
pub fn upgrade(
    data_dir: &Path,
    keys: &[PathBuf],
    params: shikaku_core::seal::KdfParams,
    out: &mut dyn Write,
) -> Result<i32> {
    use std::collections::BTreeMap;
    if let Ok(tls) = shikaku_net::tls::load(&data_dir.join(shikaku_net::tls::TLS_DIR)) {
        if tls.identity.role != shikaku_node::Role::Hub {
            bail!(
                "{} is a clinic's ledger: a clinic cannot re-sign its insurers' events. Stop it, remove {}, and let it sync again from the upgraded hub (its own records come back from the hub)",
                data_dir.display(),
                data_dir.join("log").display()
            );
        }
    }
    let old = data_dir.join("log.schema1");
    if old.exists() {
        bail!("{} exists: an earlier upgrade's plaintext ledger; remove it first", old.display());
    }
    let mut signers: BTreeMap<shikaku_core::InsurerNumber, shikaku_core::Signer> = BTreeMap::new();
    for key in keys {
        let files: Vec<PathBuf> = if key.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(key)
                .with_context(|| format!("reading {}", key.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            files.sort();
            files
        } else {
            vec![key.clone()]
        };
        for file in files {
            let key = crate::insurer::read_key(&file)?;
            signers.insert(key.insurer, key.signer);
        }
    }
    let store = Store::open_existing(data_dir)?;
    let (events, withheld) = store.verified_events()?;
    if !withheld.is_empty() {
        bail!(
            "the ledger is damaged ({}); repair it first (ledger verify --repair, then re-fetch), so nothing is left behind",
            withheld.join("; ")
        );
    }
    let missing: std::collections::BTreeSet<shikaku_core::InsurerNumber> = events
        .iter()
        .filter(|e| e.schema_version() == shikaku_core::SCHEMA_VERSION)
        .filter_map(|e| match e.event().namespace {
            shikaku_core::Namespace::Insurer(insurer) if !signers.contains_key(&insurer) => {
                Some(insurer)
            }
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        bail!("no insurer key given for insurer(s) {}: pass --insurer-key FILE or a directory of .key files", list.join(", "));
    }
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut random_error = None;
    let mut fill = |buf: &mut [u8]| {
        if let Err(e) = std::io::Read::read_exact(&mut urandom, buf) {
            random_error.get_or_insert(e);
        }
    };
    let mut id = [0u8; 16];
    fill(&mut id);
    let mut keys_store = shikaku_core::keystore::KeyStore::new(id);
    let upgraded =
        shikaku_core::sealer::upgrade(&events, &signers, params, &mut keys_store, &mut fill)?;
    if let Some(e) = random_error {
        bail!("reading /dev/urandom: {e}");
    }
    drop(store);
    let log = data_dir.join("log");
    std::fs::rename(&log, &old)
        .with_context(|| format!("moving {} to {}", log.display(), old.display()))?;
    let mut store = Store::open_existing(data_dir)?;
    for chunk in upgraded.events.chunks(4096) {
        store.append(chunk)?;
    }
    store.checkpoint()?;
    shikaku_log::fs::install_atomic(
        &log.join(shikaku_node::KEYS_FILE),
        &keys_store.encode_file(),
        0o600,
    )
    .with_context(|| format!("writing {}", log.join(shikaku_node::KEYS_FILE).display()))?;
    writeln!(
        out,
        "upgraded {} events to schema 2 ({} members sealed under {params}); {} clinic records kept in schema 1",
        upgraded.ids.len(),
        keys_store.data_keys_len(),
        upgraded.kept_clinic_records
    )?;
    writeln!(
        out,
        "the schema-1 ledger is kept in {}: it holds member data in the clear — delete it once the upgraded hub serves",
        old.display()
    )?;
    Ok(0)
}
