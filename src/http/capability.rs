//! `GET /fhir/metadata`: a CapabilityStatement that states exactly what this
//! build implements, built once at start-up from the loaded resource types.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::exchange::{Body, Exchange, Reply};
use super::AppState;
use crate::audit::Interaction;
use crate::fhir::Model;

pub fn build(model: &Model, base_url: &str, auth_enabled: bool) -> Value {
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
            json!({
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
                "conditionalDelete": if t == "AuditEvent" { "not-supported" } else { "single" }
            })
        })
        .collect();
    let mut rest = json!({
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}]
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
        // JSON Patch, and FHIRPath Patch as a Parameters resource in either format.
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
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
