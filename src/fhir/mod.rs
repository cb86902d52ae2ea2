//! Resource model glue: FHIR resources are `serde_json` values (decimals and key
//! order preserved) checked strictly against the structure model compiled from
//! the loaded StructureDefinitions; XML is converted to and from the same JSON.
//!
//! Architecture invariant: nothing here does I/O beyond asking the package set for
//! a StructureDefinition; no HTTP, no storage.

pub mod compartment;
pub mod json;
pub mod model;
pub mod outcome;
pub mod path_model;
pub mod summary;
pub mod types;
pub mod xhtml;
pub mod xml;

use serde_json::Value;

pub use model::Model;
pub use outcome::{operation_outcome, Issue, Severity};
pub use types::{Id, VersionId};

/// The two wire formats of FHIR resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json",
            Format::Xml => "application/fhir+xml",
        }
    }
}

/// Reads a resource from the wire and checks it strictly; every problem found is returned.
pub fn parse_resource(model: &Model, bytes: &[u8], format: Format) -> Result<Value, Vec<Issue>> {
    let value = read_wire(model, bytes, format)?;
    let issues = json::check_resource(model, &value);
    if outcome::has_errors(&issues) {
        return Err(issues);
    }
    Ok(value)
}

/// Reads JSON or XML into the JSON model without the strict structural checks (XML is
/// still converted by the model). For `validation.mode = off` and for `$validate`, which
/// reports structural problems in its OperationOutcome instead of refusing the request.
pub fn read_wire(model: &Model, bytes: &[u8], format: Format) -> Result<Value, Vec<Issue>> {
    Ok(match format {
        Format::Json => json::parse_json(bytes).map_err(|i| vec![i])?,
        Format::Xml => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                vec![Issue::error(
                    "structure",
                    format!("the body is not UTF-8: {e}"),
                )]
            })?;
            xml::from_xml(model, text).map_err(|i| vec![i])?
        }
    })
}

/// Writes a resource in a wire format.
pub fn serialize(
    model: &Model,
    value: &Value,
    format: Format,
    pretty: bool,
) -> Result<Vec<u8>, Issue> {
    match format {
        Format::Json => {
            let r = if pretty {
                serde_json::to_vec_pretty(value)
            } else {
                serde_json::to_vec(value)
            };
            r.map_err(|e| Issue::error("exception", e.to_string()))
        }
        Format::Xml => xml::to_xml(model, value, pretty).map(String::into_bytes),
    }
}

/// Now, in microseconds since the epoch, rounded to the millisecond that
/// `meta.lastUpdated` shows (so stored and shown times agree).
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_millis() * 1000
}

/// A FHIR `instant` (UTC, milliseconds) from microseconds since the epoch.
pub fn instant(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}
