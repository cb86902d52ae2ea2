//! `GET /fhir/Subscription/{id}/$events?since=N`: the stored notifications of a
//! subscription after event N (DESIGN section 13), in the shape of the
//! Subscriptions backport's `$events`: a `history` Bundle whose first entry is
//! the subscription's status (a Parameters resource with a `notification-event`
//! part per event: its number, time and focus) followed by one entry per event
//! naming the version it reports (no content: the client reads what it may).
//! `_count` (default 100, at most 1,000) bounds a page; a `next` link continues.
//!
//! Access: the caller must be able to read the Subscription (else 404, as for a
//! read) and be its owner, the client and user that wrote it (else 403): the
//! events name what the owner may search. Audited as operation `events`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::resources::resource_id;
use super::AppState;
use crate::access::Action;
use crate::audit::Interaction;
use crate::subscription::rules::RESOURCE_TYPE;

const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 1_000;

pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("events".into()));
    ex.audit.resource_type = Some(RESOURCE_TYPE.into());
    ex.audit.query = Some(super::exchange::path_and_query(&req));
    let result = run(&state, &mut ex, &path).await;
    ex.finish(&state, result).await
}

fn number(ex: &Exchange, name: &str, default: i64, max: i64) -> Result<i64, ApiError> {
    let values: Vec<&String> = ex
        .query
        .0
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    match values.as_slice() {
        [] => Ok(default),
        [v] => v
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "value",
                    format!("`{name}` must be a whole number from 0 to {max}"),
                )
            }),
        _ => Err(ApiError::bad_request(
            "invalid",
            format!("`{name}` is given more than once"),
        )),
    }
}

async fn run(state: &AppState, ex: &mut Exchange, id: &str) -> Result<Reply, ApiError> {
    ex.precondition()?;
    let id = resource_id(id)?;
    ex.audit.id = Some(id.to_string());
    if let Some((k, _)) = ex
        .query
        .0
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "since" | "_count" | "_format" | "_pretty"))
    {
        return Err(ApiError::bad_request(
            "not-supported",
            format!(
                "`{}` is not a parameter of $events (since, _count, _format, _pretty)",
                crate::fhir::types::truncate(k, 60)
            ),
        ));
    }
    let since = number(ex, "since", 0, i64::MAX)?;
    let count = number(ex, "_count", DEFAULT_COUNT, MAX_COUNT)?;
    ex.ctx
        .decide(RESOURCE_TYPE, Action::Read)
        .map_err(|d| ApiError::Forbidden(d.0))?;
    let missing = || ApiError::NotFound(format!("{RESOURCE_TYPE}/{id} does not exist"));
    let stored = state
        .store
        .read_now(&ex.ctx, RESOURCE_TYPE, id.as_str(), None)
        .await?
        .ok_or_else(missing)?;
    if stored.deleted {
        return Err(ApiError::Gone(format!("{RESOURCE_TYPE}/{id} was deleted")));
    }
    let key = id.to_string();
    let (row, owner, events) = state
        .store
        .call(move |s| {
            let row = s.subscription_state(&key)?;
            let owner = crate::subscription::owner_of(s, &key)?;
            let events = s.subscription_events(&key, since, count + 1)?;
            Ok((row, owner, events))
        })
        .await?;
    let row = row.ok_or_else(missing)?;
    // The events name what the owner may search: only the owner reads them.
    if !owner.is_some_and(|o| crate::subscription::is_owner(&ex.ctx, &o)) {
        return Err(ApiError::Forbidden(format!(
            "only the client and user that wrote {RESOURCE_TYPE}/{id} may read its events"
        )));
    }
    let more = events.len() as i64 > count;
    let events = &events[..events.len().min(count as usize)];
    let base = state.base_url.trim_end_matches('/');
    let mut parts = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{RESOURCE_TYPE}/{id}")}}),
        json!({"name": "status", "valueCode": row.status}),
        json!({"name": "type", "valueCode": "query-event"}),
        json!({"name": "events-since-subscription-start", "valueString": row.last_event.to_string()}),
    ];
    if let Some(e) = &row.error {
        parts.push(json!({"name": "error", "valueString": e}));
    }
    let mut entries = Vec::with_capacity(events.len() + 1);
    for e in events {
        let focus = format!(
            "{}/{}/_history/{}",
            e.resource_type, e.resource_id, e.version_id
        );
        parts.push(json!({"name": "notification-event", "part": [
            {"name": "event-number", "valueString": e.event_number.to_string()},
            {"name": "timestamp", "valueInstant": crate::fhir::instant(e.recorded)},
            {"name": "focus", "valueReference": {"reference": focus}},
        ]}));
        let (method, status) = match e.action.as_str() {
            "create" => ("POST", "201 Created"),
            "delete" => ("DELETE", "204 No Content"),
            _ => ("PUT", "200 OK"),
        };
        entries.push(json!({
            "fullUrl": format!("{base}/{focus}"),
            "request": {"method": method, "url": format!("{}/{}", e.resource_type, e.resource_id)},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", e.version_id),
                "lastModified": crate::fhir::instant(e.recorded),
            },
        }));
    }
    entries.insert(
        0,
        json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Parameters", "parameter": parts},
            "request": {"method": "GET", "url": format!("{RESOURCE_TYPE}/{id}/$status")},
            "response": {"status": "200 OK"},
        }),
    );
    let mut links = vec![json!({
        "relation": "self",
        "url": format!("{base}/{RESOURCE_TYPE}/{id}/$events?since={since}&_count={count}"),
    })];
    if more {
        if let Some(last) = events.last() {
            links.push(json!({
                "relation": "next",
                "url": format!("{base}/{RESOURCE_TYPE}/{id}/$events?since={}&_count={count}", last.event_number),
            }));
        }
    }
    let bundle: Value = json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": crate::fhir::instant(crate::fhir::now_micros()),
        "link": links,
        "entry": entries,
    });
    Ok(Reply::new(StatusCode::OK, Body::Resource(bundle)))
}
