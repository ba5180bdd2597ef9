//! Staff login at the clinic's API: sessions, roles, the login rate limit, and the guard that
//! puts the logged-in [`Operator`] on every request that records something.
//!
//! - Login (`POST /v1/login`) checks the Argon2id hash on a blocking thread and sets the
//!   session cookie `shikaku_session` (`HttpOnly; Secure; SameSite=Strict; Path=/`): 32
//!   random bytes, kept here only as their blake3 hash. Sessions live in memory (a restart
//!   logs everyone out) and end after [`ClinicAuth::idle_ms`] without a request of the staff
//!   member's own (the page's polling of `/v1/health` and `/v1/session` does not count), at logout,
//!   when the account is disabled or its password reset — checked at every request against
//!   the staff file, re-read whenever it changes on disk.
//! - Wrong passwords: [`FAILURES_FREE`] per account name, then each further attempt waits
//!   30 s, doubling up to 15 min (429 with `Retry-After`); a success resets it. A name that
//!   does not exist costs the same Argon2id time as a wrong password.
//! - Without staff accounts, on loopback only, the API runs in the no-login mode of a
//!   single-PC clinic ([`LoginMode::Loopback`]): no operator is recorded and the page says so.
//!   The first account added (`shikaku clinic staff add`, also while it runs) ends that mode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use shikaku_core::StaffId;
use shikaku_net::Clock;

use crate::request::ApiError;
use crate::staff::{self, StaffAccount, StaffFile, StaffRole};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "shikaku_session";
/// Default idle time after which a session ends.
pub const IDLE_DEFAULT_MS: u64 = 15 * 60 * 1000;
/// Wrong passwords per account before logins are slowed down.
pub const FAILURES_FREE: u32 = 5;
/// The first wait after [`FAILURES_FREE`] wrong passwords; it doubles with each further one.
pub const LOCKOUT_FIRST_MS: u64 = 30_000;
/// The longest wait.
pub const LOCKOUT_MAX_MS: u64 = 15 * 60 * 1000;
/// Sessions open at once (the oldest idle one ends past it).
pub const SESSIONS_MAX: usize = 1_000;
/// Account names whose failures are remembered at once.
const FAILURE_NAMES_MAX: usize = 10_000;

/// Whether staff log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMode {
    /// A single-PC clinic on loopback with no staff accounts: no login, no operator recorded.
    Loopback,
    /// Staff log in; every request but the page and the login itself needs a session.
    Required,
}

/// The staff member behind a request, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The pseudonymous id the records carry.
    pub id: StaffId,
    /// The login name (the clinic's own views only).
    pub name: String,
    /// Roles.
    pub roles: Vec<StaffRole>,
}

#[derive(Debug)]
struct Session {
    staff: StaffId,
    started_ms: u64,
    last_ms: u64,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    staff: StaffFile,
    /// (modified, length) of the staff file when last read.
    stamp: Option<(std::time::SystemTime, u64)>,
    unreadable: Option<String>,
    sessions: HashMap<[u8; 32], Session>,
    failures: HashMap<String, Failures>,
}

/// Login counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuthCounters {
    /// Successful logins.
    pub logins: u64,
    /// Wrong names or passwords.
    pub login_failures: u64,
    /// Attempts refused by the rate limit.
    pub login_throttled: u64,
    /// Sessions ended by idle expiry.
    pub sessions_expired: u64,
}

/// The clinic API's staff authentication.
#[derive(Debug)]
pub struct ClinicAuth {
    data_dir: PathBuf,
    /// The API binds loopback only (the no-login mode is allowed while no account exists).
    loopback: bool,
    /// No staff file at all: always the no-login mode ([`ClinicAuth::loopback`]).
    fixed_loopback: bool,
    idle_ms: u64,
    clock: Arc<Clock>,
    state: Mutex<State>,
    counters: Mutex<AuthCounters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a request has no usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSession {
    Missing,
    Expired,
    Disabled,
    StaffFileUnreadable,
}

impl ClinicAuth {
    /// Authentication for the clinic API over `data_dir`'s staff file. `loopback` says
    /// whether the API binds loopback only; beyond it, staff accounts are required.
    pub fn open(
        data_dir: &Path,
        loopback: bool,
        idle_ms: u64,
        clock: Arc<Clock>,
    ) -> anyhow::Result<ClinicAuth> {
        let staff = StaffFile::load(data_dir)?;
        if staff.is_empty() && !loopback {
            anyhow::bail!(
                "the check API listens beyond this machine but {} holds no staff accounts: add them first (shikaku clinic staff add --name NAME --role reception)",
                staff::staff_path(data_dir).display()
            );
        }
        let auth = ClinicAuth {
            data_dir: data_dir.to_owned(),
            loopback,
            fixed_loopback: false,
            idle_ms,
            clock,
            state: Mutex::new(State::default()),
            counters: Mutex::new(AuthCounters::default()),
        };
        auth.refresh(&mut lock(&auth.state));
        Ok(auth)
    }

    /// The no-login mode of a single-PC clinic on loopback, with no staff file at all.
    pub fn loopback(clock: Arc<Clock>) -> ClinicAuth {
        ClinicAuth {
            data_dir: PathBuf::new(),
            loopback: true,
            fixed_loopback: true,
            idle_ms: IDLE_DEFAULT_MS,
            clock,
            state: Mutex::new(State::default()),
            counters: Mutex::new(AuthCounters::default()),
        }
    }

    /// Whether staff log in: as soon as the staff file holds an account (also one added
    /// while the API runs), or whenever the API binds beyond loopback.
    pub fn mode(&self) -> LoginMode {
        if self.fixed_loopback {
            return LoginMode::Loopback;
        }
        let mut state = lock(&self.state);
        self.refresh(&mut state);
        if self.loopback && state.staff.is_empty() && state.unreadable.is_none() {
            LoginMode::Loopback
        } else {
            LoginMode::Required
        }
    }

    /// Idle time after which a session ends.
    pub fn idle_ms(&self) -> u64 {
        self.idle_ms
    }

    /// Login counters.
    pub fn counters(&self) -> AuthCounters {
        *lock(&self.counters)
    }

    /// The staff accounts as last read.
    pub fn staff(&self) -> StaffFile {
        let mut state = lock(&self.state);
        if !self.fixed_loopback {
            self.refresh(&mut state);
        }
        state.staff.clone()
    }

    /// Re-reads the staff file if it changed on disk (a `shikaku clinic staff` command ran).
    fn refresh(&self, state: &mut State) {
        let path = staff::staff_path(&self.data_dir);
        let stamp = std::fs::metadata(&path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp == state.stamp && state.unreadable.is_none() {
            return;
        }
        match StaffFile::load(&self.data_dir) {
            Ok(file) => {
                state.staff = file;
                state.unreadable = None;
            }
            // Fail closed: nobody is let in on a staff file that does not read.
            Err(e) => state.unreadable = Some(format!("{e:#}")),
        }
        state.stamp = stamp;
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The operator of a request's session; `touch` refreshes its idle timer (a request of the
    /// staff member's own, not the page's background polling of health and session).
    fn operator(&self, headers: &HeaderMap, touch: bool) -> Result<Operator, NoSession> {
        let token = session_token(headers).ok_or(NoSession::Missing)?;
        let key = *blake3::hash(&token).as_bytes();
        let now = self.now();
        let mut state = lock(&self.state);
        self.refresh(&mut state);
        if state.unreadable.is_some() {
            return Err(NoSession::StaffFileUnreadable);
        }
        let Some(session) = state.sessions.get(&key) else { return Err(NoSession::Missing) };
        if now.saturating_sub(session.last_ms) > self.idle_ms {
            state.sessions.remove(&key);
            lock(&self.counters).sessions_expired += 1;
            return Err(NoSession::Expired);
        }
        let (staff_id, started) = (session.staff, session.started_ms);
        let account = state.staff.by_id(staff_id).cloned();
        match account {
            Some(a) if !a.disabled && a.password_set_ms <= started => {
                if let Some(s) = state.sessions.get_mut(&key).filter(|_| touch) {
                    s.last_ms = now;
                }
                Ok(Operator { id: a.id, name: a.name, roles: a.roles })
            }
            _ => {
                state.sessions.remove(&key);
                Err(NoSession::Disabled)
            }
        }
    }

    /// The wait left before `name` may try again, if it must wait.
    fn throttled(&self, name: &str) -> Option<u64> {
        let now = self.now();
        let state = lock(&self.state);
        let f = state.failures.get(name)?;
        (f.locked_until_ms > now).then(|| f.locked_until_ms - now)
    }

    fn note_failure(&self, name: &str) {
        let now = self.now();
        let mut state = lock(&self.state);
        if state.failures.len() >= FAILURE_NAMES_MAX && !state.failures.contains_key(name) {
            state.failures.retain(|_, f| f.locked_until_ms > now);
            // Still full of locked names: forget one, the map stays bounded.
            if let Some(any) = state.failures.keys().next().cloned() {
                if state.failures.len() >= FAILURE_NAMES_MAX {
                    state.failures.remove(&any);
                }
            }
        }
        let f = state.failures.entry(name.to_owned()).or_default();
        f.count += 1;
        if f.count >= FAILURES_FREE {
            let doublings = (f.count - FAILURES_FREE).min(10);
            f.locked_until_ms = now + (LOCKOUT_FIRST_MS << doublings).min(LOCKOUT_MAX_MS);
        }
        lock(&self.counters).login_failures += 1;
    }

    /// Starts a session for `account`; returns the cookie's token.
    fn start_session(&self, account: &StaffAccount) -> anyhow::Result<String> {
        let token = staff::random_bytes::<32>()?;
        let now = self.now();
        let mut state = lock(&self.state);
        state.failures.remove(&account.name);
        let idle = self.idle_ms;
        state.sessions.retain(|_, s| now.saturating_sub(s.last_ms) <= idle);
        if state.sessions.len() >= SESSIONS_MAX {
            let oldest = state.sessions.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| *k);
            if let Some(k) = oldest {
                state.sessions.remove(&k);
            }
        }
        state.sessions.insert(
            *blake3::hash(&token).as_bytes(),
            Session { staff: account.id, started_ms: now, last_ms: now },
        );
        lock(&self.counters).logins += 1;
        Ok(shikaku_core::hex::encode(&token))
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(token) = session_token(headers) {
            lock(&self.state).sessions.remove(blake3::hash(&token).as_bytes());
        }
    }
}

fn session_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| shikaku_core::hex::decode(value.trim()))?
        })
    })
}

fn session_cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/")
}

fn cleared_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

/// What a path needs: nothing (the page, login, logout, who-am-I), a role, or any session.
fn needs(method: &Method, path: &str) -> Option<&'static [StaffRole]> {
    const RECEPTION: &[StaffRole] = &[StaffRole::Reception];
    const ADMIN: &[StaffRole] = &[StaffRole::Admin];
    const ANY: &[StaffRole] = &[StaffRole::Reception, StaffRole::Admin];
    match (method, path) {
        (_, "/" | "/v1/login" | "/v1/logout" | "/v1/session" | "/fhir/metadata") => None,
        (
            _,
            "/v1/check" | "/v1/declarations" | "/v1/consents" | "/fhir/CoverageEligibilityRequest",
        ) => Some(RECEPTION),
        (_, "/metrics" | "/v1/audit") => Some(ADMIN),
        (_, p) if p.starts_with("/v1/staff") => Some(ADMIN),
        _ => Some(ANY),
    }
}

/// The guard in front of the clinic API (inside the Host and same-origin guard): in the
/// login mode, every path but the public ones needs a live session of an account with the
/// path's role; the [`Operator`] then goes with the request.
pub async fn guard(
    auth: Arc<ClinicAuth>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.extensions_mut().insert(auth.clone());
    if auth.mode() == LoginMode::Loopback {
        if request.uri().path().starts_with("/v1/staff") || request.uri().path() == "/v1/login" {
            return ApiError::new(
                StatusCode::CONFLICT,
                "no_login_mode",
                "this clinic API runs in the loopback no-login mode (no staff accounts): add accounts with `shikaku clinic staff add` and restart".into(),
            )
            .into_response();
        }
        return next.run(request).await;
    }
    let Some(roles) = needs(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // What the page polls on its own (the banner's health) is not activity.
    let touch = request.uri().path() != "/v1/health";
    match auth.operator(request.headers(), touch) {
        Ok(op) if roles.iter().any(|r| op.roles.contains(r)) => {
            request.extensions_mut().insert(op);
            next.run(request).await
        }
        Ok(op) => ApiError::new(
            StatusCode::FORBIDDEN,
            "role_required",
            format!(
                "{} needs the {} role; {} has {}",
                request.uri().path(),
                roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(" or "),
                op.name,
                op.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
            ),
        )
        .into_response(),
        Err(why) => {
            let (code, message) = match why {
                NoSession::Missing => ("login_required", "log in first (POST /v1/login)"),
                NoSession::Expired => ("session_expired", "the session ended after being idle: log in again"),
                NoSession::Disabled => ("session_ended", "the account was disabled or its password reset: log in again"),
                NoSession::StaffFileUnreadable => ("staff_file_unreadable", "the clinic's staff file cannot be read: nobody is let in until an admin mends it"),
            };
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, code, message.into()).into_response();
            if why != NoSession::Missing {
                if let Ok(v) = cleared_cookie().parse() {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            response
        }
    }
}

/// `POST /v1/login` `{"name","password"}`.
pub async fn login(
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let d = crate::request::json_body(&headers, &body, &["name", "password"])?;
    let name = d.get("name").cloned().unwrap_or_default();
    let password = d.get("password").cloned().unwrap_or_default();
    if let Some(wait_ms) = auth.throttled(&name) {
        lock(&auth.counters).login_throttled += 1;
        let secs = wait_ms.div_ceil(1000);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "login_throttled",
            format!("too many wrong passwords for this account: try again in {secs} s"),
        )
        .into_response();
        if let Ok(v) = secs.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(response);
    }
    let account = auth.staff().find(&name).cloned();
    let hash =
        account.as_ref().map_or_else(|| staff::decoy_hash().to_owned(), |a| a.password.clone());
    let verified = tokio::task::spawn_blocking(move || staff::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let account = match account {
        Some(a) if verified && !a.disabled => a,
        Some(a) if verified => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account_disabled",
                format!("the account {:?} is disabled: ask the clinic's admin", a.name),
            ))
        }
        _ => {
            auth.note_failure(&name);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong_login",
                "wrong name or password".into(),
            ));
        }
    };
    let token = auth.start_session(&account).map_err(ApiError::internal)?;
    tracing::info!("staff {} logged in", account.id);
    let body = serde_json::json!({
        "name": account.name,
        "roles": account.roles,
        "idle_expiry_s": auth.idle_ms / 1000,
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&token).parse().map_err(ApiError::internal)?);
    Ok(response)
}

/// `POST /v1/logout`: ends the session and clears the cookie.
pub async fn logout(
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth.end_session(&headers);
    let mut response =
        (StatusCode::OK, axum::Json(serde_json::json!({"logged_out": true}))).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cleared_cookie().parse().map_err(ApiError::internal)?);
    Ok(response)
}

/// `GET /v1/session`: the login mode and who is logged in, if anyone.
pub async fn session(
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    let current = auth.mode();
    let mode = match current {
        LoginMode::Loopback => "loopback-no-login",
        LoginMode::Required => "login",
    };
    let who = match current {
        LoginMode::Required => auth.operator(&headers, false).ok(),
        LoginMode::Loopback => None,
    };
    axum::Json(serde_json::json!({
        "mode": mode,
        "name": who.as_ref().map(|o| o.name.clone()),
        "roles": who.as_ref().map(|o| o.roles.clone()),
        "idle_expiry_s": auth.idle_ms / 1000,
    }))
}

/// `GET /v1/staff` (admin): the accounts, without their hashes.
pub async fn staff_list(
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
) -> axum::Json<serde_json::Value> {
    let staff = auth.staff();
    axum::Json(serde_json::json!({
        "staff": staff.accounts.iter().map(|a| serde_json::json!({
            "name": a.name,
            "id": a.id,
            "roles": a.roles,
            "disabled": a.disabled,
        })).collect::<Vec<_>>()
    }))
}

/// `POST /v1/staff/disable` `{"name"}` (admin): disables an account; its sessions end at once.
pub async fn staff_disable(
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let d = crate::request::json_body(&headers, &body, &["name"])?;
    let name = d.get("name").cloned().unwrap_or_default();
    let data_dir = auth.data_dir.clone();
    let mut file = StaffFile::load(&data_dir).map_err(ApiError::internal)?;
    file.disable(&name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "unknown_staff", format!("{e:#}")))?;
    file.save(&data_dir).map_err(ApiError::internal)?;
    auth.refresh(&mut lock(&auth.state));
    Ok(axum::Json(serde_json::json!({"disabled": name})))
}
