//! The store's side of FHIR Subscriptions (issue 15): the rows beside each
//! Subscription resource (`subscriptions`: status, owner, event counter, the
//! delivery lease and retry schedule), the notifications (`subscription_events`),
//! the record of every delivery attempt (`subscription_attempts`), and the
//! matching of a write against every active subscription **inside the write's
//! transaction** ([`Registry::notify`], called by `write::apply`), so a committed
//! change always has its notification and a rolled-back one never does.
//!
//! What a criteria string means is the subscription module's (it compiles them
//! with the search engine into [`Criteria`], through [`CompileCriteria`]); the
//! store evaluates the compiled filters in SQL on the rows just written, narrowed
//! to what the subscription's owner may read, so a notification never reports
//! what its owner could not search. Each node keeps the compiled criteria in
//! memory and reloads them when `subscription_state.generation` moved (every write
//! of a Subscription moves it, in its own transaction).
//!
//! Architecture invariant: nothing here decides by a resource type's name; the
//! rows of a Subscription are written because its writer declared the effect.

use std::sync::{Arc, OnceLock};

use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::QueryableByName;
use parking_lot::Mutex;

use super::conn::{AnyConn, Count};
use super::index::{blind_key, Blinded};
use super::query::{self, Bound, Filter, IndexTable, Query, Ranges, RefTarget};
use super::read::version;
use super::sql::{Bind, Sql};
use super::{StoreError, Verify};
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

/// A subscription's criteria as the subscription module compiled them.
pub struct Criteria {
    pub subscription_id: String,
    /// The type the criteria search (`Observation?...`).
    pub resource_type: String,
    /// The search's filters (ANDed).
    pub filters: Vec<Filter>,
    /// What the blind index only approximates, decided on the decrypted body.
    pub verify: Option<Arc<Verify>>,
    /// The subscription's owner: what it may search is what it hears of.
    pub owner: AccessContext,
    /// `Subscription.end` (Unix microseconds): no notification after it.
    pub end: Option<i64>,
}

/// What writing a Subscription resource changes besides its version, declared by
/// the subscription module (`Effects::subscription`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEffect {
    /// The type its criteria search.
    pub criteria_type: String,
    /// `rest-hook` or `websocket`.
    pub channel: String,
    /// The resource's status as stored (`active`, `off`, `error`, `requested`).
    pub status: String,
    /// `subscriptions.max_active` (0: no limit): a write that makes one more
    /// subscription active beyond it is refused.
    pub max_active: u64,
}

/// A registered Subscription for compiling: its id, current body and its owner
/// as recorded at its last write (the JSON of [`crate::access::Owner`]).
pub struct Registered {
    pub id: String,
    pub body: Vec<u8>,
    pub owner: Vec<u8>,
}

/// Compiles registered Subscriptions into criteria (the subscription module).
/// A Subscription whose criteria no longer compile (a SearchParameter removed)
/// is left out, with a warning in the log.
pub trait CompileCriteria: Send + Sync {
    fn compile(&self, registered: Vec<Registered>) -> Vec<Criteria>;
}

/// One notification to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub subscription_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version: i64,
    /// `create`, `update` or `delete`.
    pub action: &'static str,
}

impl Notification {
    /// The notification of `w` for the subscription `s`.
    fn of(s: &Criteria, w: &Written<'_>) -> Notification {
        Notification {
            subscription_id: s.subscription_id.clone(),
            resource_type: w.resource_type.to_string(),
            resource_id: w.id.to_string(),
            version: w.version,
            action: w.action,
        }
    }
}

/// A stored notification.
#[derive(Debug, Clone, QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = BigInt)]
    pub event_number: i64,
    #[diesel(sql_type = Text)]
    pub resource_type: String,
    #[diesel(sql_type = Text)]
    pub resource_id: String,
    #[diesel(sql_type = BigInt)]
    pub version_id: i64,
    #[diesel(sql_type = Text)]
    pub action: String,
    /// Unix microseconds of the change.
    #[diesel(sql_type = BigInt)]
    pub recorded: i64,
}

/// The delivery state of one subscription.
#[derive(Debug, Clone, QueryableByName)]
pub struct DeliveryRow {
    #[diesel(sql_type = Text)]
    pub subscription_id: String,
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub created_version: i64,
    #[diesel(sql_type = BigInt)]
    pub last_event: i64,
    #[diesel(sql_type = BigInt)]
    pub delivered: i64,
    #[diesel(sql_type = BigInt)]
    pub attempts: i64,
    #[diesel(sql_type = BigInt)]
    pub next_attempt: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub failing_since: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
}

const DELIVERY_COLUMNS: &str = "subscription_id, channel, status, created_version, last_event, \
     delivered, attempts, next_attempt, failing_since, error";

/// One written version as matching sees it.
pub(crate) struct Written<'a> {
    pub rid: i64,
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version: i64,
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// Its index rows as written (None for a delete: the rows are in the database).
    pub index: Option<&'a Blinded>,
}

/// A condition every match of a subscription meets, checked in memory on the
/// rows a write made before any SQL runs: with many subscriptions, most are
/// ruled out by a token or reference they name that the resource lacks.
enum Need {
    /// One of these (pid, blind value) rows.
    Blind(Vec<(i64, i64)>),
    /// A reference to one of these local targets.
    Reference(Vec<LocalTarget>),
}

/// A reference through one of the pids to a local target (type among the types,
/// any when empty; id).
type LocalTarget = (Vec<i64>, Vec<String>, String);

impl Need {
    fn met_by(&self, rows: &Blinded) -> bool {
        match self {
            Need::Blind(any) => any.iter().any(|k| rows.has_blind(*k)),
            Need::Reference(any) => any.iter().any(|(pids, types, id)| {
                rows.references().iter().any(|(pid, r)| {
                    pids.contains(pid)
                        && r.target_id == *id
                        && if types.is_empty() {
                            !r.target_type.is_empty()
                        } else {
                            types.contains(&r.target_type)
                        }
                })
            }),
        }
    }
}

/// The needs of a conjunction of filters (those it can tell in memory).
fn needs(ring: &Keyring, filters: &[Filter], out: &mut Vec<Need>) -> Result<(), StoreError> {
    for f in filters {
        match f {
            Filter::All(inner) => needs(ring, inner, out)?,
            Filter::Blind { pids, values } => {
                let mut any = Vec::with_capacity(pids.len() * values.len());
                for v in values {
                    let h = blind_key(ring, v)?;
                    any.extend(pids.iter().map(|p| (*p, h)));
                }
                out.push(Need::Blind(any));
            }
            Filter::Reference { pids, targets } => {
                let locals: Option<Vec<LocalTarget>> = targets
                    .iter()
                    .map(|t| match t {
                        RefTarget::Local { types, id } => {
                            Some((pids.clone(), types.clone(), id.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                if let Some(any) = locals {
                    out.push(Need::Reference(any));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A filter decided in memory on the rows a write made, exactly as the SQL of
/// store::render decides it on the stored rows (same tables, same comparisons).
enum Mem {
    Blind(Vec<(i64, i64)>),
    Date {
        pids: Vec<i64>,
        ranges: Ranges<i64>,
    },
    Number {
        pids: Vec<i64>,
        keys: Vec<i64>,
        ranges: Ranges<f64>,
    },
    Reference(Vec<LocalTarget>),
    Present {
        table: IndexTable,
        pids: Vec<i64>,
    },
    Ids(Vec<String>),
    Types(Vec<String>),
    Not(Box<Mem>),
    Any(Vec<Mem>),
    All(Vec<Mem>),
    Nothing,
}

/// `v` within one of the conjunctions of bounds (none: any value).
fn in_ranges<T: Copy + PartialOrd>(lo: T, hi: T, ranges: &Ranges<T>) -> bool {
    ranges.is_empty()
        || ranges.iter().any(|conj| {
            conj.iter().all(|b| match *b {
                Bound::LoGe(v) => lo >= v,
                Bound::LoGt(v) => lo > v,
                Bound::LoLe(v) => lo <= v,
                Bound::LoLt(v) => lo < v,
                Bound::HiGe(v) => hi >= v,
                Bound::HiGt(v) => hi > v,
                Bound::HiLe(v) => hi <= v,
                Bound::HiLt(v) => hi < v,
            })
        })
}

impl Mem {
    /// The in-memory form of a filter; None when it needs the database (chains,
    /// `_has`, `_list`, URLs, `_lastUpdated`, URIs).
    fn of(ring: &Keyring, f: &Filter) -> Result<Option<Mem>, StoreError> {
        Ok(Some(match f {
            Filter::Blind { pids, values } => {
                let mut any = Vec::with_capacity(pids.len() * values.len());
                for v in values {
                    let h = blind_key(ring, v)?;
                    any.extend(pids.iter().map(|p| (*p, h)));
                }
                Mem::Blind(any)
            }
            Filter::Date { pids, ranges } => Mem::Date {
                pids: pids.clone(),
                ranges: ranges.clone(),
            },
            Filter::Number { pids, keys, ranges } => Mem::Number {
                pids: pids.clone(),
                keys: match keys {
                    None => vec![0],
                    Some(ks) => ks
                        .iter()
                        .map(|k| blind_key(ring, k))
                        .collect::<Result<Vec<i64>, _>>()?,
                },
                ranges: ranges.clone(),
            },
            Filter::Reference { pids, targets } => {
                let mut any = Vec::new();
                for t in targets {
                    match t {
                        RefTarget::Local { types, id } => {
                            any.push((pids.clone(), types.clone(), id.clone()))
                        }
                        _ => return Ok(None),
                    }
                }
                Mem::Reference(any)
            }
            Filter::Present { table, pids } if *table != IndexTable::Uri => Mem::Present {
                table: *table,
                pids: pids.clone(),
            },
            Filter::Ids(ids) => Mem::Ids(ids.clone()),
            Filter::Types(ts) => Mem::Types(ts.clone()),
            Filter::Nothing => Mem::Nothing,
            Filter::Not(inner) => match Mem::of(ring, inner)? {
                Some(m) => Mem::Not(Box::new(m)),
                None => return Ok(None),
            },
            Filter::Any(fs) | Filter::All(fs) => {
                let mut parts = Vec::with_capacity(fs.len());
                for f in fs {
                    match Mem::of(ring, f)? {
                        Some(m) => parts.push(m),
                        None => return Ok(None),
                    }
                }
                if matches!(f, Filter::Any(_)) {
                    Mem::Any(parts)
                } else {
                    Mem::All(parts)
                }
            }
            _ => return Ok(None),
        }))
    }

    fn holds(&self, w: &Written<'_>, rows: &Blinded) -> bool {
        match self {
            Mem::Blind(any) => any.iter().any(|k| rows.has_blind(*k)),
            Mem::Date { pids, ranges } => rows
                .dates()
                .iter()
                .any(|(p, lo, hi)| pids.contains(p) && in_ranges(*lo, *hi, ranges)),
            Mem::Number { pids, keys, ranges } => rows.numbers().iter().any(|(p, k, lo, hi)| {
                pids.contains(p) && keys.contains(k) && in_ranges(*lo, *hi, ranges)
            }),
            Mem::Reference(any) => Need::Reference(any.clone()).met_by(rows),
            Mem::Present { table, pids } => match table {
                IndexTable::Blind => rows.blinds().iter().any(|(p, _)| pids.contains(p)),
                IndexTable::Date => rows.dates().iter().any(|(p, ..)| pids.contains(p)),
                IndexTable::Number => rows.numbers().iter().any(|(p, ..)| pids.contains(p)),
                IndexTable::Reference => rows.references().iter().any(|(p, _)| pids.contains(p)),
                IndexTable::Uri => rows.uris().iter().any(|(p, _)| pids.contains(p)),
            },
            Mem::Ids(ids) => ids.iter().any(|id| id == w.id),
            Mem::Types(ts) => ts.iter().any(|t| t == w.resource_type),
            Mem::Not(m) => !m.holds(w, rows),
            Mem::Any(ms) => ms.iter().any(|m| m.holds(w, rows)),
            Mem::All(ms) => ms.iter().all(|m| m.holds(w, rows)),
            Mem::Nothing => false,
        }
    }
}

/// A subscription's criteria with its needs and, when the whole decision can
/// be made in memory (criteria and the owner's narrowing on the rows a write
/// made, no check after decryption), that decision's form.
struct Compiled {
    criteria: Criteria,
    needs: Vec<Need>,
    in_memory: Option<Mem>,
}

/// Each node's compiled criteria, reloaded when the database's generation moved.
#[derive(Default)]
pub struct Registry {
    compiler: OnceLock<Arc<dyn CompileCriteria>>,
    loaded: Mutex<Option<(i64, Arc<Vec<Compiled>>)>>,
    /// Set after a commit that stored notifications, for the thread that
    /// NOTIFYs the other nodes (PostgreSQL).
    announce: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    /// Wakes this process's delivery worker and websockets (set when it starts).
    wake: OnceLock<fn()>,
}

#[derive(QueryableByName)]
struct Generation {
    #[diesel(sql_type = BigInt)]
    generation: i64,
}

#[derive(QueryableByName)]
struct OwnerLine {
    #[diesel(sql_type = Text)]
    subscription_id: String,
    #[diesel(sql_type = Text)]
    resource_type: String,
    #[diesel(sql_type = BigInt)]
    key_id: i64,
    #[diesel(sql_type = Binary)]
    owner: Vec<u8>,
}

#[derive(QueryableByName)]
struct LastEvent {
    #[diesel(sql_type = BigInt)]
    last_event: i64,
}

/// The associated data of a subscription's sealed owner: it opens only in its row.
fn owner_aad(id: &str) -> Vec<u8> {
    format!("subscription-owner/{id}").into_bytes()
}

impl Registry {
    /// Sets the compiler (once, at start-up); without one, nothing is matched.
    pub fn set_compiler(&self, compiler: Arc<dyn CompileCriteria>) {
        let _ = self.compiler.set(compiler);
    }

    /// The compiled criteria as of the database's generation (read on `c`, so a
    /// write transaction matches against the subscriptions it sees).
    fn current(&self, c: &mut AnyConn, ring: &Keyring) -> Result<Arc<Vec<Compiled>>, StoreError> {
        let Some(compiler) = self.compiler.get() else {
            return Ok(Arc::new(Vec::new()));
        };
        let mut sql = c.sql();
        sql.push("SELECT generation FROM subscription_state WHERE id = 1");
        let generation = c
            .load::<Generation>(sql)?
            .first()
            .map_or(0, |g| g.generation);
        if let Some((g, criteria)) = self.loaded.lock().as_ref() {
            if *g == generation {
                return Ok(criteria.clone());
            }
        }
        let mut sql = c.sql();
        sql.push(
            "SELECT subscription_id, resource_type, key_id, owner FROM subscriptions \
             WHERE status = 'active' ORDER BY subscription_id",
        );
        let mut registered = Vec::new();
        let system = AccessContext::system();
        for line in c.load::<OwnerLine>(sql)? {
            // One subscription that cannot be read is left out (and said so),
            // never every write of the node failed for it.
            let owner = match ring.open_box(
                line.key_id,
                &line.owner,
                &owner_aad(&line.subscription_id),
            ) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(subscription.id = %line.subscription_id, error = %e, "a subscription's owner cannot be opened; it is not matched");
                    continue;
                }
            };
            let current = match version(
                c,
                ring,
                &system,
                Action::Read,
                &line.resource_type,
                &line.subscription_id,
                None,
            ) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(subscription.id = %line.subscription_id, error = %e, "a subscription cannot be read; it is not matched");
                    continue;
                }
            };
            if current.deleted {
                continue;
            }
            registered.push(Registered {
                id: line.subscription_id,
                body: current.body,
                owner,
            });
        }
        let mut compiled = Vec::new();
        for criteria in compiler.compile(registered) {
            let mut n = Vec::new();
            needs(ring, &criteria.filters, &mut n)?;
            let mut all = criteria.filters.clone();
            all.extend(criteria.owner.grant.narrowing(
                Some(std::slice::from_ref(&criteria.resource_type)),
                Action::Search,
            ));
            let in_memory = match criteria.verify {
                Some(_) => None,
                None => Mem::of(ring, &Filter::All(all))?,
            };
            compiled.push(Compiled {
                criteria,
                needs: n,
                in_memory,
            });
        }
        let compiled = Arc::new(compiled);
        *self.loaded.lock() = Some((generation, compiled.clone()));
        Ok(compiled)
    }

    /// True when no active subscription searches `resource_type` as of the
    /// database's generation read on `c`.
    pub(crate) fn none_for(
        &self,
        c: &mut AnyConn,
        ring: &Keyring,
        resource_type: &str,
    ) -> Result<bool, StoreError> {
        Ok(!self
            .current(c, ring)?
            .iter()
            .any(|s| s.criteria.resource_type == resource_type))
    }

    /// The notifications of versions just written (their index rows are the
    /// ones to match: call it before a delete removes them and after a create or
    /// update wrote them).
    pub(crate) fn matches(
        &self,
        c: &mut AnyConn,
        ring: &Keyring,
        written: &[Written<'_>],
    ) -> Result<Vec<Notification>, StoreError> {
        if written.is_empty() {
            return Ok(Vec::new());
        }
        let compiled = self.current(c, ring)?;
        let now = crate::fhir::now_micros();
        let mut out = Vec::new();
        for sub in compiled.iter() {
            let s = &sub.criteria;
            if s.end.is_some_and(|end| now >= end) {
                continue;
            }
            let candidates: Vec<&Written> = written
                .iter()
                .filter(|w| w.resource_type == s.resource_type)
                .filter(|w| {
                    w.index
                        .is_none_or(|rows| sub.needs.iter().all(|n| n.met_by(rows)))
                })
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Decided in memory where it can be: no statement in the write's
            // transaction (on SQLite, the one writer's).
            let mut rest = Vec::new();
            for w in candidates {
                match (&sub.in_memory, w.index) {
                    (Some(m), Some(rows)) => {
                        if m.holds(w, rows) {
                            out.push(Notification::of(s, w));
                        }
                    }
                    _ => rest.push(w),
                }
            }
            let candidates = rest;
            if candidates.is_empty() {
                continue;
            }
            let mut filters = s.filters.clone();
            filters.push(Filter::Rids(candidates.iter().map(|w| w.rid).collect()));
            let q = Query {
                types: Some(vec![s.resource_type.clone()]),
                filters,
                limit: candidates.len(),
                probe: true,
                ..Query::default()
            };
            let ids: Vec<String> = match &s.verify {
                None => query::run_ids(c, ring, &s.owner, &q)?
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect(),
                Some(verify) => query::run_page(c, ring, &s.owner, &q)?
                    .into_iter()
                    .filter(|h| verify(&h.version))
                    .map(|h| h.version.id)
                    .collect(),
            };
            for w in candidates {
                if ids.iter().any(|id| id == w.id) {
                    out.push(Notification::of(s, w));
                }
            }
        }
        Ok(out)
    }
}

impl Registry {
    /// After the commit of a transaction that stored notifications: this
    /// process's delivery worker and websockets wake at once, and the other
    /// nodes are told (the thread of `Store::start_announcing`; PostgreSQL).
    pub(crate) fn committed(&self) {
        if let Some(wake) = self.wake.get() {
            wake();
        }
        let (flag, woken) = &*self.announce;
        *flag.lock() = true;
        woken.notify_one();
    }
}

/// The PostgreSQL channel on which a commit that stored notifications wakes
/// every node's delivery worker and websockets.
const CHANNEL: &str = "fhirgate_subscription_events";

/// Stores notifications with the next event numbers of their subscriptions (in
/// the caller's transaction: the counter's row stays locked until commit, so
/// numbers follow commit order per subscription). Other nodes are woken after
/// the commit (`Registry::committed`), not by a NOTIFY in this
/// transaction: PostgreSQL serialises the commits of every transaction that
/// NOTIFYs (a database-wide lock held through the commit's WAL flush), which cost
/// concurrent writes their group commit.
pub(crate) fn store_notifications(
    c: &mut AnyConn,
    notifications: &[Notification],
    recorded: i64,
) -> Result<(), StoreError> {
    let mut by_subscription: std::collections::BTreeMap<&str, Vec<&Notification>> =
        Default::default();
    for n in notifications {
        by_subscription
            .entry(n.subscription_id.as_str())
            .or_default()
            .push(n);
    }
    for (id, ns) in by_subscription {
        let mut sql = c.sql();
        sql.push("UPDATE subscriptions SET last_event = last_event + ")
            .i64(ns.len() as i64)
            .push(" WHERE subscription_id = ")
            .text(id)
            .push(" AND status = 'active' RETURNING last_event");
        let Some(last) = c.load::<LastEvent>(sql)?.first().map(|l| l.last_event) else {
            // Deleted in this very transaction, or no longer active (another
            // node's cache was behind): nothing to tell.
            continue;
        };
        let first = last - ns.len() as i64 + 1;
        // 7 parameters a row: chunks stay far below PostgreSQL's 65,535.
        for (chunk_no, chunk) in ns.chunks(1000).enumerate() {
            let mut sql = c.sql();
            sql.push(
                "INSERT INTO subscription_events (subscription_id, event_number, resource_type, \
                 resource_id, version_id, action, recorded) VALUES ",
            );
            for (i, n) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .text(id)
                    .push(", ")
                    .i64(first + (chunk_no * 1000 + i) as i64)
                    .push(", ")
                    .text(&n.resource_type)
                    .push(", ")
                    .text(&n.resource_id)
                    .push(", ")
                    .i64(n.version)
                    .push(", ")
                    .text(n.action)
                    .push(", ")
                    .i64(recorded)
                    .push(")");
            }
            c.execute(sql)?;
        }
    }
    Ok(())
}

/// Records a write of a Subscription resource (in its transaction): its row is
/// made on creation (with `created_version`, from which its secret is derived),
/// changed on update (a return to `active` starts its retries afresh), and removed
/// with its events on delete; every node reloads its criteria.
pub(crate) fn register(
    c: &mut AnyConn,
    ring: &Keyring,
    owner: &AccessContext,
    resource_type: &str,
    id: &str,
    version: i64,
    effect: Option<&SubscriptionEffect>,
) -> Result<(), StoreError> {
    // Every node reloads its criteria. First: the row lock serialises this
    // write with every other Subscription write until commit, so the count of
    // active subscriptions below sees theirs (PostgreSQL: a statement after the
    // wait reads what committed meanwhile).
    let mut sql = c.sql();
    sql.push("UPDATE subscription_state SET generation = generation + 1 WHERE id = 1");
    c.execute(sql)?;
    if let Some(e) = effect.filter(|e| e.status == "active" && e.max_active > 0) {
        let mut sql = c.sql();
        sql.push("SELECT COUNT(*) AS n FROM subscriptions WHERE status = 'active' AND subscription_id <> ")
            .text(id);
        let others = c.load::<Count>(sql)?.first().map_or(0, |r| r.n);
        let was_active = delivery_row(c, id)?.is_some_and(|r| r.status == "active");
        // One already active stays so (an update of it is never refused, even
        // after the limit was lowered).
        if !was_active && others >= e.max_active as i64 {
            return Err(StoreError::TooManySubscriptions { max: e.max_active });
        }
    }
    match effect {
        None => {
            for table in ["subscription_events", "subscriptions"] {
                let mut sql = c.sql();
                sql.push(&format!("DELETE FROM {table} WHERE subscription_id = "))
                    .text(id);
                c.execute(sql)?;
            }
        }
        Some(e) => {
            let owner_json = serde_json::to_vec(&owner.owner())
                .map_err(|_| StoreError::Internal("a subscription's owner is not JSON"))?;
            let (key_id, sealed) = ring.seal(&owner_json, &owner_aad(id))?;
            let mut sql = c.sql();
            sql.push("UPDATE subscriptions SET criteria_type = ")
                .text(&e.criteria_type)
                .push(", resource_type = ")
                .text(resource_type)
                .push(", channel = ")
                .text(&e.channel)
                .push(", key_id = ")
                .i64(key_id)
                .push(", owner = ")
                .bind(Bind::Bytes(sealed.clone()))
                .push(", attempts = CASE WHEN status = 'active' THEN attempts ELSE 0 END")
                .push(", failing_since = CASE WHEN status = 'active' THEN failing_since ELSE NULL END")
                .push(", next_attempt = CASE WHEN status = 'active' THEN next_attempt ELSE 0 END")
                .push(", error = CASE WHEN status = 'active' OR ")
                .text(&e.status)
                .push(" = 'error' THEN error ELSE NULL END")
                .push(", status = ")
                .text(&e.status)
                .push(" WHERE subscription_id = ")
                .text(id);
            if c.execute(sql)? == 0 {
                let mut sql = c.sql();
                sql.push(
                    "INSERT INTO subscriptions (subscription_id, resource_type, criteria_type, \
                     channel, status, created_version, key_id, owner, last_event, delivered, \
                     attempts, next_attempt, lease_until) VALUES (",
                )
                .text(id)
                .push(", ")
                .text(resource_type)
                .push(", ")
                .text(&e.criteria_type)
                .push(", ")
                .text(&e.channel)
                .push(", ")
                .text(&e.status)
                .push(", ")
                .i64(version)
                .push(", ")
                .i64(key_id)
                .push(", ")
                .bind(Bind::Bytes(sealed))
                .push(", 0, 0, 0, 0, 0)");
                c.execute(sql)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn delivery_row(c: &mut AnyConn, id: &str) -> Result<Option<DeliveryRow>, StoreError> {
    let mut sql = c.sql();
    sql.push(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM subscriptions WHERE subscription_id = "
    ))
    .text(id);
    Ok(c.load::<DeliveryRow>(sql)?.into_iter().next())
}

/// The owner of a subscription (the JSON of [`crate::access::Owner`]) and the
/// resource type it is stored under.
pub(crate) fn owner(
    c: &mut AnyConn,
    ring: &Keyring,
    id: &str,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let mut sql = c.sql();
    sql.push(
        "SELECT subscription_id, resource_type, key_id, owner FROM subscriptions \
         WHERE subscription_id = ",
    )
    .text(id);
    let Some(line) = c.load::<OwnerLine>(sql)?.into_iter().next() else {
        return Ok(None);
    };
    let owner = ring.open_box(line.key_id, &line.owner, &owner_aad(id))?;
    Ok(Some((line.resource_type, owner)))
}

/// Since when a subscription is due: its next retry, or the end of its last
/// turn, whichever is later. Leases go oldest first, so a retry that came due
/// is not passed over by subscriptions that keep having events.
fn due_since(c: &AnyConn) -> &'static str {
    match c.backend() {
        super::Backend::Postgres => "GREATEST(next_attempt, lease_until)",
        super::Backend::Sqlite => "MAX(next_attempt, lease_until)",
    }
}

/// The subscriptions due: active rest-hooks with undelivered events whose next
/// attempt has come and that no node holds (a lease of a node that died runs
/// out), the longest due first, at most `limit`.
fn push_due(sql: &mut Sql, c: &AnyConn, now: i64, limit: i64) {
    sql.push(
        "SELECT subscription_id FROM subscriptions WHERE status = 'active' \
         AND channel = 'rest-hook' AND last_event > delivered AND next_attempt <= ",
    )
    .i64(now)
    .push(" AND (lease_owner IS NULL OR lease_until < ")
    .i64(now)
    .push(&format!(
        ") ORDER BY {}, subscription_id LIMIT ",
        due_since(c)
    ))
    .i64(limit);
}

/// True when some subscription is due (a look without the writer's turn).
pub(crate) fn any_due(c: &mut AnyConn, now: i64) -> Result<bool, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT COUNT(*) AS n FROM (");
    push_due(&mut sql, c, now, 1);
    sql.push(") due");
    Ok(c.load::<Count>(sql)?.first().is_some_and(|r| r.n > 0))
}

/// Leases up to `limit` due subscriptions for `node` until `until`, in one
/// statement: PostgreSQL skips rows another transaction holds (a writer storing
/// their events, another node leasing them) instead of waiting, so a lease never
/// waits on anyone (no lock cycle); SQLite's one writer runs alone.
pub(crate) fn lease(
    c: &mut AnyConn,
    node: &str,
    now: i64,
    until: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut sql = c.sql();
    sql.push("UPDATE subscriptions SET lease_owner = ")
        .text(node)
        .push(", lease_until = ")
        .i64(until)
        .push(" WHERE subscription_id IN (");
    push_due(&mut sql, c, now, limit);
    if c.backend() == super::Backend::Postgres {
        sql.push(" FOR UPDATE SKIP LOCKED");
    }
    sql.push(&format!(") RETURNING {DELIVERY_COLUMNS}"));
    c.load::<DeliveryRow>(sql)
}

/// Gives a lease back. `lease_until` keeps when: of the subscriptions due, the
/// one whose turn ended longest ago is leased first (no subscription waits while
/// others take turn after turn).
pub(crate) fn release(c: &mut AnyConn, node: &str, id: &str) -> Result<(), StoreError> {
    release_until(c, node, id, None)
}

/// Gives a lease back, the next delivery put off until `next_attempt` if given.
fn release_until(
    c: &mut AnyConn,
    node: &str,
    id: &str,
    next_attempt: Option<i64>,
) -> Result<(), StoreError> {
    let mut sql = c.sql();
    sql.push("UPDATE subscriptions SET ");
    if let Some(at) = next_attempt {
        sql.push("next_attempt = ").i64(at).push(", ");
    }
    sql.push("lease_owner = NULL, lease_until = ")
        .i64(crate::fhir::now_micros())
        .push(" WHERE subscription_id = ")
        .text(id)
        .push(" AND lease_owner = ")
        .text(node);
    c.execute(sql)?;
    Ok(())
}

/// Events of a subscription after `since`, in order, at most `limit`.
pub(crate) fn events(
    c: &mut AnyConn,
    id: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let mut sql = c.sql();
    sql.push(
        "SELECT event_number, resource_type, resource_id, version_id, action, recorded \
         FROM subscription_events WHERE subscription_id = ",
    )
    .text(id)
    .push(" AND event_number > ")
    .i64(since)
    .push(" ORDER BY event_number LIMIT ")
    .i64(limit);
    c.load::<EventRow>(sql)
}

/// The outcome of one delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub node: String,
    pub event_number: i64,
    pub at: i64,
    /// True: the event (and every one before it) is delivered.
    pub delivered: bool,
    pub status_code: Option<u16>,
    pub detail: String,
    /// When to try again (failures).
    pub next_attempt: i64,
    /// Give up: the subscription's status becomes `error` with this text.
    pub error: Option<String>,
    /// The lease runs on until then.
    pub lease_until: i64,
}

/// Records an attempt and moves the subscription's state on, only while `node`
/// holds its lease (a node whose lease ran out records nothing).
pub(crate) fn record_attempt(c: &mut AnyConn, id: &str, a: &Attempt) -> Result<bool, StoreError> {
    if a.error.is_some() {
        // Every node stops matching it. First, as `register` does (the same
        // lock order: no deadlock with a write of the Subscription).
        let mut sql = c.sql();
        sql.push("UPDATE subscription_state SET generation = generation + 1 WHERE id = 1");
        c.execute(sql)?;
    }
    let mut sql = c.sql();
    sql.push("UPDATE subscriptions SET lease_until = ")
        .i64(a.lease_until)
        .push(", ");
    if a.delivered {
        sql.push("delivered = ")
            .i64(a.event_number)
            .push(", attempts = 0, failing_since = NULL, next_attempt = 0, error = NULL");
    } else {
        sql.push("attempts = attempts + 1, failing_since = COALESCE(failing_since, ")
            .i64(a.at)
            .push("), next_attempt = ")
            .i64(a.next_attempt);
        if let Some(e) = &a.error {
            sql.push(", status = 'error', error = ").text(e);
        }
    }
    sql.push(" WHERE subscription_id = ")
        .text(id)
        .push(" AND lease_owner = ")
        .text(&a.node);
    if c.execute(sql)? != 1 {
        return Ok(false);
    }
    let mut sql = c.sql();
    sql.push(
        "INSERT INTO subscription_attempts (subscription_id, event_number, attempted, node, \
         outcome, status_code, detail) VALUES (",
    )
    .text(id)
    .push(", ")
    .i64(a.event_number)
    .push(", ")
    .i64(a.at)
    .push(", ")
    .text(&a.node)
    .push(", ")
    .text(if a.delivered { "delivered" } else { "failed" })
    .push(", ");
    match a.status_code {
        Some(s) => {
            sql.i64(i64::from(s));
        }
        None => {
            sql.push("NULL");
        }
    }
    sql.push(", ").text(&a.detail).push(")");
    c.execute(sql)?;
    Ok(true)
}

impl super::Store {
    /// Calls `wake` after every commit of this process that stored
    /// notifications and, on PostgreSQL, whenever another node announced one
    /// (LISTEN on a connection of its own, looked at every 20 ms;
    /// after a lost connection, again a second later; the thread ends with the
    /// store).
    pub fn on_notifications(&self, wake: fn()) {
        let _ = self.subscriptions.wake.set(wake);
        if self.backend != super::Backend::Postgres {
            return;
        }
        let pool = Arc::downgrade(&self.pool);
        let spawned = std::thread::Builder::new()
            .name("subscription-listen".into())
            .spawn(move || loop {
                let conn = match pool.upgrade() {
                    None => return,
                    Some(p) => p.listener(CHANNEL),
                };
                let Some(Ok(mut conn)) = conn else {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                };
                // Notifications sent while no connection listened are found by
                // the worker's poll; wake once now for them.
                wake();
                'listening: loop {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    if pool.strong_count() == 0 {
                        return;
                    }
                    let mut woke = false;
                    for n in conn.notifications_iter() {
                        match n {
                            Ok(_) => woke = true,
                            Err(e) => {
                                tracing::warn!(error = %e, "the subscription listener lost its connection; reconnecting");
                                break 'listening;
                            }
                        }
                    }
                    if woke {
                        wake();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the subscription listener could not start");
        }
    }

    /// PostgreSQL: the thread that NOTIFYs the other nodes after commits that
    /// stored notifications ([`Registry::committed`]), once for the commits of
    /// 5 ms, on a connection of its own made at the first (after a lost
    /// connection, a new one at the next). Nothing on SQLite, whose one node
    /// knows its own writes. It ends with the store.
    pub(super) fn start_announcing(&self) {
        if self.backend != super::Backend::Postgres {
            return;
        }
        let pool = Arc::downgrade(&self.pool);
        let announce = self.subscriptions.announce.clone();
        let spawned = std::thread::Builder::new()
            .name("subscription-notify".into())
            .spawn(move || {
                let mut conn: Option<diesel::PgConnection> = None;
                loop {
                    {
                        let (flag, woken) = &*announce;
                        let mut due = flag.lock();
                        if !*due {
                            woken.wait_for(&mut due, std::time::Duration::from_secs(1));
                        }
                        if pool.strong_count() == 0 {
                            return;
                        }
                        if !*due {
                            continue;
                        }
                        *due = false;
                    }
                    if conn.is_none() {
                        conn = pool.upgrade().and_then(|p| p.dedicated(None)).and_then(|c| {
                            c.map_err(|e| tracing::warn!(error = %e, "the subscription notifier could not connect; the other nodes find the events at their next poll"))
                                .ok()
                        });
                    }
                    if let Some(c) = conn.as_mut() {
                        use diesel::connection::SimpleConnection;
                        if let Err(e) = c.batch_execute(&format!("NOTIFY {CHANNEL}")) {
                            tracing::warn!(error = %e, "the subscription notifier lost its connection; the other nodes find the events at their next poll");
                            conn = None;
                        }
                    }
                    // Commits within this share one NOTIFY.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the subscription notifier could not start");
        }
    }

    /// Sets what compiles Subscriptions into criteria (once, at start-up).
    pub fn set_criteria_compiler(&self, compiler: Arc<dyn CompileCriteria>) {
        self.subscriptions.set_compiler(compiler);
    }

    /// The secret of a subscription created as version `version` (HMAC key of
    /// its deliveries): derived from the index key, its id and that version, so
    /// it is never stored and a Subscription deleted and created again gets a
    /// new one.
    pub fn subscription_secret_of(&self, id: &str, version: i64) -> Result<String, StoreError> {
        Ok(self
            .keyring()?
            .derive_secret(&format!("subscription/{id}/{version}"))?)
    }

    /// The generation of the subscriptions: it moves with every write of a
    /// Subscription (and a delivery's give-up), so what was read of them under
    /// one generation holds while it stays.
    pub fn subscription_generation(&self) -> Result<i64, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT generation FROM subscription_state WHERE id = 1");
            Ok(c.load::<Generation>(sql)?
                .first()
                .map_or(0, |g| g.generation))
        })
    }

    /// A subscription's delivery state.
    pub fn subscription_state(&self, id: &str) -> Result<Option<DeliveryRow>, StoreError> {
        self.pool.read(|c| delivery_row(c, id))
    }

    /// A subscription's owner as recorded (JSON of [`crate::access::Owner`]) and
    /// the resource type its resource is stored under.
    pub fn subscription_owner(&self, id: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| owner(c, &ring, id))
    }

    /// Leases due subscriptions for `node` (store::subscriptions::lease).
    pub fn claim_subscriptions(
        &self,
        node: &str,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        // A look first, without the writer's turn: most rounds find nothing.
        if !self.pool.read(|c| any_due(c, now))? {
            return Ok(Vec::new());
        }
        self.pool.write(|c| lease(c, node, now, until, limit))
    }

    /// Gives a subscription's lease back.
    pub fn release_subscription(&self, node: &str, id: &str) -> Result<(), StoreError> {
        self.pool.write(|c| release(c, node, id))
    }

    /// Stored events of a subscription after `since` (at most `limit`).
    pub fn subscription_events(
        &self,
        id: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.pool.read(|c| events(c, id, since, limit))
    }

    /// (subscription id, undelivered events) of the active subscriptions that
    /// have any.
    pub fn subscription_lags(&self) -> Result<Vec<(String, i64)>, StoreError> {
        #[derive(QueryableByName)]
        struct Lag {
            #[diesel(sql_type = Text)]
            subscription_id: String,
            #[diesel(sql_type = BigInt)]
            lag: i64,
        }
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(
                "SELECT subscription_id, last_event - delivered AS lag FROM subscriptions \
                 WHERE status = 'active' AND last_event > delivered ORDER BY subscription_id",
            );
            Ok(c.load::<Lag>(sql)?
                .into_iter()
                .map(|l| (l.subscription_id, l.lag))
                .collect())
        })
    }

    /// Marks a subscription's events up to `event_number` delivered (a websocket
    /// sent their pings); never moves back.
    pub fn advance_delivered(&self, id: &str, event_number: i64) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE subscriptions SET delivered = ")
                .i64(event_number)
                .push(" WHERE subscription_id = ")
                .text(id)
                .push(" AND delivered < ")
                .i64(event_number);
            c.execute(sql)?;
            Ok(())
        })
    }

    /// Records delivery attempts of one subscription, in order, with their
    /// AuditEvents (one transaction), and gives the lease back when `release`;
    /// false when `node` no longer holds the lease (then the AuditEvents are
    /// still stored: the attempts happened).
    pub fn record_deliveries(
        &self,
        node: &str,
        id: &str,
        attempts: &[Attempt],
        audits: &[super::audit_log::AuditRow],
        release_lease: bool,
    ) -> Result<bool, StoreError> {
        let ring = self.keyring()?;
        let sealed = audits
            .iter()
            .map(|r| super::audit_log::seal(&ring, r))
            .collect::<Result<Vec<_>, _>>()?;
        self.pool.write(|c| {
            super::audit_log::append(c, &sealed)?;
            for a in attempts {
                if !record_attempt(c, id, a)? {
                    return Ok(false);
                }
            }
            if release_lease {
                release(c, node, id)?;
            }
            Ok(true)
        })
    }

    /// Removes subscription events recorded, and delivery attempts made, before
    /// `cutoff` (Unix microseconds; `subscriptions.retention_hours`), about
    /// `limit` of each (oldest first) in one short transaction; the rows removed.
    pub fn prune_subscription_history(&self, cutoff: i64, limit: i64) -> Result<usize, StoreError> {
        self.pool.write(|c| {
            let mut removed = 0;
            for (table, column) in [
                ("subscription_events", "recorded"),
                ("subscription_attempts", "attempted"),
            ] {
                // Up to the `limit`-th oldest (rows of the same instant with
                // it), found first: a bound computed inside the DELETE may be
                // computed again as rows go.
                #[derive(QueryableByName)]
                struct At {
                    #[diesel(sql_type = BigInt)]
                    at: i64,
                }
                let mut sql = c.sql();
                sql.push(&format!(
                    "SELECT {column} AS at FROM {table} WHERE {column} < "
                ))
                .i64(cutoff)
                .push(&format!(" ORDER BY {column} LIMIT 1 OFFSET "))
                .i64(limit.max(1) - 1);
                let bound = c
                    .load::<At>(sql)?
                    .first()
                    .map_or(cutoff.saturating_sub(1), |r| r.at);
                let mut sql = c.sql();
                sql.push(&format!("DELETE FROM {table} WHERE {column} <= "))
                    .i64(bound);
                removed += c.execute(sql)?;
            }
            Ok(removed)
        })
    }

    /// Puts a subscription's next delivery off until `next_attempt` and gives
    /// the lease back (a delivery that could not even start: its state was
    /// unreadable); the events stay.
    pub fn postpone_subscription(
        &self,
        node: &str,
        id: &str,
        next_attempt: i64,
    ) -> Result<(), StoreError> {
        self.pool
            .write(|c| release_until(c, node, id, Some(next_attempt)))
    }
}
