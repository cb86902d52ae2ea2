//! Running entries, as a transaction, a batch or one on its own: the plan, a first
//! resolution and preparation outside the write transaction, then the resolution
//! again, and the writes, inside it; and the audit records of what failed. See the
//! module paragraph of `bundle`.

use serde_json::Value;

use super::plan::plan;
use super::resolve::{resolve, Action, NoLookup, Resolution};
use super::write::{prepare, write, Prepared};
use super::{Entry, EntryError, Env, Extra, Method, Payload, Target};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::store::{StoreError, Txn, TxnError};

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
        /// An update that changed nothing: no version was written, `version` is
        /// the current one.
        unchanged: bool,
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
            Err(failed) => {
                let (e, audit) = *failed;
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
/// import line); on failure, its error and its audit record (boxed: they are large
/// next to what a success carries).
pub fn process_entry(
    env: &Env,
    entry: &Entry,
    extra: Option<Extra>,
) -> Result<Done, Box<(EntryError, AuditRecord)>> {
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
            Err(Box::new((e, record)))
        }
    }
}

pub(super) type Errors = Vec<(Option<usize>, EntryError)>;

/// Runs what precedes the database for entries (a transaction's, or with
/// `independent` a batch's or a lone entry's): the plan, the resolution as an empty
/// database would answer it (no criteria match, no id exists) and the preparation
/// (ids set, references rewritten, index rows built). Nothing is read or written;
/// the answer is the number of entries that would write, or every entry's error.
/// The fuzz target `bundle_plan` (`fuzz/`) drives the planner through it.
pub fn dry_run(
    env: &Env,
    entries: &[Entry],
    independent: bool,
) -> Result<usize, Vec<(Option<usize>, EntryError)>> {
    let plan = plan(env, entries, independent)?;
    let resolution = resolve(&plan, &mut EmptyDatabase)?;
    let prepared = prepare(env, &plan, &resolution)?;
    Ok(prepared.iter().filter(|p| p.is_some()).count())
}

/// A database without resources, as [`dry_run`] sees it.
struct EmptyDatabase;

impl crate::store::Lookup for EmptyDatabase {
    fn matches(&mut self, _: &crate::store::Condition) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn current(
        &mut self,
        _: &str,
        _: &str,
    ) -> Result<Option<crate::store::StoredVersion>, StoreError> {
        Ok(None)
    }
}

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
                .lookup(env.ctx, &mut |l| Ok(resolve(&plan, l)))
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
    if let (Some((resolution, prepared)), None) = (&pre, extra) {
        if let Some(done) = write_alone(env, &plan, resolution, prepared) {
            return done.map(|d| vec![d]);
        }
    }
    let keys = |exclusive: bool| -> Vec<i64> {
        plan.lock_keys
            .iter()
            .filter(|(_, x)| *x == exclusive)
            .map(|(k, _)| *k)
            .collect()
    };
    let (exclusive, shared) = (keys(true), keys(false));
    let outcome = env.store.transaction(
        env.ctx,
        &mut |txn: &mut dyn Txn| -> Result<Vec<Done>, Abort> {
            // Exclusive criteria first, then shared ones, each in ascending order.
            txn.lock(&exclusive, false)?;
            txn.lock(&shared, true)?;
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
        },
    );
    match outcome {
        Ok(done) => {
            after_commit(env, &done);
            Ok(done)
        }
        Err(Abort::Entries(errors)) => Err(errors),
        Err(Abort::Store(e)) => Err(vec![(None, EntryError::Store(e))]),
    }
}

/// One new resource with a server id and nothing else to resolve (a REST create,
/// a lone POST entry): written on its own, its rows prepared before it takes the
/// database. None when the plan is not such a write.
fn write_alone(
    env: &Env,
    plan: &super::plan::Plan,
    resolution: &Resolution,
    prepared: &[Option<Prepared>],
) -> Option<Result<Done, Errors>> {
    let (
        [work],
        [Action::Create {
            id,
            client_id: false,
        }],
        [Some(p)],
    ) = (
        plan.works.as_slice(),
        resolution.actions.as_slice(),
        prepared,
    )
    else {
        return None;
    };
    if plan.needs_lookup() {
        return None;
    }
    Some(
        super::write::create_one(env, work, id, p)
            .inspect(|d| after_commit(env, std::slice::from_ref(d)))
            .map_err(|e| vec![(Some(work.pos), e)]),
    )
}

/// What follows a commit on this node: SearchParameters written are indexed from
/// this node's next write on (the other nodes reload when they see the registry
/// generation change).
fn after_commit(env: &Env, done: &[Done]) {
    let search_params = done.iter().any(|d| match d {
        Done::Stored { resource_type, .. } | Done::Deleted { resource_type, .. } => {
            env.search
                .write_effects(resource_type)
                .registers_search_param
        }
        _ => false,
    });
    if search_params {
        if let Err(e) = crate::search::reindex::reload_registry(env.store, env.search) {
            tracing::warn!(error = %e, "the search parameters could not be reloaded after a write; the reindex worker will");
        }
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
        if r.interaction.action() == crate::audit::AuditAction::Execute {
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
                Some(e) => {
                    let mut r =
                        failure_record(env.ctx, Some(entry), e.to_string(), e.is_server_error());
                    // A refused entry is an authorization decision too (DESIGN 12).
                    r.denied = matches!(e, EntryError::Forbidden(_));
                    r
                }
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
