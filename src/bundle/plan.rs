//! The plan of a Bundle's entries: what each write entry asks (its type, the
//! criteria of a conditional interaction, the id a create will get), checked before
//! anything is read, and the conditional references its resources hold. Every
//! problem of every entry is found here at once.

use serde_json::Value;

use super::process::Errors;
use super::references::{self, Site};
use super::{Entry, EntryError, Env, Method, Origin, Payload, Target};
use crate::access::Action;
use crate::fhir::{self, Id, Issue};
use crate::search::SearchError;
use crate::store::Condition;

/// One write entry, planned.
pub(super) struct Work<'e> {
    pub(super) pos: usize,
    pub(super) entry: &'e Entry,
    pub(super) resource_type: String,
    /// The id a create gets, drawn once so that a transaction run again writes the same.
    pub(super) new_id: Id,
    pub(super) condition: Option<Condition>,
    /// The id the resource in the body names (conditional update).
    pub(super) body_id: Option<String>,
}

/// A conditional reference of the entries, with the first place it is written.
pub(super) struct CondRef {
    pub(super) value: String,
    pub(super) resource_type: String,
    pub(super) condition: Condition,
    pub(super) pos: usize,
    pub(super) path: String,
}

pub(super) struct Plan<'e> {
    /// Write entries in processing order.
    pub(super) works: Vec<Work<'e>>,
    pub(super) cond_refs: Vec<CondRef>,
    /// Advisory lock keys of every criteria, ascending, and whether the lock is
    /// exclusive (criteria of a conditional write) or shared (only conditional
    /// references: every patient Bundle that refers to one Organization by its
    /// identifier must not wait for the others).
    pub(super) lock_keys: Vec<(i64, bool)>,
    /// Entries of a batch (or a lone entry): a placeholder cannot name another entry.
    pub(super) independent: bool,
    pub(super) len: usize,
}

impl Plan<'_> {
    pub(super) fn needs_lookup(&self) -> bool {
        !self.cond_refs.is_empty() || self.works.iter().any(|w| w.condition.is_some())
    }
}

pub(super) fn issue(code: &'static str, msg: impl Into<String>, at: Option<String>) -> Issue {
    let i = Issue::error(code, msg);
    match at {
        Some(a) => i.at(a),
        None => i,
    }
}

/// Where in what the client sent an element of an entry's request is.
pub(super) fn request_location(entry: &Entry, element: &str) -> Option<String> {
    match entry.origin {
        Origin::Bundle(i) => Some(format!("Bundle.entry[{i}].request.{element}")),
        Origin::Request => None,
    }
}

pub(super) fn criteria_error(e: SearchError, at: Option<String>) -> EntryError {
    match e {
        SearchError::Store(s) => EntryError::Store(s),
        // A limit keeps its own code: the client learns which setting it met.
        other => EntryError::Invalid(vec![issue(
            if matches!(other, SearchError::TooCostly(_)) {
                "too-costly"
            } else {
                "invalid"
            },
            format!("the conditional criteria are not usable: {other}"),
            at,
        )]),
    }
}

pub(super) fn plan<'e>(
    env: &Env,
    entries: &'e [Entry],
    independent: bool,
) -> Result<Plan<'e>, Errors> {
    let mut errors: Errors = Vec::new();
    let mut works = Vec::new();
    let mut cond_refs: Vec<CondRef> = Vec::new();
    for (pos, entry) in entries.iter().enumerate() {
        if entry.method.is_read() {
            continue;
        }
        match plan_work(env, pos, entry) {
            Ok(w) => works.push(w),
            Err(e) => {
                errors.push((Some(pos), e));
                continue;
            }
        }
        if let Payload::Resource(resource) = &entry.payload {
            let location = entry.origin.resource_location(
                resource
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            collect_conditional_refs(env, pos, resource, &location, &mut cond_refs, &mut errors);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    works.sort_by_key(|w| (w.entry.method.step(), w.pos));
    let mut lock_keys: Vec<(i64, bool)> = works
        .iter()
        .filter_map(|w| w.condition.as_ref().map(|c| (c.lock_key, true)))
        .chain(cond_refs.iter().map(|c| (c.condition.lock_key, false)))
        .collect();
    // Ascending keys; a key wanted both ways is taken exclusively (once).
    lock_keys.sort_unstable_by_key(|(k, exclusive)| (*k, !exclusive));
    lock_keys.dedup_by_key(|(k, _)| *k);
    Ok(Plan {
        works,
        cond_refs,
        lock_keys,
        independent,
        len: entries.len(),
    })
}

/// True when some `reference` member holds a `?` (a candidate conditional reference).
fn has_query_reference(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| match x {
            Value::String(r) => k == "reference" && r.contains('?'),
            other => has_query_reference(other),
        }),
        Value::Array(items) => items.iter().any(has_query_reference),
        _ => false,
    }
}

fn collect_conditional_refs(
    env: &Env,
    pos: usize,
    resource: &Value,
    location: &str,
    out: &mut Vec<CondRef>,
    errors: &mut Errors,
) {
    // A Bundle being stored keeps its references as they are (`write::rewrite`).
    // Most resources hold no conditional reference: a quick look for a `reference`
    // with a `?` spares them the typed walk, which takes a mutable tree (a copy).
    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        || !has_query_reference(resource)
    {
        return;
    }
    let mut found: Vec<(String, String)> = Vec::new();
    let mut copy = resource.clone();
    references::walk(env.model, &mut copy, location, &mut |site, value, path| {
        if site == Site::Reference && value.contains('?') {
            found.push((value.to_string(), path.to_string()));
        }
        None
    });
    for (value, path) in found {
        if out.iter().any(|c| c.value == value) {
            continue;
        }
        let references::RefForm::Conditional {
            resource_type,
            criteria,
        } = references::classify(env.model, &value)
        else {
            continue;
        };
        match env.search.condition(resource_type, criteria) {
            Ok(condition) => out.push(CondRef {
                resource_type: resource_type.to_string(),
                value: value.clone(),
                condition,
                pos,
                path,
            }),
            Err(e) => errors.push((Some(pos), criteria_error(e, Some(path)))),
        }
    }
}

fn plan_work<'e>(env: &Env, pos: usize, entry: &'e Entry) -> Result<Work<'e>, EntryError> {
    let url_at = request_location(entry, "url");
    let method = entry.method.as_str();
    let unsupported = || {
        EntryError::Invalid(vec![issue(
            "not-supported",
            format!(
                "{method} {} is not an interaction of a Bundle entry",
                fhir::types::truncate(&entry.url, 80)
            ),
            url_at.clone(),
        )])
    };
    let (resource_type, criteria) = match (&entry.method, &entry.target) {
        (Method::Post, Target::Type(t)) => (t.clone(), entry.if_none_exist.clone()),
        (Method::Put | Method::Patch | Method::Delete, Target::Instance { resource_type, .. }) => {
            (resource_type.clone(), None)
        }
        (
            Method::Put | Method::Patch | Method::Delete,
            Target::Search {
                resource_type,
                query,
            },
        ) => (resource_type.clone(), Some(query.clone())),
        _ => return Err(unsupported()),
    };
    if let Some(why) = crate::access::read_only(&resource_type) {
        return Err(EntryError::MethodNotAllowed(why.into()));
    }
    if let Err(denied) = env.ctx.decide(&resource_type, entry_action(entry)) {
        return Err(EntryError::Forbidden(denied.0));
    }
    let mut body_id = None;
    if let Payload::Resource(resource) = &entry.payload {
        let location = entry.origin.resource_location(&resource_type);
        let body_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if body_type != resource_type {
            return Err(EntryError::Invalid(vec![issue(
                "invalid",
                format!("the resource is a {body_type}, but the request names {resource_type}"),
                Some(location),
            )]));
        }
        body_id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let (Method::Put, Target::Instance { id, .. }, Some(b)) =
            (entry.method, &entry.target, &body_id)
        {
            if b != id.as_str() {
                return Err(EntryError::Invalid(vec![issue(
                    "invalid",
                    format!(
                        "the resource's id `{b}` differs from the id in the request url `{id}`"
                    ),
                    Some(format!("{location}.id")),
                )]));
            }
        }
    }
    let condition = match criteria {
        None => None,
        Some(c) => {
            let at = if entry.method == Method::Post {
                request_location(entry, "ifNoneExist")
            } else {
                url_at.clone()
            };
            // Some clients write `ifNoneExist` as a whole search URL (`Patient?...`).
            let c = c
                .strip_prefix(resource_type.as_str())
                .and_then(|rest| rest.strip_prefix('?'))
                .unwrap_or(&c);
            Some(
                env.search
                    .condition(&resource_type, c)
                    .map_err(|e| criteria_error(e, at))?,
            )
        }
    };
    Ok(Work {
        pos,
        entry,
        resource_type,
        new_id: Id::generate(),
        condition,
        body_id: if entry.method == Method::Post {
            None
        } else {
            body_id
        },
    })
}

/// The kind of access a write entry needs (SMART v2 letters).
fn entry_action(entry: &Entry) -> Action {
    match entry.method {
        Method::Post => Action::Create,
        Method::Delete => Action::Delete,
        Method::Put | Method::Patch => Action::Update,
        Method::Get | Method::Head => Action::Read,
    }
}
