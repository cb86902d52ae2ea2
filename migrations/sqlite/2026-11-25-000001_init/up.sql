-- Every version of every resource. `seq` orders history and pages it stably;
-- (resource_type, resource_id, version_id) is the identity of a version.
-- `body` is AES-256-GCM sealed (nonce || ciphertext || tag) under data key `key_id`.
CREATE TABLE resource_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    method TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX ux_versions_identity ON resource_versions (resource_type, resource_id, version_id);
CREATE INDEX ix_versions_type_seq ON resource_versions (resource_type, seq);

-- The current version of each resource: found by primary key, never by scanning.
CREATE TABLE resources_current (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    PRIMARY KEY (resource_type, resource_id)
);

-- Data keys wrapped by the master key (envelope encryption).
CREATE TABLE data_keys (
    key_id BIGINT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created BIGINT NOT NULL
);

-- One row: a constant sealed with the master key, to refuse a wrong key at start.
CREATE TABLE key_check (
    id INTEGER PRIMARY KEY NOT NULL,
    sealed BLOB NOT NULL,
    created BIGINT NOT NULL
);

-- AuditEvents: append-only, one row each, in commit order (`seq`). They are FHIR
-- resources (read through the API like any other) but have no versions, so they
-- live here rather than in resource_versions: one row and two index entries per
-- event instead of seven. `body` is sealed like every resource body (AAD
-- AuditEvent/<id>/1); `prev_hash`/`hash` hold the tamper-evident chain.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    body BLOB NOT NULL,
    prev_hash BLOB,
    hash BLOB
);
CREATE INDEX ix_audit_id ON audit_log (audit_id);
