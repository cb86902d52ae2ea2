//! AuditEvents for every interaction, shaped after IHE Basic Audit Log Patterns
//! (BALP): built here, committed with the data for writes, and group-committed
//! before the response for reads ([`AuditWriter`]).
//!
//! Architecture invariant: audit never calls the HTTP layer; it sees interactions
//! through [`AuditRecord`], not requests. An AuditEvent holds no resource content,
//! only references, and its body is sealed like any other resource.

mod balp;
pub mod chain;
pub mod disclosures;
mod event;
mod writer;

pub use balp::JTI_POLICY_PREFIX;
pub use event::{
    AuditAction, AuditRecord, AuthEvent, Interaction, Outcome, EVERYTHING, EXPORT_CANCEL,
    EXPORT_FILE,
};

/// AuditEvents are kept in the audit log, not among resource versions: they have
/// one version, are written only by the server, and are read through their own
/// store calls ([`crate::store::Store::audit_event`], `audit_history`).
pub const RESOURCE_TYPE: &str = "AuditEvent";
pub use writer::AuditWriter;
