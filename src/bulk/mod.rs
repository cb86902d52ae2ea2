//! Bulk data: `fhirgate import` of NDJSON files (one resource per line) and of
//! batch/transaction Bundle files, through the same write path as the API. (`$export`
//! is a later issue.)
//!
//! Architecture invariant: bulk writes only through [`crate::bundle`] (so every
//! resource passes the same checks, indexing, encryption and audit as over HTTP);
//! it knows nothing of HTTP.

pub mod import;

pub use import::{import, BadItem, ImportError, ImportOptions, ImportSummary, OnError};
