DROP TABLE audit_log;
DROP TABLE key_check;
DROP TABLE data_keys;
DROP TABLE resources_current;
DROP TABLE resource_versions;
