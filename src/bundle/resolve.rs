//! The resolution of a plan against the database (inside the write transaction,
//! or outside it to prepare): what every write entry does (create, update, patch,
//! delete, nothing), the identity every fullUrl stands for, the one resource every
//! conditional reference names, and the check that no two entries change one
//! resource.

use std::collections::{HashMap, HashSet};

use super::plan::{issue, request_location, Plan, Work};
use super::process::Errors;
use super::references::Identities;
use super::{Entry, EntryError, Method, Origin, Target};
use crate::fhir;
use crate::store::{Condition, Lookup, StoreError, StoredVersion};

/// What the resolution decided for a write entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// `client_id`: the id came from the resource (conditional update with no match).
    Create {
        id: String,
        client_id: bool,
    },
    Update {
        id: String,
        if_match: Option<i64>,
    },
    Patch {
        id: String,
        if_match: Option<i64>,
    },
    Delete {
        id: String,
        if_match: Option<i64>,
    },
    Matched {
        id: String,
    },
    NoMatch,
}

impl Action {
    pub(super) fn identity(&self) -> Option<&str> {
        match self {
            Action::Create { id, .. }
            | Action::Update { id, .. }
            | Action::Patch { id, .. }
            | Action::Delete { id, .. }
            | Action::Matched { id } => Some(id),
            Action::NoMatch => None,
        }
    }

    pub(super) fn writes(&self) -> bool {
        !matches!(self, Action::Matched { .. } | Action::NoMatch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolution {
    pub(super) actions: Vec<Action>,
    pub(super) identities: Identities,
}

/// A lookup for plans without criteria (never asked).
pub(super) struct NoLookup;

impl Lookup for NoLookup {
    fn matches(&mut self, _: &Condition) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Internal(
            "a plan without criteria asked for a lookup",
        ))
    }

    fn current(&mut self, _: &str, _: &str) -> Result<Option<StoredVersion>, StoreError> {
        Err(StoreError::Internal(
            "a plan without criteria asked for a lookup",
        ))
    }
}

fn lookup_error(pos: usize, e: StoreError) -> (Option<usize>, EntryError) {
    (Some(pos), EntryError::Store(e))
}

fn several(rt: &str, n: usize, what: &str) -> EntryError {
    EntryError::PreconditionFailed(format!(
        "the {what} criteria match {} {rt} resources; they must match at most one",
        if n > 2 {
            "several".to_string()
        } else {
            n.to_string()
        }
    ))
}

/// Decides what every write entry does and what every fullUrl and conditional
/// reference stands for, from the database as `lookup` sees it.
pub(super) fn resolve(plan: &Plan, lookup: &mut dyn Lookup) -> Result<Resolution, Errors> {
    let mut errors: Errors = Vec::new();
    let mut actions: Vec<Action> = Vec::with_capacity(plan.works.len());
    // Criteria of creates in this Bundle -> the id created: a second create (or a
    // conditional reference) with the same criteria names the same resource.
    let mut created: HashMap<(String, i64), String> = HashMap::new();
    // Resources this Bundle deletes (DELETE entries come first): the conditional
    // creates and references after them no longer find them.
    let mut deleted: HashSet<(String, String)> = HashSet::new();
    let live = |m: Vec<String>, rt: &str, deleted: &HashSet<(String, String)>| -> Vec<String> {
        m.into_iter()
            .filter(|id| !deleted.contains(&(rt.to_string(), id.clone())))
            .collect()
    };
    for w in &plan.works {
        let e = w.entry;
        let url_at = request_location(e, "url");
        let action = match (e.method, &e.target, &w.condition) {
            (Method::Post, _, None) => Ok(Action::Create {
                id: w.new_id.to_string(),
                client_id: false,
            }),
            (Method::Post, _, Some(c)) => {
                match created.get(&(w.resource_type.clone(), c.lock_key)) {
                    Some(id) => Ok(Action::Matched { id: id.clone() }),
                    None => match lookup.matches(c) {
                        Err(err) => Err(EntryError::Store(err)),
                        Ok(m) => match live(m, &w.resource_type, &deleted).as_slice() {
                            [] => {
                                created.insert(
                                    (w.resource_type.clone(), c.lock_key),
                                    w.new_id.to_string(),
                                );
                                Ok(Action::Create {
                                    id: w.new_id.to_string(),
                                    client_id: false,
                                })
                            }
                            [one] => Ok(Action::Matched { id: one.clone() }),
                            several_ids => {
                                Err(several(&w.resource_type, several_ids.len(), "ifNoneExist")
                                    .at(request_location(e, "ifNoneExist").unwrap_or_default()))
                            }
                        },
                    },
                }
            }
            (Method::Put, Target::Instance { id, .. }, _) => Ok(Action::Update {
                id: id.to_string(),
                if_match: e.if_match,
            }),
            (Method::Patch, Target::Instance { id, .. }, _) => Ok(Action::Patch {
                id: id.to_string(),
                if_match: e.if_match,
            }),
            (Method::Delete, Target::Instance { id, .. }, _) => Ok(Action::Delete {
                id: id.to_string(),
                if_match: e.if_match,
            }),
            (_, _, Some(c)) => match lookup.matches(c) {
                Err(err) => Err(EntryError::Store(err)),
                Ok(m) => conditional_action(w, &m, &mut created, c.lock_key)
                    .map_err(|err| err.at(url_at.clone().unwrap_or_default())),
            },
            (_, _, None) => Err(EntryError::NotImplemented("unplanned entry".into())),
        };
        match action {
            Ok(a) => {
                if let Action::Delete { id, .. } = &a {
                    deleted.insert((w.resource_type.clone(), id.clone()));
                }
                actions.push(a)
            }
            Err(err) => {
                errors.push((Some(w.pos), err));
                actions.push(Action::NoMatch);
            }
        }
    }
    let mut identities = Identities::default();
    let mut full_urls: HashMap<&str, usize> = HashMap::new();
    let mut changed: HashMap<(&str, &str), usize> = HashMap::new();
    for (w, a) in plan.works.iter().zip(&actions) {
        let Some(id) = a.identity() else { continue };
        if let Some(f) = &w.entry.full_url {
            if let Some(first) = full_urls.insert(f.as_str(), w.pos) {
                errors.push((
                    Some(w.pos),
                    EntryError::Invalid(vec![issue(
                        "invalid",
                        format!("the fullUrl `{}` is also the fullUrl of entry {first}; fullUrls must be unique (bdl-7)", fhir::types::truncate(f, 80)),
                        full_url_location(w.entry),
                    )]),
                ));
            }
            identities
                .by_full_url
                .insert(f.clone(), (w.resource_type.clone(), id.to_string()));
        }
        if a.writes() {
            if let Some(first) = changed.insert((w.resource_type.as_str(), id), w.pos) {
                errors.push((
                    Some(w.pos),
                    EntryError::Invalid(vec![issue(
                        "invalid",
                        format!(
                            "entries {first} and {} both change {}/{id}; a transaction may change each resource once",
                            w.pos, w.resource_type
                        ),
                        request_location(w.entry, "url"),
                    )]),
                ));
            }
        }
    }
    for c in &plan.cond_refs {
        if let Some(id) = created.get(&(c.resource_type.clone(), c.condition.lock_key)) {
            identities.conditional.insert(c.value.clone(), id.clone());
            continue;
        }
        match lookup
            .matches(&c.condition)
            .map(|m| live(m, &c.resource_type, &deleted))
        {
            Err(e) => errors.push(lookup_error(c.pos, e)),
            Ok(m) if m.len() == 1 => {
                identities.conditional.insert(c.value.clone(), m[0].clone());
            }
            Ok(m) => errors.push((
                Some(c.pos),
                EntryError::PreconditionFailed(format!(
                    "the conditional reference `{}` matches {} resources; it must match exactly one",
                    fhir::types::truncate(&c.value, 120),
                    if m.is_empty() { "no" } else { "several" }
                ))
                .at(c.path.clone()),
            )),
        }
    }
    if errors.is_empty() {
        Ok(Resolution {
            actions,
            identities,
        })
    } else {
        Err(errors)
    }
}

fn full_url_location(entry: &Entry) -> Option<String> {
    match entry.origin {
        Origin::Bundle(i) => Some(format!("Bundle.entry[{i}].fullUrl")),
        Origin::Request => None,
    }
}

/// Conditional update, patch and delete (R4 http.html 3.1.0.4.3, 3.1.0.7.1,
/// 3.1.0.6.1) given the ids the criteria matched.
fn conditional_action(
    w: &Work,
    matched: &[String],
    created: &mut HashMap<(String, i64), String>,
    lock_key: i64,
) -> Result<Action, EntryError> {
    let e = w.entry;
    let rt = &w.resource_type;
    match (e.method, matched) {
        (Method::Put, []) => {
            // No match: a create, with the id the resource carries (update as
            // create) or a new one.
            let (id, client_id) = match &w.body_id {
                Some(b) => (b.clone(), true),
                None => (w.new_id.to_string(), false),
            };
            created.insert((rt.clone(), lock_key), id.clone());
            Ok(Action::Create { id, client_id })
        }
        (Method::Put, [one]) => match &w.body_id {
            Some(b) if b != one => Err(EntryError::Invalid(vec![issue(
                "invalid",
                format!("the criteria match {rt}/{one}, but the resource's id is `{b}`"),
                None,
            )])),
            _ => Ok(Action::Update {
                id: one.clone(),
                if_match: e.if_match,
            }),
        },
        (Method::Patch, []) => Err(EntryError::NotFound(format!(
            "the criteria match no {rt}; a conditional patch needs exactly one"
        ))),
        (Method::Patch, [one]) => Ok(Action::Patch {
            id: one.clone(),
            if_match: e.if_match,
        }),
        // R4 3.1.0.7.1: no match is an ordinary delete of nothing.
        (Method::Delete, []) => Ok(Action::NoMatch),
        (Method::Delete, [one]) => Ok(Action::Delete {
            id: one.clone(),
            if_match: e.if_match,
        }),
        (m, several_ids) => Err(several(
            rt,
            several_ids.len(),
            match m {
                Method::Delete => "conditional delete",
                Method::Patch => "conditional patch",
                _ => "conditional update",
            },
        )),
    }
}
