//! Several writes in one database transaction, for callers that must land many
//! resources whole or not at all (a transaction Bundle, a batch of an import):
//! [`Txn`] is the open transaction as the caller sees it, with no diesel type in
//! sight. Conditional criteria are evaluated inside it under advisory locks
//! (PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serialises writers), versions
//! are written with their index rows and AuditEvents, and the whole transaction
//! is run again when it lost a race to another writer.

use super::pool::{with_conn, write_txn_held, DbPool};
use super::repo::{condition_matches, WriteConn, WRITE_RETRIES};
use super::{AuditRow, Condition, StoreError, StoredVersion, WriteRequest, WriteResult};
use crate::crypto::Keyring;

/// Reads that a caller needs to decide what to write: inside a write
/// transaction, or on a plain connection to prepare one.
pub trait Lookup {
    /// The ids of current, live resources that satisfy the criteria (at most two:
    /// callers tell none, one and several apart).
    fn matches(&mut self, cond: &Condition) -> Result<Vec<String>, StoreError>;

    /// The current version of a resource (a deleted one too).
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

    /// Serialises this transaction with every other that takes the same key, until
    /// commit (PostgreSQL `pg_advisory_xact_lock`; nothing to do on SQLite). Take
    /// several keys in ascending order, so two transactions cannot deadlock.
    fn lock(&mut self, key: i64) -> Result<(), StoreError>;

    /// The shared form of [`Txn::lock`], for readers of criteria (a conditional
    /// reference): they wait for a transaction that creates under the same criteria,
    /// not for each other.
    fn lock_shared(&mut self, key: i64) -> Result<(), StoreError>;

    /// Writes one version with its index rows and AuditEvent.
    fn write(&mut self, req: &WriteRequest<'_>) -> Result<WriteResult, StoreError>;

    /// Writes new resources with server-assigned ids (`WriteKind::Create`, no
    /// condition), each with its index rows and AuditEvent, in multi-row statements.
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

    /// Records import progress with the data it describes.
    fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError>;
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

/// A connection of either backend with the keyring, as a [`Txn`].
struct On<'a, C> {
    c: &'a mut C,
    ring: &'a Keyring,
}

impl<C: WriteConn> Lookup for On<'_, C> {
    fn matches(&mut self, cond: &Condition) -> Result<Vec<String>, StoreError> {
        condition_matches(self.c, self.ring, cond)
    }

    fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.c.current_version(self.ring, resource_type, id)
    }
}

impl<C: WriteConn> Txn for On<'_, C> {
    fn as_lookup(&mut self) -> &mut dyn Lookup {
        self
    }

    fn lock(&mut self, key: i64) -> Result<(), StoreError> {
        self.c.advisory_xact_lock(key)
    }

    fn lock_shared(&mut self, key: i64) -> Result<(), StoreError> {
        self.c.advisory_xact_lock_shared(key)
    }

    fn write(&mut self, req: &WriteRequest<'_>) -> Result<WriteResult, StoreError> {
        self.c.write_version(self.ring, req)
    }

    fn create_many(&mut self, reqs: &[WriteRequest<'_>]) -> Result<Vec<WriteResult>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        self.c.create_many(self.ring, reqs)
    }

    fn existing(
        &mut self,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.c.existing_ids(resource_type, ids)
    }

    fn insert_audits(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.c.insert_audits(self.ring, rows)
    }

    fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError> {
        self.c.mark_imported(unit, part)
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

/// Runs `body` in one write transaction, again (from the start, on a fresh
/// transaction) when it lost a race, at most [`WRITE_RETRIES`] times. An error
/// from `body` rolls back everything it did.
pub(super) fn transaction<R, E: TxnError>(
    pool: &DbPool,
    ring: &Keyring,
    body: &mut dyn FnMut(&mut dyn Txn) -> Result<R, E>,
) -> Result<R, E> {
    let mut last = StoreError::Contention;
    for attempt in 0..WRITE_RETRIES {
        let (turn, mut conn) = pool.get_for_write()?;
        let outcome: Result<R, Stop<E>> = write_txn_held!(conn, |c| {
            let mut t = On { c, ring };
            body(&mut t).map_err(Stop::Caller)
        });
        drop(conn);
        drop(turn);
        match outcome {
            Ok(r) => return Ok(r),
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

/// Runs `body` on a plain connection (no transaction): reads to prepare a write.
pub(super) fn lookup<R>(
    pool: &DbPool,
    ring: &Keyring,
    body: &mut dyn FnMut(&mut dyn Lookup) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut conn = pool.get()?;
    with_conn!(conn, |c| {
        let mut t = On { c, ring };
        body(&mut t)
    })
}

/// The parts of an import unit already committed.
pub(super) fn imported_parts(pool: &DbPool, unit: &str) -> Result<Vec<i64>, StoreError> {
    use super::schema::import_progress as ip;
    use diesel::prelude::*;
    let mut conn = pool.get()?;
    Ok(with_conn!(conn, |c| ip::table
        .filter(ip::unit.eq(unit))
        .select(ip::part)
        .order(ip::part.asc())
        .load::<i64>(c))?)
}
