//! `GET /fhir/Patient/{id}/$disclosures?start=DATE&end=DATE`: a patient's
//! accounting of disclosures (HIPAA 164.528, DESIGN section 12), a `searchset`
//! Bundle of the AuditEvents recording access to that patient's data, denied
//! attempts included, oldest first. It is the AuditEvent search
//! `patient=Patient/{id}&date=ge{start}&date=le{end}&_sort=date`
//! ([`crate::audit::disclosures::search_params`]) run by the search handler, so
//! paging, `_count`, `_format` and the audit indexer's catch-up are the same;
//! page links continue as `AuditEvent?_cursor=...`.
//!
//! Access: `AccessContext::decide_disclosures` (every AuditEvent: the
//! `compliance` and `admin` roles or a `system/AuditEvent.rs` client); the call
//! is audited (an `operation` event naming `disclosures`, with the query, and no
//! patient entity: a report about a patient is not an access to their record,
//! and would otherwise list itself in the next report).

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::exchange::{Exchange, Reply};
use super::search::audit_event_search;
use super::AppState;
use crate::audit::disclosures::{self, Period};
use crate::audit::Interaction;

/// What `$disclosures` takes besides `start` and `end`: result controls.
const CONTROLS: [&str; 3] = ["_count", "_format", "_pretty"];

pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("disclosures".into()));
    ex.audit.query = Some(super::exchange::path_and_query(&req));
    ex.audit.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
    let result = run(&state, &mut ex, &path).await;
    ex.finish(&state, result).await
}

async fn run(state: &AppState, ex: &mut Exchange, id: &str) -> Result<Reply, ApiError> {
    ex.precondition()?;
    ex.ctx
        .decide_disclosures()
        .map_err(|d| ApiError::Forbidden(d.0))?;
    let patient = super::resources::resource_id(id)?;
    if let Some((k, _)) =
        ex.query.0.iter().find(|(k, _)| {
            !matches!(k.as_str(), "start" | "end") && !CONTROLS.contains(&k.as_str())
        })
    {
        return Err(ApiError::bad_request(
            "not-supported",
            format!(
                "`{}` is not a parameter of $disclosures (start, end, _count, _format, _pretty)",
                crate::fhir::types::truncate(k, 60)
            ),
        ));
    }
    for name in ["start", "end"] {
        if ex.query.0.iter().filter(|(k, _)| k == name).count() > 1 {
            return Err(ApiError::bad_request(
                "invalid",
                format!("`{name}` is given more than once"),
            ));
        }
    }
    let period = Period::parse(ex.query.get("start"), ex.query.get("end"), ("start", "end"))
        .map_err(|e| ApiError::bad_request("value", e.to_string()))?;
    let params = disclosures::search_params(&patient, &period);
    // The search reads its parameters from `params`; the request keeps only its
    // result controls (`_count`, `_format`, `_pretty`).
    ex.query.0.retain(|(k, _)| CONTROLS.contains(&k.as_str()));
    audit_event_search(state, ex, params).await
}
