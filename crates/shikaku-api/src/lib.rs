//! shikaku-api: the HTTP faces of the nodes, and their client.
//!
//! - [`clinic`]: the clinic's local API and reception page ([`clinic::api_router`]);
//! - [`hub`]: the insurer's API on a hub (reconciliation report, JSON Lines import);
//! - [`request`]: the JSON error shape and request parsing shared by both;
//! - [`types`]: the typed request and response bodies, shared by servers, client and tests;
//! - [`serve`]: serving with header/idle timeouts and a connection cap, behind the Host and
//!   same-origin guard;
//! - [`client`]: the typed HTTP client (`check --node`, `consent --node`, `hub import --hub`);
//! - [`fhir`]: an answer as a FHIR R4 `CoverageEligibilityResponse`;
//! - [`metrics`]: the Prometheus text;
//! - [`import`] and [`jsonl`]: the JSON Lines import loop, with typed refusals;
//! - [`cluster`]: a hub and clinics in one process (the demo and `bench api`).
//!
//! Handlers never touch a ledger: they send the node thread commands through
//! [`shikaku_net::Runtime`].

pub mod audit;
pub mod auth;
pub mod client;
pub mod clinic;
pub mod cluster;
pub mod fhir;
pub mod hub;
pub mod import;
pub mod insurer_auth;
pub mod jsonl;
pub mod metrics;
pub mod ovs;
pub mod request;
pub mod serve;
pub mod staff;
pub mod types;

pub use import::{import_stream, ImportSummary, RefusedLine};
pub use request::{parse_typed_query, ApiError};
