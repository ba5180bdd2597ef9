//! shikaku-log: each node's ledger — an append-only, segmented, checksummed and hash-chained
//! log of signed events, with group commit, crash recovery, derived indexes and an
//! eventstore-style API (streams with optimistic concurrency, read-all from a position, and
//! catch-up subscriptions). The format is specified in `protocol/LOG-FORMAT.md`.
//!
//! The log knows nothing of sync or networking. It touches storage only through the
//! [`storage::Storage`] and [`storage::Directory`] traits: [`fs`] for real files, [`fault`] for
//! the fault-injecting disk of tests and the simulator.

pub mod checkpoint;
#[cfg(feature = "fault")]
pub mod fault;
pub mod format;
pub mod fs;
mod log;
pub mod storage;

pub use crate::log::{
    stream_of, stream_of_query, AppendOutcome, Damage, ExpectedVersion, Log, LogConfig, LogError,
    LogStats, Recovery, Subscription, SubscriptionBatch, VerifyReport,
};
