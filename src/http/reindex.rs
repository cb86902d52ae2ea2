//! `$reindex`: rebuilds the search index of a resource type (or of every type) in
//! the background, after SearchParameters were created or changed. `POST
//! /fhir/[type]/$reindex` and `POST /fhir/$reindex` answer 202 with the job's
//! status URL in `Content-Location`; `GET /fhir/$reindex/[job]` reports progress as
//! a Parameters resource. Jobs live in the database and survive restarts.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::resources::resource_type;
use super::AppState;
use crate::audit::Interaction;
use crate::store::ReindexJob;

fn parameters(state: &AppState, job: &ReindexJob) -> Value {
    let mut params = vec![
        json!({"name": "job", "valueString": job.job_id}),
        json!({"name": "resourceType", "valueString": job.resource_type}),
        json!({"name": "status", "valueCode": job.status}),
        json!({"name": "processed", "valueInteger": job.processed.min(i32::MAX as i64)}),
        json!({"name": "total", "valueInteger": job.total.min(i32::MAX as i64)}),
        json!({"name": "created", "valueInstant": crate::fhir::instant(job.created)}),
        json!({"name": "updated", "valueInstant": crate::fhir::instant(job.updated)}),
        json!({"name": "status-url", "valueUrl": format!("{}/$reindex/{}", state.base_url, job.job_id)}),
    ];
    if let Some(e) = &job.error {
        params.push(json!({"name": "error", "valueString": e}));
    }
    json!({"resourceType": "Parameters", "parameter": params})
}

async fn start(state: &AppState, ex: &mut Exchange, target: String) -> Result<Reply, ApiError> {
    ex.precondition()?;
    if target != "*" {
        ex.audit.resource_type = Some(target.clone());
    }
    if !ex.ctx.grant.is_operator() {
        return Err(ApiError::Forbidden(
            "reindexing is operator work (the admin role)".into(),
        ));
    }
    let job = state
        .store
        .call(move |s| s.reindex_enqueue(&target))
        .await?;
    let url = format!("{}/$reindex/{}", state.base_url, job.job_id);
    Ok(Reply::new(
        StatusCode::ACCEPTED,
        Body::Resource(parameters(state, &job)),
    )
    .header(header::CONTENT_LOCATION, url))
}

pub async fn all(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("reindex".into()));
    let result = start(&state, &mut ex, "*".into()).await;
    ex.finish(&state, result).await
}

pub async fn of_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("reindex".into()));
    let result = async {
        ex.precondition()?;
        let t = resource_type(&state, &path)?;
        if t == "AuditEvent" {
            return Err(ApiError::bad_request(
                "not-supported",
                "AuditEvents are indexed by the audit indexer as they are written, not by $reindex",
            ));
        }
        start(&state, &mut ex, t.to_string()).await
    }
    .await;
    ex.finish(&state, result).await
}

pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("reindex".into()));
    let result = async {
        ex.precondition()?;
        let id = path.into_inner();
        let job = state
            .store
            .call(move |s| s.reindex_job(&id))
            .await?
            .ok_or_else(|| ApiError::NotFound("no reindex job has this id".into()))?;
        Ok(Reply::new(
            StatusCode::OK,
            Body::Resource(parameters(&state, &job)),
        ))
    }
    .await;
    ex.finish(&state, result).await
}
