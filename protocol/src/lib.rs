//! shikaku-protocol: the clinic ↔ hub sync protocol as sans-IO code — bytes in, bytes out, no
//! sockets, no clocks, no threads. The wire formats are specified in this folder's documents
//! (`SPEC.md` for the session).
//!
//! - [`wire`]: the session's messages, their byte encoding, limits, and the frame splitter.
//! - [`negentropy`]: the repair path's range-based set reconciliation over `(hlc, id)`,
//!   byte-compatible with Negentropy protocol v1 (tested against the `negentropy` crate in both
//!   directions).

pub mod negentropy;
pub mod wire;
