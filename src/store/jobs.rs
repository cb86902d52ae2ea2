//! Reindex jobs and the registry of SearchParameters created through the API,
//! both kept in the database so that every node sees them and a job survives a
//! restart: a job advances `after_rid` batch by batch, each batch in one
//! transaction with the index rows it rewrote, under a lease that another node
//! takes over when it expires.

use diesel::prelude::*;

use super::index::{delete_index_rows, insert_index_rows, IndexRows};
use super::pool::{with_conn, write_txn, DbPool};
use super::query;
use super::schema::{reindex_jobs as rj, search_param_status as sps, search_registry};
use super::{StoreError, StoredVersion};
use crate::crypto::Keyring;
use crate::fhir::now_micros;

/// A reindex job as stored.
#[derive(Debug, Clone, Queryable)]
pub struct ReindexJob {
    pub job_id: String,
    /// A resource type, or `*` for every type.
    pub resource_type: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    pub after_rid: i64,
    pub processed: i64,
    pub total: i64,
    pub created: i64,
    pub updated: i64,
    pub lease_owner: Option<String>,
    pub lease_until: i64,
    pub error: Option<String>,
}

/// A SearchParameter of the database and whether searches may use it.
#[derive(Debug, Clone)]
pub struct CustomParamRow {
    pub resource_id: String,
    pub active: bool,
    pub updated: i64,
}

fn count_live(
    c: &mut impl query::SearchConn,
    ring: &Keyring,
    resource_type: &str,
) -> Result<i64, StoreError> {
    let q = query::Query {
        types: (resource_type != "*").then(|| vec![resource_type.to_string()]),
        ..query::Query::default()
    };
    query::run_count(c, ring, &q)
}

pub fn enqueue(
    pool: &DbPool,
    ring: &Keyring,
    resource_type: &str,
) -> Result<ReindexJob, StoreError> {
    let mut conn = pool.get()?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_micros();
    write_txn!(conn, |c| {
        let total = count_live(c, ring, resource_type)?;
        diesel::insert_into(rj::table)
            .values((
                rj::job_id.eq(&id),
                rj::resource_type.eq(resource_type),
                rj::status.eq("queued"),
                rj::after_rid.eq(0i64),
                rj::processed.eq(0i64),
                rj::total.eq(total),
                rj::created.eq(now),
                rj::updated.eq(now),
                rj::lease_until.eq(0i64),
            ))
            .execute(c)?;
        Ok::<(), StoreError>(())
    })?;
    job(pool, &id)?.ok_or(StoreError::NotFound)
}

pub fn job(pool: &DbPool, id: &str) -> Result<Option<ReindexJob>, StoreError> {
    let mut conn = pool.get()?;
    let rows: Vec<ReindexJob> = with_conn!(conn, |c| rj::table
        .filter(rj::job_id.eq(id))
        .load::<ReindexJob>(c))?;
    Ok(rows.into_iter().next())
}

/// Takes the oldest unfinished job whose lease has expired (or is ours).
pub fn claim(pool: &DbPool, owner: &str, lease_ms: i64) -> Result<Option<ReindexJob>, StoreError> {
    let mut conn = pool.get()?;
    let now = now_micros();
    let claimed: Option<String> = write_txn!(conn, |c| {
        let candidates: Vec<ReindexJob> = rj::table
            .filter(rj::status.eq_any(["queued", "running"]))
            .order(rj::created.asc())
            .load::<ReindexJob>(c)?;
        for j in candidates {
            if j.lease_until > now && j.lease_owner.as_deref() != Some(owner) {
                continue;
            }
            // Conditional on the lease we saw: two nodes cannot both take it.
            let n = diesel::update(
                rj::table
                    .filter(rj::job_id.eq(&j.job_id))
                    .filter(rj::lease_until.eq(j.lease_until)),
            )
            .set((
                rj::status.eq("running"),
                rj::lease_owner.eq(owner),
                rj::lease_until.eq(now + lease_ms * 1000),
                rj::updated.eq(now),
            ))
            .execute(c)?;
            if n == 1 {
                return Ok::<Option<String>, StoreError>(Some(j.job_id));
            }
        }
        Ok(None)
    })?;
    match claimed {
        Some(id) => job(pool, &id),
        None => Ok(None),
    }
}

/// The next batch of current versions of a job, after its position.
pub fn next_batch(
    pool: &DbPool,
    ring: &Keyring,
    job: &ReindexJob,
    size: usize,
) -> Result<Vec<query::Hit>, StoreError> {
    let q = query::Query {
        types: (job.resource_type != "*").then(|| vec![job.resource_type.clone()]),
        limit: size,
        after: Some(query::Position {
            keys: Vec::new(),
            rid: job.after_rid,
        }),
        ..query::Query::default()
    };
    let mut conn = pool.get()?;
    with_conn!(conn, |c| query::run_page(c, ring, &q))
}

/// Rewrites the index rows of a batch and advances the job, in one transaction;
/// false when the lease was lost (another node took the job over).
pub fn commit_batch(
    pool: &DbPool,
    ring: &Keyring,
    job: &ReindexJob,
    owner: &str,
    lease_ms: i64,
    rows: &[(i64, IndexRows)],
    last_rid: i64,
) -> Result<bool, StoreError> {
    let mut conn = pool.get()?;
    let now = now_micros();
    write_txn!(conn, |c| {
        let n = diesel::update(
            rj::table
                .filter(rj::job_id.eq(&job.job_id))
                .filter(rj::lease_owner.eq(owner)),
        )
        .set((
            rj::after_rid.eq(last_rid),
            rj::processed.eq(rj::processed + rows.len() as i64),
            rj::lease_until.eq(now + lease_ms * 1000),
            rj::updated.eq(now),
        ))
        .execute(c)?;
        if n != 1 {
            return Ok(false);
        }
        for (rid, r) in rows {
            delete_index_rows!(c, *rid);
            if !r.is_empty() {
                insert_index_rows!(c, ring, *rid, r);
            }
        }
        Ok::<bool, StoreError>(true)
    })
}

pub fn finish(pool: &DbPool, job: &ReindexJob, error: Option<&str>) -> Result<(), StoreError> {
    let mut conn = pool.get()?;
    let now = now_micros();
    with_conn!(conn, |c| diesel::update(
        rj::table.filter(rj::job_id.eq(&job.job_id))
    )
    .set((
        rj::status.eq(if error.is_some() { "failed" } else { "done" }),
        rj::error.eq(error),
        rj::lease_owner.eq(None::<String>),
        rj::updated.eq(now),
    ))
    .execute(c))?;
    Ok(())
}

/// Finished jobs (their type and creation time), newest first.
pub fn done_jobs(pool: &DbPool) -> Result<Vec<(String, i64)>, StoreError> {
    let mut conn = pool.get()?;
    Ok(with_conn!(conn, |c| rj::table
        .filter(rj::status.eq("done"))
        .select((rj::resource_type, rj::created))
        .order(rj::created.desc())
        .load::<(String, i64)>(c))?)
}

pub fn registry_generation(pool: &DbPool) -> Result<i64, StoreError> {
    let mut conn = pool.get()?;
    let g: Vec<i64> = with_conn!(conn, |c| search_registry::table
        .select(search_registry::generation)
        .load::<i64>(c))?;
    Ok(g.into_iter().next().unwrap_or(0))
}

/// The SearchParameters of the database with their status and current version.
pub fn custom_params(
    pool: &DbPool,
    ring: &Keyring,
) -> Result<Vec<(CustomParamRow, StoredVersion)>, StoreError> {
    let mut conn = pool.get()?;
    let rows: Vec<(String, bool, i64)> = with_conn!(conn, |c| sps::table
        .select((sps::resource_id, sps::active, sps::updated))
        .order(sps::resource_id.asc())
        .load::<(String, bool, i64)>(c))?;
    drop(conn);
    let mut out = Vec::new();
    for (resource_id, active, updated) in rows {
        let ctx = crate::access::AccessContext::system();
        if let Some(v) = super::repo::read(pool, ring, &ctx, "SearchParameter", &resource_id, None)?
        {
            if !v.deleted {
                out.push((
                    CustomParamRow {
                        resource_id,
                        active,
                        updated,
                    },
                    v,
                ));
            }
        }
    }
    Ok(out)
}

/// Marks SearchParameters searchable and tells every node to reload.
pub fn activate(pool: &DbPool, resource_ids: &[String]) -> Result<(), StoreError> {
    if resource_ids.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get()?;
    let now = now_micros();
    write_txn!(conn, |c| {
        diesel::update(sps::table.filter(sps::resource_id.eq_any(resource_ids)))
            .set((sps::active.eq(true), sps::updated.eq(now)))
            .execute(c)?;
        diesel::update(search_registry::table)
            .set(search_registry::generation.eq(search_registry::generation + 1))
            .execute(c)?;
        Ok::<(), StoreError>(())
    })
}

/// In a write of a SearchParameter: it is (again) pending until reindexed, and
/// every node reloads the registry.
macro_rules! register_search_param {
    ($c:ident, $id:expr, $version:expr, $deleted:expr) => {{
        use $crate::store::schema::{search_param_status as sps, search_registry};
        let now = $crate::fhir::now_micros();
        diesel::delete(sps::table.filter(sps::resource_id.eq($id))).execute($c)?;
        if !$deleted {
            diesel::insert_into(sps::table)
                .values((
                    sps::resource_id.eq($id),
                    sps::version_id.eq($version),
                    sps::active.eq(false),
                    sps::updated.eq(now),
                ))
                .execute($c)?;
        }
        diesel::update(search_registry::table)
            .set(search_registry::generation.eq(search_registry::generation + 1))
            .execute($c)?;
    }};
}
pub(crate) use register_search_param;
