//! shikaku-node: what a hub or a clinic *does*, as a sans-IO state machine.
//!
//! The runtime (`shikaku-net`) and the simulator (`sim/`) drive the same [`Node`]: they tell it
//! about connections ([`Node::handle_connected`], [`Node::handle_disconnected`]), hand it frames
//! that [`prepare`] decoded and signature-checked ([`Node::handle_inbound`]), tick it
//! ([`Node::handle_tick`]), ask it for the next frame to send on a connection
//! ([`Node::poll_transmit`]) and for what else happened ([`Node::poll_event`]: closes, log
//! lines). Time is always an argument; the ledger is a [`shikaku_log::Log`] over any
//! [`shikaku_log::Directory`] (real files or the fault-injecting disk).
//!
//! - [`data_dir`]: the data directory on real files (identity, lock, log, snapshots, names)
//!   and [`data_dir::open_node`];
//! - [`index`]: per-namespace `(hlc, id)` sets and position lists (fingerprints, cursors).
//! - [`snapshot`]: the node snapshot file (indexes, origin sequences, clock, projection).
//! - [`node`]: the node — authorization, cursors, live push, acknowledgements, repair,
//!   receipts, checks.

pub mod data_dir;
pub mod index;
pub mod node;
pub mod snapshot;

pub use node::{
    prepare, prepare_stream, ConnId, ConsentAtCheck, Counters, Inbound, Level, MemberData, Node,
    NodeConfig, NodeError, Output, PeerIdentity, PresentedAnswer, PresentedCheck, StreamIdentity,
    StreamMessage, KEYS_FILE,
};

#[cfg(feature = "planted-bugs")]
pub use node::PlantedBug;
pub use shikaku_protocol::wire::Role;
