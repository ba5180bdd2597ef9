//! The `shikaku` command line: generate synthetic insurer streams, import and export the
//! ledger, answer checks, run the demo and the benchmarks.
//!
//! Everything is reachable through [`run`], which takes the arguments and the output streams,
//! so the integration tests drive the real command in-process.

pub use shikaku_net::clock;
pub mod demo;
pub mod insurer;
pub mod ledger;
pub mod roster;
pub mod serve;
pub mod sim;
pub use shikaku_node::data_dir as store;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shikaku_core::{CheckQuery, Date, Freshness, Hlc, MemberKey, Replication};

use crate::store::Store;
pub use shikaku_api::import::{import_stream, ImportSummary, RefusedLine};
pub use shikaku_api::{jsonl, parse_typed_query};

/// shikaku — an offline-first health-insurance eligibility ledger.
///
/// Clinics keep a verified local replica of the eligibility ledger so that card checks keep
/// working during outages, and every answer says how fresh it is.
#[derive(Debug, Parser)]
#[command(name = "shikaku", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Directory holding this node's ledger.
    #[arg(long, global = true, env = "SHIKAKU_DATA_DIR", default_value = "shikaku-data")]
    pub data_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one scripted day on embedded defaults: a hub and three clinics on loopback QUIC
    /// (throwaway CA, generated S-tier world), online checks through the clinics' HTTP API, a
    /// job change pushed live, a hub outage with offline checks and a self-declaration,
    /// recovery, convergence, and the insurer's reconciliation report.
    Demo(demo::DemoArgs),
    /// Generate a seeded, realistic synthetic insurer event stream as JSON Lines.
    Gen(GenArgs),
    /// Work with this node's ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Check eligibility by card token or member key on a service date.
    Check(CheckArgs),
    /// Record at a running clinic node that the patient consents (or no longer consents) to
    /// reception seeing their limit category (限度額適用区分).
    Consent(ConsentArgs),
    /// Measure performance against baselines in the same run (a build with the `bench`
    /// feature only).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(shikaku_bench::BenchCommand),
    /// The deployment's certificate authority (mutual TLS between hub and clinics).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run an insurer's hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Run a clinic node.
    #[command(subcommand)]
    Clinic(ClinicCommand),
    /// An insurer's own tools: its signing key, and signing the events its member-management
    /// system exports.
    #[command(subcommand)]
    Insurer(InsurerCommand),
    /// The insurer's reconciliation report from the hub's ledger: checks the converged truth
    /// contradicts (with refunds due), self-declarations, retroactive changes, conflicts, and
    /// clinics by staleness. Reads --data-dir (hub stopped), or asks a running hub's API.
    Reconcile {
        /// table, json or html.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Write the report to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A running hub's API (`http://HOST:PORT`, as given to `hub serve --api`).
        #[arg(long)]
        hub: Option<String>,
    },
    /// The deterministic simulator: partitions, crashes, disk faults and clock skew from a seed.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// What the insurer can tell a member.
    #[command(subcommand)]
    Member(MemberCommand),
}

/// `shikaku member …`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// The member's access report: every check of their eligibility record across clinics —
    /// when, which institution, online or offline, by card or by key, the answer given,
    /// whether it was later contradicted, and checks through a card link later revoked as a
    /// wrong-person linkage. Institution-level (no staff). Reads the hub's --data-dir (hub
    /// stopped), or asks a running hub's API.
    Accesses {
        /// The member key, `INSURER:SYMBOL:NUMBER:BRANCH`.
        #[arg(long)]
        member: String,
        /// From this day (JST, YYYY-MM-DD).
        #[arg(long)]
        from: Option<shikaku_core::Date>,
        /// To this day (JST, inclusive).
        #[arg(long)]
        to: Option<shikaku_core::Date>,
        /// table, json or html (a printable page to hand the member).
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A running hub's API on this machine (`http://HOST:PORT`, as given to `hub serve
        /// --api`).
        #[arg(long)]
        hub: Option<String>,
        /// With --hub: a file holding the insurer account's API token.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

/// `shikaku hub account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Add an insurer account scoped to the insurers given; prints its API token once.
    Add {
        /// The insurer staff member's name (1-32 of a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// An insurer the account may see (repeatable, at least one).
        #[arg(long = "insurer", required = true)]
        insurers: Vec<String>,
    },
    /// Revoke an account's token (at once, also in a running hub).
    Revoke {
        /// Account name.
        #[arg(long)]
        name: String,
    },
    /// List the accounts and their insurers.
    List,
}

/// `shikaku ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA (key and self-signed certificate) in --ca-dir. Refuses to overwrite one.
    Init {
        /// Where the CA's files go.
        #[arg(long, default_value = "shikaku-ca")]
        ca_dir: PathBuf,
    },
    /// Issue a certificate for the node in --data-dir (creating its node key if needed); the
    /// certificate binds its role, name and signing key. Files go to <data-dir>/tls/.
    Issue {
        /// The CA's folder.
        #[arg(long, default_value = "shikaku-ca")]
        ca_dir: PathBuf,
        /// clinic or hub.
        #[arg(long, value_parser = ["clinic", "hub"])]
        role: String,
        /// Node name: 1-63 characters of a-z, 0-9 and '-'.
        #[arg(long)]
        name: String,
    },
    /// Issue an HTTPS certificate for an API on the LAN (the clinic's check API, the hub's
    /// insurer API): `api-cert.pem`, `api-key.pem` (0600) and `ca.pem` into --out. Give the
    /// names and addresses reception PCs use to reach it; install `ca.pem` in their browsers'
    /// trust store.
    IssueApi {
        /// The CA's folder.
        #[arg(long, default_value = "shikaku-ca")]
        ca_dir: PathBuf,
        /// A DNS name or IP address the API is reached by (repeatable, at least one).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where the files go (then: serve --api-cert DIR/api-cert.pem --api-key
        /// DIR/api-key.pem).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `shikaku hub …`.
#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Serve clinics over QUIC until Ctrl-C or SIGTERM: the insurers given and every insurer the ledger
    /// holds; each clinic reads only its own namespace and served insurers, writes only its own.
    Serve {
        /// Address to listen on (UDP).
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: std::net::SocketAddr,
        /// An insurer number to serve (repeatable).
        #[arg(long = "insurer")]
        insurers: Vec<String>,
        /// The insurers' signing keys (`INSURER=KEY` lines, as `gen --keys-out` writes):
        /// importing an insurer event signed by another key is refused.
        #[arg(long)]
        insurer_keys: Option<PathBuf>,
        /// Address of the insurer's HTTP API (reconciliation report, import, member access
        /// reports, health, metrics); off unless given. Beyond loopback it needs HTTPS
        /// (--api-cert, --api-key) and insurer accounts (hub account add).
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        #[command(flatten)]
        api_limits: ApiLimitArgs,
        #[command(flatten)]
        store: StoreArgs,
        /// With --store nats://…: refuse a stream with fewer replicas than this.
        #[arg(long, default_value_t = shikaku_net::jetstream::REPLICAS_MIN)]
        replicas_min: usize,
    },
    /// The scaled-out hub's shared log (a NATS JetStream stream, docs/DEPLOY.md).
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Insurer accounts of the hub's API (in <data-dir>/insurer-accounts.json); every use is
    /// recorded in <data-dir>/insurer-api.log.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Import an insurer roster or change stream (JSON Lines, `-` for standard input) into the
    /// hub's ledger, with a progress bar. Every id and signature is verified; lines refused are
    /// reported as `line N: reason` and nothing else is lost. Into --data-dir while the hub is
    /// stopped, or into a running hub with --hub (its clinics receive the events live).
    ///
    /// Trust: with --insurer-keys, an insurer's events must be signed by a key registered for
    /// that insurer. Without it, ANY valid signature is accepted for any insurer — whoever can
    /// run this command on the hub speaks for every insurer it serves (a warning says so).
    Import {
        /// The JSON Lines file.
        file: String,
        /// The insurers' signing keys (`INSURER=KEY` lines): events signed by another key are
        /// refused. (A running hub uses its own registry.)
        #[arg(long, conflicts_with = "hub")]
        insurer_keys: Option<PathBuf>,
        /// A running hub's insurer API (`http://HOST:PORT`, from `hub serve --api`); the hub
        /// must have been started with --insurer-keys.
        #[arg(long, conflicts_with = "store")]
        hub: Option<String>,
        /// The insurers' key store of sealed (schema-2) events (`gen --key-store-out`,
        /// `ledger upgrade`): members' data keys and wraps, merged into the hub's
        /// `keys.store`. Into --data-dir only.
        #[arg(long, conflicts_with = "hub")]
        key_store: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `shikaku hub stream …`.
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create the deployment's stream (SHIKAKU, subjects shikaku.ev.>, file storage, every
    /// event kept, 10-minute deduplication window) — or check that the one there is configured
    /// so. Refuses a NATS server older than 2.12.0, naming its version. Every server must run
    /// with `sync_interval: always` (docs/DEPLOY.md): the client cannot see that setting.
    Init {
        #[command(flatten)]
        store: StoreArgs,
        /// Replicas: 3, or 5 for a national deployment (1 only for a single test server).
        #[arg(long, default_value_t = shikaku_net::jetstream::REPLICAS_MIN)]
        replicas: usize,
    },
}

/// Where a hub's log lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// `embedded` (the ledger in --data-dir, the default), or the deployment's NATS JetStream
    /// cluster `nats://HOST:PORT[,…]` (`tls://…` for TLS): the hub is then one of several
    /// front-ends over the shared stream, its ledger a copy rebuilt from the stream.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// NATS credentials file (`.creds`: JWT and nkey seed).
    #[arg(long, conflicts_with = "nats_user")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password or SHIKAKU_NATS_PASSWORD).
    #[arg(long, requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user; ignored with the embedded store).
    #[arg(long, env = "SHIKAKU_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) of the NATS servers' TLS certificates; implies TLS.
    #[arg(long)]
    pub nats_ca: Option<PathBuf>,
}

impl StoreArgs {
    /// The NATS connection, or `None` for the embedded log.
    pub fn nats(&self) -> Result<Option<shikaku_net::jetstream::NatsOptions>> {
        if self.store == "embedded" {
            if self.nats_creds.is_some() || self.nats_user.is_some() || self.nats_ca.is_some() {
                bail!("--nats-creds, --nats-user and --nats-ca need --store nats://HOST:PORT");
            }
            return Ok(None);
        }
        if self.nats_password.is_some() && self.nats_user.is_none() && self.nats_creds.is_none() {
            bail!("a NATS password (--nats-password or SHIKAKU_NATS_PASSWORD) needs --nats-user");
        }
        let mut nats = shikaku_net::jetstream::NatsOptions::from_store(&self.store)?;
        nats.creds = self.nats_creds.clone();
        nats.user = self.nats_user.clone().zip(self.nats_password.clone());
        nats.ca = self.nats_ca.clone();
        Ok(Some(nats))
    }
}

/// `shikaku insurer …`.
#[derive(Debug, Subcommand)]
pub enum InsurerCommand {
    /// The insurer's signing key.
    #[command(subcommand)]
    Key(InsurerKeyCommand),
    /// Sign an erasure order for a member (a schema-2 `member_erased` event, EVENTS.md): every
    /// node that receives it destroys the member's data key and wraps, so no one can read the
    /// member's sealed record again — not even with the card and the birth date. The
    /// ciphertext stays and every ledger still verifies. Import the output with `hub import`.
    Erase {
        /// The key file from `insurer key init`.
        #[arg(long)]
        key: PathBuf,
        /// The member key (INSURER:SYMBOL:NUMBER:BRANCH).
        #[arg(long)]
        member: String,
        /// The member's birth date: also erases the member-key lookup, which then says
        /// "member data erased" to a check by key and birth date (without it such a check
        /// finds nothing; a check by card still says so).
        #[arg(long)]
        birth_date: Option<Date>,
        /// The Argon2id parameters the member was sealed with (as `gen --kdf`).
        #[arg(long, value_enum, default_value_t = KdfChoice::Reception)]
        kdf: KdfChoice,
        /// Why (free text, no personal data).
        #[arg(long)]
        reason: String,
        /// Write the signed order to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Turn two snapshots of the member-management export (the roster CSV, examples/roster.md)
    /// into the events that changed — enrolments, losses with their date and reason, copay,
    /// limit-category and demographic changes, card links — signed with the insurer's key for
    /// `hub import`. Idempotent: each member's change is recorded in KEY.published once
    /// signed, so running it again publishes nothing new. Lines that cannot be used are
    /// refused by file and line (exit status 1); the rest is published.
    Diff {
        /// The key file from `insurer key init`; every member must be of its insurer.
        #[arg(long)]
        key: PathBuf,
        /// The earlier export. Without it every member of --current is new.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// The new export.
        #[arg(long)]
        current: PathBuf,
        /// The effective date of the changes the export does not date (demographics, copay,
        /// limit category). Default: today (JST).
        #[arg(long)]
        as_of: Option<Date>,
        /// The exports' character encoding.
        #[arg(long, value_enum, default_value = "utf-8")]
        encoding: CsvEncoding,
        /// Print what would be published, as a table; sign and record nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the signed events to this file (0600, atomically) instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Sign unsigned JSON Lines events (protocol/EVENTS-JSONL.md, "Unsigned events") with the
    /// insurer's key: each gets the next origin_seq (kept in KEY.state), a hybrid-clock stamp,
    /// its id and signature. Every line is checked before anything is written; the output
    /// imports with `hub import` into a hub that registered the key.
    Sign {
        /// The key file from `insurer key init`.
        #[arg(long)]
        key: PathBuf,
        /// The unsigned events (`-` for standard input).
        input: String,
        /// Write the signed events to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

/// The character encoding of a roster CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvEncoding {
    /// UTF-8 (a byte-order mark is skipped).
    #[value(name = "utf-8")]
    Utf8,
    /// Shift_JIS (read as Windows-31J).
    #[value(name = "shift_jis")]
    ShiftJis,
}

/// `shikaku insurer key …`.
#[derive(Debug, Subcommand)]
pub enum InsurerKeyCommand {
    /// Create a signing key for an insurer: the secret in FILE (mode 0600, never printed,
    /// never overwritten) and the public key in FILE.pub as an INSURER=KEY line to register
    /// with hubs and clinics (--insurer-keys).
    Init {
        /// The insurer number (6 or 8 digits, with its check digit).
        #[arg(long)]
        insurer: String,
        /// The key file to create.
        #[arg(long, default_value = "insurer.key")]
        key: PathBuf,
    },
}

/// Limits and names of an HTTP API (`--api`).
#[derive(Debug, Clone, Args)]
pub struct ApiLimitArgs {
    /// Another name clients may use for the API in the Host header (besides its address and,
    /// on loopback, localhost); repeatable. Any other Host is refused (DNS rebinding).
    #[arg(long = "api-name")]
    pub api_names: Vec<String>,
    /// Seconds a client has to send a request's header (also how long an idle kept-alive
    /// connection stays open).
    #[arg(long, default_value_t = 10)]
    pub api_header_timeout_s: u64,
    /// HTTP connections open at once; more are closed as they arrive (and logged).
    #[arg(long, default_value_t = 256)]
    pub api_connections_max: usize,
    /// Serve the API over HTTPS with this PEM certificate chain (from `shikaku ca issue-api`
    /// or the clinic's own); required beyond loopback.
    #[arg(long, requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The PEM (PKCS#8) key of --api-cert.
    #[arg(long, requires = "api_cert")]
    pub api_key: Option<PathBuf>,
}

impl ApiLimitArgs {
    /// The serving options these flags ask for (the TLS files read and checked).
    pub fn options(&self) -> Result<shikaku_api::serve::ApiOptions> {
        let tls = match (&self.api_cert, &self.api_key) {
            (Some(cert), Some(key)) => Some(shikaku_net::tls::https_server_config(cert, key)?),
            _ => None,
        };
        Ok(shikaku_api::serve::ApiOptions {
            limits: shikaku_api::serve::HttpLimits {
                header_timeout: std::time::Duration::from_secs(self.api_header_timeout_s.max(1)),
                connections_max: self.api_connections_max.max(1),
            },
            host_names: self.api_names.clone(),
            tls,
        })
    }
}

/// Output formats of `shikaku reconcile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Terminal tables.
    Table,
    /// JSON (every field).
    Json,
    /// A self-contained HTML page.
    Html,
}

impl ReportFormat {
    /// The name the APIs take in `format=`.
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Table => "table",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

/// `shikaku clinic staff …`.
#[derive(Debug, Subcommand)]
pub enum StaffCommand {
    /// Add a staff account; prints its first password once (or reads one from standard
    /// input with --password-stdin). Takes effect at once, also in a running clinic.
    Add {
        /// Login name: 1-32 characters of a-z, 0-9, '.', '_' and '-'.
        #[arg(long)]
        name: String,
        /// reception (check, declare, consent) or admin (staff, health, metrics, audit);
        /// repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Read the password (at least 12 characters) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it cannot log in, and its open sessions end at their next request.
    Disable {
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Set a new password (printed once, or --password-stdin) and enable the account again;
    /// its open sessions end.
    Reset {
        /// Login name.
        #[arg(long)]
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts: name, pseudonymous id (what the clinic's records carry), roles,
    /// state.
    List,
}

/// `shikaku clinic …`.
#[derive(Debug, Subcommand)]
pub enum ClinicCommand {
    /// Staff accounts of the clinic's check API (in <data-dir>/staff.json).
    #[command(subcommand)]
    Staff(StaffCommand),
    /// Sync with the hub in the background (reconnecting with backoff) and answer checks from
    /// the local ledger on the check API until Ctrl-C or SIGTERM.
    Serve {
        /// The hub's address — or several, comma-separated: front-ends of one deployment,
        /// tried in turn (failing over with jittered backoff).
        #[arg(long, default_value = "127.0.0.1:7400", value_delimiter = ',')]
        hub: Vec<std::net::SocketAddr>,
        /// An insurer number to replicate (repeatable; at least one).
        #[arg(long = "insurer")]
        insurers: Vec<String>,
        /// Address of the local check API. On loopback with no staff accounts it runs in the
        /// no-login mode of a single-PC clinic; with staff accounts everyone logs in. Beyond
        /// loopback it needs HTTPS (--api-cert, --api-key) and staff accounts.
        #[arg(long, default_value = "127.0.0.1:7401")]
        api: std::net::SocketAddr,
        /// Minutes without a request after which a staff session ends.
        #[arg(long, default_value_t = 15)]
        session_idle_min: u64,
        /// Seconds instead of minutes (tests).
        #[arg(long, hide = true)]
        session_idle_s: Option<u64>,
        #[command(flatten)]
        api_limits: ApiLimitArgs,
        /// A member of an insurer not subscribed to, whose events to fetch anyway (an
        /// appointment; repeatable).
        #[arg(long = "prefetch")]
        prefetch: Vec<String>,
        /// The insurers' signing keys (`INSURER=KEY` lines): an insurer event from the hub
        /// signed by another key is refused, logged and counted.
        #[arg(long)]
        insurer_keys: Option<PathBuf>,
        #[command(flatten)]
        ovs: Box<OvsArgs>,
    },
}

/// The folder interface of `clinic serve`.
#[derive(Debug, clap::Args)]
pub struct OvsArgs {
    /// Also answer the real verification terminal's folder interface, as receipt computers
    /// speak it: request XML files dropped into DIR/req are answered into DIR/res; a request
    /// that cannot be answered gets an error answer and is moved to DIR/err (protocol/OVS.md).
    /// The three folders are created if missing.
    #[arg(long, value_name = "DIR")]
    ovs_dir: Option<PathBuf>,
    /// The language of the folder interface's messages.
    #[arg(long, value_enum, default_value = "ja", requires = "ovs_dir")]
    ovs_lang: OvsLang,
    /// Watch DIR/req by polling every this many milliseconds instead of inotify (for network
    /// folders, where inotify sees no change made by another machine). Without it, inotify
    /// is used, and polling at 500 ms only where inotify is unavailable.
    #[arg(long, value_name = "MS", requires = "ovs_dir")]
    ovs_poll_ms: Option<u64>,
}

/// A message language.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OvsLang {
    /// Japanese.
    Ja,
    /// English.
    En,
}

impl OvsArgs {
    fn options(&self, data_dir: &Path) -> Result<Option<shikaku_api::ovs::OvsOptions>> {
        let Some(dir) = &self.ovs_dir else { return Ok(None) };
        let mut options = shikaku_api::ovs::OvsOptions::new(dir, data_dir);
        options.lang = match self.ovs_lang {
            OvsLang::Ja => shikaku_api::ovs::Lang::Ja,
            OvsLang::En => shikaku_api::ovs::Lang::En,
        };
        if let Some(ms) = self.ovs_poll_ms {
            if !(10..=60_000).contains(&ms) {
                bail!("--ovs-poll-ms must be between 10 and 60000, got {ms}");
            }
            options.poll = std::time::Duration::from_millis(ms);
            options.force_poll = true;
        }
        Ok(Some(options))
    }
}

pub(crate) fn parse_insurers(list: &[String]) -> Result<Vec<shikaku_core::InsurerNumber>> {
    list.iter()
        .map(|s| s.parse::<shikaku_core::InsurerNumber>().with_context(|| format!("--insurer {s}")))
        .collect()
}

/// Arguments of `shikaku gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Persons on the initial roster (dependants included).
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Seed: the same seed gives the same stream, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction (0..1) of lines replaced by malformed records, for import testing.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Also write the insurers' public keys to this file (`INSURER=KEY` lines), for
    /// `hub serve` / `clinic serve --insurer-keys`.
    #[arg(long)]
    pub keys_out: Option<PathBuf>,
    /// Seal the member data (event schema 2, protocol/EVENTS.md): names, kana, addresses,
    /// birth dates and member keys only as ciphertext; members named by reference, cards by
    /// tag. Needs --key-store-out.
    #[arg(long, requires = "key_store_out")]
    pub sealed: bool,
    /// With --sealed: write the insurers' key store (every member's data key and its wraps;
    /// mode 0600) here, for `hub import --key-store`. Whoever holds it can read every member.
    #[arg(long, requires = "sealed")]
    pub key_store_out: Option<PathBuf>,
    /// With --sealed: Argon2id parameters of the member-key tag — `reception` (32 MiB, 2
    /// passes: the production setting, see `bench privacy`) or `light` (256 KiB, 1 pass: for
    /// tests and the demo only; a stolen ledger's member-key tags are then cheap to guess).
    #[arg(long, value_enum, default_value_t = KdfChoice::Reception)]
    pub kdf: KdfChoice,
    /// Write each generated insurer's secret signing key here (`<insurer>.key`, mode 0600,
    /// the `insurer key` format) so the synthetic insurers can sign and erase. Synthetic
    /// worlds only: these keys follow from the seed.
    #[arg(long)]
    pub insurer_key_dir: Option<PathBuf>,
}

/// Argon2id parameter sets of the member-key tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KdfChoice {
    /// 32 MiB, 2 passes, 1 lane (production).
    Reception,
    /// 256 KiB, 1 pass (tests and the demo only).
    Light,
}

impl KdfChoice {
    /// The parameters.
    pub fn params(self) -> shikaku_core::seal::KdfParams {
        match self {
            KdfChoice::Reception => shikaku_core::seal::KdfParams::RECEPTION,
            KdfChoice::Light => shikaku_core::seal::KdfParams::LIGHT,
        }
    }
}

/// `shikaku ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Import JSON Lines events (from FILE, or `-` for standard input). Bad lines are reported
    /// with their line number and reason; every good line is kept durably (group commits of up
    /// to 4,096 events, one fsync each). Exit status 1 when any line was rejected.
    Import {
        /// File to read, or `-` for standard input.
        file: String,
        /// Print `durable N` (N = good lines durable so far, in input order) after each durable
        /// batch, flushed — for harnesses that check nothing acknowledged is ever lost.
        #[arg(long)]
        acks: bool,
    },
    /// Verify every record (checksums, hash chain, ids, signatures). Exit 0 when intact;
    /// otherwise 1, naming the first bad place.
    Verify {
        /// Rebuild a clean ledger from every readable event (the damaged original is kept
        /// beside it as log.damaged-N); missing events must then be re-fetched from the hub.
        #[arg(long)]
        repair: bool,
    },
    /// Segment, event and stream counts, sizes, time range and damage.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The projection digest and each namespace's event count and fingerprint (what a complete
    /// receipt carries), to compare two nodes' holdings by hand.
    Digest {
        /// Only this namespace: `insurer:NUMBER` or `clinic:NODE-ID` (the projection digest is
        /// then of that namespace's events alone).
        #[arg(long)]
        namespace: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export every event as JSON Lines, in (hlc, id) order.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Convert a hub's ledger (stopped) to event schema 2 in place: member data sealed under
    /// per-member data keys (protocol/EVENTS.md, PRIVACY.md), insurer events re-signed with
    /// the insurers' keys, the data keys in the hub's key store. Clinic records stay in
    /// schema 1. The old ledger is kept as log.schema1 (plaintext: delete it once the hub
    /// serves). A clinic's ledger is not upgraded: remove it and let the clinic sync again.
    Upgrade {
        /// An insurer key file (`insurer key init`), or a directory of `*.key` files; one per
        /// insurer in the ledger. Repeatable.
        #[arg(long = "insurer-key", required = true)]
        insurer_keys: Vec<PathBuf>,
        /// Argon2id parameters of the member-key tag.
        #[arg(long, value_enum, default_value_t = KdfChoice::Reception)]
        kdf: KdfChoice,
    },
}

/// Arguments of `shikaku check`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["card", "member"]))]
pub struct CheckArgs {
    /// Card token: 64 hexadecimal characters (never a My Number).
    #[arg(long)]
    pub card: Option<String>,
    /// Member key: INSURER:SYMBOL:NUMBER:BRANCH, e.g. 06130017:1234:0000012:00.
    #[arg(long)]
    pub member: Option<String>,
    /// Service date (YYYY-MM-DD); default today in Japan.
    #[arg(long)]
    pub date: Option<String>,
    /// Answer as known at this record time: YYYY-MM-DD (end of that day, JST) or an RFC 3339
    /// time (2026-01-05T10:30:00+09:00).
    /// Default: everything the ledger holds.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Print the answer as JSON; an error is then JSON too (`{"error": "…"}` on standard
    /// output, exit status 2).
    #[arg(long)]
    pub json: bool,
    /// Ask a running clinic node (its check API, e.g. http://127.0.0.1:7401) instead of
    /// reading the ledger: the answer then carries the node's freshness and is recorded.
    #[arg(long)]
    pub node: Option<String>,
}

/// Arguments of `shikaku consent`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["card", "member"]))]
pub struct ConsentArgs {
    /// Card token: 64 hexadecimal characters.
    #[arg(long)]
    pub card: Option<String>,
    /// Member key: INSURER:SYMBOL:NUMBER:BRANCH, e.g. 06130017:1234:0000012:00.
    #[arg(long)]
    pub member: Option<String>,
    /// Record a withdrawal of the consent instead.
    #[arg(long)]
    pub withdraw: bool,
    /// The clinic node's check API (e.g. http://127.0.0.1:7401); the consent is recorded in
    /// the clinic's own namespace and pushed to the hub.
    #[arg(long)]
    pub node: String,
}

/// Installs the service log: lines on standard error, each with its RFC 3339 time (UTC) and
/// level, at the level `SHIKAKU_LOG` names (`warn`, `info` (default), `debug`). Call once,
/// from a binary's `main`.
pub fn init_logging() {
    let mut level = match shikaku_net::runtime::log_level_from_env() {
        shikaku_node::Level::Warn => tracing::Level::WARN,
        shikaku_node::Level::Info => tracing::Level::INFO,
        shikaku_node::Level::Debug => tracing::Level::DEBUG,
    };
    // The demo's screen is its story: without SHIKAKU_LOG its services log warnings only
    // (as its nodes do), not every staff login.
    if std::env::var_os("SHIKAKU_LOG").is_none() && subcommand_is_demo(std::env::args()) {
        level = tracing::Level::WARN;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}

/// Whether the command line's subcommand is `demo` (after the global `--data-dir VALUE`).
fn subcommand_is_demo(args: impl Iterator<Item = String>) -> bool {
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => {
                args.next();
            }
            a if a.starts_with("--data-dir=") => {}
            a => return a == "demo",
        }
    }
    false
}

/// Runs the command line with `args` (including the program name), writing to `out` and
/// `err`. Returns the process exit status.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let _ = if e.use_stderr() {
                err.write_all(text.as_bytes())
            } else {
                out.write_all(text.as_bytes())
            };
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let json_errors = matches!(
        &cli.command,
        Command::Check(CheckArgs { json: true, .. })
            | Command::Ledger(LedgerCommand::Stats { json: true })
            | Command::Ledger(LedgerCommand::Digest { json: true, .. })
    );
    match dispatch(cli, out, err) {
        Ok(code) => code,
        // The reader went away (`shikaku … | head`): nothing is wrong, and nobody is left to
        // tell.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) if json_errors => {
            // A program asked for JSON: it gets its error as JSON on the same stream.
            let body = serde_json::json!({ "error": format!("{e:#}") });
            let _ = writeln!(out, "{body}");
            2
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            2
        }
    }
}

/// Whether writing the output failed because its reader closed the pipe (EPIPE).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32> {
    match cli.command {
        Command::Demo(args) => demo::run(&args, out),
        Command::Gen(args) => gen(&args, out).map(|()| 0),
        Command::Ledger(LedgerCommand::Import { file, acks }) => {
            let summary = if acks {
                let mut report = |durable: u64| {
                    let _ = writeln!(out, "durable {durable}");
                    let _ = out.flush();
                };
                import_with_acks(&cli.data_dir, &file, err, &mut report)?
            } else {
                import(&cli.data_dir, &file, err)?
            };
            writeln!(out, "{summary}")?;
            Ok(if summary.rejected > 0 { 1 } else { 0 })
        }
        Command::Ledger(LedgerCommand::Verify { repair }) => {
            ledger::verify(&cli.data_dir, repair, out)
        }
        Command::Ledger(LedgerCommand::Stats { json }) => {
            ledger::stats(&cli.data_dir, json, out).map(|()| 0)
        }
        Command::Ledger(LedgerCommand::Digest { namespace, json }) => {
            ledger::digest(&cli.data_dir, namespace.as_deref(), json, out).map(|()| 0)
        }
        Command::Ledger(LedgerCommand::Upgrade { insurer_keys, kdf }) => {
            ledger::upgrade(&cli.data_dir, &insurer_keys, kdf.params(), out)
        }
        Command::Ledger(LedgerCommand::Export { out: path }) => {
            export(&cli.data_dir, path.as_deref(), out, err)
        }
        Command::Check(args) => match &args.node {
            Some(url) => serve::check_remote(url, &args, out).map(|()| 0),
            None => check(&cli.data_dir, &args, out, err),
        },
        Command::Consent(args) => serve::consent_remote(&args, out).map(|()| 0),
        Command::Insurer(InsurerCommand::Key(InsurerKeyCommand::Init { insurer, key })) => {
            let insurer = insurer.parse::<shikaku_core::InsurerNumber>().context("--insurer")?;
            let line = insurer::key_init(insurer, &key)?;
            writeln!(
                out,
                "created the signing key of insurer {insurer} in {} (mode 0600; keep it secret)",
                key.display()
            )?;
            write!(
                out,
                "public key (in {}.pub; register it with --insurer-keys): {line}",
                key.display()
            )?;
            Ok(0)
        }
        Command::Insurer(InsurerCommand::Erase {
            key,
            member,
            birth_date,
            kdf,
            reason,
            out: path,
        }) => {
            let member: shikaku_core::MemberKey =
                member.parse().map_err(|e| anyhow::anyhow!("--member: {e}"))?;
            let mut sink = output(path.as_deref(), out)?;
            let birth = birth_date.map(|d| (d, kdf.params()));
            insurer::erase(&key, &member, birth, &reason, clock::now_ms(), &mut sink)?;
            drop(sink);
            writeln!(err, "signed an erasure order for a member of insurer {}", member.insurer)?;
            Ok(0)
        }
        Command::Insurer(InsurerCommand::Diff {
            key,
            previous,
            current,
            as_of,
            encoding,
            dry_run,
            out: path,
        }) => {
            let as_of = as_of.unwrap_or_else(|| Date::from_unix_ms_jst(clock::now_ms()));
            let files =
                insurer::DiffFiles { previous: previous.as_deref(), current: &current, encoding };
            insurer::diff(&key, files, as_of, dry_run, path.as_deref(), clock::now_ms(), out, err)
        }
        Command::Insurer(InsurerCommand::Sign { key, input, out: path }) => {
            let (reader, _) = open_input(&input)?;
            let mut sink = output(path.as_deref(), out)?;
            let summary = insurer::sign(&key, BufReader::new(reader), clock::now_ms(), &mut sink)?;
            drop(sink);
            match summary.origin_seqs {
                Some((first, last)) => {
                    writeln!(err, "signed {} events (origin_seq {first}–{last})", summary.signed)?
                }
                None => writeln!(err, "no events to sign")?,
            }
            Ok(0)
        }
        Command::Ca(CaCommand::Init { ca_dir }) => {
            let cert = shikaku_net::tls::ca_init(&ca_dir)?;
            writeln!(out, "created a CA in {} ({})", ca_dir.display(), cert.display())?;
            Ok(0)
        }
        Command::Ca(CaCommand::IssueApi { ca_dir, hosts, out: dir }) => {
            shikaku_net::tls::ca_issue_api(&ca_dir, &hosts, &dir)?;
            writeln!(
                out,
                "issued an HTTPS certificate for {} into {}: serve with --api-cert {} --api-key {}; browsers must trust {}",
                hosts.join(", "),
                dir.display(),
                dir.join(shikaku_net::tls::API_CERT_FILE).display(),
                dir.join(shikaku_net::tls::API_KEY_FILE).display(),
                dir.join(shikaku_net::tls::CA_CERT_FILE).display()
            )?;
            Ok(0)
        }
        Command::Ca(CaCommand::Issue { ca_dir, role, name }) => {
            let role =
                if role == "hub" { shikaku_node::Role::Hub } else { shikaku_node::Role::Clinic };
            serve::ca_issue(&ca_dir, &cli.data_dir, role, &name, out).map(|()| 0)
        }
        Command::Hub(HubCommand::Serve {
            listen,
            insurers,
            insurer_keys,
            api,
            api_limits,
            store,
            replicas_min,
        }) => {
            let options = api_limits.options()?;
            if let Some(api) = api {
                serve::check_api_address("insurer API", api, options.tls.is_some())?;
            }
            let store = match store.nats()? {
                Some(nats) => serve::HubStore::Stream(nats, replicas_min),
                None => serve::HubStore::Embedded,
            };
            let keys = insurer_keys.as_deref().map(read_insurer_keys).transpose()?;
            let insurers = parse_insurers(&insurers)?;
            serve::hub_serve(
                &cli.data_dir,
                listen,
                &insurers,
                keys.unwrap_or_default(),
                api,
                &options,
                store,
                out,
            )
            .map(|()| 0)
        }
        Command::Hub(HubCommand::Stream(StreamCommand::Init { store, replicas })) => {
            let Some(nats) = store.nats()? else {
                bail!("hub stream init needs the NATS cluster: --store nats://HOST:PORT[,…]");
            };
            serve::hub_stream_init(&nats, replicas, out).map(|()| 0)
        }
        Command::Hub(HubCommand::Import { file, insurer_keys, hub, key_store, store }) => {
            use std::io::IsTerminal as _;
            let keys = insurer_keys.as_deref().map(read_insurer_keys).transpose()?;
            if keys.is_none() && hub.is_none() {
                writeln!(
                    err,
                    "warning: no --insurer-keys: insurer events are accepted under any valid signature (see hub import --help)"
                )?;
            }
            let terminal = std::io::stderr().is_terminal();
            let nats = store.nats()?;
            let summary = match (hub, nats) {
                (Some(url), _) => serve::hub_import_remote(&url, &file, err, terminal)?,
                (None, Some(nats)) => {
                    serve::hub_import_stream(&nats, &file, keys.unwrap_or_default(), err, terminal)?
                }
                (None, None) => serve::hub_import(
                    &cli.data_dir,
                    &file,
                    keys.unwrap_or_default(),
                    key_store.as_deref(),
                    err,
                    terminal,
                )?,
            };
            writeln!(out, "{summary}")?;
            Ok(if summary.rejected > 0 { 1 } else { 0 })
        }
        Command::Reconcile { format, out: path, hub } => {
            let name = format.name();
            let text = match hub {
                Some(url) => {
                    shikaku_api::client::http_get(&url, &format!("/v1/reconcile?format={name}"))?
                }
                None => {
                    let store = Store::open_existing(&cli.data_dir)?;
                    let events = store.log().read_from(1, usize::MAX)?;
                    // Derived data: a damaged names file costs the names, not the report.
                    let names = serve::load_clinic_names(&cli.data_dir).unwrap_or_else(|e| {
                        let _ = writeln!(err, "warning: {e:#}; clinics are shown by node id");
                        Default::default()
                    });
                    // Sealed records re-derive with what the hub's data keys open.
                    let keys_path = cli.data_dir.join("log").join(shikaku_node::KEYS_FILE);
                    let keys = match std::fs::read(&keys_path) {
                        Err(_) => shikaku_core::keystore::KeyStore::default(),
                        Ok(bytes) => shikaku_core::keystore::KeyStore::decode_file(&bytes)
                            .unwrap_or_else(|e| {
                                let _ = writeln!(err, "warning: {}: {e}; sealed checks re-derive without the hidden fields (birth dates, insured persons)", keys_path.display());
                                Default::default()
                            }),
                    };
                    let (report, _) = shikaku_api::hub::report_and_names(
                        &events,
                        &names,
                        &keys,
                        clock::now_ms(),
                        None,
                    );
                    shikaku_reconcile::render(&report, name)?
                }
            };
            let mut sink = output(path.as_deref(), out)?;
            sink.write_all(text.as_bytes())?;
            sink.flush()?;
            Ok(0)
        }
        Command::Clinic(ClinicCommand::Serve {
            hub,
            insurers,
            api,
            prefetch,
            insurer_keys,
            api_limits,
            session_idle_min,
            session_idle_s,
            ovs,
        }) => {
            let ovs = ovs.options(&cli.data_dir)?;
            let options = api_limits.options()?;
            serve::check_api_address("clinic check API", api, options.tls.is_some())?;
            let keys = insurer_keys.as_deref().map(read_insurer_keys).transpose()?;
            let prefetch = prefetch
                .iter()
                .map(|k| k.parse::<MemberKey>().with_context(|| format!("--prefetch {k}")))
                .collect::<Result<Vec<_>>>()?;
            let insurers = parse_insurers(&insurers)?;
            let keys = keys.unwrap_or_default();
            let replicated = serve::Replicated { insurers, prefetch, insurer_keys: keys };
            let idle_ms = session_idle_s
                .map_or(session_idle_min.saturating_mul(60_000), |s| s.saturating_mul(1000));
            let api = serve::ClinicApi { addr: api, options, session_idle_ms: idle_ms };
            serve::clinic_serve(&cli.data_dir, &hub, replicated, &api, ovs, out).map(|()| 0)
        }
        Command::Hub(HubCommand::Account(command)) => {
            serve::account_command(&cli.data_dir, &command, out).map(|()| 0)
        }
        Command::Member(MemberCommand::Accesses {
            member,
            from,
            to,
            format,
            out: path,
            hub,
            token_file,
        }) => {
            let key: MemberKey = member.parse().with_context(|| format!("--member {member}"))?;
            let name = format.name();
            let text = match hub {
                Some(url) => {
                    let token = token_file
                        .as_deref()
                        .map(|f| {
                            std::fs::read_to_string(f)
                                .with_context(|| format!("reading {}", f.display()))
                                .map(|t| t.trim().to_owned())
                        })
                        .transpose()?;
                    let mut query = format!("format={name}");
                    if let Some(f) = from {
                        query.push_str(&format!("&from={f}"));
                    }
                    if let Some(t) = to {
                        query.push_str(&format!("&to={t}"));
                    }
                    let path = format!(
                        "/v1/members/{}/accesses?{query}",
                        form_urlencoded::byte_serialize(key.to_string().as_bytes())
                            .collect::<String>()
                    );
                    shikaku_api::client::http_get_with_token(&url, &path, token.as_deref())?
                }
                None => serve::member_accesses_offline(&cli.data_dir, &key, from, to, name, err)?,
            };
            let mut sink = output(path.as_deref(), out)?;
            sink.write_all(text.as_bytes())?;
            sink.flush()?;
            Ok(0)
        }
        Command::Clinic(ClinicCommand::Staff(command)) => {
            serve::staff_command(&cli.data_dir, &command, out).map(|()| 0)
        }
        #[cfg(feature = "bench")]
        Command::Bench(command) => shikaku_bench::run(&command, out).map(|()| 0),
        Command::Sim(command) => sim::run_command(&command, out),
    }
}

/// Writes the generated stream as JSON Lines, replacing a fraction of lines by malformed ones.
pub fn gen(args: &GenArgs, out: &mut dyn Write) -> Result<()> {
    if !(0.0..1.0).contains(&args.malformed) {
        bail!("--malformed must be a fraction in [0, 1), got {}", args.malformed);
    }
    let generated = shikaku_gen::generate(&shikaku_gen::GenConfig::new(args.members, args.seed))?;
    let sealed = match (&args.key_store_out, args.sealed) {
        (Some(path), true) => {
            let (events, store) =
                shikaku_gen::seal_generated(&generated, args.seed, args.kdf.params())?;
            shikaku_log::fs::install_atomic(path, &store.encode_file(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(events)
        }
        _ => None,
    };
    let events = sealed.as_ref().unwrap_or(&generated.events);
    let mut sink = output(args.out.as_deref(), out)?;
    let mut rng = shikaku_gen::Rng::new(args.seed ^ 0x6d61_6c66_6f72_6d65);
    for event in events {
        let line = jsonl::encode(event);
        if args.malformed > 0.0 && rng.chance(args.malformed) {
            writeln!(sink, "{}", malform(&line, &mut rng))?;
        } else {
            writeln!(sink, "{line}")?;
        }
    }
    sink.flush()?;
    if let Some(dir) = &args.insurer_key_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (insurer, _) in &generated.insurers {
            let secret = shikaku_gen::insurer_secret(args.seed, *insurer);
            insurer::write_key_file(*insurer, secret, &dir.join(format!("{insurer}.key")))?;
        }
    }
    if let Some(path) = &args.keys_out {
        let lines: String = generated
            .insurers
            .iter()
            .map(|(insurer, key)| format!("{insurer}={}\n", shikaku_core::hex::encode(&key.0)))
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads an insurer key file: one `INSURER=PUBLIC KEY (64 hex digits)` per line (`#` comments).
pub fn read_insurer_keys(path: &Path) -> Result<serve::InsurerKeys> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut keys = serve::InsurerKeys::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (insurer, key) = line
            .split_once('=')
            .with_context(|| format!("{} line {}: expected INSURER=KEY", path.display(), n + 1))?;
        let insurer = insurer
            .trim()
            .parse::<shikaku_core::InsurerNumber>()
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        let key = shikaku_core::hex::decode_array::<32>(key.trim()).with_context(|| {
            format!("{} line {}: the key must be 64 hexadecimal digits", path.display(), n + 1)
        })?;
        keys.entry(insurer).or_default().insert(shikaku_core::AuthorKey(key));
    }
    Ok(keys)
}

/// A buffered writer to `path` (created) or, without one, to `out`.
fn output<'a>(path: Option<&Path>, out: &'a mut dyn Write) -> Result<Box<dyn Write + 'a>> {
    Ok(match path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(out)),
    })
}

/// Damages a good line in one of the ways real imports go wrong.
fn malform(line: &str, rng: &mut shikaku_gen::Rng) -> String {
    match rng.below(6) {
        // Truncated in transfer.
        0 => line[..line.len() / 2].to_owned(),
        // A record from a newer schema.
        1 => line.replacen("{\"v\":1,", "{\"v\":9,", 1),
        // A signature that does not verify.
        2 => {
            let at = line.find("\"sig\":\"").map(|i| i + 7).unwrap_or(0);
            let mut bytes = line.as_bytes().to_vec();
            if let Some(byte) = bytes.get_mut(at) {
                *byte = if *byte == b'0' { b'1' } else { b'0' };
            }
            String::from_utf8(bytes).unwrap_or_default()
        }
        // Content edited after signing (the id no longer matches).
        3 => line.replacen("\"copay_tenths\":3", "\"copay_tenths\":2", 1).replacen(
            "\"origin_seq\":",
            "\"origin_seq\":1",
            1,
        ),
        // A member key with a wrong check digit: change the insurer number's last digit.
        4 => match line.find("\"member\":\"") {
            Some(at) => {
                let digit_at = at + 10 + line[at + 10..].find(':').unwrap_or(1) - 1;
                let mut bytes = line.as_bytes().to_vec();
                if let Some(byte) = bytes.get_mut(digit_at) {
                    *byte = if *byte == b'9' { b'0' } else { *byte + 1 };
                }
                String::from_utf8(bytes).unwrap_or_default()
            }
            None => "{not json".to_owned(),
        },
        // Not JSON at all.
        _ => "this is not an event".to_owned(),
    }
}

/// Imports a JSON Lines file (or `-` for standard input) into the ledger in `data_dir`.
/// Rejected lines are reported on `err` as `line N: reason`.
pub fn import(data_dir: &Path, file: &str, err: &mut dyn Write) -> Result<ImportSummary> {
    import_with_acks(data_dir, file, err, &mut |_| {})
}

/// [`import`], calling `ack` with the running count of durable good lines after each batch.
pub fn import_with_acks(
    data_dir: &Path,
    file: &str,
    err: &mut dyn Write,
    ack: &mut dyn FnMut(u64),
) -> Result<ImportSummary> {
    let (reader, _) = open_input(file)?;
    import_from(data_dir, BufReader::new(reader), err, ack)
}

/// Opens a JSON Lines input: a file (with its size, for progress) or `-` for standard input.
/// Anything that is not a readable file (a directory, above all: reading one fails with
/// EISDIR forever) is refused here, naming the path, before a data directory is touched.
pub fn open_input(file: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if file == "-" {
        // Standard input redirected from a directory (`< DIR`) is refused the same way.
        if std::fs::metadata("/dev/stdin").is_ok_and(|m| m.is_dir()) {
            bail!("cannot import standard input: it is a directory");
        }
        return Ok((Box::new(std::io::stdin()), None));
    }
    let meta = std::fs::metadata(file).with_context(|| format!("cannot import {file}"))?;
    if meta.is_dir() {
        bail!("cannot import {file}: it is a directory, not a JSON Lines file");
    }
    let f = std::fs::File::open(file).with_context(|| format!("cannot import {file}"))?;
    let size = meta.is_file().then_some(meta.len());
    Ok((Box::new(f), size))
}

/// Removes a data directory this command created itself when the command failed before
/// storing anything, so a refused import leaves no empty ledger behind.
pub fn remove_if_created_empty(data_dir: &Path, existed_before: bool, stored_nothing: bool) {
    if !existed_before && stored_nothing {
        let _ = std::fs::remove_dir_all(data_dir);
    }
}

/// Imports from any reader (see [`import`]).
pub fn import_from(
    data_dir: &Path,
    reader: impl BufRead,
    err: &mut dyn Write,
    ack: &mut dyn FnMut(u64),
) -> Result<ImportSummary> {
    let existed_before = data_dir.exists();
    let mut store = Store::open(data_dir)?;
    let summary = import_stream(
        reader,
        &mut |refused| Ok(writeln!(err, "{refused}")?),
        &mut |events| vec![None; events.len()],
        &mut |good| Ok(store.append(good)?.new as u64),
        &mut |summary, _| ack(summary.imported + summary.duplicates),
    );
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            let stored_nothing = store.is_empty();
            drop(store);
            remove_if_created_empty(data_dir, existed_before, stored_nothing);
            return Err(e);
        }
    };
    // The checkpoint and snapshot are derived: failing to write them (a full disk) loses
    // nothing stored, so it is a warning, not a failed import.
    if let Err(e) = store.checkpoint_if_due() {
        writeln!(err, "warning: every event is stored, but the index checkpoint or projection snapshot could not be written ({e:#}); the next open scans the log instead")?;
    }
    Ok(summary)
}

/// Exports the ledger as JSON Lines in (hlc, id) order: every event that verifies. What it
/// withholds (damage) is named on `err`, and the exit status is then 1.
pub fn export(
    data_dir: &Path,
    path: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let store = Store::open_existing(data_dir)?;
    let (mut events, withheld) = store.verified_events()?;
    events.sort_by_key(|e| e.order_key());
    let mut sink = output(path, out)?;
    for event in &events {
        writeln!(sink, "{}", jsonl::encode(event))?;
    }
    sink.flush()?;
    drop(sink);
    for damage in &withheld {
        writeln!(err, "withheld (damaged): {damage}")?;
    }
    if !withheld.is_empty() {
        writeln!(
            err,
            "exported {} events; the damaged part was withheld: `shikaku ledger verify` names it, a hub re-sends it",
            events.len()
        )?;
        return Ok(1);
    }
    Ok(0)
}

/// Parses `--as-of`: a date (end of that day in Japan) or an RFC 3339 time
/// (`2026-01-05T10:30:00+09:00`, `…Z`). A bare number is refused: Unix seconds and
/// milliseconds cannot be told apart, and a wrong guess answers as of another decade.
pub fn parse_as_of(text: &str) -> Result<Hlc> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        bail!(
            "--as-of {text}: a bare number is not a date; give YYYY-MM-DD or an RFC 3339 time such as 2026-01-05T10:30:00+09:00"
        );
    }
    if text.len() > 10 {
        let ms = parse_rfc3339_ms(text).with_context(|| {
            format!("--as-of {text}: expected an RFC 3339 time such as 2026-01-05T10:30:00+09:00")
        })?;
        return Ok(Hlc::end_of_ms(ms));
    }
    let date: Date = text
        .parse()
        .with_context(|| format!("--as-of {text}: expected YYYY-MM-DD or an RFC 3339 time"))?;
    Ok(Hlc::end_of_ms(date.add_days(1).start_unix_ms_jst().saturating_sub(1)))
}

/// Parses an RFC 3339 time (`YYYY-MM-DDThh:mm:ss[.fraction](Z|±hh:mm)`) to Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        bail!("not an RFC 3339 time");
    }
    let date: Date = text[..10].parse()?;
    let field = |at: usize, max: u64| -> Result<u64> {
        let value: u64 = text
            .get(at..at + 2)
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .context("not an RFC 3339 time")?;
        if value > max {
            bail!("not an RFC 3339 time: a field is out of range");
        }
        Ok(value)
    };
    if bytes[13] != b':' || bytes[16] != b':' {
        bail!("not an RFC 3339 time");
    }
    let (hour, minute, second) = (field(11, 23)?, field(14, 59)?, field(17, 60)?);
    let mut rest = &text[19..];
    let mut millis = 0u64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            bail!("not an RFC 3339 time: empty fraction");
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().context("not an RFC 3339 time")?;
        rest = &fraction[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => bail!("not an RFC 3339 time: missing the UTC offset (Z or ±hh:mm)"),
            };
            let offset = rest.get(1..).unwrap_or_default();
            let (h, m) = offset
                .split_once(':')
                .filter(|(h, m)| h.len() == 2 && m.len() == 2)
                .context("not an RFC 3339 time: the offset must be ±hh:mm")?;
            let (h, m): (i64, i64) = (
                h.parse().context("not an RFC 3339 time")?,
                m.parse().context("not an RFC 3339 time")?,
            );
            if h > 23 || m > 59 {
                bail!("not an RFC 3339 time: offset out of range");
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let utc_midnight_s = i64::from(date.0) * 86_400;
    let local_s = utc_midnight_s + (hour * 3600 + minute * 60 + second) as i64;
    let unix_s = local_s - offset_s;
    if unix_s < 0 {
        bail!("times before 1970 are not record times");
    }
    Ok(unix_s as u64 * 1000 + millis)
}

/// Parses the query of `shikaku check`.
pub fn parse_query(card: Option<&str>, member: Option<&str>) -> Result<CheckQuery> {
    Ok(parse_typed_query(card, member)?.0)
}

/// `shikaku check` on a local ledger. Exit status 1 when the answer comes from a damaged
/// ledger (its text and JSON say so), 0 otherwise.
fn check(
    data_dir: &Path,
    args: &CheckArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (query, notes) = parse_typed_query(args.card.as_deref(), args.member.as_deref())?;
    for note in notes {
        writeln!(err, "note: {note}")?;
    }
    let now_ms = clock::now_ms();
    let date = match &args.date {
        Some(text) => text.parse::<Date>()?,
        None => Date::from_unix_ms_jst(now_ms),
    };
    let as_of = match &args.as_of {
        Some(text) => parse_as_of(text)?,
        None => Hlc(u64::MAX),
    };
    let store = Store::open_existing(data_dir)?;
    // An empty ledger that durable evidence says held events is damaged, not empty: it
    // answers, carrying the damage.
    if store.is_empty() && store.log().recovery().damaged.is_empty() {
        bail!(
            "the ledger in {} is empty: import events first (shikaku ledger import FILE)",
            data_dir.display()
        );
    }
    let mut projection = store.projection(Replication::All)?;
    projection.hold_only_known_insurers();
    // A local ledger has no hub to re-fetch from: its damage stays until it is repaired.
    let damage = store.log().recovery().damage_note(shikaku_core::RefetchState::NoHub);
    let freshness = Freshness { now_ms, last_hub_sync_ms: None, hub_position: None, damage };
    let answer = projection.check(&query, date, as_of, freshness);
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
    } else {
        write!(out, "{}", shikaku_core::text::answer(&answer))?;
    }
    Ok(if answer.damage.is_some() { 1 } else { 0 })
}
