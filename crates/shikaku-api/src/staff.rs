//! Clinic staff accounts: `staff.json` in the clinic's data directory (0600, installed
//! atomically; format in `protocol/STAFF.md`). Each account has a name, a pseudonymous
//! [`StaffId`] (what the clinic's signed records carry — the hub never learns the name),
//! roles, an Argon2id password hash in PHC form, and whether it is disabled.
//!
//! Passwords rather than per-PC client certificates: reception PCs are shared by several
//! people through a day, and the guideline asks who checked, not which PC. Argon2id at the
//! argon2 crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's recommendation).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shikaku_core::StaffId;

/// The staff file's name in the data directory.
pub const STAFF_FILE: &str = "staff.json";
/// The staff file's format version.
pub const STAFF_FILE_VERSION: u16 = 1;
/// Accounts a clinic may hold.
pub const STAFF_MAX: usize = 1_000;
/// The shortest password accepted.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// The longest password accepted (Argon2 would take more, but nobody types it).
pub const PASSWORD_BYTES_MAX: usize = 256;

/// What a staff member may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// Check patients, record self-declarations and consents.
    Reception,
    /// Manage staff, read health, metrics and the clinic's own audit view.
    Admin,
}

impl StaffRole {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            StaffRole::Reception => "reception",
            StaffRole::Admin => "admin",
        }
    }
}

impl std::str::FromStr for StaffRole {
    type Err = String;
    fn from_str(text: &str) -> Result<StaffRole, String> {
        match text {
            "reception" => Ok(StaffRole::Reception),
            "admin" => Ok(StaffRole::Admin),
            other => Err(format!("role must be reception or admin, got {other:?}")),
        }
    }
}

/// One staff account.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffAccount {
    /// Login name: 1–32 characters of `a-z`, `0-9`, `.`, `_`, `-`.
    pub name: String,
    /// The pseudonymous id the clinic's records carry.
    pub id: StaffId,
    /// Roles, sorted, at least one.
    pub roles: Vec<StaffRole>,
    /// Argon2id hash in PHC string form.
    pub password: String,
    /// A disabled account cannot log in, and its open sessions end at their next request.
    pub disabled: bool,
    /// When the account was made (Unix ms).
    pub created_ms: u64,
    /// When its password was last set (Unix ms); sessions begun before it end.
    pub password_set_ms: u64,
}

impl std::fmt::Debug for StaffAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash.
        f.debug_struct("StaffAccount")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl StaffAccount {
    /// Whether the account holds `role`.
    pub fn has(&self, role: StaffRole) -> bool {
        self.roles.contains(&role)
    }
}

/// The clinic's staff accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffFile {
    /// [`STAFF_FILE_VERSION`].
    pub version: u16,
    /// Accounts in the order they were made.
    pub accounts: Vec<StaffAccount>,
}

/// The staff file's path in `data_dir`.
pub fn staff_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STAFF_FILE)
}

/// Checks a login name.
pub fn check_staff_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        bail!("staff name {name:?} must be 1-32 characters of a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out)
        .map_err(|e| anyhow::anyhow!("the system's random source: {e}"))?;
    Ok(out)
}

/// A new password to hand a staff member: 20 characters from a 32-letter alphabet without
/// look-alikes (100 bits), in groups of five.
pub fn new_password() -> Result<String> {
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz23456789#";
    let bytes = random_bytes::<20>()?;
    let mut out = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    Ok(out)
}

/// Hashes a password with Argon2id (PHC string).
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    check_password(password)?;
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| anyhow::anyhow!("encoding the salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC hash (false for a hash that does not parse).
pub fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
}

/// A hash of a random password, verified against when the name is unknown so that a wrong
/// name takes as long as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        new_password().and_then(|p| hash_password(&p)).unwrap_or_else(|_| String::from("$none"))
    })
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < PASSWORD_CHARS_MIN {
        bail!("a password must be at least {PASSWORD_CHARS_MIN} characters");
    }
    if password.len() > PASSWORD_BYTES_MAX {
        bail!("a password must be at most {PASSWORD_BYTES_MAX} bytes");
    }
    Ok(())
}

impl StaffFile {
    /// Reads the staff file of `data_dir`; none yet is an empty file.
    pub fn load(data_dir: &Path) -> Result<StaffFile> {
        let path = staff_path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StaffFile { version: STAFF_FILE_VERSION, accounts: Vec::new() })
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        StaffFile::decode(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// Decodes and checks a staff file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<StaffFile> {
        let file: StaffFile = serde_json::from_slice(bytes).context("not a valid staff file")?;
        if file.version != STAFF_FILE_VERSION {
            bail!(
                "staff file version {} is not one this build reads (version {STAFF_FILE_VERSION})",
                file.version
            );
        }
        if file.accounts.len() > STAFF_MAX {
            bail!("more than {STAFF_MAX} accounts");
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ids = std::collections::BTreeSet::new();
        for a in &file.accounts {
            check_staff_name(&a.name)?;
            if a.roles.is_empty() {
                bail!("account {:?} has no role", a.name);
            }
            if !names.insert(&a.name) || !ids.insert(a.id) {
                bail!("account {:?} appears twice", a.name);
            }
        }
        Ok(file)
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        shikaku_node::data_dir::create_private_dir(data_dir)?;
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        shikaku_node::data_dir::write_private_atomic(&staff_path(data_dir), &bytes)
    }

    /// The account called `name`.
    pub fn find(&self, name: &str) -> Option<&StaffAccount> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The account with id `id`.
    pub fn by_id(&self, id: StaffId) -> Option<&StaffAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }

    fn find_mut(&mut self, name: &str) -> Result<&mut StaffAccount> {
        self.accounts
            .iter_mut()
            .find(|a| a.name == name)
            .with_context(|| format!("no staff account {name:?} (see `shikaku clinic staff list`)"))
    }

    /// Adds an account with a fresh random id.
    pub fn add(
        &mut self,
        name: &str,
        roles: &[StaffRole],
        password: &str,
        now_ms: u64,
    ) -> Result<&StaffAccount> {
        check_staff_name(name)?;
        if self.find(name).is_some() {
            bail!("a staff account {name:?} exists already (reset its password with `shikaku clinic staff reset`)");
        }
        if self.accounts.len() >= STAFF_MAX {
            bail!("a clinic holds at most {STAFF_MAX} staff accounts");
        }
        if roles.is_empty() {
            bail!("give the account a role (--role reception or --role admin)");
        }
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let id = loop {
            let id = StaffId(random_bytes::<8>()?);
            if self.by_id(id).is_none() {
                break id;
            }
        };
        self.accounts.push(StaffAccount {
            name: name.to_owned(),
            id,
            roles,
            password: hash_password(password)?,
            disabled: false,
            created_ms: now_ms,
            password_set_ms: now_ms,
        });
        Ok(&self.accounts[self.accounts.len() - 1])
    }

    /// Sets a new password (and enables the account again).
    pub fn reset(&mut self, name: &str, password: &str, now_ms: u64) -> Result<()> {
        let hash = hash_password(password)?;
        let account = self.find_mut(name)?;
        account.password = hash;
        account.password_set_ms = now_ms;
        account.disabled = false;
        Ok(())
    }

    /// Disables an account: it cannot log in, and its sessions end at once.
    pub fn disable(&mut self, name: &str) -> Result<()> {
        self.find_mut(name)?.disabled = true;
        Ok(())
    }

    /// Whether a login is needed at all (any account exists).
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}
