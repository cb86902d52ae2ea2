//! The instance and type interactions: create, read, vread, update, delete.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{read_body, Body, Exchange, Reply};
use super::negotiate::{self, parse_etag};
use super::write::{self, version_headers};
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::bundle::{Done, Method, Payload, Target};
use crate::config::ValidationMode;
use crate::fhir::summary::{self, Subset};
use crate::fhir::{self, Id, Issue, ResourceType, VersionId};
use crate::store::StoredVersion;

/// A resource type named in the URL, checked against the loaded model.
pub fn resource_type(state: &AppState, name: &str) -> Result<ResourceType, ApiError> {
    state.model.resource_type(name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "`{}` is not a resource type this server knows",
            fhir::types::truncate(name, 80)
        ))
    })
}

/// A logical id from the URL.
pub fn resource_id(id: &str) -> Result<Id, ApiError> {
    Id::parse(id).map_err(|m| ApiError::bad_request("value", m))
}

pub(super) fn http_date(micros: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
    httpdate::fmt_http_date(t)
}

fn subset(ex: &Exchange) -> Result<Subset, ApiError> {
    Subset::from_query(ex.query.get("_summary"), ex.query.get("_elements"))
        .map_err(|m| ApiError::bad_request("value", m))
}

fn body_of(state: &AppState, stored: StoredVersion, subset: &Subset) -> Result<Body, ApiError> {
    if *subset == Subset::Full {
        return Ok(Body::Stored(stored.body));
    }
    let v: Value =
        serde_json::from_slice(&stored.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Body::Resource(summary::apply(&state.model, &v, subset)))
}

fn patients_of(state: &AppState, resource_type: &str, id: &str, body: &[u8]) -> Vec<String> {
    if resource_type == "Patient" {
        return state.compartment.patients_of("Patient", Some(id), None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => state
            .compartment
            .patients_of(resource_type, Some(id), Some(&v)),
        Err(_) => Vec::new(),
    }
}

/// The validators of a conditional read (`If-None-Match`, `If-Modified-Since`), from
/// the request's headers or a Bundle entry's `ifNoneMatch`/`ifModifiedSince`.
#[derive(Debug, Default, Clone)]
pub struct ReadConditions {
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

impl ReadConditions {
    pub fn of(headers: &HeaderMap) -> ReadConditions {
        let text = |name| {
            headers
                .get(name)
                .and_then(|h: &header::HeaderValue| h.to_str().ok())
                .map(str::to_string)
        };
        ReadConditions {
            if_none_match: text(header::IF_NONE_MATCH),
            if_modified_since: text(header::IF_MODIFIED_SINCE),
        }
    }
}

/// True when `If-None-Match` or `If-Modified-Since` says the client is current.
fn not_modified(cond: &ReadConditions, version: i64, last_updated: i64) -> bool {
    if let Some(inm) = &cond.if_none_match {
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || parse_etag(t) == Some(version));
    }
    if let Some(ims) = &cond.if_modified_since {
        if let Ok(since) = httpdate::parse_http_date(ims) {
            let since = since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            return last_updated / 1_000_000 <= since;
        }
    }
    false
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Read);
    let cond = ReadConditions::of(req.headers());
    let result = read_inner(&state, &cond, &mut ex, &path.0, &path.1, None).await;
    ex.finish(&state, result).await
}

pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Vread);
    let result = async {
        let v = VersionId::parse(&path.2).map_err(ApiError::NotFound)?;
        read_inner(
            &state,
            &ReadConditions::of(req.headers()),
            &mut ex,
            &path.0,
            &path.1,
            Some(v.0),
        )
        .await
    }
    .await;
    ex.finish(&state, result).await
}

/// Read and vread (also of Bundle entries): the current or a given version, 404/410,
/// a conditional read's 304, `_summary`/`_elements`.
pub(super) async fn read_inner(
    state: &AppState,
    cond: &ReadConditions,
    ex: &mut Exchange,
    rt: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Reply, ApiError> {
    ex.precondition()?;
    let rt = resource_type(state, rt)?;
    let id = resource_id(id)?;
    ex.audit.resource_type = Some(rt.to_string());
    ex.audit.id = Some(id.to_string());
    ex.audit.version = version;
    let subset = subset(ex)?;
    ex.ctx
        .decide(&rt, Action::Read)
        .map_err(|d| ApiError::Forbidden(d.0))?;
    let stored = if rt == crate::audit::RESOURCE_TYPE {
        // AuditEvents have one version, kept in the audit log.
        let id = id.to_string();
        match version {
            Some(v) if v != 1 => None,
            _ => state.store.call(move |s| s.audit_event(&id)).await?,
        }
    } else {
        state
            .store
            .read_now(&ex.ctx, &rt, id.as_str(), version)
            .await?
    };
    let stored = stored.ok_or_else(|| match version {
        Some(v) => ApiError::NotFound(format!("{rt}/{id} has no version {v}")),
        None => ApiError::NotFound(format!("{rt}/{id} does not exist")),
    })?;
    ex.audit.version = Some(stored.version);
    if stored.deleted {
        return Err(ApiError::Gone(format!(
            "{rt}/{id} was deleted (version {})",
            stored.version
        )));
    }
    ex.audit.patients = patients_of(state, &rt, id.as_str(), &stored.body);
    let (v, lu) = (stored.version, stored.last_updated);
    if version.is_none() && not_modified(cond, v, lu) {
        return Ok(version_headers(
            Reply::new(StatusCode::NOT_MODIFIED, Body::Empty),
            v,
            lu,
        ));
    }
    let body = body_of(state, stored, &subset)?;
    Ok(version_headers(Reply::new(StatusCode::OK, body), v, lu))
}

/// `Prefer: return=minimal | representation | OperationOutcome`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Return {
    Minimal,
    Representation,
    Outcome,
}

pub(super) fn prefer_return(req: &HttpRequest) -> Return {
    prefer_return_asked(req).unwrap_or(Return::Representation)
}

/// The `return` preference the client stated, if any.
pub(super) fn prefer_return_asked(req: &HttpRequest) -> Option<Return> {
    let prefer = req
        .headers()
        .get_all("prefer")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .find_map(|p| p.strip_prefix("return=").map(str::to_string));
    match prefer.as_deref()? {
        "minimal" => Some(Return::Minimal),
        "operationoutcome" => Some(Return::Outcome),
        "representation" => Some(Return::Representation),
        _ => None,
    }
}

/// Bodies up to this size are parsed and validated on the HTTP worker (a hop to
/// the blocking pool costs more than that work); larger ones on the blocking
/// pool, so a large or slow body never holds a worker that cheap requests need.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// The resource of a write, read and checked: format, strict structure, type,
/// shape bounds, the URL's id (`url_id`, for an update), then validation
/// (`validation.*`).
pub(super) async fn read_resource(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    bytes: Vec<u8>,
    rt: &str,
    url_id: Option<String>,
) -> Result<Value, ApiError> {
    let format = negotiate::request_format(req)?;
    let small = bytes.len() <= INLINE_BODY_BYTES;
    let work = {
        let state = state.clone();
        let rt = rt.to_string();
        move || -> Result<Value, ApiError> {
            let resource = parse_body(&state, format, &bytes, &rt)?;
            if let Some(id) = &url_id {
                check_url_id(&rt, id, &resource)?;
            }
            super::validate::check_write(&state, &rt, &resource)?;
            Ok(resource)
        }
    };
    if small {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the body failed: {e}")))?
}

/// R4 3.1.0.4: an update's body carries the id of its URL.
fn check_url_id(rt: &str, id: &str, resource: &Value) -> Result<(), ApiError> {
    match resource.get("id").and_then(|i| i.as_str()) {
        Some(body_id) if body_id == id => Ok(()),
        Some(body_id) => Err(ApiError::BadRequest(vec![Issue::error(
            "invalid",
            format!("the body's id `{body_id}` differs from the id in the URL `{id}`"),
        )
        .at(format!("{rt}.id"))])),
        None => Err(ApiError::BadRequest(vec![Issue::error(
            "required",
            "an update must carry the resource id in the body",
        )
        .at(format!("{rt}.id"))])),
    }
}

/// Reads and checks the resource in the body: format, strict structure, type,
/// shape bounds (`server.max_elements`, `server.max_array_items`).
fn parse_body(
    state: &AppState,
    format: fhir::Format,
    bytes: &[u8],
    rt: &str,
) -> Result<Value, ApiError> {
    let value = if state.settings.validation.mode == ValidationMode::Off {
        fhir::read_wire(&state.model, bytes, format)
    } else {
        fhir::parse_resource(&state.model, bytes, format)
    }
    .map_err(ApiError::BadRequest)?;
    fhir::shape::check(&value, state.settings.server.shape_limits())
        .map_err(|i| ApiError::BadRequest(vec![i]))?;
    let body_type = value
        .get("resourceType")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    if body_type != rt {
        return Err(ApiError::BadRequest(vec![Issue::error(
            "invalid",
            format!("the body is a {body_type}, but the URL names {rt}"),
        )
        .at(body_type.to_string())]));
    }
    Ok(value)
}

pub async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Create);
    let result = async {
        ex.precondition()?;
        let rt = resource_type(&state, &path)?;
        ex.audit.resource_type = Some(rt.to_string());
        if let Some(why) = crate::access::read_only(&rt) {
            return Err(ApiError::MethodNotAllowed(why.into()));
        }
        let if_none_exist = match req.headers().get("if-none-exist") {
            None => None,
            Some(h) => Some(
                h.to_str()
                    .map_err(|_| {
                        ApiError::bad_request("value", "If-None-Exist must be a query string")
                    })?
                    .to_string(),
            ),
        };
        let bytes = read_body(&state, &req, payload).await?;
        let resource = read_resource(&state, &req, bytes, &rt, None).await?;
        ex.audit.patients = state.compartment.patients_of(&rt, None, Some(&resource));
        let entry = write::entry(
            Method::Post,
            Target::Type(rt.to_string()),
            rt.to_string(),
            Payload::Resource(resource),
            None,
            if_none_exist,
        );
        let done = write::run(&state, &req, &mut ex, entry).await?;
        if matches!(done, Done::Matched { .. }) {
            ex.audit.interaction = Interaction::Read;
        }
        write::reply(&state, &req, done)
    }
    .await;
    ex.finish(&state, result).await
}

/// The checked target of an update, patch or delete: type and id from the URL, put in the
/// audit record; AuditEvents are read-only (405).
pub(super) fn writable_instance(
    state: &AppState,
    ex: &mut Exchange,
    path: &(String, String),
) -> Result<(ResourceType, Id), ApiError> {
    ex.precondition()?;
    let rt = resource_type(state, &path.0)?;
    let id = resource_id(&path.1)?;
    ex.audit.resource_type = Some(rt.to_string());
    ex.audit.id = Some(id.to_string());
    if let Some(why) = crate::access::read_only(&rt) {
        return Err(ApiError::MethodNotAllowed(why.into()));
    }
    Ok((rt, id))
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Update);
    let result = async {
        let (rt, id) = writable_instance(&state, &mut ex, &path)?;
        let if_match = if_match(&req)?;
        let bytes = read_body(&state, &req, payload).await?;
        // R4 3.1.0.4: the body carries the id of the URL (checked before validation).
        let resource = read_resource(&state, &req, bytes, &rt, Some(id.to_string())).await?;
        ex.audit.patients = state
            .compartment
            .patients_of(&rt, Some(id.as_str()), Some(&resource));
        let entry =
            write::instance_entry(Method::Put, &rt, &id, Payload::Resource(resource), if_match);
        let done = write::run(&state, &req, &mut ex, entry).await?;
        write::reply(&state, &req, done)
    }
    .await;
    ex.finish(&state, result).await
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Delete);
    let result = async {
        let (rt, id) = writable_instance(&state, &mut ex, &path)?;
        let if_match = if_match(&req)?;
        if rt == "Patient" {
            ex.audit.patients = vec![format!("Patient/{id}")];
        }
        let entry = write::instance_entry(Method::Delete, &rt, &id, Payload::None, if_match);
        let done = write::run(&state, &req, &mut ex, entry).await?;
        write::reply(&state, &req, done)
    }
    .await;
    ex.finish(&state, result).await
}

/// An OperationOutcome with one informational issue.
pub(super) fn informational(msg: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": msg}]})
}

pub(super) fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    match req.headers().get(header::IF_MATCH) {
        None => Ok(None),
        Some(h) => {
            let v = h.to_str().ok().and_then(parse_etag).ok_or_else(|| {
                ApiError::bad_request("value", "If-Match must be a version ETag such as W/\"3\"")
            })?;
            Ok(Some(v))
        }
    }
}
