//! Validation at the HTTP edge: the gate every create and update passes (per
//! `validation.mode`; errors answer 422 and nothing is stored) and the `$validate`
//! operation (R4 `Resource-validate`), which always answers 200 with the OperationOutcome
//! unless the request itself is malformed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::error::ApiError;
use super::exchange::{read_body, Body, Exchange, Reply};
use super::negotiate;
use super::resources::{resource_id, resource_type};
use super::AppState;
use crate::audit::Interaction;
use crate::fhir::{self, operation_outcome, outcome, Id, Issue, Severity};

/// The gate of every written resource after the strict read (create, update, patch):
/// the rules some types carry beyond the structure (a SearchParameter must be
/// indexable, whatever the validation mode), then profile validation per
/// `validation.mode`. Errors are 422 and nothing is stored.
pub fn check_write(
    state: &AppState,
    resource_type: &str,
    resource: &Value,
) -> Result<(), ApiError> {
    let issues = match resource_type {
        "SearchParameter" => state.search.check_search_parameter(resource),
        crate::subscription::rules::RESOURCE_TYPE => crate::subscription::rules::check(
            resource,
            &state.search,
            &state.settings.subscriptions,
        ),
        _ => Vec::new(),
    };
    if !issues.is_empty() {
        return Err(ApiError::Unprocessable(issues));
    }
    let issues = state.gate.check(resource, None);
    if outcome::has_errors(&issues) {
        return Err(ApiError::Unprocessable(issues));
    }
    Ok(())
}

/// `POST /fhir/{type}/$validate`
pub async fn type_level(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    operation(&req, &state, payload, &path, None).await
}

/// `POST /fhir/{type}/{id}/$validate`
pub async fn instance_level(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    operation(&req, &state, payload, &path.0, Some(&path.1)).await
}

/// One audited `$validate` interaction.
async fn operation(
    req: &HttpRequest,
    state: &AppState,
    payload: web::Payload,
    rt: &str,
    id: Option<&str>,
) -> HttpResponse {
    let mut ex = Exchange::begin(state, req, Interaction::Operation("validate".into()));
    let result = async {
        ex.precondition()?;
        let rt = resource_type(state, rt)?;
        let id = id.map(resource_id).transpose()?;
        ex.audit.resource_type = Some(rt.to_string());
        ex.audit.id = id.as_ref().map(Id::to_string);
        validate(state, req, &ex, &rt, id, payload).await
    }
    .await;
    ex.finish(state, result).await
}

/// `$validate` mode (R4 Resource-validate, parameter `mode`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    General,
    Create,
    Update,
    Delete,
    Profile,
}

fn mode(text: Option<&str>) -> Result<Mode, ApiError> {
    Ok(match text {
        None => Mode::General,
        Some("create") => Mode::Create,
        Some("update") => Mode::Update,
        Some("delete") => Mode::Delete,
        Some("profile") => Mode::Profile,
        Some(other) => {
            return Err(ApiError::bad_request(
                "value",
                format!(
                    "mode `{}` is not one of create, update, delete, profile",
                    fhir::types::truncate(other, 40)
                ),
            ))
        }
    })
}

/// The first value of a Parameters parameter as text (`valueUri`, `valueCanonical`, ...).
fn parameter_text(p: &Value) -> Option<&str> {
    p.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .and_then(|(_, v)| v.as_str())
}

async fn validate(
    state: &AppState,
    req: &HttpRequest,
    ex: &Exchange,
    rt: &str,
    id: Option<Id>,
    payload: web::Payload,
) -> Result<Reply, ApiError> {
    let format = negotiate::request_format(req)?;
    let bytes = read_body(state, req, payload).await?;
    let body = fhir::read_wire(&state.model, &bytes, format).map_err(ApiError::BadRequest)?;
    let mut profiles: Vec<String> = ex
        .query
        .0
        .iter()
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v.clone())
        .collect();
    let mut mode_text = ex.query.get("mode").map(str::to_string);
    let is_parameters = body.get("resourceType").and_then(Value::as_str) == Some("Parameters");
    let resource = if is_parameters && rt != "Parameters" {
        let mut resource = None;
        for p in body
            .get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match p.get("name").and_then(Value::as_str) {
                Some("resource") => resource = p.get("resource"),
                Some("profile") => profiles.extend(parameter_text(p).map(str::to_string)),
                Some("mode") => mode_text = parameter_text(p).map(str::to_string),
                _ => {}
            }
        }
        resource.ok_or_else(|| {
            ApiError::bad_request("required", "the Parameters carry no `resource` parameter")
        })?
    } else {
        &body
    };
    let mode = mode(mode_text.as_deref())?;
    if mode == Mode::Delete {
        let issue = Issue::error(
            "informational",
            "mode=delete: this server keeps no referential integrity rules, so deleting is always allowed",
        )
        .severity(Severity::Information);
        return Ok(Reply::new(
            StatusCode::OK,
            Body::Resource(operation_outcome(&[issue])),
        ));
    }
    let body_type = fhir::types::truncate(
        resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or(""),
        80,
    );
    let mut issues = Vec::new();
    if body_type != rt {
        issues.push(
            Issue::error(
                "invalid",
                format!("the resource is a {body_type}, but the URL names {rt}"),
            )
            .at(body_type.clone()),
        );
    }
    if let (Some(id), Mode::Update) = (&id, mode) {
        if resource.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            issues.push(
                Issue::error(
                    "invalid",
                    format!("an update of {rt}/{id} must carry the id {id}"),
                )
                .at(format!("{rt}.id")),
            );
        }
    }
    if mode != Mode::Profile {
        profiles.extend(state.settings.validation.required_for(rt).iter().cloned());
    }
    issues.extend(state.validator.validate(resource, &profiles));
    Ok(Reply::new(
        StatusCode::OK,
        Body::Resource(operation_outcome(&issues)),
    ))
}
