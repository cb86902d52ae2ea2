-- The full search index (issue 5) replaces the token-only index of the foundation.
--
-- Every current resource gets a surrogate key `rid`: index rows refer to it (8 bytes
-- instead of type + id text), and it orders search results and pages them stably
-- (a resource keeps its rid across versions; new resources get higher ones).
CREATE TABLE resources_current_new (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL
);
INSERT INTO resources_current_new (resource_type, resource_id, version_id, last_updated, deleted)
    SELECT resource_type, resource_id, version_id, last_updated, deleted
    FROM resources_current ORDER BY last_updated, resource_type, resource_id;
DROP TABLE resources_current;
ALTER TABLE resources_current_new RENAME TO resources_current;
CREATE UNIQUE INDEX ux_current_identity ON resources_current (resource_type, resource_id);
CREATE INDEX ix_current_type ON resources_current (resource_type, deleted, rid);
CREATE INDEX ix_current_updated ON resources_current (resource_type, last_updated);

DROP TABLE search_token;

-- Strings and tokens, blind: `h` is HMAC-SHA-256 (index key) of a tagged, normalised
-- value, truncated to 64 bits; never clear text. `pid` names (resource type, parameter).
CREATE TABLE search_blind (
    rid BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    h BIGINT NOT NULL,
    PRIMARY KEY (pid, h, rid)
) WITHOUT ROWID;
CREATE INDEX ix_blind_rid ON search_blind (rid);

-- Dates as ranges in microseconds since the epoch (UTC): `2013` is the whole year.
CREATE TABLE search_date (
    rid BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    lo BIGINT NOT NULL,
    hi BIGINT NOT NULL
);
CREATE INDEX ix_date_lo ON search_date (pid, lo);
CREATE INDEX ix_date_hi ON search_date (pid, hi);
CREATE INDEX ix_date_rid ON search_date (rid, pid);

-- Numbers, quantities and composite values in clear (ranges must be comparable);
-- `k` is the blind key of what qualifies the number (unit form, composite code),
-- 0 for plain numbers.
CREATE TABLE search_number (
    rid BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    k BIGINT NOT NULL,
    lo DOUBLE PRECISION NOT NULL,
    hi DOUBLE PRECISION NOT NULL
);
CREATE INDEX ix_number_key ON search_number (pid, k, lo);
CREATE INDEX ix_number_rid ON search_number (rid, pid);

-- References: local targets by type and id, others by URL (absolute or canonical).
CREATE TABLE search_reference (
    rid BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    url TEXT NOT NULL
);
CREATE INDEX ix_reference_target ON search_reference (pid, target_id, target_type);
CREATE INDEX ix_reference_url ON search_reference (pid, url);
CREATE INDEX ix_reference_rid ON search_reference (rid, pid);

-- URIs (canonical URLs of conformance resources, system URIs): clear, for :above/:below.
CREATE TABLE search_uri (
    rid BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    uri TEXT NOT NULL
);
CREATE INDEX ix_uri ON search_uri (pid, uri);
CREATE INDEX ix_uri_rid ON search_uri (rid, pid);

-- Reindex jobs ($reindex and upgrades): progress survives restarts (`after_rid`), and
-- a lease lets one node of many work on a job at a time.
CREATE TABLE reindex_jobs (
    job_id TEXT PRIMARY KEY NOT NULL,
    resource_type TEXT NOT NULL,
    status TEXT NOT NULL,
    after_rid BIGINT NOT NULL,
    processed BIGINT NOT NULL,
    total BIGINT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL,
    error TEXT
);

-- SearchParameters created through the API: usable in searches once a reindex of
-- their base types has finished (`active`). `generation` tells every node to reload.
CREATE TABLE search_param_status (
    resource_id TEXT PRIMARY KEY NOT NULL,
    version_id BIGINT NOT NULL,
    active BOOLEAN NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE search_registry (
    id INTEGER PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL
);
INSERT INTO search_registry (id, generation) VALUES (1, 1);

-- Resources stored before this migration are indexed by a job the server runs at start.
INSERT INTO reindex_jobs (job_id, resource_type, status, after_rid, processed, total, created, updated, lease_owner, lease_until, error)
    SELECT 'upgrade-search-index', '*', 'queued', 0, 0,
           (SELECT COUNT(*) FROM resources_current WHERE deleted = 0), 0, 0, NULL, 0, NULL
    WHERE EXISTS (SELECT 1 FROM resources_current WHERE deleted = 0);
