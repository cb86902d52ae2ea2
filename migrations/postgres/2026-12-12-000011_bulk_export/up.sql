-- Bulk Data $export jobs (DESIGN section 14). A job lives here so that any node
-- can run or continue it: `type_index`/`after_rid` are the position after the
-- last committed file, advanced in the same transaction as that file's row, so a
-- node that dies mid-file leaves a job another node resumes with nothing twice.
-- `spec` (who asked, what, the kick-off URL, the _typeFilter searches) is sealed
-- like a resource body under data key `key_id`: a dump shows no query values.
CREATE TABLE export_jobs (
    job_id TEXT PRIMARY KEY NOT NULL,
    client TEXT,
    key_id BIGINT NOT NULL,
    spec BYTEA NOT NULL,
    transaction_time BIGINT NOT NULL,
    status TEXT NOT NULL,
    type_index BIGINT NOT NULL,
    after_rid BIGINT,
    files BIGINT NOT NULL,
    exported BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    finished BIGINT,
    error TEXT
);
CREATE INDEX ix_export_jobs_status ON export_jobs (status, created);

-- The files of a job, in order; `name` is the encrypted file in bulk.dir, and
-- `patients` (sealed) the patients whose data it holds: a download is audited
-- once per patient.
CREATE TABLE export_files (
    job_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    resource_type TEXT NOT NULL,
    name TEXT NOT NULL,
    resources BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    patients BYTEA NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
