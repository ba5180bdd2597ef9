//! shikaku-net: the runtime — the only crate that touches sockets, threads and the clock for a
//! running node. QUIC via quinn with rustls (ring provider only) and mutual TLS; tokio tasks
//! drive the sans-IO [`shikaku_node::Node`].
//!
//! - [`tls`]: the deployment CA (`shikaku ca init` / `ca issue`), node certificates carrying
//!   role, name and signing key, and the QUIC client/server configs (ALPN `shikaku/1`).
//! - [`runtime`]: per-connection reader/writer tasks, pipelined signature verification,
//!   reconnect with backoff, clean shutdown; [`runtime::HubService`], [`runtime::ClinicService`];
//!   the node on its own thread, driven by commands.
//! - [`jetstream`]: the scaled-out hub's shared log (NATS JetStream): stream set-up and
//!   validation, publishing, the front-end's ordered follower.
//! - [`clock`]: the one wall clock (honouring `SHIKAKU_NOW_MS`) and the stopwatch.

pub mod clock;
pub mod jetstream;
pub mod runtime;
pub mod tls;

pub use runtime::{ClinicService, Clock, HubService, Runtime};
