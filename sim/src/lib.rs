//! shikaku-sim: a deterministic, single-threaded simulator that drives the production
//! [`shikaku_node::Node`] (sync protocol, ledger, projection) over a simulated network, clock
//! and fault-injecting disk, from one seed.
//!
//! - One seed feeds four independent random streams — network, disk, clock, workload — so that
//!   changing one fault mix does not reshuffle the others.
//! - The network is modelled at the level the node sees through QUIC: a reliable, ordered
//!   stream per clinic↔hub connection. Loss costs a retransmission timeout, duplicates are
//!   absorbed, reordering shows as delay (delivery stays in order), a bandwidth cap serialises
//!   frames; partitions (random, scripted, asymmetric) and flapping break connections after the
//!   idle timeout, and the clinic reconnects with backoff.
//! - Nodes crash (unsynced writes lost or torn) and restart through recovery; clinics' disks
//!   can misdirect writes and rot bits. Clocks are skewed, drift and jump.
//! - [`frontends`]: the scaled-out hub — several front-ends over a seeded model of the shared
//!   log (unavailable, late or failed acknowledgements, repeats, crashes, lag).
//! - [`report::html`]: the run as an HTML page with an SVG timeline.
//! - [`scenario`]: scenario files (TOML) scripting faults over the random mix.
//! - A safety phase with faults is followed by a liveness phase with faults healed; the
//!   checkers ([`check`]) verify the system's invariants (ARCHITECTURE.md) continuously and at quiescence.
//!
//! Invariant: nothing here reads a wall clock, spawns a thread or iterates a randomly ordered
//! container; the same seed gives the same run, byte for byte.

pub mod check;
pub mod frontends;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::html;
pub use run::{run, Faults, Mark, Outcome, Scripted, SimConfig, Who};

#[cfg(feature = "planted-bugs")]
pub use run::Plant;
