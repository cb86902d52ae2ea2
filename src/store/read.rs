//! Reads of resource versions: the current version or one version by id, history
//! at every level, and the matches of conditional criteria, each narrowed in its
//! SQL to what the caller may see (a resource outside the caller's compartment
//! or granular scope is not read, so it is "not found").

use diesel::{Queryable, QueryableByName};

use super::conn::AnyConn;
use super::query;
use super::render::Renderer;
use super::{Condition, StoreError};
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

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

/// The kind of interaction that wrote a version (history's `request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> WriteMethod {
        match text {
            "POST" => WriteMethod::Post,
            "PATCH" => WriteMethod::Patch,
            "DELETE" => WriteMethod::Delete,
            _ => WriteMethod::Put,
        }
    }
}

/// One entry of a history: its place (`seq`), how the version was written, the version.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub seq: i64,
    pub method: WriteMethod,
    pub version: StoredVersion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

/// The columns of a stored version, decoded by name (dynamic statements) or by
/// position (the typed read by id).
#[derive(QueryableByName, Queryable)]
pub(crate) struct VersionLine {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub method: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub resource_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub resource_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub version_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub last_updated: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub deleted: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub key_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub body: Vec<u8>,
}

const VERSION_COLUMNS: &str = "rv.seq, rv.method, rv.resource_type, rv.resource_id, \
     rv.version_id, rv.last_updated, rv.deleted, rv.key_id, rv.body";

/// The associated data of a resource body: type, id and version, so a sealed body
/// moved to another row does not open.
pub(crate) fn aad(resource_type: &str, id: &str, version: i64) -> Vec<u8> {
    format!("{resource_type}/{id}/{version}").into_bytes()
}

impl VersionLine {
    pub fn open(self, ring: &Keyring) -> Result<HistoryRow, StoreError> {
        let body = ring.open_box(
            self.key_id,
            &self.body,
            &aad(&self.resource_type, &self.resource_id, self.version_id),
        )?;
        Ok(HistoryRow {
            seq: self.seq,
            method: WriteMethod::parse(&self.method),
            version: StoredVersion {
                resource_type: self.resource_type,
                id: self.resource_id,
                version: self.version_id,
                last_updated: self.last_updated,
                deleted: self.deleted,
                body,
            },
        })
    }
}

/// The current version of a resource (deleted ones too), or one version, as the
/// caller may `action` it: None when it does not exist or the caller may not see it.
pub(crate) fn version(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    action: Action,
    resource_type: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Option<StoredVersion>, StoreError> {
    let visibility = ctx.visibility(resource_type, action);
    let Some(f) = visibility.filter() else {
        let line = read_by_id(c, resource_type, id, version)?;
        return Ok(line.map(|l| l.open(ring)).transpose()?.map(|h| h.version));
    };
    // Narrowed: the resource as it is now must be visible (index rows exist for
    // live current versions only, so a deleted resource is not).
    let f = f.clone();
    let mut r = Renderer::new(c.backend(), ring, ctx, action);
    r.sql.push(&format!(
        "SELECT {VERSION_COLUMNS} FROM resources_current rc JOIN resource_versions rv \
         ON rv.resource_type = rc.resource_type AND rv.resource_id = rc.resource_id \
         AND rv.version_id = "
    ));
    match version {
        Some(v) => {
            r.sql.i64(v);
        }
        None => {
            r.sql.push("rc.version_id");
        }
    }
    r.sql
        .push(" WHERE rc.resource_type = ")
        .text(resource_type)
        .push(" AND rc.resource_id = ")
        .text(id)
        .push(" AND ");
    r.filter(&f, "rc")?;
    let line = c.load::<VersionLine>(r.sql)?.into_iter().next();
    Ok(line.map(|l| l.open(ring)).transpose()?.map(|h| h.version))
}

/// The current version, or one version, by primary key, with diesel's typed
/// query builder (see `tables`). No `LIMIT`: it makes SQLite (built with STAT4)
/// re-prepare the statement on every execution (measured: 11% of a read); the keys
/// are unique.
fn read_by_id(
    c: &mut AnyConn,
    resource_type: &str,
    id: &str,
    version: Option<i64>,
) -> Result<Option<VersionLine>, StoreError> {
    use super::tables::{resource_versions as rv, resources_current as rc};
    use diesel::prelude::*;
    let columns = (
        rv::seq,
        rv::method,
        rv::resource_type,
        rv::resource_id,
        rv::version_id,
        rv::last_updated,
        rv::deleted,
        rv::key_id,
        rv::body,
    );
    let lines: Vec<VersionLine> = match version {
        Some(v) => {
            let q = rv::table
                .filter(rv::resource_type.eq(resource_type))
                .filter(rv::resource_id.eq(id))
                .filter(rv::version_id.eq(v))
                .select(columns);
            match c {
                AnyConn::Sqlite(c) => q.load(*c)?,
                AnyConn::Pg(c) => q.load(*c)?,
            }
        }
        None => {
            let q = rc::table
                .inner_join(
                    rv::table.on(rv::resource_type
                        .eq(rc::resource_type)
                        .and(rv::resource_id.eq(rc::resource_id))
                        .and(rv::version_id.eq(rc::version_id))),
                )
                .filter(rc::resource_type.eq(resource_type))
                .filter(rc::resource_id.eq(id))
                .select(columns);
            match c {
                AnyConn::Sqlite(c) => q.load(*c)?,
                AnyConn::Pg(c) => q.load(*c)?,
            }
        }
    };
    Ok(lines.into_iter().next())
}

/// Versions newest first: of one resource, one type or every type (AuditEvents
/// have their own log), from `last_updated >= since`, before position
/// `before_seq`; only of resources the caller may see as they are now.
pub(crate) fn history(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    scope: &HistoryScope,
    since: Option<i64>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<HistoryRow>, StoreError> {
    // An instance's history is a read of it; a type's or the system's a search.
    let (action, types) = match scope {
        HistoryScope::Instance(t, _) => (Action::Read, Some(vec![t.clone()])),
        HistoryScope::Type(t) => (Action::Search, Some(vec![t.clone()])),
        HistoryScope::System => (Action::Search, None),
    };
    let mut r = Renderer::new(c.backend(), ring, ctx, action);
    r.sql.push(&format!(
        "SELECT {VERSION_COLUMNS} FROM resource_versions rv WHERE 1 = 1"
    ));
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            r.sql.push(" AND rv.resource_type = ").text(t);
        }
        HistoryScope::Instance(t, id) => {
            r.sql
                .push(" AND rv.resource_type = ")
                .text(t)
                .push(" AND rv.resource_id = ")
                .text(id);
        }
    }
    if let Some(s) = since {
        r.sql.push(" AND rv.last_updated >= ").i64(s);
    }
    if let Some(b) = before_seq {
        r.sql.push(" AND rv.seq < ").i64(b);
    }
    if let Some(f) = ctx.grant.narrowing(types.as_deref(), action) {
        r.sql.push(
            " AND EXISTS (SELECT 1 FROM resources_current rc WHERE rc.resource_type = rv.resource_type \
             AND rc.resource_id = rv.resource_id AND ",
        );
        r.filter(&f, "rc")?;
        r.sql.push(")");
    }
    r.sql.push(" ORDER BY rv.seq DESC LIMIT ").i64(limit);
    c.load::<VersionLine>(r.sql)?
        .into_iter()
        .map(|l| l.open(ring))
        .collect()
}

/// The ids of the current, live resources that satisfy a condition and that the
/// caller may search (at most a few: callers tell none, one and several apart).
pub(crate) fn condition_matches(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    cond: &Condition,
) -> Result<Vec<String>, StoreError> {
    match &cond.verify {
        None => {
            let mut q = cond.query.clone();
            q.limit = 2;
            Ok(query::run_ids(c, ring, ctx, &q)?
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
                let hits = query::run_page(c, ring, ctx, &q)?;
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

/// How many of the resources `rids` the caller may `action` (of `types`): a write
/// checks that what it leaves is still within the caller's grant.
pub(crate) fn count_visible(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    action: Action,
    types: &[String],
    rids: &[i64],
) -> Result<i64, StoreError> {
    let Some(f) = ctx.grant.narrowing(Some(types), action) else {
        return Ok(rids.len() as i64);
    };
    let mut r = Renderer::new(c.backend(), ring, ctx, action);
    r.sql
        .push("SELECT COUNT(*) AS n FROM resources_current rc WHERE ");
    r.sql.in_i64s("rc.rid", rids);
    r.sql.push(" AND ");
    r.filter(&f, "rc")?;
    Ok(c.load::<super::conn::Count>(r.sql)?
        .first()
        .map_or(0, |n| n.n))
}
