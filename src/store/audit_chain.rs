//! The tables of the audit log's hash chain: its links (`audit_chain`: position,
//! `seq` of the AuditEvent row, hash), the chainer's state, the signed
//! checkpoints and the audit signing keys. What a link's hash covers and how the
//! chain is verified is the audit module's (`audit::chain`); this file only reads
//! and writes rows.
//!
//! The chainer tails `audit_log` by `seq` after commit, like the audit indexer
//! (`audit_index.rs`, whose gap handling this mirrors): on PostgreSQL a position
//! it passes may turn up later (a transaction still open); such rows are chained
//! when they become visible, at the next position of the chain, so the chain's
//! order is the order in which rows were chained, which is `seq` order except for
//! those.
//!
//! Architecture invariant: the chain only grows. A batch of links commits only
//! over the state it was read from (a conditional UPDATE of its `generation`), so
//! two chainers (two nodes, or a verify beside the background round) never both
//! extend it; no code deletes or rewrites links.

use diesel::QueryableByName;

use super::conn::AnyConn;
use super::pool::DbPool;
use super::sql::Bind;
use super::StoreError;
use crate::fhir::now_micros;

/// How long a position the chainer passed may still turn up (as for the indexer).
const GAP_PATIENCE_MICROS: i64 = super::GAP_PATIENCE_MICROS;

/// Where the chainer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// Every `seq` up to here is chained or is one of `gaps`.
    pub after_seq: i64,
    /// The last link's position (0: the chain is empty).
    pub head_pos: i64,
    /// The last link's hash (zeros before the first).
    pub head_hash: [u8; 32],
    pub generation: i64,
    /// Positions passed while their row was not visible.
    pub gaps: Vec<i64>,
}

/// An AuditEvent row exactly as stored: what a link's hash covers.
#[derive(Debug, Clone, QueryableByName)]
pub struct RawAudit {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub audit_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub recorded: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub action: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub outcome: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub key_id: i64,
    /// The sealed body.
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub body: Vec<u8>,
}

/// A new link of the chain.
#[derive(Debug, Clone)]
pub struct Link {
    pub pos: i64,
    pub seq: i64,
    pub hash: [u8; 32],
}

/// A link as stored, with its AuditEvent row (None when the row is gone).
#[derive(Debug, Clone)]
pub struct StoredLink {
    pub pos: i64,
    pub seq: i64,
    pub hash: Vec<u8>,
    pub row: Option<RawAudit>,
}

/// A signed checkpoint of the chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub pos: i64,
    pub hash: Vec<u8>,
    /// Unix microseconds.
    pub time: i64,
    pub kid: String,
    /// ECDSA P-256 over SHA-256, DER.
    pub signature: Vec<u8>,
    /// A purge checkpoint: the events recorded before this time (Unix
    /// microseconds) were removed, and with them the links up to `pos`.
    pub purged_before: Option<i64>,
}

/// What a purge would remove: the links `start..=last` (a prefix of the chain),
/// the last one's hash.
#[derive(Debug, Clone)]
pub struct PurgePlan {
    pub start: i64,
    pub last: i64,
    pub hash: Vec<u8>,
}

/// An audit signing key as stored (the private key sealed).
#[derive(Debug, Clone, QueryableByName)]
pub struct AuditKeyRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kid: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub key_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub sealed: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub public_pem: String,
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    after_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    head_pos: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    head_hash: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generation: i64,
}

#[derive(QueryableByName)]
struct SeqRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

#[derive(QueryableByName)]
struct PosRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pos: i64,
}

#[derive(QueryableByName)]
struct LinkRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pos: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    link_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    hash: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    audit_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    recorded: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    action: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    outcome: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    key_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    body: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pos: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    hash: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    time: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kid: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    signature: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    purged_before: Option<i64>,
}

impl From<CheckpointRow> for Checkpoint {
    fn from(r: CheckpointRow) -> Checkpoint {
        Checkpoint {
            pos: r.pos,
            hash: r.hash,
            time: r.time,
            kid: r.kid,
            signature: r.signature,
            purged_before: r.purged_before,
        }
    }
}

#[derive(QueryableByName)]
struct MaybePos {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pos: Option<i64>,
}

const CHECKPOINT_COLUMNS: &str = "pos, hash, time, kid, signature, purged_before";

const RAW_COLUMNS: &str = "seq, audit_id, recorded, action, outcome, key_id, body";

pub(crate) fn state(pool: &DbPool) -> Result<ChainState, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT after_seq, head_pos, head_hash, generation FROM audit_chain_state WHERE id = 1",
        );
        let row = c
            .load::<StateRow>(sql)?
            .into_iter()
            .next()
            .ok_or(StoreError::Internal("the audit chain state row is missing"))?;
        let mut head_hash = [0u8; 32];
        if let Some(h) = row.head_hash.filter(|h| h.len() == 32) {
            head_hash.copy_from_slice(&h);
        }
        let mut sql = c.sql();
        sql.push("SELECT seq FROM audit_chain_gaps ORDER BY seq");
        let gaps = c.load::<SeqRow>(sql)?.into_iter().map(|g| g.seq).collect();
        Ok(ChainState {
            after_seq: row.after_seq,
            head_pos: row.head_pos,
            head_hash,
            generation: row.generation,
            gaps,
        })
    })
}

/// The rows the chainer has not chained: the next `limit` after its position and
/// those of its gaps that became visible, in `seq` order.
pub(crate) fn unchained(
    pool: &DbPool,
    state: &ChainState,
    limit: usize,
) -> Result<Vec<RawAudit>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(&format!("SELECT {RAW_COLUMNS} FROM audit_log WHERE seq > "))
            .i64(state.after_seq)
            .push(" ORDER BY seq LIMIT ")
            .i64(limit as i64);
        let mut rows = c.load::<RawAudit>(sql)?;
        if !state.gaps.is_empty() {
            let mut sql = c.sql();
            sql.push(&format!("SELECT {RAW_COLUMNS} FROM audit_log WHERE "));
            sql.in_i64s("seq", &state.gaps);
            rows.extend(c.load::<RawAudit>(sql)?);
        }
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    })
}

/// Appends `links` (positions after `read.head_pos`, in order) and moves the
/// chainer past `through`, in one transaction; false (nothing written) when
/// another chainer committed since `read`.
pub(crate) fn commit(
    pool: &DbPool,
    read: &ChainState,
    links: &[Link],
    through: i64,
) -> Result<bool, StoreError> {
    let now = now_micros();
    let chained: std::collections::HashSet<i64> = links.iter().map(|l| l.seq).collect();
    let after = through.max(read.after_seq);
    let new_gaps: Vec<i64> = (read.after_seq + 1..=after)
        .filter(|s| !chained.contains(s))
        .collect();
    let filled: Vec<i64> = read
        .gaps
        .iter()
        .copied()
        .filter(|s| chained.contains(s))
        .collect();
    let (head_pos, head_hash) = match links.last() {
        Some(l) => (l.pos, l.hash.to_vec()),
        None => (read.head_pos, read.head_hash.to_vec()),
    };
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push("UPDATE audit_chain_state SET after_seq = ")
            .i64(after)
            .push(", head_pos = ")
            .i64(head_pos)
            .push(", head_hash = ");
        if head_pos == 0 {
            sql.push("NULL");
        } else {
            sql.bind(Bind::Bytes(head_hash.clone()));
        }
        sql.push(", generation = generation + 1, updated = ")
            .i64(now)
            .push(" WHERE id = 1 AND generation = ")
            .i64(read.generation);
        if c.execute(sql)? != 1 {
            return Ok(false);
        }
        for chunk in links.chunks(500) {
            let mut sql = c.sql();
            sql.push("INSERT INTO audit_chain (pos, seq, hash) VALUES ");
            for (i, l) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .i64(l.pos)
                    .push(", ")
                    .i64(l.seq)
                    .push(", ")
                    .bind(Bind::Bytes(l.hash.to_vec()))
                    .push(")");
            }
            c.execute(sql)?;
        }
        if !filled.is_empty() {
            let mut sql = c.sql();
            sql.push("DELETE FROM audit_chain_gaps WHERE ");
            sql.in_i64s("seq", &filled);
            c.execute(sql)?;
        }
        insert_gaps(c, &new_gaps, now)?;
        let mut sql = c.sql();
        sql.push("DELETE FROM audit_chain_gaps WHERE seen < ")
            .i64(now - GAP_PATIENCE_MICROS);
        c.execute(sql)?;
        Ok(true)
    })
}

fn insert_gaps(c: &mut AnyConn, gaps: &[i64], seen: i64) -> Result<(), StoreError> {
    for chunk in gaps.chunks(500) {
        let mut sql = c.sql();
        sql.push("INSERT INTO audit_chain_gaps (seq, seen) VALUES ");
        for (i, s) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push("(").i64(*s).push(", ").i64(seen).push(")");
        }
        c.execute(sql)?;
    }
    Ok(())
}

/// The links at positions `from` .. `from + limit` (exclusive), in position
/// order, each with its AuditEvent row as stored now. A bounded range, not
/// `LIMIT` over an open one: PostgreSQL then plans it as the small read it is
/// (for an open range it planned a parallel scan whose workers' start-up cost
/// 20 ms per batch: a third of `audit verify`'s time over 2.5 million links).
pub(crate) fn links(pool: &DbPool, from: i64, limit: usize) -> Result<Vec<StoredLink>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT l.pos, l.seq AS link_seq, l.hash, a.seq, a.audit_id, a.recorded, a.action, \
             a.outcome, a.key_id, a.body FROM audit_chain l LEFT JOIN audit_log a ON a.seq = l.seq \
             WHERE l.pos >= ",
        )
        .i64(from)
        .push(" AND l.pos < ")
        .i64(from.saturating_add(limit as i64))
        .push(" ORDER BY l.pos");
        Ok(c.load::<LinkRow>(sql)?
            .into_iter()
            .map(|r| {
                let row = match (
                    r.seq, r.audit_id, r.recorded, r.action, r.outcome, r.key_id, r.body,
                ) {
                    (
                        Some(seq),
                        Some(audit_id),
                        Some(recorded),
                        Some(action),
                        Some(outcome),
                        Some(key_id),
                        Some(body),
                    ) => Some(RawAudit {
                        seq,
                        audit_id,
                        recorded,
                        action,
                        outcome,
                        key_id,
                        body,
                    }),
                    _ => None,
                };
                StoredLink {
                    pos: r.pos,
                    seq: r.link_seq,
                    hash: r.hash,
                    row,
                }
            })
            .collect())
    })
}

/// The lowest `seq` of an AuditEvent row that is not in the chain although the
/// chainer has passed it (and it is not one of its gaps): a row inserted behind
/// the chainer's back. With the position of the first link after it.
pub(crate) fn first_unchained_behind(
    pool: &DbPool,
    state: &ChainState,
) -> Result<Option<(i64, Option<i64>)>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT a.seq FROM audit_log a WHERE NOT EXISTS \
             (SELECT 1 FROM audit_chain l WHERE l.seq = a.seq) AND a.seq <= ",
        )
        .i64(state.after_seq);
        if !state.gaps.is_empty() {
            sql.push(" AND NOT (");
            sql.in_i64s("a.seq", &state.gaps);
            sql.push(")");
        }
        sql.push(" ORDER BY a.seq LIMIT 1");
        let Some(seq) = c.load::<SeqRow>(sql)?.into_iter().next().map(|r| r.seq) else {
            return Ok(None);
        };
        let mut sql = c.sql();
        sql.push("SELECT MIN(pos) AS pos FROM audit_chain WHERE seq > ")
            .i64(seq)
            .push(" HAVING MIN(pos) IS NOT NULL");
        let pos = c.load::<PosRow>(sql)?.into_iter().next().map(|r| r.pos);
        Ok(Some((seq, pos)))
    })
}

/// Every checkpoint stored in the database, by position.
pub(crate) fn checkpoints(pool: &DbPool) -> Result<Vec<Checkpoint>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY pos"
        ));
        Ok(c.load::<CheckpointRow>(sql)?
            .into_iter()
            .map(Checkpoint::from)
            .collect())
    })
}

/// The newest checkpoint.
pub(crate) fn last_checkpoint(pool: &DbPool) -> Result<Option<Checkpoint>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY pos DESC LIMIT 1"
        ));
        Ok(c.load::<CheckpointRow>(sql)?
            .into_iter()
            .next()
            .map(Checkpoint::from))
    })
}

/// Stores a checkpoint; false when one at that position exists (another node
/// made it).
pub(crate) fn add_checkpoint(pool: &DbPool, cp: &Checkpoint) -> Result<bool, StoreError> {
    pool.write(|c| insert_checkpoint(c, cp))
}

fn insert_checkpoint(c: &mut AnyConn, cp: &Checkpoint) -> Result<bool, StoreError> {
    let mut sql = c.sql();
    sql.push(&format!(
        "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ("
    ))
    .i64(cp.pos)
    .push(", ")
    .bind(Bind::Bytes(cp.hash.clone()))
    .push(", ")
    .i64(cp.time)
    .push(", ")
    .text(&cp.kid)
    .push(", ")
    .bind(Bind::Bytes(cp.signature.clone()))
    .push(", ");
    match cp.purged_before {
        Some(b) => sql.i64(b),
        None => sql.push("NULL"),
    };
    sql.push(") ON CONFLICT (pos) DO NOTHING");
    Ok(c.execute(sql)? == 1)
}

/// The prefix of the chain whose events were all recorded before `before`
/// (Unix microseconds): what a purge may remove. None when there is none.
pub(crate) fn purge_plan(pool: &DbPool, before: i64) -> Result<Option<PurgePlan>, StoreError> {
    pool.read(|c| {
        let one = |c: &mut AnyConn, text: &str| -> Result<Option<i64>, StoreError> {
            let mut sql = c.sql();
            sql.push(text);
            Ok(c.load::<MaybePos>(sql)?
                .into_iter()
                .next()
                .and_then(|r| r.pos))
        };
        let Some(start) = one(c, "SELECT MIN(pos) AS pos FROM audit_chain")? else {
            return Ok(None);
        };
        let first_kept = one(
            c,
            &format!(
                "SELECT MIN(l.pos) AS pos FROM audit_chain l JOIN audit_log a ON a.seq = l.seq \
                 WHERE a.recorded >= {before}"
            ),
        )?;
        let last = match first_kept {
            Some(k) => k - 1,
            None => one(c, "SELECT MAX(pos) AS pos FROM audit_chain")?.unwrap_or(0),
        };
        if last < start {
            return Ok(None);
        }
        let mut sql = c.sql();
        sql.push("SELECT hash FROM audit_chain WHERE pos = ")
            .i64(last);
        #[derive(QueryableByName)]
        struct H {
            #[diesel(sql_type = diesel::sql_types::Binary)]
            hash: Vec<u8>,
        }
        let Some(h) = c.load::<H>(sql)?.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(PurgePlan {
            start,
            last,
            hash: h.hash,
        }))
    })
}

/// Removes the events of `plan` (their rows, links, search index rows and the
/// checkpoints up to its end) and stores the signed purge checkpoint `cp`, in
/// one transaction; the number of events removed, or None when the chain's
/// start moved meanwhile (another purge).
pub(crate) fn purge(
    pool: &DbPool,
    plan: &PurgePlan,
    cp: &Checkpoint,
) -> Result<Option<i64>, StoreError> {
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push("SELECT MIN(pos) AS pos FROM audit_chain");
        let start = c
            .load::<MaybePos>(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.pos);
        if start != Some(plan.start) {
            return Ok(None);
        }
        let purged = format!("(SELECT seq FROM audit_chain WHERE pos <= {})", plan.last);
        for table in super::index::TABLES {
            let mut sql = c.sql();
            sql.push(&format!(
                "DELETE FROM {table} WHERE rid < 0 AND -rid IN {purged}"
            ));
            c.execute(sql)?;
        }
        let mut sql = c.sql();
        sql.push(&format!("DELETE FROM audit_log WHERE seq IN {purged}"));
        let n = c.execute(sql)? as i64;
        let mut sql = c.sql();
        sql.push("DELETE FROM audit_chain WHERE pos <= ")
            .i64(plan.last);
        c.execute(sql)?;
        let mut sql = c.sql();
        sql.push("DELETE FROM audit_checkpoints WHERE pos <= ")
            .i64(plan.last);
        c.execute(sql)?;
        insert_checkpoint(c, cp)?;
        Ok(Some(n))
    })
}

/// The audit signing keys, oldest first.
pub(crate) fn signing_keys(pool: &DbPool) -> Result<Vec<AuditKeyRow>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT kid, key_id, sealed, public_pem FROM audit_signing_keys ORDER BY created, kid",
        );
        c.load::<AuditKeyRow>(sql)
    })
}

/// Stores an audit signing key (its private half sealed by the caller).
pub(crate) fn add_signing_key(pool: &DbPool, key: &AuditKeyRow) -> Result<(), StoreError> {
    let created = now_micros();
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push(
            "INSERT INTO audit_signing_keys (kid, key_id, sealed, public_pem, created) VALUES (",
        )
        .text(&key.kid)
        .push(", ")
        .i64(key.key_id)
        .push(", ")
        .bind(Bind::Bytes(key.sealed.clone()))
        .push(", ")
        .text(&key.public_pem)
        .push(", ")
        .i64(created)
        .push(") ON CONFLICT (kid) DO NOTHING");
        c.execute(sql)?;
        Ok(())
    })
}
