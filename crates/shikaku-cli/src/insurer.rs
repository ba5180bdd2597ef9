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
