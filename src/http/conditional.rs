//! Conditional interactions at the type level (R4 http.html): `PUT [type]?criteria`
//! (conditional update, 3.1.0.4.3), `DELETE [type]?criteria` (conditional delete,
//! 3.1.0.7.1; `single`) and `PATCH [type]?criteria`. Each is run as one entry by the
//! [`crate::bundle`] module, the same code that runs the conditional entries of a
//! transaction: the criteria are a full, strict search evaluated inside the write
//! transaction under an advisory lock on the criteria, so two nodes racing with the
//! same criteria cannot both create. The AuditEvent commits with the write.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::exchange::{read_body, Body, Exchange, Reply};
use super::patch::{parse_patch, patch_kind};
use super::resources::{
    deleted_reply, if_match, informational, parse_body, prefer_return, resource_type, write_reply,
    Return,
};
use super::AppState;
use crate::audit::Interaction;
use crate::bundle::{self, Done, Entry, Method, Origin, Payload, Target};
use crate::store::WriteResult;

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
            (Some(bytes), None) => Payload::Resource(parse_body(&state, &req, &bytes, &rt)?),
            (None, _) => Payload::None,
        };
        let entry = entry(&req, method, &rt, content, if_match);
        match run(&state, &req, &mut ex, entry).await? {
            Done::Stored {
                resource_type,
                id,
                version,
                last_updated,
                created,
                body,
            } => Ok(write_reply(
                &state,
                &req,
                &resource_type,
                &id,
                WriteResult {
                    rid: 0,
                    version,
                    last_updated,
                    created,
                    unchanged: false,
                    body: body.unwrap_or_default(),
                    existing: None,
                },
            )),
            Done::Deleted {
                resource_type,
                id,
                version,
            } => Ok(deleted_reply(&resource_type, &id, version)),
            // R4 3.1.0.7.1: no match is "an ordinary delete" of nothing: 200, and the
            // outcome says so.
            Done::NoMatch { resource_type } => Ok(Reply::new(
                StatusCode::OK,
                Body::Resource(informational(&format!(
                    "no {resource_type} matched the criteria; nothing was deleted"
                ))),
            )),
            other => Err(ApiError::Internal(format!(
                "a conditional {} ended as {other:?}",
                method.as_str()
            ))),
        }
    }
    .await;
    ex.finish(&state, result).await
}

/// The checked type of the URL; AuditEvents are read-only (405).
fn target_type(state: &AppState, ex: &mut Exchange, path: &str) -> Result<String, ApiError> {
    ex.precondition()?;
    let rt = resource_type(state, path)?;
    ex.audit.resource_type = Some(rt.clone());
    if rt == "AuditEvent" {
        return Err(ApiError::MethodNotAllowed(
            "AuditEvents are read-only".into(),
        ));
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
    Entry {
        origin: Origin::Request,
        full_url: None,
        method,
        url: format!("{rt}?{query}"),
        target: Target::Search {
            resource_type: rt.to_string(),
            query,
        },
        payload,
        if_match,
        if_none_exist: None,
        if_none_match: None,
        if_modified_since: None,
    }
}

/// Runs the entry on the blocking pool; its AuditEvent commits with the write (a
/// failure is audited by the exchange).
async fn run(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    ex: &mut Exchange,
    entry: Entry,
) -> Result<Done, ApiError> {
    let st = state.clone();
    let ctx = ex.ctx.clone();
    let return_bodies = prefer_return(req) == Return::Representation;
    let outcome = state
        .store
        .call(move |_| {
            Ok(bundle::process_entry(
                &st.bundle_env(&ctx, return_bodies),
                &entry,
                None,
            ))
        })
        .await?;
    match outcome {
        Ok(done) => {
            ex.audit_committed = true;
            match &done {
                Done::Stored { id, version, .. } => {
                    ex.audit.id = Some(id.clone());
                    ex.audit.version = Some(*version);
                }
                Done::Deleted { id, version, .. } => {
                    ex.audit.id = Some(id.clone());
                    ex.audit.version = *version;
                }
                _ => {}
            }
            Ok(done)
        }
        Err(failed) => {
            let (e, record) = *failed;
            ex.audit.id = record.id;
            ex.audit.patients = record.patients;
            Err(ApiError::from(e))
        }
    }
}
