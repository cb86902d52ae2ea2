//! Bulk Data 2.0 `$export` over HTTP (DESIGN section 14): the kick-off at
//! system (`/fhir/$export`), patient (`/fhir/Patient/$export`) and group
//! (`/fhir/Group/{id}/$export`) level, by GET with query parameters or POST with
//! a Parameters body, always with `Prefer: respond-async` (202 and the status URL
//! in `Content-Location`); the status URL `/fhir/$export-status/{job}` (202 with
//! `X-Progress` while running, 200 with the manifest when done, DELETE cancels);
//! the files `/fhir/$export-file/{job}/{n}`, decrypted as they are sent.
//!
//! Access: the kick-off is decided by the caller's grant (bulk::export); status,
//! cancel and files answer only the client and user that started the job (any
//! other caller gets 404, as if there were no job), on every request. Each
//! kick-off, status look, cancel and download is audited; a download once more
//! per patient whose data the file holds (a BALP PatientQuery event each).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{path_and_query, read_body, Body, Exchange, Reply};
use super::resources::resource_id;
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::audit::{EXPORT_CANCEL, EXPORT_FILE};
use crate::bulk::export::{ExportError, KickOff, Level, NDJSON};
use crate::fhir::outcome::Severity;
use crate::fhir::Issue;

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Invalid { reason, .. } => ApiError::bad_request("invalid", reason),
            ExportError::Denied(m) => ApiError::Forbidden(m),
            ExportError::NotFound(m) => ApiError::NotFound(m),
            ExportError::Busy(message) => ApiError::TooManyRequests {
                message,
                retry_after: 60,
            },
            ExportError::Search(e) => e.into(),
            ExportError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "export failed");
                ApiError::Internal("the export could not be read".into())
            }
        }
    }
}

fn operation(name: &str) -> Interaction {
    Interaction::Operation(name.into())
}

/// The `Prefer` header's tokens (`respond-async`, `handling=strict`).
fn prefers(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all("prefer")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split([',', ';']))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

/// The kick-off parameters of a POST: a Parameters resource.
fn parameters_of(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid", m.to_string());
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| bad("the body of a POST kick-off is a Parameters resource in JSON"))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body of a POST kick-off is a Parameters resource"));
    }
    let mut pairs = Vec::new();
    for p in v
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("every parameter needs a name"))?;
        let value = p
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .map(|(_, v)| v)
            })
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Object(o) => o
                    .get("reference")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid",
                    format!(
                        "the parameter `{}` has no value fhirgate can read",
                        crate::fhir::types::truncate(name, 60)
                    ),
                )
            })?;
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}

async fn kick_off(
    state: &AppState,
    req: &HttpRequest,
    ex: &mut Exchange,
    level: Level,
    group: Option<String>,
    body: Option<web::Payload>,
) -> Result<Reply, ApiError> {
    ex.precondition()?;
    let prefer = prefers(req);
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(ApiError::bad_request(
            "invalid",
            "a Bulk Data kick-off needs the header `Prefer: respond-async`",
        ));
    }
    let strict = prefer.iter().any(|p| p == "handling=strict");
    if let Some(g) = &group {
        resource_id(g)?;
    }
    let params = match body {
        Some(payload) => parameters_of(&read_body(state, req, payload).await?)?,
        None => ex.query.0.clone(),
    };
    let exporter = state.exporter.clone();
    let ctx = ex.ctx.clone();
    let request = format!(
        "{}{}",
        state.base_url.trim_end_matches("/fhir"),
        path_and_query(req)
    );
    let accepted = state
        .store
        .call(move |_| {
            Ok(exporter.kick_off(
                &ctx,
                KickOff {
                    level,
                    group: group.as_deref(),
                    params: &params,
                    strict,
                    request,
                },
            ))
        })
        .await??;
    let url = format!("{}/$export-status/{}", state.base_url, accepted.job_id);
    let mut issues = vec![Issue {
        severity: Severity::Information,
        ..Issue::error(
            "informational",
            format!("the export was accepted; its status is at {url}"),
        )
    }];
    issues.extend(accepted.warnings.into_iter().map(|w| Issue {
        severity: Severity::Warning,
        ..Issue::error("not-supported", w)
    }));
    Ok(Reply::new(
        StatusCode::ACCEPTED,
        Body::Resource(crate::fhir::operation_outcome(&issues)),
    )
    .header(header::CONTENT_LOCATION, url))
}

async fn kick_off_at(
    req: HttpRequest,
    state: web::Data<AppState>,
    level: Level,
    group: Option<String>,
    body: Option<web::Payload>,
) -> HttpResponse {
    let mut ex = Exchange::begin_bulk(&state, &req, operation("export"));
    ex.audit.query = Some(path_and_query(&req));
    if let Some(g) = &group {
        ex.audit.resource_type = Some("Group".into());
        ex.audit.id = Some(g.clone());
    } else if level == Level::Patient {
        ex.audit.resource_type = Some("Patient".into());
    }
    let result = kick_off(&state, &req, &mut ex, level, group, body).await;
    ex.finish(&state, result).await
}

pub async fn system_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    kick_off_at(req, state, Level::System, None, None).await
}

pub async fn system_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> HttpResponse {
    kick_off_at(req, state, Level::System, None, Some(body)).await
}

pub async fn patient_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    kick_off_at(req, state, Level::Patient, None, None).await
}

pub async fn patient_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> HttpResponse {
    kick_off_at(req, state, Level::Patient, None, Some(body)).await
}

pub async fn group_get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    kick_off_at(req, state, Level::Group, Some(path.into_inner()), None).await
}

pub async fn group_post(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    body: web::Payload,
) -> HttpResponse {
    kick_off_at(
        req,
        state,
        Level::Group,
        Some(path.into_inner()),
        Some(body),
    )
    .await
}

fn no_job() -> ApiError {
    ApiError::NotFound("no export job has this id (or it was cancelled or has expired)".into())
}

/// The manifest of a finished job, or its progress.
enum Status {
    Running(String),
    Done(Value),
}

async fn status_of(state: &AppState, ex: &mut Exchange, id: String) -> Result<Status, ApiError> {
    ex.precondition()?;
    ex.audit.id = Some(id.clone());
    let exporter = state.exporter.clone();
    let ctx = ex.ctx.clone();
    let found = state
        .store
        .call(move |_| {
            Ok(exporter.job_for(&ctx, &id).and_then(|j| match j {
                Some((job, spec)) => {
                    let files = exporter.files(&job.job_id)?;
                    Ok(Some((job, spec, files)))
                }
                None => Ok(None),
            }))
        })
        .await??;
    let (job, spec, files) = found.ok_or_else(no_job)?;
    match job.status.as_str() {
        "done" => {}
        "failed" => {
            return Err(ApiError::Internal(format!(
                "the export failed: {}",
                job.error.as_deref().unwrap_or("no reason was recorded")
            )))
        }
        _ => {
            return Ok(Status::Running(format!(
                "{} resources in {} files; type {} of {}",
                job.exported,
                job.files,
                (job.type_index + 1).min(spec.types.len() as i64),
                spec.types.len()
            )))
        }
    }
    let output: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "type": f.resource_type,
                "url": format!("{}/$export-file/{}/{}", state.base_url, job.job_id, f.seq),
                "count": f.resources,
            })
        })
        .collect();
    Ok(Status::Done(json!({
        "transactionTime": crate::fhir::instant(job.transaction_time),
        "request": spec.request,
        "requiresAccessToken": state.settings.auth.enabled,
        "output": output,
        "error": [],
    })))
}

pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin_bulk(&state, &req, operation("export-status"));
    ex.audit.query = Some(path_and_query(&req));
    let result = status_of(&state, &mut ex, path.into_inner()).await;
    let status = match result {
        Ok(s) => s,
        Err(e) => return ex.finish(&state, Err(e)).await,
    };
    let recorded = ex
        .record(&state, &Ok(Reply::new(StatusCode::OK, Body::Empty)))
        .await;
    if let Err(e) = recorded {
        return ex.error_response(&state, &e);
    }
    match status {
        Status::Running(progress) => HttpResponse::Accepted()
            .insert_header(("X-Progress", progress))
            .insert_header((header::RETRY_AFTER, "2"))
            .finish(),
        Status::Done(manifest) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::EXPIRES, expires(&state)))
            .body(manifest.to_string()),
    }
}

/// When a finished job's files go (`bulk.retention_hours` from now, at most).
fn expires(state: &AppState) -> String {
    let hours = state.settings.bulk.retention_hours;
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(hours * 3_600);
    httpdate::fmt_http_date(at)
}

pub async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin_bulk(&state, &req, operation(EXPORT_CANCEL));
    ex.audit.query = Some(path_and_query(&req));
    let result = async {
        ex.precondition()?;
        let id = path.into_inner();
        let exporter = state.exporter.clone();
        let ctx = ex.ctx.clone();
        let removed = state
            .store
            .call(move |_| {
                Ok(match exporter.job_for(&ctx, &id) {
                    Ok(Some((job, _))) => exporter.cancel(&job.job_id).map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                })
            })
            .await??;
        match removed {
            Some(_) => Ok(Reply::new(StatusCode::ACCEPTED, Body::Empty)),
            None => Err(no_job()),
        }
    }
    .await;
    ex.finish(&state, result).await
}

pub async fn file(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin_bulk(&state, &req, operation(EXPORT_FILE));
    ex.audit.query = Some(path_and_query(&req));
    let (id, seq) = path.into_inner();
    let opened = async {
        ex.precondition()?;
        let seq: i64 = seq.parse().map_err(|_| no_job())?;
        let exporter = state.exporter.clone();
        let ctx = ex.ctx.clone();
        let found = state
            .store
            .call(move |_| {
                Ok(match exporter.job_for(&ctx, &id) {
                    Ok(Some((job, _))) => exporter.open_file(&job.job_id, seq),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                })
            })
            .await??;
        found.ok_or_else(no_job)
    }
    .await;
    let (file, patients, reader) = match opened {
        Ok(f) => f,
        Err(e) => return ex.finish(&state, Err(e)).await,
    };
    // Authorized again now: a token of the owner that may no longer search the
    // file's type does not get it.
    if let Err(d) = ex.ctx.decide(&file.resource_type, Action::Search) {
        return ex.finish(&state, Err(ApiError::Forbidden(d.0))).await;
    }
    ex.audit.resource_type = Some(file.resource_type.clone());
    ex.audit.page_patients = patients;
    // The download is on record before a byte of it leaves.
    let recorded = ex
        .record(&state, &Ok(Reply::new(StatusCode::OK, Body::Empty)))
        .await;
    if let Err(e) = recorded {
        return ex.error_response(&state, &e);
    }
    // One frame per blocking call: a slow client holds no thread while it reads.
    let span = tracing::Span::current();
    let stream = futures_util::stream::unfold(Some(reader), move |reader| {
        let span = span.clone();
        async move {
            let mut reader = reader?;
            let read = tokio::task::spawn_blocking(move || {
                let _in = span.enter();
                loop {
                    match reader.next_frame() {
                        Ok(Some(plain)) if plain.is_empty() => continue,
                        other => return (reader, other),
                    }
                }
            })
            .await;
            match read {
                Ok((reader, Ok(Some(plain)))) => Some((Ok(web::Bytes::from(plain)), Some(reader))),
                Ok((_, Ok(None))) => None,
                Ok((_, Err(e))) => {
                    // The client sees a cut-off body, not a file with a hole.
                    tracing::error!(error = %e, "an export file could not be read");
                    Some((
                        Err(std::io::Error::other("the export file could not be read")),
                        None,
                    ))
                }
                Err(_) => Some((
                    Err(std::io::Error::other("the export file could not be read")),
                    None,
                )),
            }
        }
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(NDJSON)))
        .streaming(stream)
}
