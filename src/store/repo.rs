//! The queries. Each function runs one diesel body on either backend (see
//! `pool::with_conn!`), so SQLite and PostgreSQL share every line of SQL shape.

use diesel::prelude::*;

use super::index::{IndexConn, IndexRows};
use super::pool::{with_conn, write_txn, DbConn, DbPool};
use super::query::{self, Query};
use super::schema::{
    audit_log, data_keys, import_progress, key_check, resource_versions as rv,
    resources_current as rc,
};
use super::StoreError;
use crate::access::AccessContext;
use crate::crypto::{Keyring, MasterKey, WrappedKey};

/// How many times a write is retried when a concurrent writer got there first.
pub(super) const WRITE_RETRIES: usize = 8;

/// A version as read back: the body is the decrypted JSON bytes (empty for deletes).
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub seq: i64,
    pub method: String,
    pub version: StoredVersion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

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

pub struct WriteRequest<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub kind: WriteKind,
    /// HTTP-neutral name of the interaction for history (`POST`, `PUT`, `DELETE`, `PATCH`).
    pub method: &'a str,
    pub prepare: &'a Prepare<'a>,
    pub audit: &'a AuditOf<'a>,
    /// Search index rows of the new version (ignored for deletes).
    pub index: &'a IndexRows,
    /// Conditional create: write only when nothing matches.
    pub condition: Option<&'a Condition>,
}

/// Checks a candidate found by a conditional query after decryption (criteria the
/// blind index can only approximate, such as long string prefixes).
pub type Verify = dyn Fn(&StoredVersion) -> bool + Send + Sync;

/// The criteria of a conditional interaction (`If-None-Exist`, conditional update
/// and delete), evaluated inside the write transaction.
pub struct Condition {
    /// The search (its type and filters; sort and paging are ignored).
    pub query: Query,
    /// Serialises conditional writes with the same criteria across nodes.
    pub lock_key: i64,
    pub verify: Option<std::sync::Arc<Verify>>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("query", &self.query)
            .field("lock_key", &self.lock_key)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct WriteResult {
    /// The resource's surrogate key (0 when nothing was written).
    pub rid: i64,
    pub version: i64,
    pub last_updated: i64,
    /// The resource did not exist (or was deleted) before.
    pub created: bool,
    /// A delete of an already deleted resource changes nothing.
    pub unchanged: bool,
    pub body: Vec<u8>,
    /// Conditional create: the id of the one resource that matched (nothing written).
    pub existing: Option<String>,
}

/// An AuditEvent ready to store: its id, when, what, and the JSON body.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: String,
    pub recorded: i64,
    pub action: String,
    pub outcome: String,
    pub body: Vec<u8>,
}

fn aad(resource_type: &str, id: &str, version: i64) -> Vec<u8> {
    format!("{resource_type}/{id}/{version}").into_bytes()
}

use crate::fhir::now_micros;

pub fn ping(pool: &DbPool) -> Result<(), StoreError> {
    let mut conn = pool.get()?;
    with_conn!(conn, |c| diesel::sql_query("SELECT 1").execute(c))?;
    Ok(())
}

/// Copies committed WAL frames into the SQLite database file without blocking.
pub fn checkpoint(pool: &DbPool) -> Result<(), StoreError> {
    use diesel::connection::SimpleConnection;
    if let Some(mut conn) = pool.try_get_local() {
        with_conn!(conn, |c| c.batch_execute("PRAGMA wal_checkpoint(PASSIVE);"))?;
    }
    Ok(())
}

pub fn has_keys(pool: &DbPool) -> Result<bool, StoreError> {
    let mut conn = pool.get()?;
    let n: i64 = with_conn!(conn, |c| key_check::table.count().get_result(c))?;
    Ok(n > 0)
}

/// The wrapped keys of one purpose (`data` or `index`).
macro_rules! load_keys {
    ($c:ident, $purpose:expr) => {
        data_keys::table
            .filter(data_keys::purpose.eq($purpose))
            .select((data_keys::key_id, data_keys::wrapped))
            .order(data_keys::key_id.asc())
            .load::<(i64, Vec<u8>)>($c)?
            .into_iter()
            .map(|(id, wrapped)| WrappedKey { id, wrapped })
            .collect::<Vec<WrappedKey>>()
    };
}

/// Stores a new wrapped key of a purpose with the next free id.
macro_rules! add_key {
    ($c:ident, $master:expr, $purpose:expr) => {{
        let max: Option<i64> = data_keys::table
            .select(diesel::dsl::max(data_keys::key_id))
            .first($c)?;
        let w = Keyring::new_data_key($master, max.unwrap_or(0) + 1)?;
        diesel::insert_into(data_keys::table)
            .values((
                data_keys::key_id.eq(w.id),
                data_keys::purpose.eq($purpose),
                data_keys::wrapped.eq(&w.wrapped),
                data_keys::created.eq(now_micros()),
            ))
            .execute($c)?;
        w
    }};
}

/// Opens the data keys and the index key; creates what a new database lacks.
macro_rules! open_ring {
    ($c:ident, $master:expr) => {{
        let mut data = load_keys!($c, "data");
        if data.is_empty() {
            data.push(add_key!($c, $master, "data"));
        }
        let index = match load_keys!($c, "index").pop() {
            Some(k) => k,
            None => add_key!($c, $master, "index"),
        };
        Keyring::open($master, &data)?.with_index_key($master, &index)?
    }};
}

pub fn unlock(pool: &DbPool, master: &MasterKey) -> Result<Keyring, StoreError> {
    let mut conn = pool.get()?;
    write_txn!(conn, |c| {
        let check: Option<Vec<u8>> = key_check::table
            .select(key_check::sealed)
            .first(c)
            .optional()?;
        match check {
            Some(sealed) => master.verify(&sealed)?,
            None => {
                let rows: i64 = rv::table.count().get_result(c)?;
                if rows > 0 {
                    return Err(StoreError::MissingKey);
                }
                diesel::insert_into(key_check::table)
                    .values((
                        key_check::id.eq(1),
                        key_check::sealed.eq(master.key_check()?),
                        key_check::created.eq(now_micros()),
                    ))
                    .execute(c)?;
            }
        }
        Ok(open_ring!(c, master))
    })
}

pub fn rotate(
    pool: &DbPool,
    master: &MasterKey,
    new_master: Option<&MasterKey>,
) -> Result<(Keyring, i64), StoreError> {
    let mut conn = pool.get()?;
    write_txn!(conn, |c| {
        let sealed: Vec<u8> = key_check::table
            .select(key_check::sealed)
            .first(c)
            .optional()?
            .ok_or(StoreError::MissingKey)?;
        master.verify(&sealed)?;
        let ring = open_ring!(c, master);
        let kek = new_master.unwrap_or(master);
        if let Some(new) = new_master {
            for w in ring.rewrap(new)? {
                diesel::update(data_keys::table.filter(data_keys::key_id.eq(w.id)))
                    .set(data_keys::wrapped.eq(&w.wrapped))
                    .execute(c)?;
            }
            diesel::update(key_check::table)
                .set(key_check::sealed.eq(new.key_check()?))
                .execute(c)?;
        }
        let fresh = add_key!(c, kek, "data");
        Ok((open_ring!(c, kek), fresh.id))
    })
}

type VersionTuple = (String, String, i64, i64, bool, i64, Vec<u8>);

fn open_version(ring: &Keyring, t: VersionTuple) -> Result<StoredVersion, StoreError> {
    let (resource_type, id, version, last_updated, deleted, key_id, sealed) = t;
    let body = ring.open_box(key_id, &sealed, &aad(&resource_type, &id, version))?;
    Ok(StoredVersion {
        resource_type,
        id,
        version,
        last_updated,
        deleted,
        body,
    })
}

/// The columns of a version as `VersionTuple`.
macro_rules! version_columns {
    () => {
        (
            rv::resource_type,
            rv::resource_id,
            rv::version_id,
            rv::last_updated,
            rv::deleted,
            rv::key_id,
            rv::body,
        )
    };
}

/// The current version row of a resource (at most one), sealed.
macro_rules! current_rows {
    ($c:ident, $resource_type:expr, $id:expr) => {
        rc::table
            .inner_join(
                rv::table.on(rv::resource_type
                    .eq(rc::resource_type)
                    .and(rv::resource_id.eq(rc::resource_id))
                    .and(rv::version_id.eq(rc::version_id))),
            )
            .filter(rc::resource_type.eq($resource_type))
            .filter(rc::resource_id.eq($id))
            .select(version_columns!())
            .load::<VersionTuple>($c)
    };
}

pub fn read(
    pool: &DbPool,
    ring: &Keyring,
    ctx: &AccessContext,
    resource_type: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Option<StoredVersion>, StoreError> {
    read_on(pool.get()?, ring, ctx, resource_type, id, version)
}

/// `read` on a connection the caller already holds.
pub fn read_on(
    mut conn: DbConn,
    ring: &Keyring,
    _ctx: &AccessContext,
    resource_type: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Option<StoredVersion>, StoreError> {
    let cols = version_columns!();
    if resource_type == "AuditEvent" {
        if version.is_some_and(|v| v != 1) {
            return Ok(None);
        }
        let row: Option<(i64, i64, Vec<u8>)> = with_conn!(conn, |c| audit_log::table
            .filter(audit_log::audit_id.eq(id))
            .select((audit_log::recorded, audit_log::key_id, audit_log::body))
            .load::<(i64, i64, Vec<u8>)>(c))?
        .into_iter()
        .next();
        drop(conn);
        return row
            .map(|(recorded, key_id, body)| {
                open_version(
                    ring,
                    (
                        "AuditEvent".to_string(),
                        id.to_string(),
                        1,
                        recorded,
                        false,
                        key_id,
                        body,
                    ),
                )
            })
            .transpose();
    }
    // No `.first()`: its `LIMIT ?` makes SQLite (built with STAT4) re-prepare the
    // statement on every execution (measured: 11% of a read); the keys are unique.
    let rows: Vec<VersionTuple> = match version {
        Some(v) => with_conn!(conn, |c| rv::table
            .filter(rv::resource_type.eq(resource_type))
            .filter(rv::resource_id.eq(id))
            .filter(rv::version_id.eq(v))
            .select(cols)
            .load(c))?,
        None => with_conn!(conn, |c| current_rows!(c, resource_type, id))?,
    };
    let row = rows.into_iter().next();
    drop(conn);
    row.map(|t| open_version(ring, t)).transpose()
}

/// Transaction-scoped advisory lock: PostgreSQL needs it to serialise conditional
/// creates across nodes; SQLite's `BEGIN IMMEDIATE` already serialises all writers.
pub(crate) trait AdvisoryLock {
    fn advisory_xact_lock(&mut self, key: i64) -> Result<(), StoreError>;
    /// The shared form: holders do not wait for each other, only for an exclusive one.
    fn advisory_xact_lock_shared(&mut self, key: i64) -> Result<(), StoreError>;
}

impl AdvisoryLock for diesel::SqliteConnection {
    fn advisory_xact_lock(&mut self, _key: i64) -> Result<(), StoreError> {
        Ok(())
    }

    fn advisory_xact_lock_shared(&mut self, _key: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

impl AdvisoryLock for diesel::PgConnection {
    fn advisory_xact_lock(&mut self, key: i64) -> Result<(), StoreError> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(key)
            .execute(self)?;
        Ok(())
    }

    fn advisory_xact_lock_shared(&mut self, key: i64) -> Result<(), StoreError> {
        diesel::sql_query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind::<diesel::sql_types::BigInt, _>(key)
            .execute(self)?;
        Ok(())
    }
}

/// The ids of the current, not deleted resources that satisfy a condition (at most
/// a few: callers only distinguish none, one and several).
pub(crate) fn condition_matches<C: query::SearchConn>(
    conn: &mut C,
    ring: &Keyring,
    cond: &Condition,
) -> Result<Vec<String>, StoreError> {
    match &cond.verify {
        None => {
            let mut q = cond.query.clone();
            q.limit = 2;
            Ok(query::run_ids(conn, ring, &q)?
                .into_iter()
                .map(|(_, id)| id)
                .collect())
        }
        Some(verify) => {
            let mut q = cond.query.clone();
            q.sort.clear();
            q.after = None;
            q.limit = 200;
            let mut out = Vec::new();
            loop {
                let hits = query::run_page(conn, ring, &q)?;
                let last = hits.last().map(|h| h.rid);
                for h in &hits {
                    if verify(&h.version) {
                        out.push(h.version.id.clone());
                    }
                }
                match last {
                    Some(rid) if out.len() < 2 && hits.len() == q.limit => {
                        q.after = Some(query::Position {
                            keys: Vec::new(),
                            rid,
                        });
                    }
                    _ => return Ok(out),
                }
            }
        }
    }
}

macro_rules! write_body {
    ($c:ident, $ring:expr, $req:expr) => {{
        let req = $req;
        // A create with a server-assigned id has no current version to look up
        // (the unique index on resources_current catches the impossible clash).
        // `.load` rather than `.first`: see `read`.
        let fresh = matches!(req.kind, WriteKind::Create) && req.condition.is_none();
        let current: Option<(i64, i64, bool)> = if fresh {
            None
        } else {
            rc::table
                .filter(rc::resource_type.eq(req.resource_type))
                .filter(rc::resource_id.eq(req.id))
                .select((rc::rid, rc::version_id, rc::deleted))
                .load::<(i64, i64, bool)>($c)?
                .into_iter()
                .next()
        };
        if let Some(cond) = req.condition {
            $c.advisory_xact_lock(cond.lock_key)?;
            let found = condition_matches($c, $ring, cond)?;
            match found.len() {
                0 => {}
                1 => {
                    return Ok(WriteResult {
                        rid: 0,
                        version: 0,
                        last_updated: 0,
                        created: false,
                        unchanged: true,
                        body: Vec::new(),
                        existing: found.into_iter().next(),
                    })
                }
                n => return Err(StoreError::MultipleMatches(n)),
            }
        }
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
                    Some((_, v, true)) => {
                        return Ok(WriteResult {
                            rid: 0,
                            version: v,
                            last_updated: 0,
                            created: false,
                            unchanged: true,
                            body: Vec::new(),
                            existing: None,
                        })
                    }
                    Some(_) => {}
                }
                if_match
            }
        };
        if let Some(expected) = if_match {
            match current {
                Some((_, v, _)) if v == expected => {}
                Some((_, v, _)) => return Err(StoreError::VersionConflict { current: v }),
                None => return Err(StoreError::VersionConflict { current: 0 }),
            }
        }
        let version = current.map_or(1, |(_, v, _)| v + 1);
        let created = current.is_none_or(|(_, _, deleted)| deleted);
        let deleted = matches!(req.kind, WriteKind::Delete { .. });
        let ts = now_micros();
        let body = if deleted {
            Vec::new()
        } else {
            (req.prepare)(version, ts)?
        };
        let (key_id, sealed) = $ring.seal(&body, &aad(req.resource_type, req.id, version))?;
        diesel::insert_into(rv::table)
            .values((
                rv::resource_type.eq(req.resource_type),
                rv::resource_id.eq(req.id),
                rv::version_id.eq(version),
                rv::last_updated.eq(ts),
                rv::deleted.eq(deleted),
                rv::method.eq(req.method),
                rv::key_id.eq(key_id),
                rv::body.eq(&sealed),
            ))
            .execute($c)?;
        let rid = match current {
            None => diesel::insert_into(rc::table)
                .values((
                    rc::resource_type.eq(req.resource_type),
                    rc::resource_id.eq(req.id),
                    rc::version_id.eq(version),
                    rc::last_updated.eq(ts),
                    rc::deleted.eq(deleted),
                ))
                .returning(rc::rid)
                .get_result::<i64>($c)?,
            Some((rid, v, was_deleted)) => {
                let n = diesel::update(
                    rc::table
                        .filter(rc::rid.eq(rid))
                        .filter(rc::version_id.eq(v)),
                )
                .set((
                    rc::version_id.eq(version),
                    rc::last_updated.eq(ts),
                    rc::deleted.eq(deleted),
                ))
                .execute($c)?;
                if n != 1 {
                    return Err(StoreError::Contention);
                }
                // A deleted version has no index rows left to remove.
                if !was_deleted {
                    $c.delete_index(rid)?;
                }
                rid
            }
        };
        if !deleted && !req.index.is_empty() {
            $c.insert_index($ring, rid, req.index)?;
        }
        if req.resource_type == "SearchParameter" {
            $crate::store::jobs::register_search_param!($c, req.id, version, deleted);
        }
        let result = WriteResult {
            rid,
            version,
            last_updated: ts,
            created,
            unchanged: false,
            body,
            existing: None,
        };
        let audit = (req.audit)(&result)?;
        insert_audit_rows!($c, $ring, std::slice::from_ref(&audit));
        Ok(result)
    }};
}

/// Many new resources with server-assigned ids (`WriteKind::Create`, no condition)
/// in multi-row statements: one INSERT per table for all of them instead of several
/// statements per resource (a transaction Bundle creates hundreds at once). The
/// same rows as `write_body` would write, one resource after another.
macro_rules! create_many_body {
    ($c:ident, $ring:expr, $reqs:expr) => {{
        let reqs: &[WriteRequest<'_>] = $reqs;
        let ts = now_micros();
        let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(reqs.len());
        let mut sealed: Vec<(i64, Vec<u8>)> = Vec::with_capacity(reqs.len());
        for req in reqs {
            let body = (req.prepare)(1, ts)?;
            sealed.push($ring.seal(&body, &aad(req.resource_type, req.id, 1))?);
            bodies.push(body);
        }
        let versions: Vec<_> = reqs
            .iter()
            .zip(&sealed)
            .map(|(req, (key_id, box_))| {
                (
                    rv::resource_type.eq(req.resource_type),
                    rv::resource_id.eq(req.id),
                    rv::version_id.eq(1i64),
                    rv::last_updated.eq(ts),
                    rv::deleted.eq(false),
                    rv::method.eq(req.method),
                    rv::key_id.eq(*key_id),
                    rv::body.eq(box_.as_slice()),
                )
            })
            .collect();
        // Bodies are a few kB each: chunks keep a statement to a few MB.
        for chunk in versions.chunks(200) {
            diesel::insert_into(rv::table).values(chunk).execute($c)?;
        }
        let current: Vec<_> = reqs
            .iter()
            .map(|req| {
                (
                    rc::resource_type.eq(req.resource_type),
                    rc::resource_id.eq(req.id),
                    rc::version_id.eq(1i64),
                    rc::last_updated.eq(ts),
                    rc::deleted.eq(false),
                )
            })
            .collect();
        let mut rids: std::collections::HashMap<(String, String), i64> =
            std::collections::HashMap::with_capacity(reqs.len());
        for chunk in current.chunks(1000) {
            let got: Vec<(i64, String, String)> = diesel::insert_into(rc::table)
                .values(chunk)
                .returning((rc::rid, rc::resource_type, rc::resource_id))
                .get_results($c)?;
            for (rid, t, id) in got {
                rids.insert((t, id), rid);
            }
        }
        let mut results: Vec<WriteResult> = Vec::with_capacity(reqs.len());
        for (req, body) in reqs.iter().zip(bodies) {
            let rid = rids
                .get(&(req.resource_type.to_string(), req.id.to_string()))
                .copied()
                .ok_or(StoreError::Contention)?;
            if req.resource_type == "SearchParameter" {
                $crate::store::jobs::register_search_param!($c, req.id, 1i64, false);
            }
            results.push(WriteResult {
                rid,
                version: 1,
                last_updated: ts,
                created: true,
                unchanged: false,
                body,
                existing: None,
            });
        }
        let index: Vec<(i64, &IndexRows)> = reqs
            .iter()
            .zip(&results)
            .filter(|(req, _)| !req.index.is_empty())
            .map(|(req, r)| (r.rid, req.index))
            .collect();
        $c.insert_index_many($ring, &index)?;
        let audits = reqs
            .iter()
            .zip(&results)
            .map(|(req, r)| (req.audit)(r))
            .collect::<Result<Vec<AuditRow>, StoreError>>()?;
        insert_audit_rows!($c, $ring, &audits);
        Ok(results)
    }};
}

macro_rules! insert_audit_rows {
    ($c:ident, $ring:expr, $rows:expr) => {{
        let mut values = Vec::new();
        for a in $rows {
            let (key_id, sealed) = $ring.seal(&a.body, &aad("AuditEvent", &a.id, 1))?;
            values.push((
                audit_log::audit_id.eq(&a.id),
                audit_log::recorded.eq(a.recorded),
                audit_log::action.eq(&a.action),
                audit_log::outcome.eq(&a.outcome),
                audit_log::key_id.eq(key_id),
                audit_log::body.eq(sealed),
            ));
        }
        // One multi-row INSERT per group commit.
        for chunk in values.chunks(256) {
            diesel::insert_into(audit_log::table)
                .values(chunk)
                .execute($c)?;
        }
    }};
}
/// A connection inside a write transaction: one version written with its index
/// rows and AuditEvent (a transaction Bundle writes several in one transaction),
/// the current version read, AuditEvents and import progress recorded.
pub(crate) trait WriteConn: query::SearchConn + AdvisoryLock + IndexConn {
    fn write_version(
        &mut self,
        ring: &Keyring,
        req: &WriteRequest<'_>,
    ) -> Result<WriteResult, StoreError>;

    /// The current version of a resource (deleted ones too), opened.
    fn current_version(
        &mut self,
        ring: &Keyring,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError>;

    fn insert_audits(&mut self, ring: &Keyring, rows: &[AuditRow]) -> Result<(), StoreError>;

    /// New resources with server-assigned ids, all at once (see `create_many_body`).
    fn create_many(
        &mut self,
        ring: &Keyring,
        reqs: &[WriteRequest<'_>],
    ) -> Result<Vec<WriteResult>, StoreError>;

    /// Which of `ids` have a current row.
    fn existing_ids(
        &mut self,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Records that part `part` of import unit `unit` is stored.
    fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError>;
}

/// A create on PostgreSQL in one statement, committed by itself (a statement is
/// atomic): the current row, the version, the index rows and the AuditEvent are
/// data-modifying CTEs of one INSERT. One round trip instead of seven (BEGIN, four
/// INSERTs, the index statement, COMMIT), and one WAL flush. Only for a create with
/// a fresh server id and no conditions: nothing has to be read first.
fn create_in_one_statement(
    c: &mut diesel::PgConnection,
    ring: &Keyring,
    req: &WriteRequest<'_>,
) -> Result<WriteResult, StoreError> {
    use super::sql::{Bind, Sql};
    let ts = now_micros();
    let body = (req.prepare)(1, ts)?;
    let (key_id, sealed) = ring.seal(&body, &aad(req.resource_type, req.id, 1))?;
    let mut result = WriteResult {
        rid: 0,
        version: 1,
        last_updated: ts,
        created: true,
        unchanged: false,
        body,
        existing: None,
    };
    let audit = (req.audit)(&result)?;
    let (audit_key, audit_sealed) = ring.seal(&audit.body, &aad("AuditEvent", &audit.id, 1))?;
    let mut sql = Sql::new(super::Backend::Postgres);
    sql.push(
        "WITH c AS (INSERT INTO resources_current (resource_type, resource_id, version_id, last_updated, deleted) VALUES (",
    );
    sql.text(req.resource_type)
        .push(", ")
        .text(req.id)
        .push(", 1, ")
        .i64(ts);
    sql.push(", false) RETURNING rid), v AS (INSERT INTO resource_versions (resource_type, resource_id, version_id, last_updated, deleted, method, key_id, body) VALUES (");
    sql.text(req.resource_type)
        .push(", ")
        .text(req.id)
        .push(", 1, ")
        .i64(ts);
    sql.push(", false, ")
        .text(req.method)
        .push(", ")
        .i64(key_id)
        .push(", ");
    sql.bind(Bind::Bytes(sealed));
    sql.push(
        ")), a AS (INSERT INTO audit_log (audit_id, recorded, action, outcome, key_id, body) VALUES (",
    );
    sql.text(&audit.id)
        .push(", ")
        .i64(audit.recorded)
        .push(", ")
        .text(&audit.action);
    sql.push(", ")
        .text(&audit.outcome)
        .push(", ")
        .i64(audit_key)
        .push(", ");
    sql.bind(Bind::Bytes(audit_sealed));
    sql.push(")), ");
    super::index::pg_index_ctes_of(&mut sql, ring, "c", req.index)?;
    sql.push(" SELECT rid FROM c");
    #[derive(QueryableByName)]
    struct Rid {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        rid: i64,
    }
    let rows: Vec<Rid> = match sql.finish().load::<Rid>(c) {
        Ok(r) => r,
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => return Err(StoreError::AlreadyExists),
        Err(e) => return Err(e.into()),
    };
    result.rid = rows.first().map(|r| r.rid).ok_or(StoreError::Contention)?;
    Ok(result)
}

macro_rules! write_conn_impl {
    ($conn:ty) => {
        impl WriteConn for $conn {
            fn write_version(
                &mut self,
                ring: &Keyring,
                req: &WriteRequest<'_>,
            ) -> Result<WriteResult, StoreError> {
                let c = self;
                write_body!(c, ring, req)
            }

            fn current_version(
                &mut self,
                ring: &Keyring,
                resource_type: &str,
                id: &str,
            ) -> Result<Option<StoredVersion>, StoreError> {
                let c = self;
                let row = current_rows!(c, resource_type, id)?.into_iter().next();
                row.map(|t| open_version(ring, t)).transpose()
            }

            fn insert_audits(
                &mut self,
                ring: &Keyring,
                rows: &[AuditRow],
            ) -> Result<(), StoreError> {
                let c = self;
                insert_audit_rows!(c, ring, rows);
                Ok(())
            }

            fn create_many(
                &mut self,
                ring: &Keyring,
                reqs: &[WriteRequest<'_>],
            ) -> Result<Vec<WriteResult>, StoreError> {
                let c = self;
                create_many_body!(c, ring, reqs)
            }

            fn existing_ids(
                &mut self,
                resource_type: &str,
                ids: &[&str],
            ) -> Result<std::collections::HashSet<String>, StoreError> {
                let mut out = std::collections::HashSet::new();
                for chunk in ids.chunks(500) {
                    out.extend(
                        rc::table
                            .filter(rc::resource_type.eq(resource_type))
                            .filter(rc::resource_id.eq_any(chunk))
                            .select(rc::resource_id)
                            .load::<String>(self)?,
                    );
                }
                Ok(out)
            }

            fn mark_imported(&mut self, unit: &str, part: i64) -> Result<(), StoreError> {
                diesel::insert_into(import_progress::table)
                    .values((
                        import_progress::unit.eq(unit),
                        import_progress::part.eq(part),
                        import_progress::done_at.eq(now_micros()),
                    ))
                    .execute(self)?;
                Ok(())
            }
        }
    };
}

write_conn_impl!(diesel::SqliteConnection);
write_conn_impl!(diesel::PgConnection);

pub fn write(
    pool: &DbPool,
    ring: &Keyring,
    _ctx: &AccessContext,
    req: WriteRequest<'_>,
) -> Result<WriteResult, StoreError> {
    let one_statement = matches!(pool, DbPool::Pg(_))
        && matches!(req.kind, WriteKind::Create)
        && req.condition.is_none()
        && req.resource_type != "SearchParameter";
    if one_statement {
        if let DbConn::Pg(mut c) = pool.get()? {
            return create_in_one_statement(&mut c, ring, &req);
        }
    }
    let mut last = StoreError::Contention;
    for attempt in 0..WRITE_RETRIES {
        let mut conn = pool.get()?;
        match write_txn!(conn, |c| c.write_version(ring, &req)) {
            Err(StoreError::Contention) => {
                tracing::debug!(attempt, resource.type = req.resource_type, "write raced with another; retrying");
                last = StoreError::Contention;
                std::thread::sleep(std::time::Duration::from_millis(1 + attempt as u64 * 3));
            }
            other => return other,
        }
    }
    Err(last)
}

pub fn insert_audits(pool: &DbPool, ring: &Keyring, rows: &[AuditRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get()?;
    write_txn!(conn, |c| {
        insert_audit_rows!(c, ring, rows);
        Ok::<(), StoreError>(())
    })
}

type HistoryTuple = (i64, String, String, String, i64, i64, bool, i64, Vec<u8>);

pub fn history(
    pool: &DbPool,
    ring: &Keyring,
    _ctx: &AccessContext,
    scope: &HistoryScope,
    since: Option<i64>,
    before_seq: Option<i64>,
    count: usize,
) -> Result<Vec<HistoryRow>, StoreError> {
    let mut conn = pool.get()?;
    let limit = count.min(1_000_000) as i64;
    let audit_only = match scope {
        HistoryScope::Type(t) => (t == "AuditEvent").then_some(None),
        HistoryScope::Instance(t, id) => (t == "AuditEvent").then_some(Some(id.clone())),
        HistoryScope::System => None,
    };
    if let Some(only_id) = audit_only {
        let rows: Vec<(i64, String, i64, i64, Vec<u8>)> = with_conn!(conn, |c| {
            let mut q = audit_log::table
                .select((
                    audit_log::seq,
                    audit_log::audit_id,
                    audit_log::recorded,
                    audit_log::key_id,
                    audit_log::body,
                ))
                .order(audit_log::seq.desc())
                .limit(limit)
                .into_boxed();
            if let Some(id) = &only_id {
                q = q.filter(audit_log::audit_id.eq(id.clone()));
            }
            if let Some(s) = since {
                q = q.filter(audit_log::recorded.ge(s));
            }
            if let Some(b) = before_seq {
                q = q.filter(audit_log::seq.lt(b));
            }
            q.load(c)
        })?;
        drop(conn);
        return rows
            .into_iter()
            .map(|(seq, id, recorded, key, body)| {
                Ok(HistoryRow {
                    seq,
                    method: "POST".into(),
                    version: open_version(
                        ring,
                        ("AuditEvent".into(), id, 1, recorded, false, key, body),
                    )?,
                })
            })
            .collect();
    }
    let rows: Vec<HistoryTuple> = with_conn!(conn, |c| {
        let mut q = rv::table
            .select((
                rv::seq,
                rv::method,
                rv::resource_type,
                rv::resource_id,
                rv::version_id,
                rv::last_updated,
                rv::deleted,
                rv::key_id,
                rv::body,
            ))
            .order(rv::seq.desc())
            .limit(limit)
            .into_boxed();
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => q = q.filter(rv::resource_type.eq(t.clone())),
            HistoryScope::Instance(t, id) => {
                q = q
                    .filter(rv::resource_type.eq(t.clone()))
                    .filter(rv::resource_id.eq(id.clone()))
            }
        }
        if let Some(s) = since {
            q = q.filter(rv::last_updated.ge(s));
        }
        if let Some(b) = before_seq {
            q = q.filter(rv::seq.lt(b));
        }
        q.load(c)
    })?;
    drop(conn);
    rows.into_iter()
        .map(|(seq, method, t, id, v, lu, del, key, body)| {
            Ok(HistoryRow {
                seq,
                method,
                version: open_version(ring, (t, id, v, lu, del, key, body))?,
            })
        })
        .collect()
}
