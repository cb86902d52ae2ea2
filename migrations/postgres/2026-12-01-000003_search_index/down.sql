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
    code_hash BYTEA NOT NULL,
    system_code_hash BYTEA
);
CREATE INDEX ix_token_code ON search_token (resource_type, param, code_hash);
CREATE INDEX ix_token_system_code ON search_token (resource_type, param, system_code_hash);
CREATE INDEX ix_token_resource ON search_token (resource_type, resource_id);
DROP INDEX ix_current_updated;
DROP INDEX ix_current_type;
DROP INDEX ux_current_identity;
ALTER TABLE resources_current DROP COLUMN rid;
ALTER TABLE resources_current ADD PRIMARY KEY (resource_type, resource_id);
