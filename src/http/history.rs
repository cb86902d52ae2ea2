//! History interactions (instance, type, system): a `history` Bundle, newest
//! first, paged by a cursor on the version sequence so that pages stay stable
//! while new versions arrive.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::hangup;
use super::resources::{resource_id, resource_type};
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::fhir::instant;
use crate::store::{HistoryScope, WriteMethod};

pub async fn system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::HistorySystem);
    let result = history(&state, &req, &mut ex, Scope::System).await;
    ex.finish(&state, result).await
}

pub async fn of_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::HistoryType);
    let result = history(&state, &req, &mut ex, Scope::Type(&path)).await;
    ex.finish(&state, result).await
}

pub async fn instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::HistoryInstance);
    let result = history(&state, &req, &mut ex, Scope::Instance(&path.0, &path.1)).await;
    ex.finish(&state, result).await
}

enum Scope<'a> {
    System,
    Type(&'a str),
    Instance(&'a str, &'a str),
}

fn parse_instant_param(name: &str, v: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_micros())
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map_or(0, |t| t.and_utc().timestamp_micros())
            })
        })
        .map_err(|_| {
            ApiError::bad_request(
                "value",
                format!(
                    "{name} must be an instant such as 2024-01-31T10:00:00Z, not `{}`",
                    crate::fhir::types::truncate(v, 60)
                ),
            )
        })
}

async fn history(
    state: &AppState,
    req: &HttpRequest,
    ex: &mut Exchange,
    scope: Scope<'_>,
) -> Result<Reply, ApiError> {
    ex.precondition()?;
    let (store_scope, base_path) = match scope {
        Scope::System => (HistoryScope::System, String::new()),
        Scope::Type(t) => {
            let t = resource_type(state, t)?;
            ex.audit.resource_type = Some(t.to_string());
            (HistoryScope::Type(t.to_string()), format!("/{t}"))
        }
        Scope::Instance(t, id) => {
            let t = resource_type(state, t)?;
            let id = resource_id(id)?;
            ex.audit.resource_type = Some(t.to_string());
            ex.audit.id = Some(id.to_string());
            if t == "Patient" {
                ex.audit.patients = vec![format!("Patient/{id}")];
            }
            (
                HistoryScope::Instance(t.to_string(), id.to_string()),
                format!("/{t}/{id}"),
            )
        }
    };
    // An instance's history is a read of it; a type's a search (SMART `r`, `s`).
    match &store_scope {
        HistoryScope::Instance(t, _) => ex.ctx.decide(t, Action::Read),
        HistoryScope::Type(t) => ex.ctx.decide(t, Action::Search),
        HistoryScope::System => Ok(crate::access::Visibility::All),
    }
    .map_err(|d| ApiError::Forbidden(d.0))?;
    let settings = &state.settings.server;
    let count = match ex.query.get("_count") {
        None => settings.default_page_size,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("value", "_count must be a whole number"))?
            .min(settings.max_page_size),
    };
    let since = ex
        .query
        .get("_since")
        .map(|v| parse_instant_param("_since", v))
        .transpose()?;
    let cursor = ex
        .query
        .get("_cursor")
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::bad_request("value", "_cursor is not one this server issued")
            })
        })
        .transpose()?;
    for (k, _) in &ex.query.0 {
        if !matches!(
            k.as_str(),
            "_count" | "_since" | "_cursor" | "_format" | "_pretty" | "_summary" | "_elements"
        ) {
            return Err(ApiError::bad_request(
                "not-supported",
                format!(
                    "history does not support the parameter `{}`",
                    crate::fhir::types::truncate(k, 40)
                ),
            ));
        }
    }
    // AuditEvents are kept in the audit log, with their own history.
    let audit_scope = match &store_scope {
        HistoryScope::Type(t) if t == crate::audit::RESOURCE_TYPE => Some(None),
        HistoryScope::Instance(t, id) if t == crate::audit::RESOURCE_TYPE => Some(Some(id.clone())),
        _ => None,
    };
    if let HistoryScope::Instance(t, id) = &store_scope {
        let ctx = ex.ctx.clone();
        let (t2, id2) = (t.clone(), id.clone());
        let audit = audit_scope.is_some();
        let exists = state
            .store
            .call(move |s| {
                if audit {
                    s.audit_event(&id2)
                } else {
                    s.read(&ctx, &t2, &id2, None)
                }
            })
            .await?;
        if exists.is_none() {
            return Err(ApiError::NotFound(format!("{t}/{id} does not exist")));
        }
    }
    let ctx = ex.ctx.clone();
    let scope2 = store_scope.clone();
    // One more than a page tells whether there is a next page.
    let rows = state
        .store
        .call_as(
            crate::store::Work::History,
            hangup::watch(req),
            move |s| match audit_scope {
                Some(only_id) => s.audit_history(only_id.as_deref(), since, cursor, count + 1),
                None => s.history(&ctx, &scope2, since, cursor, count + 1),
            },
        )
        .await?;
    let has_next = rows.len() > count;
    let base = &state.base_url;
    let mut entries = Vec::with_capacity(rows.len().min(count));
    for row in rows.iter().take(count) {
        let v = &row.version;
        let full_url = format!("{base}/{}/{}", v.resource_type, v.id);
        let mut entry = Map::new();
        entry.insert("fullUrl".into(), json!(full_url));
        if !v.deleted {
            let r: Value =
                serde_json::from_slice(&v.body).map_err(|e| ApiError::Internal(e.to_string()))?;
            entry.insert("resource".into(), r);
        }
        let url = match row.method {
            WriteMethod::Post => v.resource_type.clone(),
            _ => format!("{}/{}", v.resource_type, v.id),
        };
        entry.insert(
            "request".into(),
            json!({"method": row.method.as_str(), "url": url}),
        );
        let status = match (row.method, v.deleted) {
            (_, true) => "204 No Content",
            (WriteMethod::Post, _) => "201 Created",
            _ if v.version == 1 => "201 Created",
            _ => "200 OK",
        };
        entry.insert(
            "response".into(),
            json!({"status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": instant(v.last_updated)}),
        );
        entries.push(Value::Object(entry));
    }
    let keep: Vec<String> = ex
        .query
        .0
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "_count" | "_since" | "_format" | "_pretty"))
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    let link = |extra: Option<String>| {
        let mut parts = keep.clone();
        if let Some(e) = extra {
            parts.push(e);
        }
        if parts.is_empty() {
            format!("{base}{base_path}/_history")
        } else {
            format!("{base}{base_path}/_history?{}", parts.join("&"))
        }
    };
    let mut links =
        vec![json!({"relation": "self", "url": link(cursor.map(|c| format!("_cursor={c}")))})];
    if has_next {
        if let Some(last) = rows.get(count - 1) {
            links.push(
                json!({"relation": "next", "url": link(Some(format!("_cursor={}", last.seq)))}),
            );
        }
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(crate::fhir::now_micros())},
        "type": "history",
        "link": links,
        "entry": entries,
    });
    let mut bundle = bundle;
    if entries_empty(&bundle) {
        if let Some(o) = bundle.as_object_mut() {
            o.remove("entry");
        }
    }
    Ok(Reply::new(StatusCode::OK, Body::Resource(bundle)))
}

fn entries_empty(b: &Value) -> bool {
    b.get("entry")
        .and_then(|e| e.as_array())
        .is_none_or(Vec::is_empty)
}
