//! `GET /fhir/metadata`: a CapabilityStatement that states exactly what this
//! build implements, built once at start-up from the loaded resource types.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::exchange::{Body, Exchange, Reply};
use super::AppState;
use crate::audit::Interaction;
use crate::config::{Settings, ValidationMode};
use crate::fhir::Model;

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
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                    "documentation": VALIDATE_DOC
                }]
            });
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
        "interaction": [{"code": "history-system"}]
    });
    if auth_enabled {
        rest["security"] = json!({
            "description": "Authorization is required; this build does not issue tokens yet, so only the CapabilityStatement is served without one."
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
        "rest": [rest]
    })
}

pub async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Capabilities);
    let result = ex
        .precondition()
        .map(|_| Reply::new(StatusCode::OK, Body::Resource(state.capability.clone())));
    ex.finish(&state, result).await
}
