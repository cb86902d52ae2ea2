//! The audit sink: the one place where AuditEvent rows enter the database.
//!
//! AuditEvents live in `audit_log`, one sealed row each (AAD `AuditEvent/<id>/1`).
//! [`append`] is the only function that inserts them, and every caller goes
//! through it: a write transaction commits the AuditEvents of its writes with
//! the data, and the group commit of reads (`audit::AuditWriter`) commits many in
//! one transaction. Each row gets its place, `seq`, from the database's one
//! sequence (`AUTOINCREMENT` on SQLite, a `BIGSERIAL` sequence on PostgreSQL that
//! every node shares), inside the transaction that commits it; so the rows of the
//! audit trail have one order for the whole database, whatever node wrote them,
//! and the audit issue's hash chain is built from that order here and nowhere else.
//!
//! Architecture invariant: no other code inserts into, updates or deletes from
//! `audit_log`.

use diesel::QueryableByName;

use super::conn::AnyConn;
use super::sql::{Bind, Sql};
use super::{StoreError, StoredVersion};
use crate::crypto::Keyring;

/// An AuditEvent ready to store: its id, when, what, and the JSON body.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: String,
    pub recorded: i64,
    /// AuditEvent.action (`C`, `R`, `U`, `D`, `E`).
    pub action: &'static str,
    /// AuditEvent.outcome (`0`, `4`, `8`).
    pub outcome: &'static str,
    pub body: Vec<u8>,
}

/// An AuditEvent row with its body sealed: what [`append`] inserts. Sealing is
/// done before a write transaction takes the writer's turn.
#[derive(Debug, Clone)]
pub(crate) struct SealedAudit {
    id: String,
    recorded: i64,
    action: &'static str,
    outcome: &'static str,
    key_id: i64,
    sealed: Vec<u8>,
}

/// The associated data of an AuditEvent body: it cannot be moved to another row.
fn aad(id: &str) -> Vec<u8> {
    format!("AuditEvent/{id}/1").into_bytes()
}

/// Seals an AuditEvent's body.
pub(crate) fn seal(ring: &Keyring, row: &AuditRow) -> Result<SealedAudit, StoreError> {
    let (key_id, sealed) = ring.seal(&row.body, &aad(&row.id))?;
    Ok(SealedAudit {
        id: row.id.clone(),
        recorded: row.recorded,
        action: row.action,
        outcome: row.outcome,
        key_id,
        sealed,
    })
}

/// Inserts AuditEvents in the caller's transaction, in the order given; each gets
/// the next position of the database's audit sequence when it is inserted. One
/// multi-row statement per 256 events.
pub(crate) fn append(c: &mut AnyConn, rows: &[SealedAudit]) -> Result<(), StoreError> {
    for chunk in rows.chunks(256) {
        let mut sql = c.sql();
        sql.push(
            "INSERT INTO audit_log (audit_id, recorded, action, outcome, key_id, body) VALUES ",
        );
        for (i, a) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            row_values(&mut sql, a);
        }
        c.execute(sql)?;
    }
    Ok(())
}

/// The AuditEvent of the PostgreSQL one-statement create, as the data-modifying
/// CTE `name AS (INSERT INTO audit_log ...)` of that statement (the same row
/// [`append`] would insert).
pub(crate) fn pg_insert_cte(sql: &mut super::sql::Sql, name: &str, a: &SealedAudit) {
    sql.push(&format!(
        "{name} AS (INSERT INTO audit_log ({COLUMNS}) VALUES "
    ));
    row_values(sql, a);
    sql.push(")");
}

const COLUMNS: &str = "audit_id, recorded, action, outcome, key_id, body";

/// `(id, recorded, action, outcome, key, sealed body)` of one row.
fn row_values(sql: &mut super::sql::Sql, a: &SealedAudit) {
    sql.push("(")
        .text(&a.id)
        .push(", ")
        .i64(a.recorded)
        .push(", ")
        .text(a.action)
        .push(", ")
        .text(a.outcome)
        .push(", ")
        .i64(a.key_id)
        .push(", ")
        .bind(Bind::Bytes(a.sealed.clone()))
        .push(")");
}
#[derive(QueryableByName)]
struct AuditLine {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    audit_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    recorded: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    key_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    body: Vec<u8>,
}

impl AuditLine {
    fn open(self, ring: &Keyring) -> Result<(i64, StoredVersion), StoreError> {
        let body = ring.open_box(self.key_id, &self.body, &aad(&self.audit_id))?;
        Ok((
            self.seq,
            StoredVersion {
                resource_type: "AuditEvent".into(),
                id: self.audit_id,
                version: 1,
                last_updated: self.recorded,
                deleted: false,
                body,
            },
        ))
    }
}

/// One AuditEvent by id (AuditEvents have one version).
pub(crate) fn read(
    c: &mut AnyConn,
    ring: &Keyring,
    id: &str,
) -> Result<Option<StoredVersion>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT seq, audit_id, recorded, key_id, body FROM audit_log WHERE audit_id = ")
        .text(id);
    c.load::<AuditLine>(sql)?
        .into_iter()
        .next()
        .map(|l| l.open(ring).map(|(_, v)| v))
        .transpose()
}

/// The AuditEvents up to position `through` as the search renderer's rows,
/// `(SELECT ...) alias`: the columns of `resources_current` (`rid` = -`seq`, so
/// they never meet a resource's rid and sort newest first by rid; one version;
/// never deleted).
pub(crate) fn search_rows(sql: &mut Sql, alias: &str, through: i64) {
    let f = sql.false_literal();
    sql.push(&format!(
        "(SELECT -a.seq AS rid, CAST('AuditEvent' AS TEXT) AS resource_type, \
         a.audit_id AS resource_id, CAST(1 AS BIGINT) AS version_id, \
         a.recorded AS last_updated, {f} AS deleted FROM audit_log a WHERE a.seq <= "
    ))
    .i64(through)
    .push(&format!(") {alias}"));
}

/// The join of a page `page` (with `rid`) to its AuditEvents' sealed bodies,
/// `(SELECT ...) alias ON ...`, with the columns of `resource_versions` the page
/// query reads.
pub(crate) fn page_bodies(sql: &mut Sql, alias: &str, page: &str) {
    sql.push(&format!(
        "(SELECT b.seq, CAST('AuditEvent' AS TEXT) AS resource_type, b.audit_id AS resource_id, \
         CAST(1 AS BIGINT) AS version_id, b.recorded AS last_updated, b.key_id, b.body \
         FROM audit_log b) {alias} ON {alias}.seq = -{page}.rid"
    ));
}

/// AuditEvents in `seq` order after position `after`, at most `limit`, and those
/// at the positions `also` (the audit indexer's gaps): (seq, the AuditEvent, None
/// when its row does not open: it is logged, and the indexer passes it rather
/// than stop at it).
pub(crate) fn after(
    c: &mut AnyConn,
    ring: &Keyring,
    after: i64,
    also: &[i64],
    limit: i64,
) -> Result<Vec<(i64, Option<StoredVersion>)>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT seq, audit_id, recorded, key_id, body FROM audit_log WHERE seq > ")
        .i64(after)
        .push(" ORDER BY seq LIMIT ")
        .i64(limit);
    let mut lines = c.load::<AuditLine>(sql)?;
    if !also.is_empty() {
        let mut sql = c.sql();
        sql.push("SELECT seq, audit_id, recorded, key_id, body FROM audit_log WHERE ");
        sql.in_i64s("seq", also);
        lines.extend(c.load::<AuditLine>(sql)?);
    }
    Ok(lines
        .into_iter()
        .map(|l| {
            let seq = l.seq;
            match l.open(ring) {
                Ok((_, v)) => (seq, Some(v)),
                Err(e) => {
                    tracing::error!(audit.seq = seq, error = %e, "an AuditEvent row does not open; it is left out of the search index");
                    (seq, None)
                }
            }
        })
        .collect())
}

/// AuditEvents newest first (type history; one id: instance history), from
/// `recorded >= since`, before position `before_seq`.
pub(crate) fn history(
    c: &mut AnyConn,
    ring: &Keyring,
    only_id: Option<&str>,
    since: Option<i64>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, StoredVersion)>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT seq, audit_id, recorded, key_id, body FROM audit_log WHERE 1 = 1");
    if let Some(id) = only_id {
        sql.push(" AND audit_id = ").text(id);
    }
    if let Some(s) = since {
        sql.push(" AND recorded >= ").i64(s);
    }
    if let Some(b) = before_seq {
        sql.push(" AND seq < ").i64(b);
    }
    sql.push(" ORDER BY seq DESC LIMIT ").i64(limit);
    c.load::<AuditLine>(sql)?
        .into_iter()
        .map(|l| l.open(ring))
        .collect()
}
