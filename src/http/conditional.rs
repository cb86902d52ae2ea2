//! Conditional interactions at the type level (R4 http.html): `PUT [type]?criteria`
//! (conditional update, 3.1.0.4.3), `DELETE [type]?criteria` (conditional delete,
//! 3.1.0.7.1; `single`) and `PATCH [type]?criteria`. Each is run as one entry by the
//! [`crate::bundle`] module, the same code that runs the conditional entries of a
//! transaction: the criteria are a full, strict search evaluated inside the write
//! transaction under an advisory lock on the criteria, so two nodes racing with the
//! same criteria cannot both create. The AuditEvent commits with the write.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::exchange::{read_body, Exchange};
use super::patch::{parse_patch, patch_kind};
use super::resources::{if_match, read_resource, resource_type};
use super::write;
use super::AppState;
use crate::audit::Interaction;
use crate::bundle::{Entry, Method, Payload, Target};
use crate::fhir::ResourceType;

pub async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    conditional(req, path, Some(payload), state, Method::Put).await
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    conditional(req, path, None, state, Method::Delete).await
}

pub async fn patch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    conditional(req, path, Some(payload), state, Method::Patch).await
}

/// One conditional interaction: without criteria the URL answers as any other
/// (405); with them, the body read for its method, the entry run, the answer built.
async fn conditional(
    req: HttpRequest,
    path: web::Path<String>,
    payload: Option<web::Payload>,
    state: web::Data<AppState>,
    method: Method,
) -> HttpResponse {
    if req.query_string().is_empty() {
        return super::fhir_fallback(req, state).await;
    }
    let interaction = match method {
        Method::Put => Interaction::Update,
        Method::Patch => Interaction::Patch,
        _ => Interaction::Delete,
    };
    let mut ex = Exchange::begin(&state, &req, interaction);
    let result = async {
        let rt = target_type(&state, &mut ex, &path)?;
        let kind = match method {
            Method::Patch => Some(patch_kind(&req)?),
            _ => None,
        };
        let if_match = if_match(&req)?;
        let body = match payload {
            Some(p) => Some(read_body(&state, &req, p).await?),
            None => None,
        };
        let content = match (body, kind) {
            (Some(bytes), Some(kind)) => Payload::Patch(parse_patch(&state, kind, &bytes)?),
            (Some(bytes), None) => {
                Payload::Resource(read_resource(&state, &req, bytes, &rt, None).await?)
            }
            (None, _) => Payload::None,
        };
        let entry = entry(&req, method, &rt, content, if_match);
        let done = write::run(&state, &req, &mut ex, entry).await?;
        write::reply(&state, &req, done)
    }
    .await;
    ex.finish(&state, result).await
}

/// The checked type of the URL; AuditEvents are read-only (405).
fn target_type(state: &AppState, ex: &mut Exchange, path: &str) -> Result<ResourceType, ApiError> {
    ex.precondition()?;
    let rt = resource_type(state, path)?;
    ex.audit.resource_type = Some(rt.to_string());
    if let Some(why) = crate::access::read_only(&rt) {
        return Err(ApiError::MethodNotAllowed(why.into()));
    }
    Ok(rt)
}

/// The request as one entry; `_format` and `_pretty` are not criteria.
fn entry(
    req: &HttpRequest,
    method: Method,
    rt: &str,
    payload: Payload,
    if_match: Option<i64>,
) -> Entry {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(req.query_string().as_bytes())
                .filter(|(k, _)| k != "_format" && k != "_pretty"),
        )
        .finish();
    write::entry(
        method,
        Target::Search {
            resource_type: rt.to_string(),
            query: query.clone(),
        },
        format!("{rt}?{query}"),
        payload,
        if_match,
        None,
    )
}
