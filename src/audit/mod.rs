//! AuditEvents for every interaction, shaped after IHE Basic Audit Log Patterns
//! (BALP): built here, committed with the data for writes, and group-committed
//! before the response for reads ([`AuditWriter`]).
//!
//! Architecture invariant: audit never calls the HTTP layer; it sees interactions
//! through [`AuditRecord`], not requests. An AuditEvent holds no resource content,
//! only references, and its body is sealed like any other resource.

mod event;
mod writer;

pub use event::{AuditRecord, AuthEvent, Interaction, Outcome};
pub use writer::AuditWriter;
