//! The queries. Each function runs one diesel body on either backend (see
//! `pool::with_conn!`), so SQLite and PostgreSQL share every line of SQL shape.

use diesel::prelude::*;

use super::pool::{with_conn, write_txn, DbPool};
use super::schema::{
    audit_log, data_keys, key_check, resource_versions as rv, resources_current as rc,
};
use super::StoreError;
use crate::access::AccessContext;
use crate::crypto::{Keyring, MasterKey, WrappedKey};

/// How many times a write is retried when a concurrent writer got there first.
const WRITE_RETRIES: usize = 8;

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
}

#[derive(Debug, Clone)]
pub struct WriteResult {
    pub version: i64,
    pub last_updated: i64,
    /// The resource did not exist (or was deleted) before.
    pub created: bool,
    /// A delete of an already deleted resource changes nothing.
    pub unchanged: bool,
    pub body: Vec<u8>,
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

pub fn has_keys(pool: &DbPool) -> Result<bool, StoreError> {
    let mut conn = pool.get()?;
    let n: i64 = with_conn!(conn, |c| key_check::table.count().get_result(c))?;
    Ok(n > 0)
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
        let mut wrapped: Vec<WrappedKey> = data_keys::table
            .filter(data_keys::purpose.eq("data"))
            .select((data_keys::key_id, data_keys::wrapped))
            .load::<(i64, Vec<u8>)>(c)?
            .into_iter()
            .map(|(id, wrapped)| WrappedKey { id, wrapped })
            .collect();
        if wrapped.is_empty() {
            let w = Keyring::new_data_key(master, 1)?;
            diesel::insert_into(data_keys::table)
                .values((
                    data_keys::key_id.eq(w.id),
                    data_keys::purpose.eq("data"),
                    data_keys::wrapped.eq(&w.wrapped),
                    data_keys::created.eq(now_micros()),
                ))
                .execute(c)?;
            wrapped.push(w);
        }
        Ok(Keyring::open(master, &wrapped)?)
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
        let all: Vec<WrappedKey> = data_keys::table
            .select((data_keys::key_id, data_keys::wrapped))
            .load::<(i64, Vec<u8>)>(c)?
            .into_iter()
            .map(|(id, wrapped)| WrappedKey { id, wrapped })
            .collect();
        let ring = Keyring::open(master, &all)?;
        let next_id = all.iter().map(|k| k.id).max().unwrap_or(0) + 1;
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
        let fresh = Keyring::new_data_key(kek, next_id)?;
        diesel::insert_into(data_keys::table)
            .values((
                data_keys::key_id.eq(fresh.id),
                data_keys::purpose.eq("data"),
                data_keys::wrapped.eq(&fresh.wrapped),
                data_keys::created.eq(now_micros()),
            ))
            .execute(c)?;
        let wrapped: Vec<WrappedKey> = data_keys::table
            .filter(data_keys::purpose.eq("data"))
            .select((data_keys::key_id, data_keys::wrapped))
            .load::<(i64, Vec<u8>)>(c)?
            .into_iter()
            .map(|(id, wrapped)| WrappedKey { id, wrapped })
            .collect();
        Ok((Keyring::open(kek, &wrapped)?, next_id))
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

pub fn read(
    pool: &DbPool,
    ring: &Keyring,
    _ctx: &AccessContext,
    resource_type: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Option<StoredVersion>, StoreError> {
    let mut conn = pool.get()?;
    let cols = (
        rv::resource_type,
        rv::resource_id,
        rv::version_id,
        rv::last_updated,
        rv::deleted,
        rv::key_id,
        rv::body,
    );
    let row: Option<VersionTuple> = match version {
        Some(v) => with_conn!(conn, |c| rv::table
            .filter(rv::resource_type.eq(resource_type))
            .filter(rv::resource_id.eq(id))
            .filter(rv::version_id.eq(v))
            .select(cols)
            .first(c)
            .optional())?,
        None => with_conn!(conn, |c| rc::table
            .inner_join(
                rv::table.on(rv::resource_type
                    .eq(rc::resource_type)
                    .and(rv::resource_id.eq(rc::resource_id))
                    .and(rv::version_id.eq(rc::version_id))),
            )
            .filter(rc::resource_type.eq(resource_type))
            .filter(rc::resource_id.eq(id))
            .select(cols)
            .first(c)
            .optional())?,
    };
    drop(conn);
    row.map(|t| open_version(ring, t)).transpose()
}

macro_rules! write_body {
    ($c:ident, $ring:expr, $req:expr) => {{
        let req = $req;
        let current: Option<(i64, bool)> = rc::table
            .filter(rc::resource_type.eq(req.resource_type))
            .filter(rc::resource_id.eq(req.id))
            .select((rc::version_id, rc::deleted))
            .first($c)
            .optional()?;
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
                    Some((v, true)) => {
                        return Ok(WriteResult {
                            version: v,
                            last_updated: 0,
                            created: false,
                            unchanged: true,
                            body: Vec::new(),
                        })
                    }
                    Some(_) => {}
                }
                if_match
            }
        };
        if let Some(expected) = if_match {
            match current {
                Some((v, _)) if v == expected => {}
                Some((v, _)) => return Err(StoreError::VersionConflict { current: v }),
                None => return Err(StoreError::VersionConflict { current: 0 }),
            }
        }
        let version = current.map_or(1, |(v, _)| v + 1);
        let created = current.is_none_or(|(_, deleted)| deleted);
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
        match current {
            None => {
                diesel::insert_into(rc::table)
                    .values((
                        rc::resource_type.eq(req.resource_type),
                        rc::resource_id.eq(req.id),
                        rc::version_id.eq(version),
                        rc::last_updated.eq(ts),
                        rc::deleted.eq(deleted),
                    ))
                    .execute($c)?;
            }
            Some((v, _)) => {
                let n = diesel::update(
                    rc::table
                        .filter(rc::resource_type.eq(req.resource_type))
                        .filter(rc::resource_id.eq(req.id))
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
            }
        }
        let result = WriteResult {
            version,
            last_updated: ts,
            created,
            unchanged: false,
            body,
        };
        let audit = (req.audit)(&result)?;
        insert_audit_rows!($c, $ring, std::slice::from_ref(&audit));
        Ok(result)
    }};
}

macro_rules! insert_audit_rows {
    ($c:ident, $ring:expr, $rows:expr) => {{
        for a in $rows {
            let (key_id, sealed) = $ring.seal(&a.body, &aad("AuditEvent", &a.id, 1))?;
            diesel::insert_into(rv::table)
                .values((
                    rv::resource_type.eq("AuditEvent"),
                    rv::resource_id.eq(&a.id),
                    rv::version_id.eq(1i64),
                    rv::last_updated.eq(a.recorded),
                    rv::deleted.eq(false),
                    rv::method.eq("POST"),
                    rv::key_id.eq(key_id),
                    rv::body.eq(&sealed),
                ))
                .execute($c)?;
            diesel::insert_into(rc::table)
                .values((
                    rc::resource_type.eq("AuditEvent"),
                    rc::resource_id.eq(&a.id),
                    rc::version_id.eq(1i64),
                    rc::last_updated.eq(a.recorded),
                    rc::deleted.eq(false),
                ))
                .execute($c)?;
            diesel::insert_into(audit_log::table)
                .values((
                    audit_log::audit_id.eq(&a.id),
                    audit_log::recorded.eq(a.recorded),
                    audit_log::action.eq(&a.action),
                    audit_log::outcome.eq(&a.outcome),
                ))
                .execute($c)?;
        }
    }};
}
pub fn write(
    pool: &DbPool,
    ring: &Keyring,
    _ctx: &AccessContext,
    req: WriteRequest<'_>,
) -> Result<WriteResult, StoreError> {
    let mut last = StoreError::Contention;
    for attempt in 0..WRITE_RETRIES {
        let mut conn = pool.get()?;
        match write_txn!(conn, |c| write_body!(c, ring, &req)) {
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
    let limit = count.min(10_000) as i64;
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
