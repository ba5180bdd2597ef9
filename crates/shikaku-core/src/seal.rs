//! Sealed member records (event schema version 2): member references, lookup tags, the
//! Argon2id member-key tag, data keys and the AEAD that seals a member's identity.
//!
//! In schema 2 nothing that identifies a person travels or rests at a clinic in the clear:
//! - a member is named by a **member reference** — a [`MemberKey`] whose symbol is empty and
//!   whose number is `~` and 19 hex digits of a keyed hash the insurer computes from the real
//!   key ([`member_ref`]); the projection folds references exactly as it folds keys;
//! - a card is named by its **card tag**, `blake3::derive_key("shikaku 2026 card tag v2",
//!   token)` ([`card_tag`]): the token has 256 bits, so an unkeyed hash cannot be inverted;
//! - the member's real key, demographics and relationship are **sealed** under a random
//!   per-member data key with XChaCha20-Poly1305 ([`seal_member`]), the member reference in the
//!   associated data so a ciphertext cannot be moved to another member;
//! - the data key is **wrapped** ([`wrap_data_key`]) under a key only reception can derive when
//!   the patient is present: from the card token, or from the member key and birth date through
//!   Argon2id ([`key_secrets`]). Wraps live in the key store, outside the log, so destroying
//!   them (erasure) needs no log rewrite.
//!
//! Everything here is pure: nonces and data keys are passed in by the caller. Byte layout:
//! `protocol/EVENTS.md` ("Schema version 2") and `protocol/KEYSTORE.md`.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::date::Date;
use crate::event::Person;
use crate::member::{CardToken, InsurerNumber, MemberKey};

/// The first character of a member reference's number (never the first of a real one that a
/// schema-2 event may carry: schema-2 membership events hold references only).
pub const REF_MARK: char = '~';
/// Hex digits of a member reference after [`REF_MARK`] (76 bits).
pub const REF_HEX_DIGITS: usize = 19;
/// Associated-data prefix of a sealed member record.
pub const SEALED_MEMBER_CONTEXT: &[u8] = b"shikaku/sealed-member/v2";
/// Associated-data prefix of a wrapped data key.
pub const WRAP_CONTEXT: &[u8] = b"shikaku/wrapped-data-key/v2";
/// Largest sealed record accepted, in bytes.
pub const SEALED_BYTES_MAX: usize = 4096;

/// Why sealing or opening failed. Never carries member data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The AEAD refused: wrong key, or the ciphertext or its associated data was altered.
    #[error("sealed data does not open with this key (wrong key, or altered)")]
    Open,
    /// The plaintext inside is not a valid sealed member record.
    #[error("sealed member record is malformed: {0}")]
    Malformed(String),
    /// A member-key lookup of a sealed insurer came without the birth date.
    #[error("insurer {0} keeps its members sealed: a lookup by member key needs the patient's birth date")]
    BirthDateRequired(InsurerNumber),
    /// The Argon2id parameters are out of range.
    #[error("Argon2id parameters refused: {0}")]
    Kdf(String),
}

/// A member's data key: 32 random bytes chosen by the insurer. Zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(pub [u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        // A best-effort wipe; `zeroize` is what chacha20poly1305 uses internally as well.
        for byte in &mut self.0 {
            // SAFETY-free volatile-ish write: the compiler may elide plain writes, so go
            // through `black_box`.
            *byte = std::hint::black_box(0);
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(…)")
    }
}

/// Ciphertext with its nonce: a sealed member record or a wrapped data key.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Sealed {
    /// The XChaCha20 nonce (random, never reused under one key).
    #[serde(with = "hex_array24")]
    pub nonce: [u8; 24],
    /// Ciphertext followed by the 16-byte Poly1305 tag.
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

mod hex_array24 {
    pub fn serialize<S: serde::Serializer>(v: &[u8; 24], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 24], D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        crate::hex::decode_array::<24>(&text)
            .ok_or_else(|| serde::de::Error::custom("nonce must be 48 hexadecimal characters"))
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        crate::hex::decode(&text)
            .ok_or_else(|| serde::de::Error::custom("ciphertext must be hexadecimal"))
    }
}

/// The insured person of a dependant, as sealed inside the dependant's record: only what the
/// query-time rules need (their reference and birth date, for the 75th birthday) — not their
/// member key, so opening a dependant's record names nobody else.
#[derive(
    Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct SealedInsured {
    /// The insured person's member reference.
    pub reference: MemberKey,
    /// The insured person's birth date (their 75th birthday ends the dependant's coverage).
    pub birth_date: Date,
}

/// What a sealed record holds: everything that identifies the member.
#[derive(
    Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct SealedMember {
    /// The real member key (symbol, number, branch).
    pub key: MemberKey,
    /// Demographics.
    pub person: Person,
    /// The insured person, for a dependant.
    pub insured: Option<SealedInsured>,
}

// Opened records never appear in debug output (logs): only that one is there.
impl fmt::Debug for SealedInsured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedInsured(…)")
    }
}

impl fmt::Debug for SealedMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedMember(…)")
    }
}

/// The member reference of a real key: `insurer::~<19 hex>:00`, the hex being the first 76
/// bits of `blake3::keyed_hash(ref_secret, key text)`. Deterministic, so the insurer finds a
/// member's reference again from the key; without `ref_secret` it reveals nothing.
pub fn member_ref(ref_secret: &[u8; 32], key: &MemberKey) -> MemberKey {
    let digest = blake3::keyed_hash(ref_secret, key.to_string().as_bytes());
    let hex = crate::hex::encode(&digest.as_bytes()[..10]);
    MemberKey {
        insurer: key.insurer,
        symbol: String::new(),
        number: format!("{REF_MARK}{}", &hex[..REF_HEX_DIGITS]),
        branch: 0,
    }
}

/// The reference a clinic records for a member-key lookup that found no member: derived from
/// the lookup tag, so it names nobody and repeats for the same typed key and birth date.
pub fn unmatched_ref(insurer: InsurerNumber, tag: &[u8; 32]) -> MemberKey {
    let hex = crate::hex::encode(&tag[..10]);
    MemberKey {
        insurer,
        symbol: String::new(),
        number: format!("{REF_MARK}{}", &hex[..REF_HEX_DIGITS]),
        branch: 0,
    }
}

/// Whether a key has the shape of a member reference.
pub fn is_member_ref(key: &MemberKey) -> bool {
    key.symbol.is_empty()
        && key.branch == 0
        && key.number.len() == 1 + REF_HEX_DIGITS
        && key.number.starts_with(REF_MARK)
        && key.number[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The tag a card is known by in schema 2.
pub fn card_tag(token: &CardToken) -> CardToken {
    CardToken(blake3::derive_key("shikaku 2026 card tag v2", &token.0))
}

/// The key that wraps a data key for a card.
pub fn card_wrap_key(token: &CardToken) -> [u8; 32] {
    blake3::derive_key("shikaku 2026 card wrap v2", &token.0)
}

/// Argon2id parameters of the member-key tag; part of the format (stored with every
/// member-key wrap) so they can be raised later.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The production parameters (measured by `shikaku bench privacy`): 32 MiB, 2 passes, one
    /// lane — about 35 ms per guess on a 2-core reception PC, inside the 50 ms check budget.
    pub const RECEPTION: KdfParams = KdfParams { m_kib: 32 * 1024, t: 2, p: 1 };
    /// Light parameters for tests and the demo (which says so on screen): 256 KiB, one pass.
    pub const LIGHT: KdfParams = KdfParams { m_kib: 256, t: 1, p: 1 };
    /// Largest memory accepted from a key store (a hostile file must not exhaust memory).
    pub const M_KIB_MAX: u32 = 1024 * 1024;

    /// Checks the parameters are ones this build computes.
    pub fn validate(self) -> Result<(), SealError> {
        if self.m_kib > KdfParams::M_KIB_MAX || self.t > 16 || self.p > 16 {
            return Err(SealError::Kdf(format!(
                "m={} KiB t={} p={} exceed the limits (1 GiB, 16, 16)",
                self.m_kib, self.t, self.p
            )));
        }
        Params::new(self.m_kib, self.t, self.p, Some(64))
            .map(|_| ())
            .map_err(|e| SealError::Kdf(e.to_string()))
    }
}

impl fmt::Display for KdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Argon2id m={} KiB t={} p={}", self.m_kib, self.t, self.p)
    }
}

/// What the member-key path derives: the lookup tag and the key that wraps the data key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecrets {
    /// Lookup tag (public in the key store).
    pub tag: [u8; 32],
    /// Wrapping key (never stored).
    pub wrap: [u8; 32],
}

impl fmt::Debug for KeySecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecrets(…)")
    }
}

/// The Argon2id input of a member key and birth date: `"INSURER:SYMBOL:NUMBER:BB|YYYY-MM-DD"`.
fn key_password(key: &MemberKey, birth: Date) -> String {
    format!("{key}|{birth}")
}

/// The salt: `"shikaku/member-key-tag/v2/"` and the insurer number, the same for all of an
/// insurer's members (lookup must work without knowing the member), so an attacker tests each
/// guess against all of an insurer's tags at once — `shikaku bench privacy` counts that.
fn key_salt(insurer: InsurerNumber) -> String {
    format!("shikaku/member-key-tag/v2/{insurer}")
}

/// Derives the member-key path's tag and wrapping key with Argon2id (64 bytes of output: the
/// tag is `blake3::derive_key("shikaku 2026 member key tag v2", out)`, the wrapping key the
/// same with `"… member key wrap v2"`). Deliberately slow.
pub fn key_secrets(
    key: &MemberKey,
    birth: Date,
    params: KdfParams,
) -> Result<KeySecrets, SealError> {
    params.validate()?;
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(params.m_kib, params.t, params.p, Some(64))
            .map_err(|e| SealError::Kdf(e.to_string()))?,
    );
    let mut out = [0u8; 64];
    argon
        .hash_password_into(
            key_password(key, birth).as_bytes(),
            key_salt(key.insurer).as_bytes(),
            &mut out,
        )
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    let secrets = KeySecrets {
        tag: blake3::derive_key("shikaku 2026 member key tag v2", &out),
        wrap: blake3::derive_key("shikaku 2026 member key wrap v2", &out),
    };
    out.fill(0);
    Ok(secrets)
}

fn aead(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

fn member_aad(reference: &MemberKey) -> Vec<u8> {
    let mut aad = SEALED_MEMBER_CONTEXT.to_vec();
    aad.extend_from_slice(reference.to_string().as_bytes());
    aad
}

/// Seals a member record under its data key; `reference` is bound in the associated data.
pub fn seal_member(
    data_key: &DataKey,
    nonce: [u8; 24],
    reference: &MemberKey,
    record: &SealedMember,
) -> Result<Sealed, SealError> {
    let plain = rkyv::to_bytes::<rkyv::rancor::Error>(record)
        .map_err(|e| SealError::Malformed(e.to_string()))?;
    let aad = member_aad(reference);
    let ciphertext = aead(&data_key.0)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad })
        .map_err(|_| SealError::Open)?;
    Ok(Sealed { nonce, ciphertext })
}

/// Opens a sealed member record. The record inside must name a valid key of the reference's
/// insurer.
pub fn open_member(
    data_key: &DataKey,
    reference: &MemberKey,
    sealed: &Sealed,
) -> Result<SealedMember, SealError> {
    let aad = member_aad(reference);
    let plain = aead(&data_key.0)
        .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
        .map_err(|_| SealError::Open)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(plain.len());
    aligned.extend_from_slice(&plain);
    let record = rkyv::from_bytes::<SealedMember, rkyv::rancor::Error>(&aligned)
        .map_err(|e| SealError::Malformed(e.to_string()))?;
    record.key.validate().map_err(|e| SealError::Malformed(e.to_string()))?;
    if record.key.insurer != reference.insurer {
        return Err(SealError::Malformed("the record names another insurer".into()));
    }
    Ok(record)
}

fn wrap_aad(tag: &[u8; 32], reference: &MemberKey) -> Vec<u8> {
    let mut aad = WRAP_CONTEXT.to_vec();
    aad.extend_from_slice(tag);
    aad.extend_from_slice(reference.to_string().as_bytes());
    aad
}

/// Wraps a data key under a wrapping key; the lookup tag and the reference are bound in the
/// associated data.
pub fn wrap_data_key(
    wrap_key: &[u8; 32],
    nonce: [u8; 24],
    tag: &[u8; 32],
    reference: &MemberKey,
    data_key: &DataKey,
) -> Sealed {
    let aad = wrap_aad(tag, reference);
    let ciphertext = aead(wrap_key)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &data_key.0, aad: &aad })
        // Encryption of 32 bytes cannot fail (the only error is a too-long message).
        .unwrap_or_default();
    Sealed { nonce, ciphertext }
}

/// Unwraps a data key.
pub fn unwrap_data_key(
    wrap_key: &[u8; 32],
    tag: &[u8; 32],
    reference: &MemberKey,
    wrapped: &Sealed,
) -> Result<DataKey, SealError> {
    let aad = wrap_aad(tag, reference);
    let plain = aead(wrap_key)
        .decrypt(
            XNonce::from_slice(&wrapped.nonce),
            Payload { msg: &wrapped.ciphertext, aad: &aad },
        )
        .map_err(|_| SealError::Open)?;
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| SealError::Open)?;
    Ok(DataKey(bytes))
}
