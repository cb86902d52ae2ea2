//! Bulk data: `fhirgate import` of NDJSON files (one resource per line) and of
//! batch/transaction Bundle files, through the same write path as the API; Bulk
//! Data `$export` jobs and their encrypted files.
//!
//! Architecture invariant: bulk writes only through [`crate::bundle`] (so every
//! resource passes the same checks, indexing, encryption and audit as over HTTP);
//! it knows nothing of HTTP.
//! Architecture invariant: an export file is never on disk unencrypted.

pub mod export;
pub mod import;
pub mod sealed;

pub use import::{import, BadItem, ImportError, ImportOptions, ImportSummary, OnError};
