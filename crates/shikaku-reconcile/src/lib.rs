//! shikaku-reconcile: the insurer's view of what happened while clinics were offline.
//!
//! Input: the hub's ledger (every insurer namespace and every clinic's check records and
//! self-declarations) with the hub's log positions. For each clinic the report
//! 1. **re-derives every answer the clinic gave**: the projection of the insurer events up to the
//!    hub position the check recorded, plus the clinic's own earlier records, asked the same
//!    question with the same knowledge cut-off; the re-derivation counts only when its hash equals
//!    the answer hash in the check record (otherwise the check is listed as not re-derivable,
//!    which is itself a finding: invariant 3 of ARCHITECTURE.md says offline answers are explainable);
//! 2. compares it with the **converged truth** (all events, as known now) and lists the checks
//!    the truth contradicts, with what the patient paid, what was due, and the refund or the
//!    claim adjustment (in tenths of the visit's fee: the ledger knows ratios, not fees);
//! 3. lists self-declarations, resolved (the new insurer's coverage now exists, or an explicit
//!    resolution was recorded) and unresolved; retroactive changes (events recorded after a
//!    check that decide its answer now and change it); conflicts waiting for an insurer's
//!    decision; and the clinics ordered by how stale their knowledge was at their last check.
//!
//! - [`report`]: the computation, a pure function of the events (no clock: `now_ms` is an
//!   input), and the billing rules;
//! - [`render`]: plain text, JSON or a self-contained HTML page;
//! - [`access`]: the member access report (every check of one member, institution-level).
//!
//! Depends on `shikaku-core` only (and serde for the JSON form).

pub mod access;
pub mod render;
pub mod report;

pub use render::{render, render_html, render_text, FormatError};
pub use report::*;
