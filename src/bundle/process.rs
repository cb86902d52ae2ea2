//! Running entries: the plan (what each entry asks, checked), the resolution of
//! identities and conditional criteria against the database, the preparation of
//! the resources to write (ids set, references rewritten, index rows), and the
//! writes inside one store transaction. See the module paragraph of `bundle`.

use std::collections::HashMap;

use serde_json::Value;

use super::references::{self, Identities, Site, Unresolved};
use super::{validate_entry, Entry, EntryError, Env, Extra, Method, Origin, Payload, Target};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::{self, Id, Issue};
use crate::search::SearchError;
use crate::store::{
    Condition, IndexRows, Lookup, StoreError, StoredVersion, Txn, TxnError, WriteKind,
    WriteRequest, WriteResult,
};

/// What a processed entry did.
#[derive(Debug)]
pub enum Done {
    /// Created (`created`) or updated: the new version; the stored resource when asked.
    Stored {
        resource_type: String,
        id: String,
        version: i64,
        last_updated: i64,
        created: bool,
        body: Option<Vec<u8>>,
    },
    /// A conditional create that found its one match: nothing written.
    Matched {
        resource_type: String,
        id: String,
        version: i64,
        last_updated: i64,
        body: Option<Vec<u8>>,
    },
    /// Deleted; `version` is None when it was deleted already.
    Deleted {
        resource_type: String,
        id: String,
        version: Option<i64>,
    },
    /// A conditional delete whose criteria matched nothing: nothing to delete.
    NoMatch { resource_type: String },
    /// A GET or HEAD entry, for the caller to answer.
    Read,
}

/// A transaction that did not commit: the entries at fault (by position in the
/// entries given; None for a fault of the store) and the audit record of every
/// entry, which the caller writes after the rollback.
#[derive(Debug)]
pub struct Failure {
    pub errors: Vec<(Option<usize>, EntryError)>,
    pub audits: Vec<AuditRecord>,
}

/// Runs entries as one transaction (R4 http.html 3.1.0.11.2): all or nothing.
/// `extra` runs inside the transaction after the writes.
pub fn process_transaction(
    env: &Env,
    entries: &[Entry],
    extra: Option<Extra>,
) -> Result<Vec<Done>, Failure> {
    run(env, entries, false, extra).map_err(|errors| failure(env, entries, errors))
}

/// Runs entries as a batch: each on its own, in the processing order; the results
/// in request order, and the audit records of the failed entries (for the caller to
/// write: the successful ones were committed with their writes).
pub fn process_batch(
    env: &Env,
    entries: &[Entry],
) -> (Vec<Result<Done, EntryError>>, Vec<AuditRecord>) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].method.step(), i));
    let mut results: Vec<Option<Result<Done, EntryError>>> =
        (0..entries.len()).map(|_| None).collect();
    let mut audits = Vec::new();
    for i in order {
        results[i] = Some(match process_entry(env, &entries[i], None) {
            Ok(done) => Ok(done),
            Err((e, audit)) => {
                audits.push(audit);
                Err(e)
            }
        });
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or(Ok(Done::Read)))
        .collect();
    (results, audits)
}

/// Runs one entry on its own (a batch entry, a conditional REST interaction, an
/// import line); on failure, its error and its audit record.
pub fn process_entry(
    env: &Env,
    entry: &Entry,
    extra: Option<Extra>,
) -> Result<Done, (EntryError, AuditRecord)> {
    let entries = std::slice::from_ref(entry);
    match run(env, entries, true, extra) {
        Ok(mut done) => Ok(done.pop().unwrap_or(Done::Read)),
        Err(errors) => {
            let mut f = failure(env, entries, errors);
            let e = f
                .errors
                .pop()
                .map(|(_, e)| e)
                .unwrap_or_else(|| EntryError::Store(StoreError::Contention));
            let record = f.audits.pop().unwrap_or_else(|| {
                failure_record(env.ctx, Some(entry), e.to_string(), e.is_server_error())
            });
            Err((e, record))
        }
    }
}

/// One write entry, planned.
struct Work<'e> {
    pos: usize,
    entry: &'e Entry,
    resource_type: String,
    /// The id a create gets, drawn once so that a transaction run again writes the same.
    new_id: Id,
    condition: Option<Condition>,
    /// The id the resource in the body names (conditional update).
    body_id: Option<String>,
}

/// A conditional reference of the entries, with the first place it is written.
struct CondRef {
    value: String,
    resource_type: String,
    condition: Condition,
    pos: usize,
    path: String,
}

struct Plan<'e> {
    /// Write entries in processing order.
    works: Vec<Work<'e>>,
    cond_refs: Vec<CondRef>,
    /// Advisory lock keys of every criteria, ascending.
    lock_keys: Vec<i64>,
    /// Entries of a batch (or a lone entry): a placeholder cannot name another entry.
    independent: bool,
    len: usize,
}

impl Plan<'_> {
    fn needs_lookup(&self) -> bool {
        !self.cond_refs.is_empty() || self.works.iter().any(|w| w.condition.is_some())
    }
}

/// What the resolution decided for a write entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
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
    fn identity(&self) -> Option<&str> {
        match self {
            Action::Create { id, .. }
            | Action::Update { id, .. }
            | Action::Patch { id, .. }
            | Action::Delete { id, .. }
            | Action::Matched { id } => Some(id),
            Action::NoMatch => None,
        }
    }

    fn writes(&self) -> bool {
        !matches!(self, Action::Matched { .. } | Action::NoMatch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolution {
    actions: Vec<Action>,
    identities: Identities,
}

/// A resource ready to write.
struct Prepared {
    resource: Value,
    index: IndexRows,
    patients: Vec<String>,
}

type Errors = Vec<(Option<usize>, EntryError)>;

/// Why a transaction body stopped.
enum Abort {
    Entries(Errors),
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
    }
}

impl TxnError for Abort {
    fn is_contention(&self) -> bool {
        match self {
            Abort::Store(e) => e.is_contention(),
            Abort::Entries(errors) => errors.iter().any(|(_, e)| e.is_contention()),
        }
    }
}

fn run(
    env: &Env,
    entries: &[Entry],
    independent: bool,
    extra: Option<Extra>,
) -> Result<Vec<Done>, Errors> {
    let plan = plan(env, entries, independent)?;
    if plan.works.is_empty() {
        return Ok(entries.iter().map(|_| Done::Read).collect());
    }
    // First pass, outside the write transaction: the CPU work (rewriting, index
    // extraction) is done here, so that it does not hold SQLite's writer lock. It
    // is kept when the resolution inside the transaction comes out the same.
    let needs_lookup = plan.needs_lookup();
    let pre: Option<(Resolution, Vec<Option<Prepared>>)> = {
        let resolved = if needs_lookup {
            env.store
                .lookup(&mut |l| Ok(resolve(&plan, l)))
                .unwrap_or_else(|e| Err(vec![(None, EntryError::Store(e))]))
        } else {
            resolve(&plan, &mut NoLookup)
        };
        match resolved.and_then(|r| prepare(env, &plan, &r).map(|p| (r, p))) {
            Ok(ready) => Some(ready),
            // Without criteria nothing can change inside the transaction.
            Err(errors) if !needs_lookup => return Err(errors),
            Err(_) => None,
        }
    };
    let outcome = env
        .store
        .transaction(&mut |txn: &mut dyn Txn| -> Result<Vec<Done>, Abort> {
            for key in &plan.lock_keys {
                txn.lock(*key)?;
            }
            let resolution = resolve(&plan, txn.as_lookup()).map_err(Abort::Entries)?;
            let fresh;
            let prepared = match &pre {
                Some((r, p)) if *r == resolution => p,
                _ => {
                    fresh = prepare(env, &plan, &resolution).map_err(Abort::Entries)?;
                    &fresh
                }
            };
            let done = write(env, &plan, &resolution, prepared, txn)
                .map_err(|(pos, e)| Abort::Entries(vec![(Some(pos), e)]))?;
            if let Some(extra) = extra {
                extra(txn)?;
            }
            Ok(done)
        });
    match outcome {
        Ok(done) => Ok(done),
        Err(Abort::Entries(errors)) => Err(errors),
        Err(Abort::Store(e)) => Err(vec![(None, EntryError::Store(e))]),
    }
}

/// A lookup for plans without criteria (never asked).
struct NoLookup;

impl Lookup for NoLookup {
    fn matches(&mut self, _: &Condition) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Prepare("no lookup for this plan".into()))
    }

    fn current(&mut self, _: &str, _: &str) -> Result<Option<StoredVersion>, StoreError> {
        Err(StoreError::Prepare("no lookup for this plan".into()))
    }
}

fn issue(code: &'static str, msg: impl Into<String>, at: Option<String>) -> Issue {
    let i = Issue::error(code, msg);
    match at {
        Some(a) => i.at(a),
        None => i,
    }
}

/// Where in what the client sent an element of an entry's request is.
fn request_location(entry: &Entry, element: &str) -> Option<String> {
    match entry.origin {
        Origin::Bundle(i) => Some(format!("Bundle.entry[{i}].request.{element}")),
        Origin::Request => None,
    }
}

fn criteria_error(e: SearchError, at: Option<String>) -> EntryError {
    match e {
        SearchError::Store(s) => EntryError::Store(s),
        other => EntryError::Invalid(vec![issue(
            "invalid",
            format!("the conditional criteria are not usable: {other}"),
            at,
        )]),
    }
}

fn plan<'e>(env: &Env, entries: &'e [Entry], independent: bool) -> Result<Plan<'e>, Errors> {
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
    let mut lock_keys: Vec<i64> = works
        .iter()
        .filter_map(|w| w.condition.as_ref().map(|c| c.lock_key))
        .chain(cond_refs.iter().map(|c| c.condition.lock_key))
        .collect();
    lock_keys.sort_unstable();
    lock_keys.dedup();
    Ok(Plan {
        works,
        cond_refs,
        lock_keys,
        independent,
        len: entries.len(),
    })
}

fn collect_conditional_refs(
    env: &Env,
    pos: usize,
    resource: &Value,
    location: &str,
    out: &mut Vec<CondRef>,
    errors: &mut Errors,
) {
    // The walk takes a mutable tree; this pass only reads, so it walks a copy of
    // nothing but what it finds.
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
    if resource_type == "AuditEvent" {
        return Err(EntryError::MethodNotAllowed(
            "AuditEvents are written by the server only".into(),
        ));
    }
    if !env.ctx.may_write_type(&resource_type) {
        return Err(EntryError::Forbidden(format!(
            "writing {resource_type} is not permitted"
        )));
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
            Some(
                env.search
                    .condition(&resource_type, &c)
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
fn resolve(plan: &Plan, lookup: &mut dyn Lookup) -> Result<Resolution, Errors> {
    let mut errors: Errors = Vec::new();
    let mut actions: Vec<Action> = Vec::with_capacity(plan.works.len());
    // Criteria of creates in this Bundle -> the id created: a second create (or a
    // conditional reference) with the same criteria names the same resource.
    let mut created: HashMap<(String, i64), String> = HashMap::new();
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
                        Ok(m) => match m.len() {
                            0 => {
                                created.insert(
                                    (w.resource_type.clone(), c.lock_key),
                                    w.new_id.to_string(),
                                );
                                Ok(Action::Create {
                                    id: w.new_id.to_string(),
                                    client_id: false,
                                })
                            }
                            1 => Ok(Action::Matched { id: m[0].clone() }),
                            n => Err(several(&w.resource_type, n, "ifNoneExist")
                                .at(request_location(e, "ifNoneExist").unwrap_or_default())),
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
            Ok(a) => actions.push(a),
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
        match lookup.matches(&c.condition) {
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

/// Sets ids and rewrites the references of every resource to create or update.
fn prepare(env: &Env, plan: &Plan, res: &Resolution) -> Result<Vec<Option<Prepared>>, Errors> {
    let mut errors: Errors = Vec::new();
    let mut out = Vec::with_capacity(plan.works.len());
    for (w, a) in plan.works.iter().zip(&res.actions) {
        let (Action::Create { id, .. } | Action::Update { id, .. }) = a else {
            out.push(None);
            continue;
        };
        let Payload::Resource(resource) = &w.entry.payload else {
            out.push(None);
            continue;
        };
        let mut resource = resource.clone();
        if let Some(o) = resource.as_object_mut() {
            o.insert("id".into(), Value::String(id.clone()));
        }
        let location = w.entry.origin.resource_location(&w.resource_type);
        match rewrite(
            env,
            plan,
            w.entry,
            &res.identities,
            &mut resource,
            &location,
        ) {
            Ok(()) => {
                let index = env.search.index_rows(&resource);
                let patients =
                    env.compartment
                        .patients_of(&w.resource_type, Some(id), Some(&resource));
                out.push(Some(Prepared {
                    resource,
                    index,
                    patients,
                }));
            }
            Err(e) => {
                errors.push((Some(w.pos), e));
                out.push(None);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Rewrites the references of one resource to the identities of the Bundle.
fn rewrite(
    env: &Env,
    plan: &Plan,
    entry: &Entry,
    identities: &Identities,
    resource: &mut Value,
    location: &str,
) -> Result<(), EntryError> {
    let entry_base = entry
        .full_url
        .as_deref()
        .and_then(|f| references::restful_base(env.model, f))
        .unwrap_or(env.base_url)
        .to_string();
    let mut issues: Vec<Issue> = Vec::new();
    references::walk(
        env.model,
        resource,
        location,
        &mut |site, value, path| match site {
            Site::Uri => identities.rewrite_uri(value, env.base_url),
            Site::Reference => match identities.rewrite_reference(env.model, value, &entry_base) {
                Ok(new) => new,
                Err(Unresolved::Placeholder(p)) => {
                    let why = if plan.independent
                        && plan.len == 1
                        && matches!(entry.origin, Origin::Bundle(_))
                    {
                        "; the entries of a batch are processed independently (R4 http.html 3.1.0.11.1), so one cannot refer to another: send a transaction"
                    } else {
                        ""
                    };
                    issues.push(
                        Issue::error(
                            "not-found",
                            format!(
                                "the reference `{}` is not the fullUrl of any entry{why}",
                                fhir::types::truncate(&p, 100)
                            ),
                        )
                        .at(path.to_string()),
                    );
                    None
                }
                Err(Unresolved::Conditional(c)) => {
                    issues.push(
                        Issue::error(
                            "not-found",
                            format!(
                                "the conditional reference `{}` was not resolved",
                                fhir::types::truncate(&c, 100)
                            ),
                        )
                        .at(path.to_string()),
                    );
                    None
                }
            },
        },
    );
    if issues.is_empty() {
        Ok(())
    } else {
        Err(EntryError::Invalid(issues))
    }
}

/// The audit record of a write entry.
fn record(
    env: &Env,
    interaction: Interaction,
    rt: &str,
    id: &str,
    patients: Vec<String>,
) -> AuditRecord {
    let mut r = AuditRecord::new(interaction, env.ctx);
    r.resource_type = Some(rt.to_string());
    r.id = Some(id.to_string());
    r.patients = patients;
    r
}

/// Writes one version with its AuditEvent.
#[allow(clippy::too_many_arguments)]
fn write_version(
    env: &Env,
    txn: &mut dyn Txn,
    rt: &str,
    id: &str,
    kind: WriteKind,
    method: &'static str,
    resource: Option<&Value>,
    index: &IndexRows,
    audit: &AuditRecord,
) -> Result<WriteResult, StoreError> {
    let empty = IndexRows::default();
    let prepare = |version: i64, ts: i64| match resource {
        Some(r) => fhir::stored_body(r, id, version, ts).map_err(StoreError::Prepare),
        None => Ok(Vec::new()),
    };
    let audit_of = |r: &WriteResult| {
        let mut rec = audit.clone();
        rec.version = Some(r.version);
        if r.created && matches!(kind, WriteKind::Update { .. }) {
            rec.interaction = Interaction::Create;
        }
        Ok(env.audit.row(&rec))
    };
    let result = txn.write(&WriteRequest {
        resource_type: rt,
        id,
        kind,
        method,
        prepare: &prepare,
        audit: &audit_of,
        index: if resource.is_some() { index } else { &empty },
        condition: None,
    })?;
    if result.unchanged {
        // A delete of a deleted resource writes no version, so not its audit either.
        txn.insert_audits(&[env.audit.row(audit)])?;
    }
    Ok(result)
}

fn store_error(e: StoreError, rt: &str, id: &str) -> EntryError {
    match e {
        StoreError::NotFound => EntryError::NotFound(format!("{rt}/{id} does not exist")),
        StoreError::VersionConflict { current } => EntryError::PreconditionFailed(format!(
            "ifMatch does not name the current version of {rt}/{id} (it is {current})"
        )),
        StoreError::AlreadyExists => EntryError::Conflict(format!("{rt}/{id} already exists")),
        other => EntryError::Store(other),
    }
}

/// Writes every entry, in processing order, inside the open transaction.
fn write(
    env: &Env,
    plan: &Plan,
    res: &Resolution,
    prepared: &[Option<Prepared>],
    txn: &mut dyn Txn,
) -> Result<Vec<Done>, (usize, EntryError)> {
    let mut done: Vec<Option<Done>> = (0..plan.len).map(|_| None).collect();
    for ((w, a), p) in plan.works.iter().zip(&res.actions).zip(prepared) {
        let rt = w.resource_type.as_str();
        let fail = |e: EntryError| (w.pos, e);
        let outcome = match a {
            Action::Create { id, client_id } => {
                let kind = if *client_id {
                    // Update as create with the resource's id: the id must be free.
                    let existing = txn
                        .current(rt, id)
                        .map_err(|e| fail(EntryError::Store(e)))?;
                    if existing.is_some_and(|c| !c.deleted) {
                        return Err(fail(EntryError::Conflict(format!(
                            "{rt}/{id} exists but does not match the criteria; it is not overwritten"
                        ))));
                    }
                    WriteKind::Update { if_match: None }
                } else {
                    WriteKind::Create
                };
                store_prepared(env, txn, w, p, id, kind, Interaction::Create).map_err(fail)?
            }
            Action::Update { id, if_match } => store_prepared(
                env,
                txn,
                w,
                p,
                id,
                WriteKind::Update {
                    if_match: *if_match,
                },
                Interaction::Update,
            )
            .map_err(fail)?,
            Action::Patch { id, if_match } => {
                patch(env, plan, res, w, txn, id, *if_match).map_err(fail)?
            }
            Action::Delete { id, if_match } => {
                let audit = record(
                    env,
                    Interaction::Delete,
                    rt,
                    id,
                    if rt == "Patient" {
                        vec![format!("Patient/{id}")]
                    } else {
                        Vec::new()
                    },
                );
                let r = write_version(
                    env,
                    txn,
                    rt,
                    id,
                    WriteKind::Delete {
                        if_match: *if_match,
                    },
                    "DELETE",
                    None,
                    &IndexRows::default(),
                    &audit,
                )
                .map_err(|e| fail(store_error(e, rt, id)))?;
                Done::Deleted {
                    resource_type: rt.to_string(),
                    id: id.clone(),
                    version: (!r.unchanged).then_some(r.version),
                }
            }
            Action::Matched { id } => {
                // R4 3.1.0.8.1: one match -> nothing is created; the answer names it.
                let current = txn
                    .current(rt, id)
                    .map_err(|e| fail(EntryError::Store(e)))?;
                let (version, last_updated, body) = match current {
                    Some(c) if !c.deleted => (c.version, c.last_updated, c.body),
                    // Created earlier in this Bundle: read after its write, above.
                    _ => {
                        return Err(fail(EntryError::Conflict(format!(
                            "{rt}/{id} matched the criteria but is gone"
                        ))))
                    }
                };
                let mut audit = record(env, Interaction::Read, rt, id, Vec::new());
                audit.version = Some(version);
                txn.insert_audits(&[env.audit.row(&audit)])
                    .map_err(|e| fail(EntryError::Store(e)))?;
                Done::Matched {
                    resource_type: rt.to_string(),
                    id: id.clone(),
                    version,
                    last_updated,
                    body: env.return_bodies.then_some(body),
                }
            }
            Action::NoMatch => {
                let mut audit = AuditRecord::new(Interaction::Delete, env.ctx);
                audit.resource_type = Some(rt.to_string());
                txn.insert_audits(&[env.audit.row(&audit)])
                    .map_err(|e| fail(EntryError::Store(e)))?;
                Done::NoMatch {
                    resource_type: rt.to_string(),
                }
            }
        };
        done[w.pos] = Some(outcome);
    }
    Ok(done.into_iter().map(|d| d.unwrap_or(Done::Read)).collect())
}

/// Writes a prepared resource (create or update) with its AuditEvent.
fn store_prepared(
    env: &Env,
    txn: &mut dyn Txn,
    w: &Work,
    prepared: &Option<Prepared>,
    id: &str,
    kind: WriteKind,
    interaction: Interaction,
) -> Result<Done, EntryError> {
    let rt = w.resource_type.as_str();
    let p = prepared.as_ref().ok_or_else(|| {
        EntryError::NotImplemented("an entry without its prepared resource".into())
    })?;
    let method = if w.entry.method == Method::Post {
        "POST"
    } else {
        "PUT"
    };
    let audit = record(env, interaction, rt, id, p.patients.clone());
    let r = write_version(
        env,
        txn,
        rt,
        id,
        kind,
        method,
        Some(&p.resource),
        &p.index,
        &audit,
    )
    .map_err(|e| store_error(e, rt, id))?;
    Ok(Done::Stored {
        resource_type: rt.to_string(),
        id: id.to_string(),
        version: r.version,
        last_updated: r.last_updated,
        created: r.created,
        body: env.return_bodies.then_some(r.body),
    })
}

/// A PATCH entry: the current version read in the transaction, patched, judged like
/// any written resource, written as the version after the one patched.
fn patch(
    env: &Env,
    plan: &Plan,
    res: &Resolution,
    w: &Work,
    txn: &mut dyn Txn,
    id: &str,
    if_match: Option<i64>,
) -> Result<Done, EntryError> {
    let rt = w.resource_type.as_str();
    let Payload::Patch(doc) = &w.entry.payload else {
        return Err(EntryError::Invalid(vec![Issue::error(
            "required",
            "a PATCH entry needs a patch document",
        )]));
    };
    let current = txn
        .current(rt, id)?
        .ok_or_else(|| EntryError::NotFound(format!("{rt}/{id} does not exist")))?;
    if current.deleted {
        return Err(EntryError::Gone(format!(
            "{rt}/{id} was deleted (version {})",
            current.version
        )));
    }
    if let Some(expected) = if_match.filter(|v| *v != current.version) {
        return Err(EntryError::PreconditionFailed(format!(
            "ifMatch names version {expected}, but the current version of {rt}/{id} is {}",
            current.version
        )));
    }
    let resource: Value = serde_json::from_slice(&current.body).map_err(|e| {
        EntryError::Store(StoreError::Prepare(format!(
            "stored {rt}/{id} is not JSON: {e}"
        )))
    })?;
    let location = w.entry.origin.resource_location(rt);
    let mut patched = doc.apply(env.model, &resource).map_err(|e| {
        let i = Issue::error(
            if e.is_malformed() {
                "invalid"
            } else {
                "processing"
            },
            e.describe(),
        )
        .at(location.clone());
        if e.is_malformed() {
            EntryError::Invalid(vec![i])
        } else {
            EntryError::Unprocessable(vec![i])
        }
    })?;
    if let Some(i) = identity_change(rt, id, &patched) {
        return Err(EntryError::Unprocessable(vec![i]));
    }
    let issues = validate_entry(env.model, &patched, &location);
    if fhir::outcome::has_errors(&issues) {
        return Err(EntryError::Unprocessable(
            issues
                .into_iter()
                .map(|mut i| {
                    i.diagnostics = format!("the patched resource is invalid: {}", i.diagnostics);
                    i
                })
                .collect(),
        ));
    }
    rewrite(env, plan, w.entry, &res.identities, &mut patched, &location)?;
    let index = env.search.index_rows(&patched);
    let patients = env.compartment.patients_of(rt, Some(id), Some(&patched));
    let audit = record(env, Interaction::Patch, rt, id, patients);
    let written = write_version(
        env,
        txn,
        rt,
        id,
        WriteKind::Update {
            if_match: Some(current.version),
        },
        "PATCH",
        Some(&patched),
        &index,
        &audit,
    );
    let r = match written {
        Ok(r) => r,
        // Another writer committed between the read and the write: without an
        // ifMatch the patch applies to the newer version (the transaction runs again).
        Err(StoreError::VersionConflict { .. }) if if_match.is_none() => {
            return Err(EntryError::Store(StoreError::Contention))
        }
        Err(e) => return Err(store_error(e, rt, id)),
    };
    Ok(Done::Stored {
        resource_type: rt.to_string(),
        id: id.to_string(),
        version: r.version,
        last_updated: r.last_updated,
        created: false,
        body: env.return_bodies.then_some(r.body),
    })
}

/// A patch may change everything but what names the resource: its type and id. The
/// issue when it tried.
pub fn identity_change(rt: &str, id: &str, patched: &Value) -> Option<Issue> {
    let changed = |element: &str, was: &str, now: Option<&str>| {
        Issue::error(
            "business-rule",
            match now {
                Some(now) => {
                    format!("a patch must not change `{element}` (from `{was}` to `{now}`)")
                }
                None => format!("a patch must not remove `{element}` (`{was}`)"),
            },
        )
        .at(format!("{rt}.{element}"))
    };
    let text = |k: &str| patched.get(k).and_then(Value::as_str);
    match text("resourceType") {
        Some(t) if t == rt => {}
        other => return Some(changed("resourceType", rt, other)),
    }
    match text("id") {
        Some(i) if i == id => None,
        other => Some(changed("id", id, other)),
    }
}

fn interaction_of(entry: &Entry) -> Interaction {
    match (entry.method, &entry.target) {
        (Method::Post, _) => Interaction::Create,
        (Method::Put, _) => Interaction::Update,
        (Method::Patch, _) => Interaction::Patch,
        (Method::Delete, _) => Interaction::Delete,
        (_, Target::Instance { .. }) => Interaction::Read,
        (_, Target::Version { .. }) => Interaction::Vread,
        (_, Target::System { .. }) => Interaction::SearchSystem,
        (_, Target::Other(_)) => Interaction::Operation("entry".into()),
        _ => Interaction::SearchType,
    }
}

/// The audit record of an entry that failed or never ran.
pub fn failure_record(
    ctx: &crate::access::AccessContext,
    entry: Option<&Entry>,
    description: String,
    server_fault: bool,
) -> AuditRecord {
    let mut r = AuditRecord::new(
        entry.map_or(Interaction::Operation("entry".into()), interaction_of),
        ctx,
    );
    if let Some(e) = entry {
        r.resource_type = e.target.resource_type().map(str::to_string);
        if let Target::Instance { id, .. } | Target::Version { id, .. } = &e.target {
            r.id = Some(id.to_string());
        }
        if r.interaction.action() == "E" {
            r.query = Some(e.url.clone());
        }
    }
    r.outcome = if server_fault {
        Outcome::ServerError(description)
    } else {
        Outcome::ClientError(description)
    };
    r
}

/// The failure of a transaction: its errors, and an audit record for every entry
/// (the entry at fault with its error, the others as not processed).
fn failure(env: &Env, entries: &[Entry], errors: Errors) -> Failure {
    let first = errors.first().and_then(|(p, _)| *p);
    let audits = entries
        .iter()
        .enumerate()
        .map(|(pos, entry)| {
            let own = errors.iter().find(|(p, _)| *p == Some(pos)).map(|(_, e)| e);
            let mut rec = match own {
                Some(e) => failure_record(env.ctx, Some(entry), e.to_string(), e.is_server_error()),
                None => failure_record(
                    env.ctx,
                    Some(entry),
                    match first {
                        Some(f) => format!("not processed: the transaction failed at entry {f}"),
                        None => "not processed: the transaction failed".to_string(),
                    },
                    errors.iter().any(|(_, e)| e.is_server_error()),
                ),
            };
            if let Payload::Resource(r) = &entry.payload {
                if let Some(rt) = r.get("resourceType").and_then(Value::as_str) {
                    rec.patients = env.compartment.patients_of(
                        rt,
                        r.get("id").and_then(Value::as_str),
                        Some(r),
                    );
                }
            }
            rec
        })
        .collect();
    Failure { errors, audits }
}
