DROP TABLE search_registry;
DROP TABLE search_param_status;
DROP TABLE reindex_jobs;
DROP TABLE search_uri;
DROP TABLE search_reference;
DROP TABLE search_number;
DROP TABLE search_date;
DROP TABLE search_blind;
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    param TEXT NOT NULL,
    code_hash BLOB NOT NULL,
    system_code_hash BLOB
);
CREATE INDEX ix_token_code ON search_token (resource_type, param, code_hash);
CREATE INDEX ix_token_system_code ON search_token (resource_type, param, system_code_hash);
CREATE INDEX ix_token_resource ON search_token (resource_type, resource_id);
CREATE TABLE resources_current_old (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    PRIMARY KEY (resource_type, resource_id)
);
INSERT INTO resources_current_old SELECT resource_type, resource_id, version_id, last_updated, deleted FROM resources_current;
DROP TABLE resources_current;
ALTER TABLE resources_current_old RENAME TO resources_current;
