//! Where a write happens. Every write of fhirgate (REST create, update, delete,
//! patch; Bundle entries; conditional interactions; `fhirgate import`) reaches
//! the database here, in three steps that every caller shares:
//!
//! 1. [`rows_of`]: the one function that turns a [`WriteRequest`] and the state of
//!    the resource's current row into the value describing every row to write
//!    ([`VersionRows`]: the version with its sealed body, the change of the
//!    current row, the blinded index rows, the sealed AuditEvent, and the side
//!    effects the caller declared), or into the answer that nothing is written.
//! 2. [`apply`]: the one function that writes such values, many at once in
//!    multi-row statements, inside the caller's transaction, then checks that
//!    what it left is within what the caller may write (else nothing commits).
//! 3. For a lone create on PostgreSQL, [`apply_alone`] writes the same value as
//!    one statement (data-modifying CTEs), committed by itself: one round trip
//!    and one WAL flush instead of seven statements.
//!
//! What can be computed without the database (stamping, sealing, blinding, the
//! AuditEvent's JSON) is computed in step 1, before a SQLite write takes the
//! writer's turn, whenever the version is known in advance (a create).
//!
//! Architecture invariant: a resource body is never written unencrypted; the
//! AuditEvent of a write commits in the same transaction as the write, through
//! the audit sink ([`super::audit_log::append`]).

use diesel::QueryableByName;

use super::audit_log::{self, AuditRow, SealedAudit};
use super::conn::AnyConn;
use super::index::{self, Blinded, IndexRows};
use super::read::{aad, count_visible, WriteMethod};
use super::sql::Bind;
use super::subscriptions::{self, Registry, SubscriptionEffect, Written};
use super::StoreError;
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A new resource; the id must be free.
    Create,
    /// Update, or create with a client-chosen id; `if_match` is the version the
    /// client last saw (`If-Match`).
    Update { if_match: Option<i64> },
    /// Delete: a version marked deleted.
    Delete { if_match: Option<i64> },
}

/// Builds the stored body for the version the store assigns: `(version, last_updated
/// in microseconds)` -> JSON bytes.
pub type Prepare<'a> = dyn Fn(i64, i64) -> Result<Vec<u8>, StoreError> + 'a;
/// Builds the AuditEvent of a successful write, committed in the same transaction.
pub type AuditOf<'a> = dyn Fn(&WriteResult) -> Result<AuditRow, StoreError> + 'a;

/// What else a write changes in the database, declared by the module that owns
/// the behaviour (the search module for SearchParameters), so the store never
/// decides by a resource type's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// A SearchParameter: pending until reindexed; every node reloads its registry.
    pub registers_search_param: bool,
    /// A Subscription: its delivery row is made, changed or (on delete) removed,
    /// and every node reloads its criteria (store::subscriptions).
    pub subscription: Option<SubscriptionEffect>,
}

pub struct WriteRequest<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub kind: WriteKind,
    /// How the version was written, for history.
    pub method: WriteMethod,
    pub prepare: &'a Prepare<'a>,
    pub audit: &'a AuditOf<'a>,
    /// Search index rows of the new version (ignored for deletes).
    pub index: &'a IndexRows,
    pub effects: Effects,
}

#[derive(Debug, Clone)]
pub struct WriteResult {
    /// The resource's surrogate key (0 when nothing was written).
    pub rid: i64,
    pub version: i64,
    pub last_updated: i64,
    /// The resource did not exist (or was deleted) before.
    pub created: bool,
    /// Nothing was written: a delete of an already deleted resource, or an update
    /// that changes nothing (the current version is the answer).
    pub unchanged: bool,
    pub body: Vec<u8>,
}

/// The current row of a resource, as a write finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CurrentRow {
    pub rid: i64,
    pub version: i64,
    pub deleted: bool,
}

/// Every row one write adds or changes.
pub(crate) struct VersionRows {
    resource_type: String,
    id: String,
    method: WriteMethod,
    result: WriteResult,
    deleted: bool,
    /// None: a new current row; else the row this version replaces.
    replaces: Option<CurrentRow>,
    key_id: i64,
    sealed: Vec<u8>,
    index: Blinded,
    audit: SealedAudit,
    effects: Effects,
}

const VERSION_COLUMNS: &str =
    "resource_type, resource_id, version_id, last_updated, deleted, method, key_id, body";
const CURRENT_COLUMNS: &str = "resource_type, resource_id, version_id, last_updated, deleted";

impl VersionRows {
    /// `(type, id, version, last updated, deleted)`: the values of the current row.
    fn current_values(&self, sql: &mut super::sql::Sql) {
        sql.push("(");
        self.identity_values(sql);
        sql.push(")");
    }

    /// The values of the version row; its sealed body moves into the statement.
    fn version_values(&mut self, sql: &mut super::sql::Sql) {
        sql.push("(");
        self.identity_values(sql);
        sql.push(", ")
            .text(self.method.as_str())
            .push(", ")
            .i64(self.key_id)
            .push(", ")
            .bind(Bind::Bytes(std::mem::take(&mut self.sealed)))
            .push(")");
    }

    fn identity_values(&self, sql: &mut super::sql::Sql) {
        sql.text(&self.resource_type)
            .push(", ")
            .text(&self.id)
            .push(", ")
            .i64(self.result.version)
            .push(", ")
            .i64(self.result.last_updated)
            .push(", ")
            .boolean(self.deleted);
    }

    /// The access a caller needs for what this version leaves behind.
    fn action(&self) -> Action {
        if self.result.created {
            Action::Create
        } else {
            Action::Update
        }
    }
}

/// What a write request comes to, given the resource's current row.
pub(crate) enum Planned {
    Write(Box<VersionRows>),
    /// Nothing to write (a delete of a deleted resource, an update that changes
    /// nothing), with the result to answer.
    Unchanged(WriteResult),
}

/// The one function that decides what a write writes: the version number, the
/// checks of `If-Match` and of the write's kind against the current row, and
/// every row, sealed and blinded, stamped `ts`.
///
/// `stored` is the current version as stored, when the caller read it for an
/// update: an update whose body, stamped with that version's `versionId` and
/// `lastUpdated`, is the stored body byte for byte changes nothing, so it writes
/// no version and its answer is the current one (as HAPI FHIR does; R4 does not
/// require a new version for a no-op update). A rerun of `fhirgate import` is
/// idempotent through this. The caller still audits it.
pub(crate) fn rows_of(
    ring: &Keyring,
    req: &WriteRequest<'_>,
    current: Option<CurrentRow>,
    stored: Option<&super::StoredVersion>,
    ts: i64,
) -> Result<Planned, StoreError> {
    let if_match = match req.kind {
        WriteKind::Create => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            None
        }
        WriteKind::Update { if_match } => if_match,
        WriteKind::Delete { if_match } => {
            match current {
                None => return Err(StoreError::NotFound),
                Some(c) if c.deleted => {
                    return Ok(Planned::Unchanged(WriteResult {
                        rid: 0,
                        version: c.version,
                        last_updated: 0,
                        created: false,
                        unchanged: true,
                        body: Vec::new(),
                    }))
                }
                Some(_) => {}
            }
            if_match
        }
    };
    if let Some(expected) = if_match {
        match current {
            Some(c) if c.version == expected => {}
            Some(c) => return Err(StoreError::VersionConflict { current: c.version }),
            None => return Err(StoreError::VersionConflict { current: 0 }),
        }
    }
    if let (WriteKind::Update { .. }, Some(c), Some(s)) = (req.kind, current, stored) {
        if !c.deleted
            && !s.deleted
            && s.version == c.version
            && (req.prepare)(s.version, s.last_updated)? == s.body
        {
            return Ok(Planned::Unchanged(WriteResult {
                rid: c.rid,
                version: s.version,
                last_updated: s.last_updated,
                created: false,
                unchanged: true,
                body: s.body.clone(),
            }));
        }
    }
    let version = current.map_or(1, |c| c.version + 1);
    let created = current.is_none_or(|c| c.deleted);
    let deleted = matches!(req.kind, WriteKind::Delete { .. });
    let body = if deleted {
        Vec::new()
    } else {
        (req.prepare)(version, ts)?
    };
    let (key_id, sealed) = ring.seal(&body, &aad(req.resource_type, req.id, version))?;
    let index = if deleted {
        Blinded::default()
    } else {
        index::blind(ring, req.index)?
    };
    let result = WriteResult {
        rid: current.map_or(0, |c| c.rid),
        version,
        last_updated: ts,
        created,
        unchanged: false,
        body,
    };
    let audit = audit_log::seal(ring, &(req.audit)(&result)?)?;
    Ok(Planned::Write(Box::new(VersionRows {
        resource_type: req.resource_type.to_string(),
        id: req.id.to_string(),
        method: req.method,
        result,
        deleted,
        replaces: current,
        key_id,
        sealed,
        index,
        audit,
        effects: req.effects.clone(),
    })))
}

#[derive(QueryableByName)]
struct CurrentLine {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rid: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version_id: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    deleted: bool,
}

/// The current row of a resource that a write of kind `action` is about to
/// replace. A live resource the caller may not `action` is "not found": its
/// existence is not revealed.
pub(crate) fn current_row(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    action: Action,
    resource_type: &str,
    id: &str,
) -> Result<Option<CurrentRow>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT rid, version_id, deleted FROM resources_current WHERE resource_type = ")
        .text(resource_type)
        .push(" AND resource_id = ")
        .text(id);
    let Some(line) = c.load::<CurrentLine>(sql)?.into_iter().next() else {
        return Ok(None);
    };
    let row = CurrentRow {
        rid: line.rid,
        version: line.version_id,
        deleted: line.deleted,
    };
    if !row.deleted
        && count_visible(
            c,
            ring,
            ctx,
            action,
            &[resource_type.to_string()],
            &[row.rid],
        )? == 0
    {
        return Err(StoreError::NotFound);
    }
    Ok(Some(row))
}

#[derive(QueryableByName)]
struct NewRid {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rid: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_id: String,
}

/// The one function that writes versions (in the caller's transaction): the
/// versions, new and moved current rows, their index rows, the declared side
/// effects and the AuditEvents, in multi-row statements; then the check that the
/// caller may write what it left (a resource placed outside its compartment or
/// granular scope rolls everything back with [`StoreError::Forbidden`]).
pub(crate) fn apply(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    subs: &Registry,
    pending: &mut Vec<subscriptions::Notification>,
    mut rows: Vec<VersionRows>,
) -> Result<Vec<WriteResult>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // A delete notifies the subscriptions the resource matched before it: its
    // index rows are gone once the current row moves.
    let removed: Vec<Written> = rows
        .iter()
        .filter(|v| v.deleted && v.replaces.is_some_and(|r| !r.deleted))
        .map(|v| Written {
            rid: v.replaces.map_or(0, |r| r.rid),
            resource_type: &v.resource_type,
            id: &v.id,
            version: v.result.version,
            action: "delete",
            index: None,
        })
        .collect();
    let mut notifications = subs.matches(c, ring, &removed)?;
    // Bodies are a few kB each: chunks keep a statement to a few MB.
    for chunk in rows.chunks_mut(200) {
        let mut sql = c.sql();
        sql.push(&format!(
            "INSERT INTO resource_versions ({VERSION_COLUMNS}) VALUES "
        ));
        for (i, v) in chunk.iter_mut().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            v.version_values(&mut sql);
        }
        c.execute(sql)?;
    }
    // New current rows, with their surrogate keys.
    let fresh: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].replaces.is_none())
        .collect();
    for chunk in fresh.chunks(1000) {
        let mut sql = c.sql();
        sql.push(&format!(
            "INSERT INTO resources_current ({CURRENT_COLUMNS}) VALUES "
        ));
        for (n, &i) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(", ");
            }
            rows[i].current_values(&mut sql);
        }
        sql.push(" RETURNING rid, resource_type, resource_id");
        let got = c.load::<NewRid>(sql)?;
        let by_identity: std::collections::HashMap<(String, String), i64> = got
            .into_iter()
            .map(|r| ((r.resource_type, r.resource_id), r.rid))
            .collect();
        for &i in chunk {
            let v = &mut rows[i];
            v.result.rid = *by_identity
                .get(&(v.resource_type.clone(), v.id.clone()))
                .ok_or(StoreError::Contention)?;
        }
    }
    // Moved current rows: conditional on the version the write read, so a
    // concurrent writer that got there first makes this one run again.
    for v in rows.iter().filter(|v| v.replaces.is_some()) {
        let Some(was) = v.replaces else { continue };
        let mut sql = c.sql();
        sql.push("UPDATE resources_current SET version_id = ")
            .i64(v.result.version)
            .push(", last_updated = ")
            .i64(v.result.last_updated)
            .push(", deleted = ")
            .boolean(v.deleted)
            .push(" WHERE rid = ")
            .i64(was.rid)
            .push(" AND version_id = ")
            .i64(was.version);
        if c.execute(sql)? != 1 {
            return Err(StoreError::Contention);
        }
        // A deleted version has no index rows left to remove.
        if !was.deleted {
            index::delete(c, was.rid)?;
        }
    }
    let with_index: Vec<(i64, &Blinded)> = rows
        .iter()
        .filter(|v| !v.deleted)
        .map(|v| (v.result.rid, &v.index))
        .collect();
    index::insert(c, &with_index)?;
    let live: Vec<Written> = rows
        .iter()
        .filter(|v| !v.deleted)
        .map(|v| Written {
            rid: v.result.rid,
            resource_type: &v.resource_type,
            id: &v.id,
            version: v.result.version,
            action: if v.result.created { "create" } else { "update" },
            index: Some(&v.index),
        })
        .collect();
    notifications.extend(subs.matches(c, ring, &live)?);
    // A transaction of several writes numbers all its notifications at its end,
    // in one order (store::txn): two transactions never lock two subscriptions'
    // counters in opposite orders.
    pending.extend(notifications);
    for v in rows.iter().filter(|v| v.effects.registers_search_param) {
        super::jobs::register_search_param(c, &v.id, v.result.version, v.deleted)?;
    }
    for v in &rows {
        if let Some(effect) = &v.effects.subscription {
            subscriptions::register(
                c,
                ring,
                ctx,
                &v.resource_type,
                &v.id,
                v.result.version,
                (!v.deleted).then_some(effect),
            )?;
        }
    }
    let audits: Vec<SealedAudit> = rows.iter().map(|v| v.audit.clone()).collect();
    audit_log::append(c, &audits)?;
    check_written(c, ring, ctx, &rows)?;
    Ok(rows.into_iter().map(|v| v.result).collect())
}

/// What a write leaves must be within what the caller may write: checked in SQL
/// on the rows just written (their index rows say which compartment they are in).
fn check_written(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    rows: &[VersionRows],
) -> Result<(), StoreError> {
    if ctx.is_open() {
        return Ok(());
    }
    let mut groups: std::collections::BTreeMap<(&str, bool), Vec<i64>> = Default::default();
    for v in rows.iter().filter(|v| !v.deleted) {
        groups
            .entry((v.resource_type.as_str(), v.action() == Action::Create))
            .or_default()
            .push(v.result.rid);
    }
    for ((rt, create), rids) in groups {
        let action = if create {
            Action::Create
        } else {
            Action::Update
        };
        let seen = count_visible(c, ring, ctx, action, &[rt.to_string()], &rids)?;
        if seen != rids.len() as i64 {
            return Err(StoreError::Forbidden(crate::access::Denied(format!(
                "the {rt} would be outside what the granted scopes permit {} (another patient's compartment, or outside the scope's search)",
                action.describe()
            ))));
        }
    }
    Ok(())
}

/// A lone create with a fresh server id on PostgreSQL, as one statement committed
/// by itself (a statement is atomic): the current row, the version, the index
/// rows and the AuditEvent are data-modifying CTEs of one INSERT. Only for
/// callers whose grant needs no check of what they write (the check of a
/// narrowed grant needs the rows in a transaction) and writes without side
/// effects.
pub(crate) fn apply_alone(c: &mut AnyConn, rows: VersionRows) -> Result<WriteResult, StoreError> {
    let mut rows = rows;
    let mut sql = c.sql();
    sql.push(&format!(
        "WITH c AS (INSERT INTO resources_current ({CURRENT_COLUMNS}) VALUES "
    ));
    rows.current_values(&mut sql);
    sql.push(&format!(
        " RETURNING rid), v AS (INSERT INTO resource_versions ({VERSION_COLUMNS}) VALUES "
    ));
    rows.version_values(&mut sql);
    sql.push("), ");
    audit_log::pg_insert_cte(&mut sql, "a", &rows.audit);
    sql.push(", ");
    index::pg_index_ctes_of(&mut sql, "c", &rows.index);
    sql.push(" SELECT rid FROM c");
    #[derive(QueryableByName)]
    struct Rid {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        rid: i64,
    }
    let got = match c.load::<Rid>(sql) {
        Err(StoreError::Contention) => return Err(StoreError::AlreadyExists),
        other => other?,
    };
    let mut result = rows.result;
    result.rid = got.first().map(|r| r.rid).ok_or(StoreError::Contention)?;
    Ok(result)
}

/// True when [`apply_alone`] may write these rows: a create with nothing to
/// check afterwards and no side effects.
pub(crate) fn alone_is_possible(ctx: &AccessContext, rows: &VersionRows) -> bool {
    ctx.is_open() && rows.replaces.is_none() && rows.effects == Effects::default() && !rows.deleted
}
