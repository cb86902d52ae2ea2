//! Several writes in one database transaction, for callers that must land many
//! resources whole or not at all (a transaction Bundle, a batch of an import, a
//! single REST write): [`Txn`] is the open transaction as the caller sees it,
//! with no diesel type in sight, acting for one caller ([`AccessContext`]):
//! everything it reads is narrowed to what the caller may see, and everything it
//! writes is checked against what the caller may write. Conditional criteria are
//! evaluated inside it under advisory locks (PostgreSQL; SQLite's
//! `BEGIN IMMEDIATE` already serialises writers), versions are written with their
//! index rows and AuditEvents by the one write path ([`super::write`]), and the
//! whole transaction is run again when it lost a race to another writer.
//!
//! Retry contract: a body may run several times (after a unique violation or a
//! serialization failure); it must not keep effects outside the transaction.
//! Deadlocks cannot happen between fhirgate's own transactions: every lock a
//! transaction takes on more than one resource is taken up front in ascending
//! key order ([`Txn::lock`], [`Txn::lock_resources`]).

use super::audit_log::{self, AuditRow};
use super::conn::AnyConn;
use super::pool::DbPool;
use super::read::{condition_matches, version};
use super::subscriptions::{store_notifications, Notification, Registry};
use super::write::{apply, current_row, rows_of, Planned, WriteKind};
use super::{Condition, StoreError, StoredVersion, WriteRequest, WriteResult};
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

/// How many times a transaction runs when concurrent writers got there first.
pub(super) const WRITE_RETRIES: usize = 8;

/// Reads that a caller needs to decide what to write: inside a write
/// transaction, or on a plain connection to prepare one.
pub trait Lookup {
    /// The ids of current, live resources that satisfy the criteria and that the
    /// caller may search (at most two: callers tell none, one and several apart).
    fn matches(&mut self, cond: &Condition) -> Result<Vec<String>, StoreError>;

    /// The current version of a resource (a deleted one too), if the caller may
    /// read it.
    fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError>;
}

/// An open write transaction: everything done through it commits together or not
/// at all.
pub trait Txn: Lookup {
    /// This transaction as a [`Lookup`] (for code that reads inside or outside one).
    fn as_lookup(&mut self) -> &mut dyn Lookup;

    /// Serialises this transaction with every other that takes one of the same
    /// keys, until commit (PostgreSQL advisory locks, taken in ascending order;
    /// nothing to do on SQLite). `shared`: holders do not wait for each other,
    /// only for an exclusive holder (readers of conditional references).
    fn lock(&mut self, keys: &[i64], shared: bool) -> Result<(), StoreError>;

    /// Locks the resources a transaction is about to change, in one ascending
    /// order, before it changes any: two transactions that change the same
    /// resources in different orders wait for each other instead of deadlocking.
    fn lock_resources(&mut self, identities: &[(&str, &str)]) -> Result<(), StoreError>;

    /// Writes one version with its index rows and AuditEvent.
    fn write(&mut self, req: &WriteRequest<'_>) -> Result<WriteResult, StoreError>;

    /// Writes new resources with server-assigned ids (`WriteKind::Create`), each
    /// with its index rows and AuditEvent, in multi-row statements.
    fn create_many(&mut self, reqs: &[WriteRequest<'_>]) -> Result<Vec<WriteResult>, StoreError>;

    /// Which of `ids` of `resource_type` have a current row (deleted ones included).
    fn existing(
        &mut self,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Stores AuditEvents of interactions that wrote nothing (a conditional create
    /// that found its match, a conditional delete without one).
    fn insert_audits(&mut self, rows: &[AuditRow]) -> Result<(), StoreError>;

    /// Records import progress with the data it describes (again: no change).
    fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError>;

    /// Records which lines of an import unit are not stored (`failed`) and which
    /// that were are now (`retried`), with the data of the same batch.
    fn mark_import_failures(
        &mut self,
        unit: &str,
        retried: &[i64],
        failed: &[i64],
    ) -> Result<(), StoreError>;
}

/// An error a transaction body may end with: store errors convert into it, and it
/// says whether it is a lost race, after which the whole transaction runs again.
pub trait TxnError: From<StoreError> {
    fn is_contention(&self) -> bool;
}

impl TxnError for StoreError {
    fn is_contention(&self) -> bool {
        matches!(self, StoreError::Contention)
    }
}

/// A connection of either backend with the keyring and the caller, as a [`Txn`].
struct On<'a, 'c> {
    c: &'a mut AnyConn<'c>,
    ring: &'a Keyring,
    ctx: &'a AccessContext,
    subs: &'a Registry,
    /// Notifications of this transaction's writes, stored at its end.
    pending: Vec<Notification>,
}

impl Lookup for On<'_, '_> {
    fn matches(&mut self, cond: &Condition) -> Result<Vec<String>, StoreError> {
        condition_matches(self.c, self.ring, self.ctx, cond)
    }

    fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        version(
            self.c,
            self.ring,
            self.ctx,
            Action::Read,
            resource_type,
            id,
            None,
        )
    }
}

/// The advisory-lock key of a resource identity.
fn identity_key(resource_type: &str, id: &str) -> i64 {
    let digest = openssl::sha::sha256(format!("resource:{resource_type}/{id}").as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

impl Txn for On<'_, '_> {
    fn as_lookup(&mut self) -> &mut dyn Lookup {
        self
    }

    fn lock(&mut self, keys: &[i64], shared: bool) -> Result<(), StoreError> {
        self.c.lock(keys, shared)
    }

    fn lock_resources(&mut self, identities: &[(&str, &str)]) -> Result<(), StoreError> {
        let keys: Vec<i64> = identities
            .iter()
            .map(|(t, id)| identity_key(t, id))
            .collect();
        self.c.lock(&keys, false)
    }

    fn write(&mut self, req: &WriteRequest<'_>) -> Result<WriteResult, StoreError> {
        let action = match req.kind {
            WriteKind::Create => Action::Create,
            WriteKind::Update { .. } => Action::Update,
            WriteKind::Delete { .. } => Action::Delete,
        };
        // A create with a server-assigned id has no current version to look up
        // (the unique index on resources_current catches the impossible clash).
        let current = match req.kind {
            WriteKind::Create => None,
            _ => current_row(
                self.c,
                self.ring,
                self.ctx,
                action,
                req.resource_type,
                req.id,
            )?,
        };
        // An update is compared with the current version (decrypted): one that
        // changes nothing writes no version (`rows_of`).
        let stored = match (req.kind, current) {
            (WriteKind::Update { .. }, Some(c)) if !c.deleted => version(
                self.c,
                self.ring,
                self.ctx,
                action,
                req.resource_type,
                req.id,
                None,
            )?,
            _ => None,
        };
        match rows_of(
            self.ring,
            req,
            current,
            stored.as_ref(),
            crate::fhir::now_micros(),
        )? {
            Planned::Unchanged(r) => Ok(r),
            Planned::Write(rows) => {
                let mut written = apply(
                    self.c,
                    self.ring,
                    self.ctx,
                    self.subs,
                    &mut self.pending,
                    vec![*rows],
                )?;
                written.pop().ok_or(StoreError::Contention)
            }
        }
    }

    fn create_many(&mut self, reqs: &[WriteRequest<'_>]) -> Result<Vec<WriteResult>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let ts = crate::fhir::now_micros();
        let mut rows = Vec::with_capacity(reqs.len());
        for req in reqs {
            match rows_of(self.ring, req, None, None, ts)? {
                Planned::Write(r) => rows.push(*r),
                Planned::Unchanged(_) => return Err(StoreError::Contention),
            }
        }
        apply(
            self.c,
            self.ring,
            self.ctx,
            self.subs,
            &mut self.pending,
            rows,
        )
    }

    fn existing(
        &mut self,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct IdLine {
            #[diesel(sql_type = diesel::sql_types::Text)]
            resource_id: String,
        }
        let mut out = std::collections::HashSet::new();
        for chunk in ids.chunks(500) {
            let owned: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
            let mut sql = self.c.sql();
            sql.push("SELECT resource_id FROM resources_current WHERE resource_type = ")
                .text(resource_type)
                .push(" AND ");
            sql.in_texts("resource_id", &owned);
            out.extend(
                self.c
                    .load::<IdLine>(sql)?
                    .into_iter()
                    .map(|l| l.resource_id),
            );
        }
        Ok(out)
    }

    fn insert_audits(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let sealed = rows
            .iter()
            .map(|r| audit_log::seal(self.ring, r))
            .collect::<Result<Vec<_>, _>>()?;
        audit_log::append(self.c, &sealed)
    }

    fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError> {
        let mut sql = self.c.sql();
        sql.push("INSERT INTO import_progress (unit, part, done_at) VALUES (")
            .text(unit)
            .push(", ")
            .i64(part)
            .push(", ")
            .i64(crate::fhir::now_micros())
            .push(") ON CONFLICT (unit, part) DO NOTHING");
        self.c.execute(sql)?;
        Ok(())
    }

    fn mark_import_failures(
        &mut self,
        unit: &str,
        retried: &[i64],
        failed: &[i64],
    ) -> Result<(), StoreError> {
        if !retried.is_empty() {
            let mut sql = self.c.sql();
            sql.push("DELETE FROM import_failures WHERE unit = ")
                .text(unit)
                .push(" AND ");
            sql.in_i64s("line", retried);
            self.c.execute(sql)?;
        }
        for chunk in failed.chunks(500) {
            let mut sql = self.c.sql();
            sql.push("INSERT INTO import_failures (unit, line) VALUES ");
            for (i, line) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(").text(unit).push(", ").i64(*line).push(")");
            }
            sql.push(" ON CONFLICT (unit, line) DO NOTHING");
            self.c.execute(sql)?;
        }
        Ok(())
    }
}

/// Why a transaction body stopped: the store (diesel rolled back) or the caller.
enum Stop<E> {
    Store(StoreError),
    Caller(E),
}

impl<E> From<diesel::result::Error> for Stop<E> {
    fn from(e: diesel::result::Error) -> Self {
        Stop::Store(StoreError::from(e))
    }
}

impl<E> From<StoreError> for Stop<E> {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// Runs `body` in one write transaction for `ctx`, again (from the start, on a
/// fresh transaction) when it lost a race, at most [`WRITE_RETRIES`] times. An
/// error from `body` rolls back everything it did.
pub(super) fn transaction<R, E: TxnError>(
    pool: &DbPool,
    ring: &Keyring,
    ctx: &AccessContext,
    subs: &Registry,
    body: &mut dyn FnMut(&mut dyn Txn) -> Result<R, E>,
) -> Result<R, E> {
    let mut last = StoreError::Contention;
    for attempt in 0..WRITE_RETRIES {
        let mut told = false;
        let outcome: Result<R, Stop<E>> = pool.write(|c| {
            let mut t = On {
                c,
                ring,
                ctx,
                subs,
                pending: Vec::new(),
            };
            let out = body(&mut t).map_err(Stop::Caller)?;
            if !t.pending.is_empty() {
                store_notifications(t.c, &t.pending, crate::fhir::now_micros())
                    .map_err(Stop::Store)?;
                told = true;
            }
            Ok(out)
        });
        match outcome {
            Ok(r) => {
                if told {
                    subs.committed();
                }
                return Ok(r);
            }
            Err(Stop::Caller(e)) if !e.is_contention() => return Err(e),
            Err(Stop::Store(e)) if !e.is_contention() => return Err(E::from(e)),
            Err(_) => {
                tracing::debug!(attempt, "transaction raced with another; running it again");
                last = StoreError::Contention;
                std::thread::sleep(std::time::Duration::from_millis(1 + attempt as u64 * 3));
            }
        }
    }
    Err(E::from(last))
}

/// Runs `body` on a plain connection (no transaction) for `ctx`: reads to prepare
/// a write.
pub(super) fn lookup<R>(
    pool: &DbPool,
    ring: &Keyring,
    ctx: &AccessContext,
    subs: &Registry,
    body: &mut dyn FnMut(&mut dyn Lookup) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    pool.read(|c| {
        let mut t = On {
            c,
            ring,
            ctx,
            subs,
            pending: Vec::new(),
        };
        body(&mut t)
    })
}
