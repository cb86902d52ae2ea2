//! What a Subscription resource must be for fhirgate to accept it, and what it
//! says: the criteria (a search on one type, compiled by the search engine), the
//! channel (`rest-hook` with a safe endpoint, its headers and payload), and the
//! status the server gives it on write (`requested` becomes `active` once these
//! checks passed; DESIGN section 13).

use serde_json::Value;

use super::deliver::{check_with_timeout, parse_header, EndpointRules};

/// Most time the endpoint's name may take to resolve when a Subscription is
/// written (the system resolver has no bound of its own).
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
use crate::config::SubscriptionSettings;
use crate::fhir::Issue;
use crate::search::SearchEngine;
use crate::store::{Condition, SubscriptionEffect};

/// The resource type this module gives behaviour to.
pub const RESOURCE_TYPE: &str = "Subscription";

/// The backport IG's extension on `channel.payload` that chooses how much of a
/// resource a notification carries.
pub const PAYLOAD_CONTENT_EXT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";

/// How much of a changed resource a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// No body (R4: `channel.payload` absent).
    Empty,
    /// A `history` Bundle whose entry names the version (backport `id-only`).
    IdOnly,
    /// A `history` Bundle with the version itself.
    FullResource,
}

/// A Subscription's rest-hook channel as delivery uses it.
#[derive(Debug, Clone)]
pub struct Channel {
    pub endpoint: String,
    pub payload: Payload,
    /// `channel.header`, parsed.
    pub headers: Vec<(String, String)>,
}

/// `Type?query` -> (type, query).
pub fn split_criteria(criteria: &str) -> (&str, &str) {
    match criteria.split_once('?') {
        Some((t, q)) => (t, q),
        None => (criteria, ""),
    }
}

/// The criteria compiled: an empty query matches every resource of the type.
pub fn compile_criteria(
    engine: &SearchEngine,
    criteria: &str,
) -> Result<(String, Condition), String> {
    let (rt, query) = split_criteria(criteria.trim());
    if !engine.model().is_resource_type(rt) {
        return Err(format!("`{rt}` is not a resource type this server knows"));
    }
    if query.is_empty() {
        return Ok((
            rt.to_string(),
            Condition {
                query: crate::store::Query {
                    types: Some(vec![rt.to_string()]),
                    ..Default::default()
                },
                lock_key: 0,
                verify: None,
            },
        ));
    }
    engine
        .condition(rt, query)
        .map(|c| (rt.to_string(), c))
        .map_err(|e| e.to_string())
}

fn text<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut at = v;
    for p in path {
        at = at.get(p)?;
    }
    at.as_str()
}

/// The endpoint rules of the settings.
pub fn endpoint_rules(settings: &SubscriptionSettings) -> EndpointRules {
    EndpointRules {
        allow_http: settings.allow_http,
        allowed_hosts: settings.allowed_hosts.clone(),
    }
}

/// The payload a channel asks for: `channel.payload` (a MIME type; absent: no
/// body) and the backport's `payload-content` extension on it.
fn payload_of(subscription: &Value) -> Result<Payload, Issue> {
    let Some(mime) = text(subscription, &["channel", "payload"]) else {
        return Ok(Payload::Empty);
    };
    let base = mime.split(';').next().unwrap_or("").trim();
    if !matches!(
        base,
        "application/fhir+json" | "application/json+fhir" | "application/json"
    ) {
        return Err(Issue::error(
            "not-supported",
            format!("payload `{mime}` is not supported: fhirgate sends application/fhir+json, or no body when channel.payload is absent"),
        )
        .at("Subscription.channel.payload"));
    }
    let content = subscription
        .pointer("/channel/_payload/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(PAYLOAD_CONTENT_EXT))
        .and_then(|e| e.get("valueCode").and_then(Value::as_str));
    match content {
        None | Some("full-resource") => Ok(Payload::FullResource),
        Some("id-only") => Ok(Payload::IdOnly),
        Some("empty") => Ok(Payload::Empty),
        Some(other) => Err(Issue::error(
            "value",
            format!("payload-content `{other}` is not one of empty, id-only, full-resource"),
        )
        .at("Subscription.channel.payload")),
    }
}

/// The rest-hook channel of a Subscription, checked (the endpoint's addresses
/// resolved and judged now).
pub fn channel(subscription: &Value, settings: &SubscriptionSettings) -> Result<Channel, Issue> {
    let endpoint = text(subscription, &["channel", "endpoint"]).ok_or_else(|| {
        Issue::error("required", "a rest-hook channel needs channel.endpoint")
            .at("Subscription.channel.endpoint")
    })?;
    let refused = match check_with_timeout(endpoint, &endpoint_rules(settings), CHECK_TIMEOUT) {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(slow) => Some(slow),
    };
    if let Some(why) = refused {
        return Err(Issue::error("security", why).at("Subscription.channel.endpoint"));
    }
    let mut headers = Vec::new();
    for (i, h) in subscription
        .pointer("/channel/header")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let line = h.as_str().unwrap_or("");
        headers.push(parse_header(line).map_err(|e| {
            Issue::error("value", e).at(format!("Subscription.channel.header[{i}]"))
        })?);
    }
    Ok(Channel {
        endpoint: endpoint.to_string(),
        payload: payload_of(subscription)?,
        headers,
    })
}

/// Everything wrong with a Subscription about to be written (all of it).
pub fn check(
    subscription: &Value,
    engine: &SearchEngine,
    settings: &SubscriptionSettings,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    if !settings.enabled {
        issues.push(Issue::error(
            "not-supported",
            "subscriptions are disabled on this server (subscriptions.enabled)",
        ));
        return issues;
    }
    match text(subscription, &["criteria"]) {
        None => issues.push(
            Issue::error("required", "a Subscription needs criteria").at("Subscription.criteria"),
        ),
        Some(c) => {
            if let Err(e) = compile_criteria(engine, c) {
                issues.push(
                    Issue::error("invalid", format!("the criteria cannot be used: {e}"))
                        .at("Subscription.criteria"),
                );
            }
        }
    }
    match text(subscription, &["channel", "type"]) {
        Some("rest-hook") => {
            if let Err(issue) = channel(subscription, settings) {
                issues.push(issue);
            }
        }
        // Pings over `GET /fhir/$websocket` to a client that binds it.
        Some("websocket") => {}
        Some(other) => issues.push(
            Issue::error(
                "not-supported",
                format!(
                    "channel type `{other}` is not supported: fhirgate delivers over rest-hook and websocket"
                ),
            )
            .at("Subscription.channel.type"),
        ),
        None => issues.push(
            Issue::error("required", "a Subscription needs channel.type")
                .at("Subscription.channel.type"),
        ),
    }
    issues
}

/// The server's part of a write: a `requested` subscription that passed
/// [`check`] becomes `active` (R4: the server sets the status).
pub fn activate(subscription: &mut Value) {
    if let Some(o) = subscription.as_object_mut() {
        if o.get("status").and_then(Value::as_str) == Some("requested") {
            o.insert("status".into(), Value::String("active".into()));
        }
    }
}

/// What a write of `resource_type` declares for the store: a Subscription's
/// delivery row (None for other types; a delete carries an empty effect).
pub fn effect(
    resource_type: &str,
    resource: Option<&Value>,
    settings: &SubscriptionSettings,
) -> Option<SubscriptionEffect> {
    if resource_type != RESOURCE_TYPE {
        return None;
    }
    let Some(r) = resource else {
        return Some(SubscriptionEffect {
            criteria_type: String::new(),
            channel: String::new(),
            status: String::new(),
            max_active: settings.max_active,
        });
    };
    let criteria = text(r, &["criteria"]).unwrap_or("");
    Some(SubscriptionEffect {
        criteria_type: split_criteria(criteria).0.to_string(),
        channel: text(r, &["channel", "type"]).unwrap_or("").to_string(),
        status: text(r, &["status"]).unwrap_or("").to_string(),
        max_active: settings.max_active,
    })
}

/// An R4 `instant` (`Subscription.end`) in Unix microseconds.
pub fn instant_micros(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}
