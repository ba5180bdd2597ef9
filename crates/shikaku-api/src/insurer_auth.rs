//! Insurer accounts at the hub's API: one API token per insurer staff member, each scoped to
//! the insurers it may see, and a record of every use.
//!
//! - `insurer-accounts.json` in the hub's data directory (0600, atomic; `protocol/STAFF.md`):
//!   name, insurers, the token's blake3 hash (tokens are 256 random bits, so a fast hash is
//!   enough — there is nothing to guess), created, revoked. `shikaku hub account add` prints
//!   the token once.
//! - Requests carry `Authorization: Bearer <token>`. With no accounts and the API on loopback
//!   the hub runs open (every insurer), as before; its uses are still recorded, as `(loopback,
//!   no accounts)`. Beyond loopback an account is required.
//! - `insurer-api.log` beside it: one JSON line per request — when, account, method, path
//!   (a member key in it replaced by `{member}`), the member's audit tag (a keyed hash of the
//!   key, never the key: `shikaku hub account uses --member KEY` computes it again), status.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use shikaku_core::{InsurerNumber, MemberKey};

use crate::request::ApiError;

/// The accounts file's name in the hub's data directory.
pub const ACCOUNTS_FILE: &str = "insurer-accounts.json";
/// The use log's name in the hub's data directory.
pub const USE_LOG_FILE: &str = "insurer-api.log";
/// The accounts file's format version.
pub const ACCOUNTS_FILE_VERSION: u16 = 1;
/// Accounts a hub may hold.
pub const ACCOUNTS_MAX: usize = 10_000;
/// Token prefix (so a leaked token is recognisable in a scanner).
pub const TOKEN_PREFIX: &str = "shk_";
const TOKEN_HASH_CONTEXT: &str = "shikaku insurer api token v1";
const MEMBER_TAG_CONTEXT: &str = "shikaku insurer api audit member v1";

/// One insurer account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsurerAccount {
    /// Name of the insurer staff member (1–32 of `a-z0-9._-`).
    pub name: String,
    /// Insurers the account may see.
    pub insurers: Vec<InsurerNumber>,
    /// blake3 `derive_key("shikaku insurer api token v1", token)`, hex.
    pub token_hash: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// A revoked account's token is refused.
    pub revoked: bool,
}

/// The hub's insurer accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// [`ACCOUNTS_FILE_VERSION`].
    pub version: u16,
    /// Accounts in the order they were made.
    pub accounts: Vec<InsurerAccount>,
}

fn token_hash(token: &str) -> String {
    shikaku_core::hex::encode(&blake3::derive_key(TOKEN_HASH_CONTEXT, token.as_bytes()))
}

/// The audit tag of a member key in the use log: 16 bytes of a keyed hash, hex.
pub fn member_tag(key: &MemberKey) -> String {
    shikaku_core::hex::encode(
        &blake3::derive_key(MEMBER_TAG_CONTEXT, key.to_string().as_bytes())[..16],
    )
}

impl AccountsFile {
    /// Reads `data_dir`'s accounts file (none yet: no accounts).
    pub fn load(data_dir: &Path) -> Result<AccountsFile> {
        let path = data_dir.join(ACCOUNTS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AccountsFile { version: ACCOUNTS_FILE_VERSION, accounts: Vec::new() })
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: AccountsFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid accounts file", path.display()))?;
        if file.version != ACCOUNTS_FILE_VERSION {
            bail!("{}: version {} is not one this build reads", path.display(), file.version);
        }
        if file.accounts.len() > ACCOUNTS_MAX {
            bail!("{}: more than {ACCOUNTS_MAX} accounts", path.display());
        }
        Ok(file)
    }

    /// Writes it atomically, owner-only.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        shikaku_node::data_dir::write_private_atomic(&data_dir.join(ACCOUNTS_FILE), &bytes)
    }

    /// Adds an account; returns its token (shown once).
    pub fn add(&mut self, name: &str, insurers: &[InsurerNumber], now_ms: u64) -> Result<String> {
        crate::staff::check_staff_name(name).map_err(|_| {
            anyhow::anyhow!(
                "account name {name:?} must be 1-32 characters of a-z, 0-9, '.', '_' and '-'"
            )
        })?;
        if insurers.is_empty() {
            bail!("scope the account to at least one insurer (--insurer NUMBER)");
        }
        if self.accounts.iter().any(|a| a.name == name) {
            bail!("an account {name:?} exists already");
        }
        if self.accounts.len() >= ACCOUNTS_MAX {
            bail!("a hub holds at most {ACCOUNTS_MAX} insurer accounts");
        }
        let token = format!(
            "{TOKEN_PREFIX}{}",
            shikaku_core::hex::encode(&crate::staff::random_bytes::<32>()?)
        );
        let mut insurers = insurers.to_vec();
        insurers.sort();
        insurers.dedup();
        self.accounts.push(InsurerAccount {
            name: name.to_owned(),
            insurers,
            token_hash: token_hash(&token),
            created_ms: now_ms,
            revoked: false,
        });
        Ok(token)
    }

    /// Revokes an account's token.
    pub fn revoke(&mut self, name: &str) -> Result<()> {
        let a = self
            .accounts
            .iter_mut()
            .find(|a| a.name == name)
            .with_context(|| format!("no insurer account {name:?}"))?;
        a.revoked = true;
        Ok(())
    }
}

/// Which insurers a request may see.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The account's name (`(loopback, no accounts)` in the open mode).
    pub account: String,
    /// `None`: every insurer (the open loopback mode).
    pub insurers: Option<BTreeSet<InsurerNumber>>,
}

impl Scope {
    /// Whether the scope covers `insurer`.
    pub fn covers(&self, insurer: InsurerNumber) -> bool {
        self.insurers.as_ref().is_none_or(|s| s.contains(&insurer))
    }
}

/// The hub API's insurer authentication and use log.
#[derive(Debug)]
pub struct HubAuth {
    data_dir: PathBuf,
    /// The API binds loopback only: with no accounts it answers every insurer.
    loopback: bool,
    /// No accounts file at all (tests, embedded uses): always open.
    unrecorded: bool,
    log: Mutex<Option<std::fs::File>>,
    clock: Arc<shikaku_net::Clock>,
}

/// The member an access-report request is about, for the use log (set by the handler).
#[derive(Debug, Clone)]
pub struct LoggedMember(pub String);

impl HubAuth {
    /// Authentication over `data_dir`'s accounts file. Beyond loopback, accounts are required.
    pub fn open(
        data_dir: &Path,
        loopback: bool,
        clock: Arc<shikaku_net::Clock>,
    ) -> Result<HubAuth> {
        let accounts = AccountsFile::load(data_dir)?;
        if accounts.accounts.is_empty() && !loopback {
            bail!("the insurer API listens beyond this machine but {} holds no accounts: add them first (shikaku hub account add --name NAME --insurer NUMBER)", data_dir.join(ACCOUNTS_FILE).display());
        }
        let log_path = data_dir.join(USE_LOG_FILE);
        let log = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?
        };
        Ok(HubAuth {
            data_dir: data_dir.to_owned(),
            loopback,
            unrecorded: false,
            log: Mutex::new(Some(log)),
            clock,
        })
    }

    /// A hub API with no accounts and no use log (tests, embedded uses on loopback).
    pub fn unrecorded_open(clock: Arc<shikaku_net::Clock>) -> HubAuth {
        HubAuth {
            data_dir: PathBuf::new(),
            loopback: true,
            unrecorded: true,
            log: Mutex::new(None),
            clock,
        }
    }

    fn scope_of(&self, headers: &axum::http::HeaderMap) -> Result<Scope, &'static str> {
        let open = Scope { account: "(loopback, no accounts)".into(), insurers: None };
        if self.unrecorded {
            return Ok(open);
        }
        // Re-read at every request: the first account added, or a revocation, takes effect
        // at once.
        let accounts =
            AccountsFile::load(&self.data_dir).map_err(|_| "the accounts file cannot be read")?;
        if accounts.accounts.is_empty() {
            return if self.loopback { Ok(open) } else { Err("this hub has no insurer accounts") };
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("send the account's token: Authorization: Bearer shk_…")?;
        let hash = token_hash(token.trim());
        let account =
            accounts.accounts.iter().find(|a| a.token_hash == hash).ok_or("unknown token")?;
        if account.revoked {
            return Err("this token was revoked");
        }
        Ok(Scope {
            account: account.name.clone(),
            insurers: Some(account.insurers.iter().copied().collect()),
        })
    }

    /// Appends one line to the use log and syncs it; false if that failed.
    fn record(
        &self,
        scope: &str,
        method: &str,
        path: &str,
        member: Option<&str>,
        status: u16,
    ) -> bool {
        let line = serde_json::json!({
            "at_ms": self.clock.now_ms(),
            "account": scope,
            "method": method,
            "path": path,
            "member_tag": member,
            "status": status,
        });
        let mut guard = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(f) = guard.as_mut() else { return true };
        let written = writeln!(f, "{line}").and_then(|()| f.sync_data()).is_ok();
        if !written {
            tracing::error!("the insurer API's use log cannot be written: answering 503");
        }
        written
    }
}

fn unrecorded() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "use_log_unwritable",
        "the insurer API's use log cannot be written: no answer leaves unrecorded".into(),
    )
    .into_response()
}

/// The path as logged: a member key segment replaced by `{member}`.
fn logged_path(path: &str) -> String {
    match path.strip_prefix("/v1/members/").and_then(|rest| rest.split_once('/')) {
        Some((_, tail)) => format!("/v1/members/{{member}}/{tail}"),
        None => path.to_owned(),
    }
}

/// The guard in front of the hub's insurer API: the account's [`Scope`] goes with the
/// request, and every request — refused ones too — is recorded in the use log before the
/// answer leaves; if the line cannot be written the answer is a 503 instead (what the request
/// did, e.g. an import, stays done, and is in the hub's own ledger).
pub async fn guard(
    auth: Arc<HubAuth>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().to_string();
    let path = logged_path(request.uri().path());
    let scope = match auth.scope_of(request.headers()) {
        Ok(scope) => scope,
        Err(why) => {
            if !auth.record("(refused)", &method, &path, None, 401) {
                return unrecorded();
            }
            return ApiError::new(StatusCode::UNAUTHORIZED, "token_required", why.into())
                .into_response();
        }
    };
    request.extensions_mut().insert(scope.clone());
    let response = next.run(request).await;
    let member = response.extensions().get::<LoggedMember>().map(|m| m.0.clone());
    let status = response.status().as_u16();
    if !auth.record(&scope.account, &method, &path, member.as_deref(), status) {
        return unrecorded();
    }
    response
}
