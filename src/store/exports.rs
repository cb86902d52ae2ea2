//! Bulk Data `$export` jobs and their files (DESIGN section 14), kept in the
//! database so that any node can run or continue a job: a job is leased like a
//! reindex job, and its position (the type it is on and the last resource
//! written) advances in the same transaction as the row of the file that holds
//! what was written up to there. A node that dies mid-file leaves the position of
//! the last committed file; the node that takes the job over writes the rest, so
//! the result is complete with nothing twice.
//!
//! What a job is (who asked, the kick-off URL, types, `_typeFilter` searches) and
//! the patients a file holds are sealed like resource bodies: a database dump
//! shows neither query values nor patient ids.

use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::QueryableByName;

use super::conn::{AnyConn, Count};
use super::{Store, StoreError};
use crate::crypto::Keyring;
use crate::fhir::now_micros;

/// A job as stored, its spec opened.
#[derive(Debug, Clone)]
pub struct ExportJob {
    pub job_id: String,
    /// The OAuth client that started it (None without authorization).
    pub client: Option<String>,
    /// The job's spec as the bulk module wrote it (JSON).
    pub spec: Vec<u8>,
    pub transaction_time: i64,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    /// The position after the last committed file: the type being exported (an
    /// index into the spec's types) and the last resource written of it.
    pub type_index: i64,
    pub after_rid: Option<i64>,
    pub files: i64,
    pub exported: i64,
    pub created: i64,
    pub finished: Option<i64>,
    pub error: Option<String>,
}

/// One file of a job.
#[derive(Debug, Clone)]
pub struct ExportFile {
    pub seq: i64,
    pub resource_type: String,
    /// The encrypted file's name in `bulk.dir`.
    pub name: String,
    pub resources: i64,
    pub bytes: i64,
}

/// A file to record with the position it reaches.
#[derive(Debug, Clone)]
pub struct NewExportFile {
    pub resource_type: String,
    pub name: String,
    pub resources: i64,
    pub bytes: i64,
    /// `Patient/<id>` of the patients whose data the file holds.
    pub patients: Vec<String>,
}

#[derive(QueryableByName)]
struct JobLine {
    #[diesel(sql_type = Text)]
    job_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    client: Option<String>,
    #[diesel(sql_type = BigInt)]
    key_id: i64,
    #[diesel(sql_type = Binary)]
    spec: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    transaction_time: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    type_index: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    after_rid: Option<i64>,
    #[diesel(sql_type = BigInt)]
    files: i64,
    #[diesel(sql_type = BigInt)]
    exported: i64,
    #[diesel(sql_type = BigInt)]
    created: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    finished: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

const JOB_COLUMNS: &str = "job_id, client, key_id, spec, transaction_time, status, type_index, \
     after_rid, files, exported, created, finished, error";

#[derive(QueryableByName)]
struct FileLine {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    resource_type: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    resources: i64,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

#[derive(QueryableByName)]
struct PatientsLine {
    #[diesel(sql_type = BigInt)]
    key_id: i64,
    #[diesel(sql_type = Binary)]
    patients: Vec<u8>,
}

#[derive(QueryableByName)]
struct JobId {
    #[diesel(sql_type = Text)]
    job_id: String,
}

fn spec_aad(job_id: &str) -> Vec<u8> {
    format!("export/{job_id}/spec").into_bytes()
}

fn patients_aad(job_id: &str, seq: i64) -> Vec<u8> {
    format!("export/{job_id}/{seq}/patients").into_bytes()
}

fn open_job(ring: &Keyring, line: JobLine) -> Result<ExportJob, StoreError> {
    let spec = ring.open_box(line.key_id, &line.spec, &spec_aad(&line.job_id))?;
    Ok(ExportJob {
        job_id: line.job_id,
        client: line.client,
        spec,
        transaction_time: line.transaction_time,
        status: line.status,
        type_index: line.type_index,
        after_rid: line.after_rid,
        files: line.files,
        exported: line.exported,
        created: line.created,
        finished: line.finished,
        error: line.error,
    })
}

fn load_job(
    c: &mut AnyConn,
    ring: &Keyring,
    job_id: &str,
) -> Result<Option<ExportJob>, StoreError> {
    let mut sql = c.sql();
    sql.push(&format!(
        "SELECT {JOB_COLUMNS} FROM export_jobs WHERE job_id = "
    ))
    .text(job_id);
    c.load::<JobLine>(sql)?
        .into_iter()
        .next()
        .map(|l| open_job(ring, l))
        .transpose()
}

/// `AND lease_owner = <node>`: only the node holding the job's lease moves it.
fn held_by(sql: &mut super::sql::Sql, node: &str) {
    sql.push(" AND status = 'running' AND lease_owner = ")
        .text(node);
}

impl Store {
    /// Waits until every write transaction that may have stamped a version at or
    /// before `at` (microseconds) has ended, at most `patience`: an export of
    /// what was last updated up to `at` then misses none of them. SQLite: the
    /// writer's turn, taken once (the one writer stamps inside its turn).
    /// PostgreSQL: no transaction of another session began before `at` (its
    /// `xact_start` precedes any stamp it made). False when patience ran out.
    pub fn wait_for_writes_before(
        &self,
        at: i64,
        patience: std::time::Duration,
    ) -> Result<bool, StoreError> {
        if self.backend == super::Backend::Sqlite {
            self.pool.write(|_| Ok::<(), StoreError>(()))?;
            return Ok(true);
        }
        let until = std::time::Instant::now() + patience;
        loop {
            let open = self.pool.read(|c| {
                let mut sql = c.sql();
                sql.push(
                    "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                     AND xact_start IS NOT NULL AND xact_start <= to_timestamp(",
                )
                .i64(at)
                .push("::float8 / 1000000)");
                Ok(c.load::<Count>(sql)?.first().map_or(0, |r| r.n))
            })?;
            if open == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Seals a piece of an export file under the active data key (the files are
    /// encrypted at rest like resource bodies); `aad` binds it to its place.
    pub fn export_seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<(i64, Vec<u8>), StoreError> {
        Ok(self.keyring()?.seal(plaintext, aad)?)
    }

    /// Opens what [`Store::export_seal`] sealed.
    pub fn export_open(
        &self,
        key_id: i64,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self.keyring()?.open_box(key_id, sealed, aad)?)
    }

    /// Stores a new job (`queued`), its spec sealed.
    pub fn export_create(
        &self,
        job_id: &str,
        client: Option<&str>,
        spec: &[u8],
        transaction_time: i64,
    ) -> Result<(), StoreError> {
        let ring = self.keyring()?;
        let (key_id, sealed) = ring.seal(spec, &spec_aad(job_id))?;
        let now = now_micros();
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push(
                "INSERT INTO export_jobs (job_id, client, key_id, spec, transaction_time, status, \
                 type_index, after_rid, files, exported, lease_owner, lease_until, created, updated, \
                 finished, error) VALUES (",
            )
            .text(job_id)
            .push(", ");
            match client {
                Some(cl) => sql.text(cl),
                None => sql.push("NULL"),
            };
            sql.push(", ")
                .i64(key_id)
                .push(", ")
                .bind(super::sql::Bind::Bytes(sealed))
                .push(", ")
                .i64(transaction_time)
                .push(", 'queued', 0, NULL, 0, 0, NULL, 0, ")
                .i64(now)
                .push(", ")
                .i64(now)
                .push(", NULL, NULL)");
            c.execute(sql)?;
            Ok(())
        })
    }

    /// A job by id, its spec opened.
    pub fn export_job(&self, job_id: &str) -> Result<Option<ExportJob>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| load_job(c, &ring, job_id))
    }

    /// Jobs of `client` that are not finished (a client's share of the exporter).
    pub fn export_unfinished(&self, client: Option<&str>) -> Result<i64, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(
                "SELECT COUNT(*) AS n FROM export_jobs WHERE status IN ('queued', 'running') AND ",
            );
            match client {
                Some(cl) => sql.push("client = ").text(cl),
                None => sql.push("client IS NULL"),
            };
            Ok(c.load::<Count>(sql)?.first().map_or(0, |r| r.n))
        })
    }

    /// Takes the oldest unfinished job whose lease has run out (a node that died,
    /// or a job never started) for `node` until `until`.
    pub fn export_claim(&self, node: &str, until: i64) -> Result<Option<ExportJob>, StoreError> {
        let now = now_micros();
        let unfinished = "status IN ('queued', 'running') AND lease_until < ";
        // Idle nodes poll: look first, take the writer's turn only for work.
        let open = self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT COUNT(*) AS n FROM export_jobs WHERE {unfinished}"
            ))
            .i64(now);
            Ok(c.load::<Count>(sql)?.first().map_or(0, |r| r.n))
        })?;
        if open == 0 {
            return Ok(None);
        }
        let ring = self.keyring()?;
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT job_id FROM export_jobs WHERE {unfinished}"
            ))
            .i64(now)
            .push(" ORDER BY created LIMIT 1");
            let Some(id) = c.load::<JobId>(sql)?.into_iter().next() else {
                return Ok(None);
            };
            // Conditional on the lease having run out: two nodes cannot both take it.
            let mut sql = c.sql();
            sql.push("UPDATE export_jobs SET status = 'running', lease_owner = ")
                .text(node)
                .push(", lease_until = ")
                .i64(until)
                .push(", updated = ")
                .i64(now)
                .push(" WHERE job_id = ")
                .text(&id.job_id)
                .push(" AND status IN ('queued', 'running') AND lease_until < ")
                .i64(now);
            if c.execute(sql)? != 1 {
                return Ok(None);
            }
            load_job(c, &ring, &id.job_id)
        })
    }

    /// Records a written file (if any) and the position it reaches, and extends
    /// the lease; false when `node` no longer holds the job (it was cancelled or
    /// another node took it over): then nothing is recorded.
    pub fn export_advance(
        &self,
        node: &str,
        job_id: &str,
        type_index: i64,
        after_rid: Option<i64>,
        file: Option<NewExportFile>,
        until: i64,
    ) -> Result<bool, StoreError> {
        let ring = self.keyring()?;
        let now = now_micros();
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE export_jobs SET type_index = ")
                .i64(type_index)
                .push(", after_rid = ");
            match after_rid {
                Some(r) => sql.i64(r),
                None => sql.push("NULL"),
            };
            sql.push(", lease_until = ")
                .i64(until)
                .push(", updated = ")
                .i64(now);
            if let Some(f) = &file {
                sql.push(", files = files + 1, exported = exported + ")
                    .i64(f.resources);
            }
            sql.push(" WHERE job_id = ").text(job_id);
            held_by(&mut sql, node);
            if c.execute(sql)? != 1 {
                return Ok(false);
            }
            let Some(f) = file else {
                return Ok(true);
            };
            // The file's number is the count of files before it: the row above is
            // locked by this transaction, so no other node numbers one meanwhile.
            let mut sql = c.sql();
            sql.push("SELECT files - 1 AS n FROM export_jobs WHERE job_id = ")
                .text(job_id);
            let seq = c.load::<Count>(sql)?.first().map_or(0, |r| r.n);
            let patients = serde_json::to_vec(&f.patients)
                .map_err(|_| StoreError::Internal("patients of an export file"))?;
            let (key_id, sealed) = ring.seal(&patients, &patients_aad(job_id, seq))?;
            let mut sql = c.sql();
            sql.push(
                "INSERT INTO export_files (job_id, seq, resource_type, name, resources, bytes, \
                 key_id, patients, created) VALUES (",
            )
            .text(job_id)
            .push(", ")
            .i64(seq)
            .push(", ")
            .text(&f.resource_type)
            .push(", ")
            .text(&f.name)
            .push(", ")
            .i64(f.resources)
            .push(", ")
            .i64(f.bytes)
            .push(", ")
            .i64(key_id)
            .push(", ")
            .bind(super::sql::Bind::Bytes(sealed))
            .push(", ")
            .i64(now)
            .push(")");
            c.execute(sql)?;
            Ok(true)
        })
    }

    /// Extends the lease of a job `node` holds; false when it no longer does.
    pub fn export_renew(&self, node: &str, job_id: &str, until: i64) -> Result<bool, StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE export_jobs SET lease_until = ")
                .i64(until)
                .push(" WHERE job_id = ")
                .text(job_id);
            held_by(&mut sql, node);
            Ok(c.execute(sql)? == 1)
        })
    }

    /// Ends a job held by `node`: `done`, or `failed` with the reason.
    pub fn export_finish(
        &self,
        node: &str,
        job_id: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = now_micros();
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE export_jobs SET status = ")
                .text(if error.is_some() { "failed" } else { "done" })
                .push(", error = ");
            match error {
                Some(e) => sql.text(e),
                None => sql.push("NULL"),
            };
            sql.push(", lease_owner = NULL, lease_until = 0, finished = ")
                .i64(now)
                .push(", updated = ")
                .i64(now)
                .push(" WHERE job_id = ")
                .text(job_id);
            held_by(&mut sql, node);
            Ok(c.execute(sql)? == 1)
        })
    }

    /// The files of a job, in order.
    pub fn export_files(&self, job_id: &str) -> Result<Vec<ExportFile>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(
                "SELECT seq, resource_type, name, resources, bytes FROM export_files \
                 WHERE job_id = ",
            )
            .text(job_id)
            .push(" ORDER BY seq");
            Ok(c.load::<FileLine>(sql)?
                .into_iter()
                .map(|l| ExportFile {
                    seq: l.seq,
                    resource_type: l.resource_type,
                    name: l.name,
                    resources: l.resources,
                    bytes: l.bytes,
                })
                .collect())
        })
    }

    /// The patients whose data file `seq` of a job holds.
    pub fn export_file_patients(&self, job_id: &str, seq: i64) -> Result<Vec<String>, StoreError> {
        let ring = self.keyring()?;
        let line = self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT key_id, patients FROM export_files WHERE job_id = ")
                .text(job_id)
                .push(" AND seq = ")
                .i64(seq);
            Ok(c.load::<PatientsLine>(sql)?.into_iter().next())
        })?;
        let Some(line) = line else {
            return Ok(Vec::new());
        };
        let json = ring.open_box(line.key_id, &line.patients, &patients_aad(job_id, seq))?;
        serde_json::from_slice(&json)
            .map_err(|_| StoreError::Internal("patients of an export file"))
    }

    /// Removes a job and its file rows (a cancel, or the end of its retention);
    /// false when there was no such job.
    pub fn export_delete(&self, job_id: &str) -> Result<bool, StoreError> {
        self.pool.write(|c| {
            // The job first: its row lock waits for a node recording a file
            // (export_advance holds it), whose file row is then removed too.
            let mut sql = c.sql();
            sql.push("DELETE FROM export_jobs WHERE job_id = ")
                .text(job_id);
            let removed = c.execute(sql)? == 1;
            let mut sql = c.sql();
            sql.push("DELETE FROM export_files WHERE job_id = ")
                .text(job_id);
            c.execute(sql)?;
            Ok(removed)
        })
    }

    /// Jobs that finished (done or failed) before `before`, oldest first.
    pub fn export_expired(&self, before: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(
                "SELECT job_id FROM export_jobs WHERE status IN ('done', 'failed') AND finished < ",
            )
            .i64(before)
            .push(" ORDER BY finished LIMIT ")
            .i64(limit);
            Ok(c.load::<JobId>(sql)?
                .into_iter()
                .map(|j| j.job_id)
                .collect())
        })
    }

    /// Every job id (the file sweeper tells a job's folder from an orphan's).
    pub fn export_job_ids(&self) -> Result<Vec<String>, StoreError> {
        self.pool.read(|c| {
            let sql = {
                let mut s = c.sql();
                s.push("SELECT job_id FROM export_jobs");
                s
            };
            Ok(c.load::<JobId>(sql)?
                .into_iter()
                .map(|j| j.job_id)
                .collect())
        })
    }
}
