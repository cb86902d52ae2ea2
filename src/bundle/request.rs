//! Reading a `batch` or `transaction` Bundle into entries: the Bundle's own
//! elements checked strictly, each entry's request (method, URL, `ifMatch`,
//! `ifNoneExist`, ...) parsed into an [`Entry`], and each entry's resource checked
//! where it stands (`Bundle.entry[3].resource`), so one bad entry of a batch fails
//! alone. Nothing here touches the database.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{Entry, EntryError, Method, Origin, Payload, Target};
use crate::fhir::{self, Id, Issue, Model};
use crate::patch::{FhirPathPatch, JsonPatch, Patch};

/// The two Bundle types that the base URL processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

impl BundleKind {
    pub fn code(self) -> &'static str {
        match self {
            BundleKind::Batch => "batch",
            BundleKind::Transaction => "transaction",
        }
    }
}

/// A Bundle read for processing: its kind and its entries in request order, each
/// read or refused on its own.
#[derive(Debug)]
pub struct RequestBundle {
    pub kind: BundleKind,
    pub entries: Vec<Result<Entry, EntryError>>,
}

/// Why a posted Bundle is not processed at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the body is a {0}, not a Bundle")]
    NotABundle(String),
    #[error("a Bundle of type `{0}` is not processed at the base URL: POST batch or transaction Bundles to [base], and store a {0} Bundle as a resource with POST [base]/Bundle")]
    WrongType(String),
    #[error("the Bundle has {found} entries; this server processes at most {max} per Bundle (bundle.max_entries)")]
    TooManyEntries { found: usize, max: usize },
    #[error("the Bundle is not valid")]
    Invalid(Vec<Issue>),
}

/// Reads a Bundle (already parsed JSON, not yet checked) posted to the base.
pub fn read_bundle(
    checks: super::EntryChecks<'_>,
    base_url: &str,
    mut bundle: Value,
    max_entries: usize,
) -> Result<RequestBundle, ReadError> {
    let model = checks.model;
    let rt = bundle
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("(no resourceType)");
    if rt != "Bundle" {
        return Err(ReadError::NotABundle(fhir::types::truncate(rt, 60)));
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => BundleKind::Batch,
        Some("transaction") => BundleKind::Transaction,
        Some(other) => return Err(ReadError::WrongType(fhir::types::truncate(other, 40))),
        None => {
            return Err(ReadError::Invalid(vec![Issue::error(
                "required",
                "the Bundle has no `type`; POST a batch or transaction Bundle",
            )
            .at("Bundle.type")]))
        }
    };
    let mut resources: Vec<Option<Value>> = Vec::new();
    if let Some(Value::Array(entries)) = bundle.get_mut("entry") {
        if entries.len() > max_entries {
            return Err(ReadError::TooManyEntries {
                found: entries.len(),
                max: max_entries,
            });
        }
        // The shell is checked without the entries' resources, which are checked one
        // by one below (a bad resource fails its entry, not the whole batch).
        for e in entries.iter_mut() {
            resources.push(e.as_object_mut().and_then(|o| o.remove("resource")));
        }
    }
    let shell_issues = fhir::json::check_resource(model, &bundle);
    if fhir::outcome::has_errors(&shell_issues) {
        return Err(ReadError::Invalid(shell_issues));
    }
    let entries = match bundle.get("entry") {
        Some(Value::Array(items)) => items
            .iter()
            .zip(resources)
            .enumerate()
            .map(|(i, (e, resource))| {
                read_entry(checks, base_url, i, e.as_object(), resource)
                    .map_err(|err| err.at(format!("Bundle.entry[{i}]")))
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(RequestBundle { kind, entries })
}

fn read_entry(
    checks: super::EntryChecks<'_>,
    base_url: &str,
    index: usize,
    entry: Option<&Map<String, Value>>,
    resource: Option<Value>,
) -> Result<Entry, EntryError> {
    let model = checks.model;
    let here = format!("Bundle.entry[{index}]");
    let bad = |what: &str, msg: String| {
        EntryError::Invalid(vec![
            Issue::error("invalid", msg).at(format!("{here}.{what}"))
        ])
    };
    let request = entry
        .and_then(|e| e.get("request"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            EntryError::Invalid(vec![Issue::error(
                "required",
                "a batch or transaction entry needs a `request` (method and url)",
            )
            .at(format!("{here}.request"))])
        })?;
    let text = |k: &str| request.get(k).and_then(Value::as_str);
    let method = match text("method") {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        other => {
            return Err(bad(
                "request.method",
                format!("`{}` is not an HTTP verb of FHIR", other.unwrap_or("")),
            ))
        }
    };
    let url = text("url").unwrap_or_default().to_string();
    let target = parse_target(model, base_url, &url).map_err(|m| bad("request.url", m))?;
    let if_match = match text("ifMatch") {
        None => None,
        Some(v) => Some(crate::fhir::types::parse_etag(v).ok_or_else(|| {
            bad(
                "request.ifMatch",
                format!(
                    "ifMatch `{}` is not a version ETag such as W/\"3\"",
                    fhir::types::truncate(v, 40)
                ),
            )
        })?),
    };
    let location = format!("{here}.resource");
    let payload = match (method, resource) {
        (Method::Get | Method::Head | Method::Delete, None) => Payload::None,
        (Method::Get | Method::Head | Method::Delete, Some(_)) => {
            return Err(bad(
                "resource",
                format!("a {} entry carries no resource", method.as_str()),
            ))
        }
        (_, None) => {
            return Err(EntryError::Invalid(vec![Issue::error(
                "required",
                format!("a {} entry needs a resource", method.as_str()),
            )
            .at(location)]))
        }
        (Method::Patch, Some(doc)) => Payload::Patch(read_patch(model, &doc, &location)?),
        (_, Some(resource)) => {
            let issues = super::validate_entry(checks, &resource, &location);
            if fhir::outcome::has_errors(&issues) {
                // Malformed for the strict reader: 400; well-formed but refused by the
                // write gate (profiles, SearchParameter rules): 422, as a plain create.
                let malformed =
                    fhir::outcome::has_errors(&fhir::json::check_resource(model, &resource));
                return Err(if malformed {
                    EntryError::Invalid(issues)
                } else {
                    EntryError::Unprocessable(issues)
                });
            }
            Payload::Resource(resource)
        }
    };
    Ok(Entry {
        origin: Origin::Bundle(index),
        full_url: entry
            .and_then(|e| e.get("fullUrl"))
            .and_then(Value::as_str)
            .map(str::to_string),
        method,
        url,
        target,
        payload,
        if_match,
        if_none_exist: text("ifNoneExist").map(str::to_string),
        if_none_match: text("ifNoneMatch").map(str::to_string),
        if_modified_since: text("ifModifiedSince").map(str::to_string),
    })
}

/// A PATCH entry's resource: a Binary holding a JSON Patch, or a Parameters
/// resource holding a FHIRPath Patch (R4 http.html, "Patch" in batches).
fn read_patch(model: &Model, doc: &Value, location: &str) -> Result<Patch, EntryError> {
    let issues = fhir::json::check_resource_at(model, doc, location);
    if fhir::outcome::has_errors(&issues) {
        return Err(EntryError::Invalid(issues));
    }
    let invalid = |msg: String| {
        EntryError::Invalid(vec![Issue::error("invalid", msg).at(location.to_string())])
    };
    match doc.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => FhirPathPatch::from_parameters(model, doc)
            .map(Patch::FhirPath)
            .map_err(|e| invalid(e.describe())),
        Some("Binary") => {
            let ct = doc.get("contentType").and_then(Value::as_str).unwrap_or("");
            if !ct.starts_with("application/json-patch+json") {
                return Err(invalid(format!(
                    "a Binary patch must have contentType application/json-patch+json, not `{}`",
                    fhir::types::truncate(ct, 60)
                )));
            }
            let data = doc.get("data").and_then(Value::as_str).unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.split_whitespace().collect::<String>())
                .map_err(|e| invalid(format!("the Binary's data is not base64: {e}")))?;
            let json = fhir::json::parse_json(&bytes).map_err(|i| invalid(i.diagnostics))?;
            JsonPatch::parse(&json)
                .map(Patch::Json)
                .map_err(|e| invalid(e.describe()))
        }
        other => Err(invalid(format!(
            "a PATCH entry carries a Binary (JSON Patch) or a Parameters resource (FHIRPath Patch), not a {}",
            other.unwrap_or("resource")
        ))),
    }
}

/// Parses an entry's `request.url` (relative to the base, or absolute on this
/// server's base).
pub fn parse_target(model: &Model, base_url: &str, url: &str) -> Result<Target, String> {
    if url.is_empty() {
        return Err("the entry's request has no url".into());
    }
    let relative = match url.strip_prefix(base_url) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') => {
            rest.trim_start_matches('/')
        }
        _ if url.starts_with("http://") || url.starts_with("https://") => {
            return Err(format!(
                "`{}` is not on this server's base {base_url}",
                fhir::types::truncate(url, 80)
            ))
        }
        _ => url.trim_start_matches('/'),
    };
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (relative, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| s.starts_with('$')) {
        return Ok(Target::Other(url.to_string()));
    }
    let known = |t: &str| -> Result<String, String> {
        if model.is_resource_type(t) {
            Ok(t.to_string())
        } else {
            Err(format!(
                "`{}` is not a resource type this server knows",
                fhir::types::truncate(t, 60)
            ))
        }
    };
    let id = |s: &str| Id::parse(s);
    Ok(match (segments.as_slice(), query) {
        ([], q) => Target::System {
            query: q.unwrap_or_default(),
        },
        (["_history"], _) => Target::Other(url.to_string()),
        ([t], Some(q)) => Target::Search {
            resource_type: known(t)?,
            query: q,
        },
        ([t], None) => Target::Type(known(t)?),
        ([t, "_history"], _) | ([t, _, "_history"], _) => {
            known(t)?;
            Target::Other(url.to_string())
        }
        ([t, i], None) => Target::Instance {
            resource_type: known(t)?,
            id: id(i)?,
        },
        ([t, i, "_history", v], None) => Target::Version {
            resource_type: known(t)?,
            id: id(i)?,
            version: fhir::VersionId::parse(v)?.0,
        },
        ([c, i, t], q) => Target::Compartment {
            compartment: known(c)?,
            id: id(i)?,
            target: if *t == "*" {
                "*".to_string()
            } else {
                known(t)?
            },
            query: q.unwrap_or_default(),
        },
        _ => {
            return Err(format!(
                "`{}` is not a URL of a FHIR interaction",
                fhir::types::truncate(url, 80)
            ))
        }
    })
}
