//! Reindex jobs and the registry of SearchParameters created through the API,
//! both kept in the database so that every node sees them and a job survives a
//! restart: a job advances `after_rid` batch by batch, each batch in one
//! transaction with the index rows it rewrote, under a lease that another node
//! takes over when it expires.
//!
//! A batch is read outside its write transaction (the CPU work of extracting
//! index rows must not hold the writer), so when it commits, each resource's
//! index rows are written only if its current version is still the one that was
//! read: a resource updated or deleted in between keeps the rows its own write
//! gave it (or none).

use diesel::QueryableByName;

use super::conn::{AnyConn, Count};
use super::index::{self, IndexRows};
use super::pool::DbPool;
use super::query;
use super::{StoreError, StoredVersion};
use crate::access::AccessContext;
use crate::crypto::Keyring;
use crate::fhir::now_micros;

/// A reindex job as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct ReindexJob {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub job_id: String,
    /// A resource type, or `*` for every type.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub resource_type: String,
    /// `queued`, `running`, `done` or `failed`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub after_rid: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub processed: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub created: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub updated: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub lease_owner: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub lease_until: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub error: Option<String>,
}

const JOB_COLUMNS: &str = "job_id, resource_type, status, after_rid, processed, total, created, updated, lease_owner, lease_until, error";

/// A SearchParameter of the database and whether searches may use it.
#[derive(Debug, Clone)]
pub struct CustomParamRow {
    pub resource_id: String,
    pub active: bool,
    pub updated: i64,
}

/// One resource of a reindex batch: its key, the version read, its new rows.
#[derive(Debug, Clone)]
pub struct Reindexed {
    pub rid: i64,
    pub version: i64,
    pub rows: IndexRows,
}

fn types_of(job_type: &str) -> Option<Vec<String>> {
    (job_type != "*").then(|| vec![job_type.to_string()])
}

pub fn enqueue(
    pool: &DbPool,
    ring: &Keyring,
    resource_type: &str,
) -> Result<ReindexJob, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_micros();
    let system = AccessContext::system();
    pool.write(|c| {
        let q = query::Query {
            types: types_of(resource_type),
            ..query::Query::default()
        };
        let total = query::run_count(c, ring, &system, &q)?;
        let mut sql = c.sql();
        sql.push(&format!(
            "INSERT INTO reindex_jobs ({JOB_COLUMNS}) VALUES ("
        ))
        .text(&id)
        .push(", ")
        .text(resource_type)
        .push(", 'queued', 0, 0, ")
        .i64(total)
        .push(", ")
        .i64(now)
        .push(", ")
        .i64(now)
        .push(", NULL, 0, NULL)");
        c.execute(sql)?;
        Ok::<(), StoreError>(())
    })?;
    job(pool, &id)?.ok_or(StoreError::NotFound)
}

pub fn job(pool: &DbPool, id: &str) -> Result<Option<ReindexJob>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "SELECT {JOB_COLUMNS} FROM reindex_jobs WHERE job_id = "
        ))
        .text(id);
        Ok(c.load::<ReindexJob>(sql)?.into_iter().next())
    })
}

/// Takes the oldest unfinished job whose lease has expired (or is ours).
pub fn claim(pool: &DbPool, owner: &str, lease_ms: i64) -> Result<Option<ReindexJob>, StoreError> {
    let now = now_micros();
    let unfinished = "status IN ('queued', 'running')";
    // Idle nodes poll: look first, take the write lock only when there is work.
    let open = pool.read(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "SELECT COUNT(*) AS n FROM reindex_jobs WHERE {unfinished}"
        ));
        Ok(c.load::<Count>(sql)?.first().map_or(0, |r| r.n))
    })?;
    if open == 0 {
        return Ok(None);
    }
    let claimed: Option<String> = pool.write(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "SELECT {JOB_COLUMNS} FROM reindex_jobs WHERE {unfinished} ORDER BY created"
        ));
        for j in c.load::<ReindexJob>(sql)? {
            if j.lease_until > now && j.lease_owner.as_deref() != Some(owner) {
                continue;
            }
            // Conditional on the lease we saw: two nodes cannot both take it.
            let mut sql = c.sql();
            sql.push("UPDATE reindex_jobs SET status = 'running', lease_owner = ")
                .text(owner)
                .push(", lease_until = ")
                .i64(now + lease_ms * 1000)
                .push(", updated = ")
                .i64(now)
                .push(" WHERE job_id = ")
                .text(&j.job_id)
                .push(" AND lease_until = ")
                .i64(j.lease_until);
            if c.execute(sql)? == 1 {
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
        types: types_of(&job.resource_type),
        limit: size,
        after: Some(query::Position {
            keys: Vec::new(),
            rid: job.after_rid,
        }),
        ..query::Query::default()
    };
    let system = AccessContext::system();
    pool.read(|c| query::run_page(c, ring, &system, &q))
}

#[derive(QueryableByName)]
struct LiveVersion {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rid: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version_id: i64,
}

/// Rewrites the index rows of a batch and advances the job, in one transaction;
/// false when the lease was lost (another node took the job over). A resource
/// whose current version is no longer the one the batch read (updated or deleted
/// since) is left as its own write left it.
pub fn commit_batch(
    pool: &DbPool,
    ring: &Keyring,
    job: &ReindexJob,
    owner: &str,
    lease_ms: i64,
    batch: &[Reindexed],
    last_rid: i64,
) -> Result<bool, StoreError> {
    let now = now_micros();
    let blinded = batch
        .iter()
        .map(|r| Ok((r.rid, r.version, index::blind(ring, &r.rows)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push("UPDATE reindex_jobs SET after_rid = ")
            .i64(last_rid)
            .push(", processed = processed + ")
            .i64(batch.len() as i64)
            .push(", lease_until = ")
            .i64(now + lease_ms * 1000)
            .push(", updated = ")
            .i64(now)
            .push(" WHERE job_id = ")
            .text(&job.job_id)
            .push(" AND lease_owner = ")
            .text(owner);
        if c.execute(sql)? != 1 {
            return Ok(false);
        }
        let rids: Vec<i64> = batch.iter().map(|r| r.rid).collect();
        let f = c.sql().false_literal();
        let mut sql = c.sql();
        sql.push("SELECT rid, version_id FROM resources_current WHERE ");
        sql.in_i64s("rid", &rids);
        sql.push(&format!(" AND deleted = {f}"));
        let live: std::collections::HashMap<i64, i64> = c
            .load::<LiveVersion>(sql)?
            .into_iter()
            .map(|l| (l.rid, l.version_id))
            .collect();
        let still: Vec<(i64, &index::Blinded)> = blinded
            .iter()
            .filter(|(rid, version, _)| live.get(rid) == Some(version))
            .map(|(rid, _, b)| (*rid, b))
            .collect();
        for (rid, _) in &still {
            index::delete(c, *rid)?;
        }
        index::insert(c, &still)?;
        Ok::<bool, StoreError>(true)
    })
}

pub fn finish(pool: &DbPool, job: &ReindexJob, error: Option<&str>) -> Result<(), StoreError> {
    let now = now_micros();
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push("UPDATE reindex_jobs SET status = ")
            .text(if error.is_some() { "failed" } else { "done" })
            .push(", error = ");
        match error {
            Some(e) => sql.text(e),
            None => sql.push("NULL"),
        };
        sql.push(", lease_owner = NULL, updated = ")
            .i64(now)
            .push(" WHERE job_id = ")
            .text(&job.job_id);
        c.execute(sql)?;
        Ok(())
    })
}

#[derive(QueryableByName)]
struct DoneJob {
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_type: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    created: i64,
}

/// Finished jobs (their type and creation time), newest first.
pub fn done_jobs(pool: &DbPool) -> Result<Vec<(String, i64)>, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT resource_type, created FROM reindex_jobs WHERE status = 'done' ORDER BY created DESC",
        );
        Ok(c.load::<DoneJob>(sql)?
            .into_iter()
            .map(|j| (j.resource_type, j.created))
            .collect())
    })
}

pub fn registry_generation(pool: &DbPool) -> Result<i64, StoreError> {
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push("SELECT generation AS n FROM search_registry");
        Ok(c.load::<Count>(sql)?.first().map_or(0, |r| r.n))
    })
}

#[derive(QueryableByName)]
struct ParamStatus {
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_id: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    active: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    updated: i64,
}

/// The resources registered by writes that declared `registers_search_param`
/// (the search module's SearchParameters, of type `resource_type`), with their
/// status and current version.
pub fn custom_params(
    pool: &DbPool,
    ring: &Keyring,
    resource_type: &str,
) -> Result<Vec<(CustomParamRow, StoredVersion)>, StoreError> {
    let system = AccessContext::system();
    pool.read(|c| {
        let mut sql = c.sql();
        sql.push(
            "SELECT resource_id, active, updated FROM search_param_status ORDER BY resource_id",
        );
        let rows = c.load::<ParamStatus>(sql)?;
        let mut out = Vec::new();
        for p in rows {
            let read = super::read::version(
                c,
                ring,
                &system,
                crate::access::Action::Read,
                resource_type,
                &p.resource_id,
                None,
            )?;
            if let Some(v) = read.filter(|v| !v.deleted) {
                out.push((
                    CustomParamRow {
                        resource_id: p.resource_id,
                        active: p.active,
                        updated: p.updated,
                    },
                    v,
                ));
            }
        }
        Ok(out)
    })
}

/// Marks SearchParameters searchable and tells every node to reload.
pub fn activate(pool: &DbPool, resource_ids: &[String]) -> Result<(), StoreError> {
    if resource_ids.is_empty() {
        return Ok(());
    }
    let now = now_micros();
    let t = match pool.backend() {
        super::Backend::Sqlite => "1",
        super::Backend::Postgres => "true",
    };
    pool.write(|c| {
        let mut sql = c.sql();
        sql.push(&format!(
            "UPDATE search_param_status SET active = {t}, updated = "
        ))
        .i64(now)
        .push(" WHERE ");
        sql.in_texts("resource_id", resource_ids);
        c.execute(sql)?;
        bump_generation(c)?;
        Ok::<(), StoreError>(())
    })
}

fn bump_generation(c: &mut AnyConn) -> Result<(), StoreError> {
    let mut sql = c.sql();
    sql.push("UPDATE search_registry SET generation = generation + 1");
    c.execute(sql)?;
    Ok(())
}

/// In a write of a SearchParameter: it is (again) pending until reindexed, and
/// every node reloads the registry.
pub(crate) fn register_search_param(
    c: &mut AnyConn,
    id: &str,
    version: i64,
    deleted: bool,
) -> Result<(), StoreError> {
    let mut sql = c.sql();
    sql.push("DELETE FROM search_param_status WHERE resource_id = ")
        .text(id);
    c.execute(sql)?;
    if !deleted {
        let f = c.sql().false_literal();
        let mut sql = c.sql();
        sql.push(
            "INSERT INTO search_param_status (resource_id, version_id, active, updated) VALUES (",
        )
        .text(id)
        .push(", ")
        .i64(version)
        .push(&format!(", {f}, "))
        .i64(now_micros())
        .push(")");
        c.execute(sql)?;
    }
    bump_generation(c)
}
