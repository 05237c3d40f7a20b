//! Leases: fewer store calls than decisions for hot keys, never more admitted than the limit.
//!
//! What users read about it is `docs/leases.md`.

mod held;
mod table;

pub(crate) use table::{Grant, Leases, Serve, Unspent};
