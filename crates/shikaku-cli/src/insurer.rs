//! `shikaku insurer key init` and `shikaku insurer sign`: an insurer publishes its own events.
//!
//! The insurer's member-management system exports changes as *unsigned* JSON Lines events
//! (`protocol/EVENTS-JSONL.md`, "Unsigned events"); `sign` numbers them (`origin_seq`
//! continuing from a state file), stamps them with the hybrid logical clock, and signs them
//! with the insurer's key, so they can be imported into a hub that registered that key. The
//! secret key never leaves its file (0600) and is never printed.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use shikaku_core::{Event, EventBody, Hlc, HlcClock, InsurerNumber, Namespace, Signer};

use crate::store::{beside, check_private, write_atomic_with_mode, write_private_atomic};

/// Suffix of the public key file written beside a secret key (`INSURER=KEY`, the format of
/// `--insurer-keys`).
pub const PUBLIC_SUFFIX: &str = ".pub";

/// Suffix of the signing state file beside a secret key.
pub const STATE_SUFFIX: &str = ".state";

/// `shikaku insurer key init`: a new secret signing key for `insurer` in `key` (0600; refuses
/// to overwrite), and its public half in `<key>.pub` as an `INSURER=KEY` line to register with
/// hubs and clinics (`--insurer-keys`). Returns the public key line.
pub fn key_init(insurer: InsurerNumber, key: &Path) -> Result<String> {
    if key.exists() {
        bail!("{} exists: a signing key is never overwritten", key.display());
    }
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
        .context("reading /dev/urandom for a new insurer key")?;
    let signer = Signer::from_secret(secret);
    let mut body = format!("insurer={insurer}\nsecret=").into_bytes();
    body.extend_from_slice(shikaku_core::hex::encode(&secret).as_bytes());
    body.push(b'\n');
    write_private_atomic(key, &body)?;
    let line = format!("{insurer}={}\n", shikaku_core::hex::encode(&signer.public().0));
    write_atomic_with_mode(&beside(key, PUBLIC_SUFFIX), line.as_bytes(), 0o644)?;
    Ok(line)
}

/// An insurer's signing key, read from its file.
pub struct InsurerKey {
    /// The insurer it signs for.
    pub insurer: InsurerNumber,
    /// The key.
    pub signer: Signer,
}

/// Reads a key file written by [`key_init`], refusing one that others can read.
pub fn read_key(key: &Path) -> Result<InsurerKey> {
    check_private(key)?;
    let text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let (mut insurer, mut secret) = (None, None);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("insurer", value)) => insurer = Some(value.trim().parse::<InsurerNumber>()?),
            Some(("secret", value)) => secret = shikaku_core::hex::decode_array::<32>(value.trim()),
            _ => {}
        }
    }
    match (insurer, secret) {
        (Some(insurer), Some(secret)) => {
            Ok(InsurerKey { insurer, signer: Signer::from_secret(secret) })
        }
        _ => bail!("{} is not an insurer key file (insurer= and secret= lines)", key.display()),
    }
}

/// The signing state: the last origin sequence used and the last clock stamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignState {
    /// Last `origin_seq` given (0: none yet).
    pub origin_seq: u64,
    /// Last hybrid logical clock stamp given.
    pub hlc: u64,
}

fn read_state(path: &Path) -> Result<SignState> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SignState::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut state = SignState::default();
    for (n, line) in text.lines().enumerate() {
        let bad =
            || anyhow::anyhow!("{} line {}: expected origin_seq=N or hlc=N", path.display(), n + 1);
        let (name, value) = line.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.trim().parse().map_err(|_| bad())?;
        match name {
            "origin_seq" => state.origin_seq = value,
            "hlc" => state.hlc = value,
            _ => return Err(bad()),
        }
    }
    Ok(state)
}

/// One unsigned event line.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsignedLine {
    /// Schema version; 1 when absent.
    v: Option<u16>,
    /// The namespace; the key's insurer when absent.
    namespace: Option<Namespace>,
    body: EventBody,
}

/// What `sign` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignSummary {
    /// Events signed.
    pub signed: u64,
    /// The first and last origin sequence given.
    pub origin_seqs: Option<(u64, u64)>,
}

/// `shikaku insurer sign`: signs every unsigned line of `input` with `key`, numbering them
/// after the state in `<key>.state` and stamping them from `now_ms`. All lines are checked
/// before anything is written; the state is advanced durably before the output is written, so
/// a failure can leave unused numbers (gaps are allowed) but never reuse one.
pub fn sign(
    key: &Path,
    input: impl BufRead,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<SignSummary> {
    let key_file = read_key(key)?;
    let state_path = beside(key, STATE_SUFFIX);
    let state = read_state(&state_path)?;
    let mut clock = if state.hlc > 0 { HlcClock::resume(Hlc(state.hlc)) } else { HlcClock::new() };
    let mut seq = state.origin_seq;
    let author = key_file.signer.public();
    let origin = key_file.signer.node_id();
    let mut signed = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let parsed: UnsignedLine = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("line {number}: not an unsigned event: {e}"))?;
        let schema = parsed.v.unwrap_or(shikaku_core::SCHEMA_VERSION);
        if schema != shikaku_core::SCHEMA_VERSION && schema != shikaku_core::SCHEMA_SEALED {
            bail!("line {number}: schema version {schema} is not 1 or 2");
        }
        let namespace = parsed.namespace.unwrap_or(Namespace::Insurer(key_file.insurer));
        if namespace != Namespace::Insurer(key_file.insurer) {
            bail!(
                "line {number}: this key signs for insurer {}, not for {namespace:?}",
                key_file.insurer
            );
        }
        seq += 1;
        let hlc = clock.tick(now_ms).with_context(|| format!("line {number}: clock"))?;
        let event = Event { namespace, origin, origin_seq: seq, hlc, author, body: parsed.body };
        let event = key_file
            .signer
            .sign_as(schema, event)
            .map_err(|e| anyhow::anyhow!("line {number}: {e}"))?;
        signed.push(event);
    }
    let Some(last) = signed.last() else {
        return Ok(SignSummary { signed: 0, origin_seqs: None });
    };
    let next = SignState { origin_seq: seq, hlc: last.event().hlc.0 };
    write_private_atomic(
        &state_path,
        format!("origin_seq={}\nhlc={}\n", next.origin_seq, next.hlc).as_bytes(),
    )?;
    for event in &signed {
        writeln!(out, "{}", crate::jsonl::encode(event))?;
    }
    out.flush()?;
    Ok(SignSummary { signed: signed.len() as u64, origin_seqs: Some((state.origin_seq + 1, seq)) })
}

/// Writes an insurer key file for a known secret (`gen --insurer-key-dir`: the synthetic
/// world's insurers), mode 0600, never overwriting.
pub fn write_key_file(insurer: InsurerNumber, secret: [u8; 32], key: &Path) -> Result<()> {
    if key.exists() {
        bail!("{} exists: a signing key is never overwritten", key.display());
    }
    let mut body = format!("insurer={insurer}\nsecret=").into_bytes();
    body.extend_from_slice(shikaku_core::hex::encode(&secret).as_bytes());
    body.push(b'\n');
    write_private_atomic(key, &body)
}

/// `shikaku insurer erase`: the signed erasure order (a schema-2 `member_erased` event) for a
/// member, from the insurer's key — the member's reference comes from the key, and with the
/// birth date the member-key lookup tags too (so a check by key and birth date can still say
/// "member data erased"). Numbered and stamped like `insurer sign`.
pub fn erase(
    key: &Path,
    member: &shikaku_core::MemberKey,
    birth: Option<(shikaku_core::Date, shikaku_core::seal::KdfParams)>,
    reason: &str,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<SignSummary> {
    let key_file = read_key(key)?;
    if member.insurer != key_file.insurer {
        bail!(
            "the member belongs to insurer {}; this key signs for {}",
            member.insurer,
            key_file.insurer
        );
    }
    let reference = shikaku_core::seal::member_ref(
        &shikaku_core::sealer::ref_secret_of(&key_file.signer),
        member,
    );
    let key_tags = match birth {
        Some((birth, params)) => vec![shikaku_core::seal::key_secrets(member, birth, params)?.tag],
        None => Vec::new(),
    };
    let body = EventBody::MemberErased { member: reference, key_tags, reason: reason.to_owned() };
    let line = serde_json::json!({ "v": shikaku_core::SCHEMA_SEALED, "body": body }).to_string();
    sign(key, std::io::Cursor::new(line), now_ms, out)
}

/// Suffix of the file beside a secret key listing the roster transitions already signed.
pub const PUBLISHED_SUFFIX: &str = ".published";

/// The exports `insurer diff` reads.
#[derive(Debug, Clone, Copy)]
pub struct DiffFiles<'a> {
    /// The earlier export, if any.
    pub previous: Option<&'a Path>,
    /// The new export.
    pub current: &'a Path,
    /// Their encoding.
    pub encoding: crate::CsvEncoding,
}

fn read_roster(
    path: &Path,
    encoding: crate::CsvEncoding,
    insurer: InsurerNumber,
    file: &'static str,
) -> Result<crate::roster::Roster> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = match encoding {
        crate::CsvEncoding::Utf8 => {
            // A byte-order mark is skipped by the roster parser, for either encoding.
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not UTF-8 (first bad byte at offset {}): give --encoding shift_jis for a Shift_JIS export",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        crate::CsvEncoding::ShiftJis => encoding_rs::SHIFT_JIS
            .decode_without_bom_handling_and_without_replacement(&bytes)
            .ok_or_else(|| anyhow::anyhow!("{} is not valid Shift_JIS", path.display()))?
            .into_owned(),
    };
    crate::roster::parse(&text, insurer, file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `shikaku insurer diff`: the events that changed between two roster exports, signed with
/// `key` (through [`sign`], so numbering and clock continue from `<key>.state`) unless
/// `dry_run`; transitions already in `<key>.published` are skipped, and the new ones are
/// recorded there after the signed events are written. Returns the exit status: 1 when some
/// lines were refused (they are listed on `err`), else 0.
#[allow(clippy::too_many_arguments)]
pub fn diff(
    key: &Path,
    files: DiffFiles<'_>,
    as_of: shikaku_core::Date,
    dry_run: bool,
    out_path: Option<&Path>,
    now_ms: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let key_file = read_key(key)?;
    let insurer = key_file.insurer;
    let previous = match files.previous {
        Some(path) => read_roster(path, files.encoding, insurer, "previous")?,
        None => crate::roster::Roster::default(),
    };
    let current = read_roster(files.current, files.encoding, insurer, "current")?;
    let (transitions, mut refused) = crate::roster::diff(&previous, &current, as_of);
    refused.extend(previous.refused.iter().cloned());
    refused.extend(current.refused.iter().cloned());
    refused.sort_by_key(|r| (r.file, r.line));
    let published_path = beside(key, PUBLISHED_SUFFIX);
    let published_text = match std::fs::read_to_string(&published_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", published_path.display())),
    };
    let published: std::collections::HashSet<&str> =
        published_text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let (already, new): (Vec<_>, Vec<_>) =
        transitions.into_iter().partition(|t| published.contains(t.id.as_str()));
    let events: usize = new.iter().map(|t| t.events.len()).sum();
    if dry_run {
        writeln!(out, "{:>6}  {:<28}  change", "line", "member")?;
        for t in &new {
            writeln!(out, "{:>6}  {:<28}  {}", t.line, t.member.to_string(), t.summary.join("; "))?;
        }
        writeln!(
            out,
            "{} members changed: {events} events would be published (as of {as_of}); {} already published; {} lines refused",
            new.len(),
            already.len(),
            refused.len()
        )?;
    } else if !new.is_empty() {
        let mut unsigned = String::new();
        for t in &new {
            for body in &t.events {
                unsigned.push_str(&serde_json::json!({ "body": body }).to_string());
                unsigned.push('\n');
            }
        }
        let mut signed = Vec::new();
        let summary = sign(key, std::io::Cursor::new(unsigned), now_ms, &mut signed)?;
        match out_path {
            Some(path) => write_private_atomic(path, &signed)?,
            None => {
                out.write_all(&signed)?;
                out.flush()?;
            }
        }
        // Recorded only once the events are out: a crash in between signs them again next
        // time (duplicates the hub can void), never loses them.
        let mut lines = published_text.clone();
        for t in &new {
            lines.push_str(&t.id);
            lines.push('\n');
        }
        write_private_atomic(&published_path, lines.as_bytes())?;
        let seqs =
            summary.origin_seqs.map(|(a, b)| format!(" (origin_seq {a}–{b})")).unwrap_or_default();
        writeln!(
            err,
            "{} members changed: signed {} events{seqs} as of {as_of}; {} already published",
            new.len(),
            summary.signed,
            already.len()
        )?;
    } else {
        // An empty output, so that a script's `hub import` of it finds the file.
        if let Some(path) = out_path {
            write_private_atomic(path, b"")?;
        }
        writeln!(err, "nothing new to publish ({} changes already published)", already.len())?;
    }
    for refusal in &refused {
        writeln!(err, "refused: {refusal}")?;
    }
    Ok(if refused.is_empty() { 0 } else { 1 })
}
