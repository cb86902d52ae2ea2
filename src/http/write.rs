//! The HTTP side of every REST write: create, update, patch and delete of one
//! resource, and their conditional forms, become one Bundle entry
//! ([`crate::bundle::Entry`], origin `Request`) that the `bundle` module
//! processes exactly as it processes the entries of a transaction: the same
//! planning, access decision, criteria, reference rewriting, index extraction,
//! write path and AuditEvent (committed with the data). Here the request is
//! turned into the entry and the entry's outcome into the answer.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::resources::{http_date, informational, prefer_return, Return};
use super::AppState;
use crate::bundle::{self, Done, Entry, Method, Origin, Payload, Target};
use crate::fhir::Id;

/// A REST write as one entry.
pub(super) fn entry(
    method: Method,
    target: Target,
    url: String,
    payload: Payload,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
) -> Entry {
    Entry {
        origin: Origin::Request,
        full_url: None,
        method,
        url,
        target,
        payload,
        if_match,
        if_none_exist,
        if_none_match: None,
        if_modified_since: None,
    }
}

/// A write of one instance (`[type]/[id]`) as one entry.
pub(super) fn instance_entry(
    method: Method,
    resource_type: &str,
    id: &Id,
    payload: Payload,
    if_match: Option<i64>,
) -> Entry {
    entry(
        method,
        Target::Instance {
            resource_type: resource_type.to_string(),
            id: id.clone(),
        },
        format!("{resource_type}/{id}"),
        payload,
        if_match,
        None,
    )
}

/// Runs the entry on the blocking pool. Its AuditEvent commits with the write;
/// a failure is audited by the exchange, with what the entry knew of it.
pub(super) async fn run(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    ex: &mut Exchange,
    entry: Entry,
) -> Result<Done, ApiError> {
    let st = state.clone();
    let ctx = ex.ctx.clone();
    let return_bodies = prefer_return(req) != Return::Minimal;
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
                Done::Stored { id, version, .. } | Done::Matched { id, version, .. } => {
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
            if record.id.is_some() {
                ex.audit.id = record.id;
            }
            if !record.patients.is_empty() {
                ex.audit.patients = record.patients;
            }
            Err(ApiError::from(e))
        }
    }
}

/// The answer to a processed write entry.
pub(super) fn reply(state: &AppState, req: &HttpRequest, done: Done) -> Result<Reply, ApiError> {
    match done {
        Done::Stored {
            resource_type,
            id,
            version,
            last_updated,
            created,
            body,
            ..
        } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!("{}/{resource_type}/{id}/_history/{version}", state.base_url);
            let body = match prefer_return(req) {
                Return::Minimal => Body::Empty,
                Return::Representation => Body::Stored(body.unwrap_or_default()),
                Return::Outcome => Body::Resource(informational(&format!(
                    "{resource_type}/{id} version {version} stored"
                ))),
            };
            let mut reply = version_headers(Reply::new(status, body), version, last_updated);
            // A new Subscription's secret, shown this once (DESIGN section 13).
            if created && resource_type == crate::subscription::rules::RESOURCE_TYPE {
                let secret = state.store.subscription_secret_of(&id, version)?;
                reply = reply.header(
                    header::HeaderName::from_static("x-fhirgate-subscription-secret"),
                    secret,
                );
            }
            Ok(if created {
                reply.header(header::LOCATION, location)
            } else {
                reply.header(header::CONTENT_LOCATION, location)
            })
        }
        // R4 3.1.0.8.1: a conditional create with one match is ignored: 200 and that
        // resource.
        Done::Matched {
            resource_type,
            id,
            version,
            last_updated,
            body,
        } => {
            let body = match (prefer_return(req), body) {
                (Return::Minimal, _) | (_, None) => Body::Empty,
                (_, Some(b)) => Body::Stored(b),
            };
            Ok(
                version_headers(Reply::new(StatusCode::OK, body), version, last_updated).header(
                    header::CONTENT_LOCATION,
                    format!("{}/{resource_type}/{id}/_history/{version}", state.base_url),
                ),
            )
        }
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
        Done::Read => Err(ApiError::Internal(
            "a write entry ended as a read".to_string(),
        )),
    }
}

/// `ETag` and `Last-Modified` of a version.
pub(super) fn version_headers(reply: Reply, version: i64, last_updated: i64) -> Reply {
    reply
        .header(header::ETAG, format!("W/\"{version}\""))
        .header(header::LAST_MODIFIED, http_date(last_updated))
}

/// The answer to a delete: 200 with an OperationOutcome, and the ETag of the deleted
/// version (None: the resource was deleted already).
pub(super) fn deleted_reply(rt: &str, id: &str, version: Option<i64>) -> Reply {
    let msg = match version {
        None => format!("{rt}/{id} was already deleted"),
        Some(v) => format!("{rt}/{id} deleted (version {v})"),
    };
    let reply = Reply::new(StatusCode::OK, Body::Resource(informational(&msg)));
    match version {
        Some(v) => reply.header(header::ETAG, format!("W/\"{v}\"")),
        None => reply,
    }
}
