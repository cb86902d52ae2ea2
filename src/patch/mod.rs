//! PATCH documents applied to a resource: JSON Patch (RFC 6902, `application/json-patch+json`)
//! and FHIRPath Patch (FHIR R4 section 3.1.0.7.2 and `fhirpatch.html`: a Parameters resource
//! whose `operation` parameters add, insert, delete, replace and move elements found by
//! FHIRPath). Both take the resource as JSON and give a new JSON value or an error; the input
//! is never changed, so a failed patch leaves nothing half-applied. Checking the result
//! (structure, profiles) and storing it is the caller's business.
//!
//! Architecture invariant: patch knows nothing of HTTP or storage; it reads the structure
//! model only for element order, choice types and cardinality.

mod element;
mod fhirpath_patch;
mod json_patch;

use serde_json::Value;

use crate::fhir::Model;
use crate::fhirpath::FhirPathError;

pub use fhirpath_patch::{apply_fhirpath_patch, FhirPathPatch};
pub use json_patch::{apply_json_patch, JsonPatch};

/// Everything that can go wrong reading or applying a patch. `operation` is the 0-based
/// index of the operation in the document (the JSON Patch array, or `Parameters.parameter`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is not one: not a JSON array of operations, an operation without
    /// `op`/`path`/`value`, an unknown operation type, a Parameters without `type`.
    #[error("{}{reason}", operation_prefix(*.operation))]
    InvalidDocument {
        operation: Option<usize>,
        reason: String,
    },
    /// A FHIRPath Patch `path` that is not a FHIRPath expression.
    #[error("operation {operation}: the path `{path}` is not a valid FHIRPath expression")]
    InvalidPath {
        operation: usize,
        path: String,
        #[source]
        source: FhirPathError,
    },
    /// A JSON Patch `test` operation found another value than the one it names.
    #[error("operation {operation}: test failed: the value at `{path}` is not the expected value")]
    TestFailed { operation: usize, path: String },
    /// An operation that cannot be applied to this resource: its target is missing or
    /// ambiguous, an index is out of range, the element already has a value.
    #[error("operation {operation} ({op} at `{path}`): {reason}")]
    NotApplicable {
        operation: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// Evaluating a FHIRPath Patch path failed on this resource (e.g. a singleton was
    /// required but several items were found).
    #[error("operation {operation} ({op} at `{path}`): evaluating the path failed")]
    Evaluation {
        operation: usize,
        op: &'static str,
        path: String,
        #[source]
        source: FhirPathError,
    },
}

fn operation_prefix(operation: Option<usize>) -> String {
    match operation {
        Some(i) => format!("operation {i}: "),
        None => String::new(),
    }
}

impl PatchError {
    /// True when the document itself is malformed (HTTP 400), false when a well-formed patch
    /// cannot be applied to this resource (HTTP 422).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            PatchError::InvalidDocument { .. } | PatchError::InvalidPath { .. }
        )
    }

    /// The index of the operation at fault, when one is.
    pub fn operation(&self) -> Option<usize> {
        match self {
            PatchError::InvalidDocument { operation, .. } => *operation,
            PatchError::InvalidPath { operation, .. }
            | PatchError::TestFailed { operation, .. }
            | PatchError::NotApplicable { operation, .. }
            | PatchError::Evaluation { operation, .. } => Some(*operation),
        }
    }

    /// The message with its FHIRPath cause, for an OperationOutcome's diagnostics.
    pub fn describe(&self) -> String {
        match self {
            PatchError::InvalidPath { source, .. } | PatchError::Evaluation { source, .. } => {
                format!("{self}: {source}")
            }
            other => other.to_string(),
        }
    }
}

/// A parsed patch document of either kind.
#[derive(Debug)]
pub enum Patch {
    Json(JsonPatch),
    FhirPath(FhirPathPatch),
}

impl Patch {
    /// Applies the patch to `resource`, giving the patched copy.
    pub fn apply(&self, model: &Model, resource: &Value) -> Result<Value, PatchError> {
        match self {
            Patch::Json(p) => p.apply(resource),
            Patch::FhirPath(p) => p.apply(model, resource),
        }
    }
}
