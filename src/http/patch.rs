//! `PATCH /fhir/[type]/[id]` (FHIR R4 http 3.1.0.7): a JSON Patch
//! (`application/json-patch+json`) or a FHIRPath Patch (a Parameters resource as
//! `application/fhir+json` or `application/fhir+xml`) applied to the current version. The
//! result is judged like any written resource and stored through the same write as update,
//! in one transaction with its AuditEvent, history method `PATCH`. The read-modify-write is
//! race-safe: the store must still find the version that was patched, and when another write
//! got there first the patch is applied again to the newer version (or, with `If-Match`,
//! answered 412), so no update is lost.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::error::ApiError;
use super::exchange::{read_body, Exchange, Reply};
use super::negotiate;
use super::resources::{if_match, writable_instance, write, write_reply};
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::fhir::{self, Format, Issue};
use crate::patch::{FhirPathPatch, JsonPatch, Patch, PatchError};
use crate::store::WriteKind;

/// How often a patch is applied again after losing a race to another write of the same
/// resource before the client is told to retry (409).
const PATCH_ATTEMPTS: usize = 5;

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
    state: &AppState,
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
    for attempt in 0..PATCH_ATTEMPTS {
        let current = state
            .store
            .read_now(&ex.ctx, &rt, id.as_str(), None)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("{rt}/{id} does not exist")))?;
        ex.audit.version = Some(current.version);
        if current.deleted {
            return Err(ApiError::Gone(format!(
                "{rt}/{id} was deleted (version {})",
                current.version
            )));
        }
        if let Some(expected) = if_match.filter(|v| *v != current.version) {
            return Err(ApiError::PreconditionFailed(format!(
                "If-Match names version {expected}, but the current version is {}",
                current.version
            )));
        }
        let resource: Value = serde_json::from_slice(&current.body)
            .map_err(|e| ApiError::Internal(format!("stored {rt}/{id} is not JSON: {e}")))?;
        // A failed patch is audited against the patient whose record it tried to change.
        ex.audit.patients = state
            .compartment
            .patients_of(&rt, Some(id.as_str()), Some(&resource));
        let patched = patch
            .apply(&state.model, &resource)
            .map_err(|e| patch_error(&e, kind))?;
        keeps_identity(&rt, id.as_str(), &patched)?;
        validate_patched(state, &patched)?;
        ex.audit.patients = state
            .compartment
            .patients_of(&rt, Some(id.as_str()), Some(&patched));
        // The version patched is the version the store must still find.
        let written = write(
            state,
            ex,
            &rt,
            id.as_str(),
            WriteKind::Update {
                if_match: Some(current.version),
            },
            "PATCH",
            Some(patched),
            None,
        )
        .await;
        match written {
            Ok(result) => return Ok(write_reply(state, req, &rt, id.as_str(), result)),
            // Another write committed after the read: with `If-Match` the client asked for
            // the version it named, which is gone; without, patch the newer version.
            // (An update with an expected version fails with 412 only for that reason.)
            Err(ApiError::PreconditionFailed(_)) if if_match.is_none() => {
                tracing::debug!(
                    attempt,
                    resource.type = rt.as_str(),
                    "patch raced with another write; applying it to the newer version"
                );
            }
            Err(ApiError::PreconditionFailed(_)) => {
                return Err(ApiError::PreconditionFailed(format!(
                    "{rt}/{id} changed while the patch was applied; If-Match no longer names the current version"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict(format!(
        "{rt}/{id} kept changing while the patch was applied ({PATCH_ATTEMPTS} attempts); try again"
    )))
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

/// A patch may change everything but what names the resource: its type and id.
fn keeps_identity(rt: &str, id: &str, patched: &Value) -> Result<(), ApiError> {
    match crate::bundle::identity_change(rt, id, patched) {
        Some(issue) => Err(ApiError::Unprocessable(vec![issue])),
        None => Ok(()),
    }
}

/// The one place where a patched resource is judged before it is stored: nothing is stored
/// and the answer is 422 when it fails: the strict structural check, then the same gate
/// create and update pass (`validate::check_write`).
fn validate_patched(state: &AppState, patched: &Value) -> Result<(), ApiError> {
    let issues = fhir::json::check_resource(&state.model, patched);
    if fhir::outcome::has_errors(&issues) {
        return Err(ApiError::Unprocessable(
            issues
                .into_iter()
                .map(|mut i| {
                    i.diagnostics = format!("the patched resource is invalid: {}", i.diagnostics);
                    i
                })
                .collect(),
        ));
    }
    let rt = patched
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    super::validate::check_write(state, rt, patched)
}
