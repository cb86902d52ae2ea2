DROP INDEX ix_audit_rid;
DROP TABLE audit_index_gaps;
DROP TABLE audit_index_state;
DELETE FROM search_blind WHERE rid < 0;
DELETE FROM search_date WHERE rid < 0;
DELETE FROM search_number WHERE rid < 0;
DELETE FROM search_reference WHERE rid < 0;
DELETE FROM search_uri WHERE rid < 0;
