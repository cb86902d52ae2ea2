-- Token search index of the current version of each resource. Values are blind:
-- HMAC-SHA-256 under the index key, of `code` and of `system|code`; never clear text.
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
