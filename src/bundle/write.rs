//! The writes of a resolved plan: each resource to create or update prepared (its
//! id set, its references rewritten to the Bundle's identities, its index rows and
//! patients found), then every entry written in processing order inside the open
//! transaction, each version with its AuditEvent; PATCH entries read, patch and
//! judge the current version there.

use serde_json::Value;

use super::plan::{Plan, Work};
use super::process::{Done, Errors};
use super::references::{self, Identities, Site, Unresolved};
use super::resolve::{Action, Resolution};
use super::{validate_entry, Entry, EntryError, Env, Method, Origin, Payload};
use crate::audit::{AuditRecord, Interaction};
use crate::fhir::{self, Issue};
use crate::store::{
    AuditRow, IndexRows, StoreError, Txn, WriteKind, WriteMethod, WriteRequest, WriteResult,
};

/// A resource ready to write.
pub(super) struct Prepared {
    resource: Value,
    index: IndexRows,
    patients: Vec<String>,
}

/// Sets ids and rewrites the references of every resource to create or update.
pub(super) fn prepare(
    env: &Env,
    plan: &Plan,
    res: &Resolution,
) -> Result<Vec<Option<Prepared>>, Errors> {
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
        if w.resource_type == crate::subscription::rules::RESOURCE_TYPE {
            crate::subscription::rules::activate(&mut resource);
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
                let index = match env.search.index_rows(&resource) {
                    Ok(index) => index,
                    Err(e) => {
                        errors.push((Some(w.pos), index_error(e, w.entry)));
                        out.push(None);
                        continue;
                    }
                };
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
///
/// Two kinds of resource keep their references as they are: a Bundle being
/// stored (a document or collection: its `urn:uuid:` references name its own
/// entries, not the entries of the transaction that carries it), and a resource
/// written by a plain REST request, where a `urn:uuid:` reference names nothing
/// fhirgate could resolve (its conditional references are still resolved).
fn rewrite(
    env: &Env,
    plan: &Plan,
    entry: &Entry,
    identities: &Identities,
    resource: &mut Value,
    location: &str,
) -> Result<(), EntryError> {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        return Ok(());
    }
    let keep_placeholders = entry.origin == Origin::Request;
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
                Err(Unresolved::Placeholder(_)) if keep_placeholders => None,
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

/// One version an entry writes, as this module hands it to the store: every
/// write of fhirgate (REST, Bundle entries, conditional interactions, import
/// lines) becomes one of these, and [`Version::request`] is the one place where
/// it becomes the store's [`WriteRequest`].
pub(super) struct Version<'a> {
    pub rt: &'a str,
    pub id: &'a str,
    pub kind: WriteKind,
    pub method: WriteMethod,
    /// The resource to store; None for a delete.
    pub resource: Option<&'a Value>,
    pub index: &'a IndexRows,
    pub audit: AuditRecord,
}

/// The callbacks of one version: its stored body, and its AuditEvent once the
/// store has given it a version.
type PrepareFn<'a> = Box<dyn Fn(i64, i64) -> Result<Vec<u8>, StoreError> + 'a>;
type AuditFn<'a> = Box<dyn Fn(&WriteResult) -> Result<AuditRow, StoreError> + 'a>;

impl<'a> Version<'a> {
    fn callbacks(&'a self, env: &'a Env) -> (PrepareFn<'a>, AuditFn<'a>) {
        let (resource, id, kind) = (self.resource, self.id, self.kind);
        let prepare: PrepareFn<'a> = Box::new(move |version: i64, ts: i64| match resource {
            Some(r) => fhir::stored_body(r, id, version, ts).map_err(StoreError::Body),
            None => Ok(Vec::new()),
        });
        let audit: AuditFn<'a> = Box::new(move |r: &WriteResult| {
            let mut rec = self.audit.clone();
            rec.version = Some(r.version);
            if r.created && matches!(kind, WriteKind::Update { .. }) {
                rec.interaction = Interaction::Create;
            }
            Ok(env.audit.row(&rec))
        });
        (prepare, audit)
    }

    /// The store's request for this version, with its callbacks.
    fn request<'r>(
        &'r self,
        env: &Env,
        callbacks: &'r (PrepareFn<'a>, AuditFn<'a>),
    ) -> WriteRequest<'r> {
        WriteRequest {
            resource_type: self.rt,
            id: self.id,
            kind: self.kind,
            method: self.method,
            prepare: callbacks.0.as_ref(),
            audit: callbacks.1.as_ref(),
            index: self.index,
            effects: crate::store::Effects {
                subscription: crate::subscription::rules::effect(
                    self.rt,
                    self.resource,
                    env.subscriptions,
                ),
                ..env.search.write_effects(self.rt)
            },
        }
    }
}

/// Writes one version with its AuditEvent.
fn write_version(env: &Env, txn: &mut dyn Txn, v: &Version) -> Result<WriteResult, StoreError> {
    let callbacks = v.callbacks(env);
    let result = txn.write(&v.request(env, &callbacks))?;
    if result.unchanged {
        // A delete of a deleted resource, or an update that changes nothing, writes
        // no version but is audited (the update with the version it answers).
        let row = match v.kind {
            WriteKind::Update { .. } => (callbacks.1)(&result)?,
            _ => env.audit.row(&v.audit),
        };
        txn.insert_audits(&[row])?;
    }
    Ok(result)
}

/// Writes one new resource with a server id on its own, outside a transaction
/// of several entries: the store prepares every row before it takes the database.
fn create_alone(env: &Env, v: &Version) -> Result<WriteResult, StoreError> {
    let callbacks = v.callbacks(env);
    env.store.create_alone(env.ctx, &v.request(env, &callbacks))
}

fn store_error(e: StoreError, rt: &str, id: &str) -> EntryError {
    match e {
        StoreError::NotFound => EntryError::NotFound(format!("{rt}/{id} does not exist")),
        StoreError::VersionConflict { current } => EntryError::PreconditionFailed(format!(
            "ifMatch does not name the current version of {rt}/{id} (it is {current})"
        )),
        StoreError::AlreadyExists => EntryError::Conflict(format!("{rt}/{id} already exists")),
        StoreError::Forbidden(denied) => EntryError::Forbidden(denied.0),
        other => EntryError::Store(other),
    }
}

/// Writes every entry, in processing order, inside the open transaction.
pub(super) fn write(
    env: &Env,
    plan: &Plan,
    res: &Resolution,
    prepared: &[Option<Prepared>],
    txn: &mut dyn Txn,
) -> Result<Vec<Done>, (usize, EntryError)> {
    let mut done: Vec<Option<Done>> = (0..plan.len).map(|_| None).collect();
    // Every existing resource this transaction changes, locked up front in one
    // order: two transactions that change the same resources cannot deadlock.
    let changed: Vec<(&str, &str)> = plan
        .works
        .iter()
        .zip(&res.actions)
        .filter_map(|(w, a)| match a {
            Action::Create {
                client_id: false, ..
            }
            | Action::Matched { .. }
            | Action::NoMatch => None,
            other => other.identity().map(|id| (w.resource_type.as_str(), id)),
        })
        .collect();
    if let Err(e) = txn.lock_resources(&changed) {
        return Err((
            plan.works.first().map_or(0, |w| w.pos),
            EntryError::Store(e),
        ));
    }
    // Creates are written together, in multi-row statements: those with server ids
    // (the POST step) and updates of ids that do not exist yet (update as create, as
    // an NDJSON import does). Everything else one entry at a time, in processing order.
    let fresh = absent_ids(plan, res, txn)?;
    let mut creates: Vec<(&Work, &str, &Prepared)> = Vec::new();
    for ((w, a), p) in plan.works.iter().zip(&res.actions).zip(prepared) {
        let batched = match a {
            Action::Create {
                client_id: false, ..
            } => true,
            Action::Create { id, .. }
            | Action::Update {
                id, if_match: None, ..
            } => fresh.contains(&(w.resource_type.as_str(), id.as_str())),
            _ => false,
        };
        if let (true, Some(p), Some(id)) = (batched, p, a.identity()) {
            creates.push((w, id, p));
            continue;
        }
        for (pos, d) in create_all(env, txn, std::mem::take(&mut creates))? {
            done[pos] = Some(d);
        }
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
                let patients = if rt == "Patient" {
                    vec![format!("Patient/{id}")]
                } else {
                    Vec::new()
                };
                let version = Version {
                    rt,
                    id,
                    kind: WriteKind::Delete {
                        if_match: *if_match,
                    },
                    method: WriteMethod::Delete,
                    resource: None,
                    index: &IndexRows::default(),
                    audit: record(env, Interaction::Delete, rt, id, patients),
                };
                let r =
                    write_version(env, txn, &version).map_err(|e| fail(store_error(e, rt, id)))?;
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
    for (pos, d) in create_all(env, txn, creates)? {
        done[pos] = Some(d);
    }
    Ok(done.into_iter().map(|d| d.unwrap_or(Done::Read)).collect())
}

/// The (type, id) of the updates without `ifMatch` and the creates with a client id
/// whose resource does not exist at all: they are creates.
fn absent_ids<'p>(
    plan: &'p Plan,
    res: &'p Resolution,
    txn: &mut dyn Txn,
) -> Result<std::collections::HashSet<(&'p str, &'p str)>, (usize, EntryError)> {
    let mut asked: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut first = None;
    for (w, a) in plan.works.iter().zip(&res.actions) {
        if let Action::Create {
            id,
            client_id: true,
        }
        | Action::Update { id, if_match: None } = a
        {
            asked
                .entry(w.resource_type.as_str())
                .or_default()
                .push(id.as_str());
            first.get_or_insert(w.pos);
        }
    }
    let mut absent = std::collections::HashSet::new();
    for (rt, ids) in asked {
        let known = txn
            .existing(rt, &ids)
            .map_err(|e| (first.unwrap_or(0), EntryError::Store(e)))?;
        absent.extend(
            ids.into_iter()
                .filter(|id| !known.contains(*id))
                .map(|id| (rt, id)),
        );
    }
    Ok(absent)
}

/// New resources with server ids, with their AuditEvents, in one go.
fn create_all(
    env: &Env,
    txn: &mut dyn Txn,
    creates: Vec<(&Work, &str, &Prepared)>,
) -> Result<Vec<(usize, Done)>, (usize, EntryError)> {
    let Some(first) = creates.first().map(|(w, _, _)| w.pos) else {
        return Ok(Vec::new());
    };
    let versions: Vec<Version> = creates
        .iter()
        .map(|&(w, id, p)| create_version(env, w, id, p))
        .collect();
    let callbacks: Vec<_> = versions.iter().map(|v| v.callbacks(env)).collect();
    let reqs: Vec<WriteRequest> = versions
        .iter()
        .zip(&callbacks)
        .map(|(v, c)| v.request(env, c))
        .collect();
    let results = txn
        .create_many(&reqs)
        .map_err(|e| (first, EntryError::Store(e)))?;
    Ok(creates
        .iter()
        .zip(results)
        .map(|(&(w, id, _), r)| (w.pos, stored(env, &w.resource_type, id, r)))
        .collect())
}

/// The version of a new resource with a server id (always version 1).
fn create_version<'a>(env: &Env, w: &'a Work, id: &'a str, p: &'a Prepared) -> Version<'a> {
    let mut audit = record(
        env,
        Interaction::Create,
        &w.resource_type,
        id,
        p.patients.clone(),
    );
    audit.version = Some(1);
    Version {
        rt: &w.resource_type,
        id,
        kind: WriteKind::Create,
        method: method_of(w),
        resource: Some(&p.resource),
        index: &p.index,
        audit,
    }
}

/// What an entry that stored a version did.
fn stored(env: &Env, rt: &str, id: &str, r: WriteResult) -> Done {
    Done::Stored {
        resource_type: rt.to_string(),
        id: id.to_string(),
        version: r.version,
        last_updated: r.last_updated,
        created: r.created,
        unchanged: r.unchanged,
        body: env.return_bodies.then_some(r.body),
    }
}

/// One new resource with a server id, written on its own (see `process`).
pub(super) fn create_one(env: &Env, w: &Work, id: &str, p: &Prepared) -> Result<Done, EntryError> {
    let version = create_version(env, w, id, p);
    let r = create_alone(env, &version).map_err(|e| store_error(e, &w.resource_type, id))?;
    Ok(stored(env, &w.resource_type, id, r))
}

/// How an entry's version is recorded in history.
fn method_of(w: &Work) -> WriteMethod {
    match w.entry.method {
        Method::Post => WriteMethod::Post,
        Method::Patch => WriteMethod::Patch,
        Method::Delete => WriteMethod::Delete,
        _ => WriteMethod::Put,
    }
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
    let version = Version {
        rt,
        id,
        kind,
        method: method_of(w),
        resource: Some(&p.resource),
        index: &p.index,
        audit: record(env, interaction, rt, id, p.patients.clone()),
    };
    let r = write_version(env, txn, &version).map_err(|e| store_error(e, rt, id))?;
    Ok(Done::Stored {
        resource_type: rt.to_string(),
        id: id.to_string(),
        version: r.version,
        last_updated: r.last_updated,
        created: r.created,
        unchanged: r.unchanged,
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
    let resource: Value = serde_json::from_slice(&current.body)
        .map_err(|_| EntryError::Store(StoreError::Internal("a stored body is not JSON")))?;
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
        // A FHIRPath Patch's failing operation is a parameter of the Parameters sent.
        .at(match (doc, e.operation()) {
            (crate::patch::Patch::FhirPath(_), Some(op)) => format!(
                "{}.parameter[{op}]",
                w.entry.origin.resource_location("Parameters")
            ),
            _ => location.clone(),
        });
        if e.is_malformed() {
            EntryError::Invalid(vec![i])
        } else {
            EntryError::Unprocessable(vec![i])
        }
    })?;
    if let Some(i) = identity_change(rt, id, &patched) {
        return Err(EntryError::Unprocessable(vec![i]));
    }
    let issues = validate_entry(env.checks(), &patched, &location);
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
    let index = env
        .search
        .index_rows(&patched)
        .map_err(|e| index_error(e, w.entry))?;
    let patients = env.compartment.patients_of(rt, Some(id), Some(&patched));
    let version = Version {
        rt,
        id,
        kind: WriteKind::Update {
            if_match: Some(current.version),
        },
        method: WriteMethod::Patch,
        resource: Some(&patched),
        index: &index,
        audit: record(env, Interaction::Patch, rt, id, patients),
    };
    let written = write_version(env, txn, &version);
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
        unchanged: r.unchanged,
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

/// A resource refused for what indexing it would cost (`search.max_index_rows`):
/// 400 `too-costly`, at the entry's resource.
fn index_error(e: crate::search::SearchError, entry: &Entry) -> EntryError {
    EntryError::Invalid(vec![super::plan::issue(
        "too-costly",
        e.to_string(),
        match entry.origin {
            Origin::Bundle(i) => Some(format!("Bundle.entry[{i}].resource")),
            Origin::Request => None,
        },
    )])
}
