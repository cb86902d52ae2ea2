//! `GET /fhir/metadata`: a CapabilityStatement that states exactly what this
//! build implements: the interactions, fixed at start-up from the loaded resource
//! types, and the search parameters, includes and revincludes of the registry as
//! it is now (SearchParameters of the database appear once they are searchable).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::exchange::{Body, Exchange, Reply};
use super::AppState;
use crate::audit::Interaction;
use crate::config::{Settings, ValidationMode};
use crate::fhir::Model;
use crate::search::{ParamType, SearchEngine};

/// Bulk Data `$export` as fhirgate runs it (DESIGN section 14).
const EXPORT_DOC: &str = "Bulk Data 2.0 export (GET with query parameters or POST with Parameters; Prefer: respond-async): _outputFormat (application/fhir+ndjson), _since, _type, _typeFilter, patient (patient and group level); includeAssociatedData is refused. 202 with the status URL in Content-Location; files are encrypted at rest and served to the client that started the job only.";

/// The operations of one resource type beyond `$validate`.
fn type_operations(t: &str) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    match t {
        "Patient" => {
            ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export", "documentation": EXPORT_DOC}));
            ops.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "GET [base]/Patient/[id]/$everything (start, end, _since, _type, _count): the patient's compartment and every resource it refers to that the caller may read, paged; start/end select care dates (types with a `date` parameter)."}));
        }
        "Group" => {
            ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export", "documentation": EXPORT_DOC}));
        }
        "Encounter" => {
            ops.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Encounter-everything",
                "documentation": "GET [base]/Encounter/[id]/$everything (_since, _type, _count): the encounter's compartment and every resource it refers to that the caller may read, paged."}));
        }
        _ => {}
    }
    ops
}

/// What `$validate` does in this build, stated in each resource's operation entry.
const VALIDATE_DOC: &str = "POST [type]/$validate and [type]/[id]/$validate: the resource, or a Parameters with `resource`, `profile` and `mode` (also ?profile=, ?mode=). Checks the strict structure, the type's StructureDefinition, meta.profile claims, the named profile and the server's required profiles (cardinality, types, fixed/pattern, required/extensible bindings against the loaded ValueSets, invariants, slicing, extensions, reference targets found in the instance). mode=delete only answers OK: no referential checks.";

pub fn build(model: &Model, base_url: &str, settings: &Settings) -> Value {
    let auth_enabled = settings.auth.enabled;
    let writes = match settings.validation.mode {
        ValidationMode::Full => "Creates and updates are validated against the type's StructureDefinition, meta.profile claims and the required profiles; errors answer 422.",
        ValidationMode::Structure => "Creates and updates are checked by the strict structural reader only (validation.mode = structure).",
        ValidationMode::Off => "Creates and updates are not validated beyond well-formed JSON/XML (validation.mode = off).",
    };
    let resources: Vec<Value> = model
        .resource_types()
        .iter()
        .map(|t| {
            let interactions: &[&str] = if t == "AuditEvent" {
                &["read", "vread", "history-instance", "history-type"]
            } else {
                &[
                    "read",
                    "vread",
                    "update",
                    "patch",
                    "delete",
                    "history-instance",
                    "history-type",
                    "create",
                ]
            };
            let mut resource = json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": t != "AuditEvent",
                "conditionalCreate": t != "AuditEvent",
                "conditionalRead": "full-support",
                // PUT/DELETE/PATCH [type]?criteria, also as Bundle entries; a delete
                // whose criteria match several resources is refused (412).
                "conditionalUpdate": t != "AuditEvent",
                "conditionalDelete": if t == "AuditEvent" { "not-supported" } else { "single" },
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                    "documentation": VALIDATE_DOC
                }]
            });
            if let Some(ops) = resource["operation"].as_array_mut() {
                ops.extend(type_operations(t));
            }
            if t == "Patient" {
                if let Some(ops) = resource["operation"].as_array_mut() {
                    ops.push(json!({
                        "name": "disclosures",
                        "definition": "urn:fhirgate:operation:disclosures",
                        "documentation": "GET [base]/Patient/[id]/$disclosures?start=DATE&end=DATE: the accounting of disclosures (HIPAA 164.528), a searchset Bundle of the AuditEvents recording access to the patient's data, denied attempts included, oldest first; for callers who may search every AuditEvent."
                    }));
                }
            }
            let required = settings.validation.required_for(t);
            if !required.is_empty() && settings.validation.mode == ValidationMode::Full {
                resource["supportedProfile"] = json!(required);
            }
            resource
        })
        .collect();
    let mut rest = json!({
        "mode": "server",
        "documentation": writes,
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}, {"code": "search-system"}],
        "operation": [{
            "name": "reindex",
            "definition": "urn:fhirgate:operation:reindex",
            "documentation": "POST [base]/$reindex or [base]/[type]/$reindex rebuilds the search index in the background (202; the status is at Content-Location)."
        }, {
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
            "documentation": EXPORT_DOC
        }]
    });
    if auth_enabled {
        // SMART App Launch 2.0 section 2.0.5 (and clients that predate the
        // discovery documents, e.g. Python fhirclient): the OAuth endpoints as
        // the `oauth-uris` extension.
        let auth = settings.auth_base();
        rest["security"] = json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": format!("{auth}/auth/authorize")},
                    {"url": "token", "valueUri": format!("{auth}/auth/token")},
                    {"url": "introspect", "valueUri": format!("{auth}/auth/introspect")},
                    {"url": "revoke", "valueUri": format!("{auth}/auth/revoke")}
                ]
            }],
            "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }]}],
            "description": "SMART App Launch 2.0 and SMART Backend Services: every request but this CapabilityStatement needs a bearer token; discovery at .well-known/smart-configuration."
        });
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "fhirgate",
        "kind": "instance",
        "software": {"name": "fhirgate", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirgate FHIR R4 gateway", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "xml"],
        // JSON Patch, and FHIRPath Patch as a Parameters resource in either format.
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [rest]
    })
}

/// Adds what search supports to each resource of a CapabilityStatement: the
/// `search-type` interaction, the search parameters (those this build answers;
/// `near` and the composites it cannot index are left out), `_include` and
/// `_revinclude` values.
pub fn with_search(mut cs: Value, search: &SearchEngine) -> Value {
    let reverse: Vec<(String, String, Vec<String>)> = search.reference_params();
    let resources = cs
        .pointer_mut("/rest/0/resource")
        .and_then(Value::as_array_mut);
    for r in resources.into_iter().flatten() {
        let Some(t) = r.get("type").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if let Some(i) = r.get_mut("interaction").and_then(Value::as_array_mut) {
            i.push(json!({"code": "search-type"}));
        }
        let params = search.supported_params(&t);
        let mut includes: Vec<String> = params
            .iter()
            .filter(|p| p.param_type == ParamType::Reference)
            .map(|p| format!("{t}:{}", p.code))
            .collect();
        includes.insert(0, "*".into());
        let revincludes: Vec<String> = reverse
            .iter()
            // AuditEvents are searched on their own rows: a search of another
            // type does not reach them through `_revinclude`.
            .filter(|(source, _, _)| source != crate::audit::RESOURCE_TYPE)
            .filter(|(_, _, targets)| targets.is_empty() || targets.contains(&t))
            .map(|(source, code, _)| format!("{source}:{code}"))
            .collect();
        r["searchParam"] = Value::Array(
            params
                .iter()
                .map(|p| json!({"name": p.code, "definition": p.url, "type": p.param_type.code()}))
                .collect(),
        );
        r["searchInclude"] = json!(includes);
        r["searchRevInclude"] = json!(revincludes);
    }
    cs
}

pub async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Capabilities);
    let result = ex.precondition().map(|_| {
        let cs = with_search(state.capability.clone(), &state.search);
        Reply::new(StatusCode::OK, Body::Resource(cs))
    });
    ex.finish(&state, result).await
}
