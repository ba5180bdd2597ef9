//! shikaku's integration tests, in one binary (each `tests/*.rs` file would link separately).
//!
//! - `api`: the clinic's HTTP API (snapshots, FHIR validated by fhir.resources), hub import,
//!   reconcile;
//! - `canonical`: an encoder written from EVENTS.md alone reproduces every golden vector;
//! - `browser`: the reception page in headless Chromium (DevTools protocol on a pipe);
//! - `story`: a small builder for signed event histories used by the other modules;
//! - `scenarios`: insta snapshots of the eligibility rules, one story each;
//! - `laws`: property tests (order independence, duplicates, encoding round trips);
//! - `bad_input`: every kind of bad input gets a typed error that names the problem;
//! - `cli`: the `shikaku` command end to end, including the 100k-member recomputation;
//! - `contract`: the protocol as a contract (receipts, cursors, origin sequences, encodings);
//! - `hardening`: identity files, permissions, API addresses, restart state (issue 13);
//! - `damage`: answers from damaged ledgers, evidence of loss, commands that withhold (issue 13);
//! - `field_trial`: one test per defect the field trial found (real processes and signals);
//! - `shared_log`: the front-ends' sans-IO logic over a seeded model of the shared log;
//! - `staff`: staff login, sessions and roles at the clinic API, insurer tokens and the use log
//!   at the hub's (issue 17);
//! - `jetstream`: the scaled-out hub over real 3-server NATS clusters (DEPLOY.md's
//!   configuration), front-ends, fail-over and `kill -9`;
//! - `ovs`: the folder interface with real files and processes (issue 18);
//! - `roster`: `insurer diff`, and its round trip to a folder answer (issue 18).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // test helpers may panic: a panic is a failed test

mod api;
mod bad_input;
mod browser;
mod canonical;
mod cli;
mod contract;
mod crash;
mod damage;
mod field_trial;
mod hardening;
mod jetstream;
mod laws;
mod log;
mod net;
mod node;
mod ovs;
mod privacy;
mod reconcile;
mod reference;
mod roster;
mod scenarios;
mod scratch;
mod shared_log;
mod sim;
mod staff;
mod story;
mod sync_vectors;
mod vectors;

/// Held while a test creates or fills a Python virtual environment in `target/` (the FHIR,
/// X.509 and NATS ones): two tests installing into the same venv at once broke each other's
/// `pip install` on a fresh clone.
pub(crate) fn venv_install_lock() -> std::sync::MutexGuard<'static, ()> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
