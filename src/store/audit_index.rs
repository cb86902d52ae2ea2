//! The search index of the audit log, kept after commit: AuditEvents are not
//! indexed by the transactions that write them (the group commit of reads stays
//! one multi-row insert), but by an indexer that tails `audit_log` by `seq`. This
//! file holds its state and its one write: a batch's index rows (under
//! `rid` = -`seq`, a space no resource uses) and the indexer's new position, in
//! one transaction.
//!
//! PostgreSQL hands out `seq` when a row is inserted and transactions commit in
//! another order, so the indexer can pass a position whose row is not visible
//! yet (or never will be: a rolled-back transaction's positions stay unused).
//! Such positions are kept as gaps and looked at again by every round, until
//! their row is indexed or they are older than [`GAP_PATIENCE_MICROS`]. On
//! SQLite (one writer, positions taken in commit order) there are none.
//!
//! Architecture invariant: every AuditEvent is indexed at most once: a batch
//! commits only if the state's `generation` is still the one its rows were read
//! under (a conditional UPDATE, the row lock on PostgreSQL), so two nodes, or a
//! search's catch-up beside the background round, never both index it.

use diesel::QueryableByName;

use super::conn::AnyConn;
use super::index::{self, IndexRows};
use super::pool::DbPool;
use super::sql::Bind;
use super::{StoreError, StoredVersion};
use crate::crypto::Keyring;
use crate::fhir::now_micros;

/// How long a position the indexer passed may still turn up: a write
/// transaction (an import batch, a large transaction Bundle) is open for
/// seconds, not ten minutes. A row committed later than this stays unindexed.
pub const GAP_PATIENCE_MICROS: i64 = 10 * 60 * 1_000_000;

/// Where the audit indexer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditIndexState {
    /// Every position up to here was indexed or is one of `gaps`.
    pub after_seq: i64,
    /// Moves on with every committed batch.
    pub generation: i64,
    /// Positions passed while their row was not visible.
    pub gaps: Vec<i64>,
}

/// One AuditEvent's index rows, extracted by the search module.
#[derive(Debug, Clone)]
pub struct IndexedAudit {
    pub seq: i64,
    pub rows: IndexRows,
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    after_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generation: i64,
}

#[derive(QueryableByName)]
struct GapRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

pub(crate) fn state(pool: &DbPool) -> Result<AuditIndexState, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push("SELECT after_seq, generation FROM audit_index_state WHERE id = 1");
        let row = c
            .load::<StateRow>(sql)?
            .into_iter()
            .next()
            .ok_or(StoreError::Internal("the audit index state row is missing"))?;
        let mut sql = c.sql();
        sql.push("SELECT seq FROM audit_index_gaps ORDER BY seq");
        let gaps = c.load::<GapRow>(sql)?.into_iter().map(|g| g.seq).collect();
        Ok(AuditIndexState {
            after_seq: row.after_seq,
            generation: row.generation,
            gaps,
        })
    })
}

/// The AuditEvents the indexer has not indexed: the next `limit` after its
/// position and those of its gaps that became visible.
pub(crate) fn unindexed(
    pool: &DbPool,
    ring: &Keyring,
    state: &AuditIndexState,
    limit: usize,
) -> Result<Vec<(i64, Option<StoredVersion>)>, StoreError> {
    pool.read(|c| super::audit_log::after(c, ring, state.after_seq, &state.gaps, limit as i64))
}

/// Writes a batch's index rows and moves the indexer past `through` (the last
/// position the batch's read covered), in one transaction; false when another
/// indexer committed since `read` (nothing is written).
pub(crate) fn commit(
    pool: &DbPool,
    ring: &Keyring,
    read: &AuditIndexState,
    batch: &[IndexedAudit],
    through: i64,
) -> Result<bool, StoreError> {
    let now = now_micros();
    let blinded: Vec<(i64, index::Blinded)> = batch
        .iter()
        .map(|a| -a.seq)
        .zip(index::blind_many(ring, batch.iter().map(|a| &a.rows))?)
        .collect();
    let indexed: std::collections::HashSet<i64> = batch.iter().map(|a| a.seq).collect();
    let after = through.max(read.after_seq);
    // Positions passed now whose row was not read: not visible yet, or never.
    let new_gaps: Vec<i64> = (read.after_seq + 1..=after)
        .filter(|s| !indexed.contains(s))
        .collect();
    let filled: Vec<i64> = read
        .gaps
        .iter()
        .copied()
        .filter(|s| indexed.contains(s))
        .collect();
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push("UPDATE audit_index_state SET after_seq = ")
            .i64(after)
            .push(", generation = generation + 1, updated = ")
            .i64(now)
            .push(" WHERE id = 1 AND generation = ")
            .i64(read.generation);
        if c.execute(sql)? != 1 {
            return Ok(false);
        }
        let rows: Vec<(i64, &index::Blinded)> = blinded.iter().map(|(r, b)| (*r, b)).collect();
        index::insert(c, &rows)?;
        if !filled.is_empty() {
            let mut sql = c.sql();
            sql.push("DELETE FROM audit_index_gaps WHERE ");
            sql.in_i64s("seq", &filled);
            c.execute(sql)?;
        }
        insert_gaps(c, &new_gaps, now)?;
        let mut sql = c.sql();
        sql.push("DELETE FROM audit_index_gaps WHERE seen < ")
            .i64(now - GAP_PATIENCE_MICROS);
        c.execute(sql)?;
        Ok(true)
    })
}

fn insert_gaps(c: &mut AnyConn, gaps: &[i64], seen: i64) -> Result<(), StoreError> {
    if gaps.is_empty() {
        return Ok(());
    }
    let mut sql = c.sql();
    match c.backend() {
        super::pool::Backend::Postgres => {
            sql.push("INSERT INTO audit_index_gaps (seq, seen) SELECT t.s, ")
                .i64(seen)
                .push(" FROM unnest(")
                .bind(Bind::I64s(gaps.to_vec()))
                .push(") AS t(s)");
        }
        super::pool::Backend::Sqlite => {
            sql.push("INSERT INTO audit_index_gaps (seq, seen) SELECT value, ")
                .i64(seen)
                .push(" FROM json_each(")
                .bind(Bind::I64s(gaps.to_vec()))
                .push(")");
        }
    }
    c.execute(sql)?;
    Ok(())
}
