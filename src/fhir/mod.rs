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
pub mod shape;
pub mod summary;
pub mod types;
pub mod xhtml;
pub mod xml;

use serde_json::{Map, Value};

pub use model::Model;
pub use outcome::{operation_outcome, Issue, Severity};
pub use types::{Id, ResourceType, VersionId};

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

/// The stored form of a resource version: `id` and `meta.versionId`/`meta.lastUpdated`
/// set by the server, everything else in the client's order. Written straight from
/// the borrowed resource (no copy of the tree: it runs for every version stored).
pub fn stored_body(
    resource: &Value,
    id: &str,
    version: i64,
    last_updated: i64,
) -> Result<Vec<u8>, String> {
    use serde::ser::{SerializeMap, Serializer};
    let src = resource
        .as_object()
        .ok_or_else(|| "a resource must be an object".to_string())?;
    let mut meta = match src.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert("lastUpdated".into(), Value::String(instant(last_updated)));
    let mut buf = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::new(&mut buf);
    let err = |e: serde_json::Error| e.to_string();
    let mut out = ser.serialize_map(None).map_err(err)?;
    out.serialize_entry(
        "resourceType",
        src.get("resourceType").unwrap_or(&Value::Null),
    )
    .map_err(err)?;
    out.serialize_entry("id", id).map_err(err)?;
    out.serialize_entry("meta", &meta).map_err(err)?;
    for (k, v) in src {
        if !matches!(k.as_str(), "resourceType" | "id" | "meta") {
            out.serialize_entry(k, v).map_err(err)?;
        }
    }
    out.end().map_err(err)?;
    Ok(buf)
}
