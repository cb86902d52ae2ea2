DROP TABLE audit_signing_keys;
DROP TABLE audit_checkpoints;
DROP TABLE audit_chain_gaps;
DROP TABLE audit_chain_state;
DROP TABLE audit_chain;
