//! Bundle rules beyond the StructureDefinitions, as the reference validator applies them
//! (DESIGN section 10): an entry's `fullUrl` that is a RESTful URL must end in the type and
//! id of its resource (R4 Bundle, "fullUrl": "the fullUrl SHALL ... agree with the id").

use serde_json::Value;

use super::plan::Plan;
use super::values;
use super::walk::{Loc, Walk};
use crate::fhir::Severity;

pub fn check(w: &mut Walk, plan: &Plan, bundle: &Value, loc: &Loc) {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return;
    };
    for (i, entry) in entries.iter().enumerate() {
        let (Some(full_url), Some(resource)) = (
            entry.get("fullUrl").and_then(Value::as_str),
            entry.get("resource"),
        ) else {
            continue;
        };
        let (Some(rt), Some(id)) = (
            resource.get("resourceType").and_then(Value::as_str),
            resource.get("id").and_then(Value::as_str),
        ) else {
            continue;
        };
        if full_url.starts_with("urn:") {
            continue; // urn:uuid / urn:oid entries carry no RESTful identity
        }
        let is_type = |t: &str| w.v.model.is_resource_type(t);
        let Some(url_type) = values::reference_type(full_url, is_type) else {
            continue; // not a RESTful URL: nothing to agree with
        };
        let wanted = format!("{rt}/{id}");
        if full_url == wanted || full_url.ends_with(&format!("/{wanted}")) {
            continue;
        }
        // A different type is an error; the same type with another id is a warning (see
        // docs/decisions.md: the R4 examples carry such entries).
        let severity = if url_type == rt {
            Severity::Warning
        } else {
            Severity::Error
        };
        let rendered = format!("{}.entry[{i}].fullUrl", loc.render());
        w.issues.push(
            crate::fhir::Issue::error(
                "invalid",
                format!("the fullUrl {full_url} does not agree with the resource's type and id ({wanted})"),
            )
            .severity(severity)
            .at(rendered)
            .from_source(plan.canonical()),
        );
    }
}

/// The resource of the entry a reference points to: by fullUrl, or by `Type/id` (relative,
/// or the tail of an absolute URL), in a Bundle root.
pub fn entry_by_reference<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    if root.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    if let Some(r) = entry_by_full_url(root, reference) {
        return Some(r);
    }
    root.get("entry")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|e| e.get("resource"))
        .find(|r| {
            let (Some(rt), Some(id)) = (
                r.get("resourceType").and_then(Value::as_str),
                r.get("id").and_then(Value::as_str),
            ) else {
                return false;
            };
            let wanted = format!("{rt}/{id}");
            reference == wanted || reference.ends_with(&format!("/{wanted}"))
        })
}

/// The resource of the entry whose fullUrl is `url`, in a Bundle root.
pub fn entry_by_full_url<'a>(root: &'a Value, url: &str) -> Option<&'a Value> {
    root.get("entry")
        .and_then(Value::as_array)?
        .iter()
        .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(url))
        .and_then(|e| e.get("resource"))
}
