//! `PATCH /fhir/[type]/[id]` (FHIR R4 http 3.1.0.7): a JSON Patch
//! (`application/json-patch+json`) or a FHIRPath Patch (a Parameters resource as
//! `application/fhir+json` or `application/fhir+xml`) applied to the current version. The
//! request is one PATCH entry of the `bundle` module, the same code as a PATCH entry of a
//! transaction: inside the write transaction the current version is read, patched, judged
//! like any written resource and stored as the next version with its AuditEvent, history
//! method `PATCH`. The read-modify-write is race-safe: the store must still find the
//! version that was patched, and when another write got there first the transaction runs
//! again on the newer version (or, with `If-Match`, answers 412), so no update is lost.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::exchange::{read_body, Exchange, Reply};
use super::negotiate;
use super::resources::{if_match, writable_instance};
use super::write;
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::bundle::{Method, Payload};
use crate::fhir::{self, Format, Issue};
use crate::patch::{FhirPathPatch, JsonPatch, Patch, PatchError};

const JSON_PATCH: &str = "application/json-patch+json";

/// The kind of patch document, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchKind {
    Json,
    FhirPath(Format),
}

pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Patch);
    let result = patch_instance(&state, &req, &mut ex, &path, payload).await;
    ex.finish(&state, result).await
}

async fn patch_instance(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    ex: &mut Exchange,
    path: &(String, String),
    payload: web::Payload,
) -> Result<Reply, ApiError> {
    let (rt, id) = writable_instance(state, ex, path)?;
    ex.ctx
        .decide(&rt, Action::Update)
        .map_err(|d| ApiError::Forbidden(d.0))?;
    let kind = patch_kind(req)?;
    let if_match = if_match(req)?;
    let bytes = read_body(state, req, payload).await?;
    let patch = parse_patch(state, kind, &bytes)?;
    let entry = write::instance_entry(Method::Patch, &rt, &id, Payload::Patch(patch), if_match);
    let done = write::run(state, req, ex, entry).await?;
    write::reply(state, req, done)
}

/// JSON Patch by its own media type; FHIRPath Patch is a Parameters resource in a FHIR
/// format. XML Patch (`application/xml-patch+xml`) is not implemented.
pub(super) fn patch_kind(req: &HttpRequest) -> Result<PatchKind, ApiError> {
    let unsupported = |what: String| {
        ApiError::UnsupportedMediaType(format!(
            "{what}; send a JSON Patch as {JSON_PATCH} or a FHIRPath Patch (a Parameters resource) as application/fhir+json or application/fhir+xml"
        ))
    };
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match essence.as_deref() {
        Some(JSON_PATCH) => Ok(PatchKind::Json),
        Some("application/xml-patch+xml") => Err(unsupported("XML Patch is not supported".into())),
        None => Err(unsupported("the request has no Content-Type".into())),
        Some(other) => negotiate::request_format(req)
            .map(PatchKind::FhirPath)
            .map_err(|_| {
                unsupported(format!(
                    "Content-Type `{}` is not a patch format",
                    fhir::types::truncate(other, 80)
                ))
            }),
    }
}

/// Reads the patch document: malformed ones are 400, before anything is read from the store.
pub(super) fn parse_patch(
    state: &AppState,
    kind: PatchKind,
    bytes: &[u8],
) -> Result<Patch, ApiError> {
    match kind {
        PatchKind::Json => {
            let doc = fhir::json::parse_json(bytes).map_err(|i| ApiError::BadRequest(vec![i]))?;
            JsonPatch::parse(&doc)
                .map(Patch::Json)
                .map_err(|e| patch_error(&e, kind))
        }
        PatchKind::FhirPath(format) => {
            let parameters =
                fhir::parse_resource(&state.model, bytes, format).map_err(ApiError::BadRequest)?;
            FhirPathPatch::from_parameters(&state.model, &parameters)
                .map(Patch::FhirPath)
                .map_err(|e| patch_error(&e, kind))
        }
    }
}

/// A malformed patch document is 400; a patch that does not apply to this resource (a
/// failed `test`, a path that selects nothing where one element is needed) is 422. For a
/// FHIRPath Patch the issue points at the operation's parameter.
fn patch_error(e: &PatchError, kind: PatchKind) -> ApiError {
    let code = if e.is_malformed() {
        "invalid"
    } else {
        "processing"
    };
    let mut issue = Issue::error(code, e.describe());
    if let (PatchKind::FhirPath(_), Some(i)) = (kind, e.operation()) {
        issue = issue.at(format!("Parameters.parameter[{i}]"));
    }
    if e.is_malformed() {
        ApiError::BadRequest(vec![issue])
    } else {
        ApiError::Unprocessable(vec![issue])
    }
}
