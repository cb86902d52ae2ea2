-- The search index of AuditEvents (issue 14, item 1). AuditEvents keep their one
-- row each in audit_log and are indexed after they commit, by an indexer that
-- tails audit_log by seq, so the group commit of reads and the write
-- transactions do not pay for it. Their index rows live in the same tables as
-- every resource's, under rid = -seq: resources have positive rids, so the two
-- never collide, and a query over resources never reads an AuditEvent's rows.

-- One row: every seq <= after_seq was indexed, or was not visible when the
-- indexer passed it (then it is in audit_index_gaps). Each indexer commit moves
-- generation on, conditionally on the generation it read, so two indexers (two
-- nodes, or a search's catch-up beside the background round) never index the
-- same AuditEvent twice.
CREATE TABLE audit_index_state (
    id INTEGER PRIMARY KEY NOT NULL,
    after_seq BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
INSERT INTO audit_index_state (id, after_seq, generation, updated) VALUES (1, 0, 0, 0);

-- Positions below after_seq that were not visible when the indexer passed them:
-- a transaction still open (PostgreSQL hands out seq at insert, commits in another
-- order), or one rolled back (its positions never appear). Looked at again by
-- every round until their row is indexed or they are older than the indexer's
-- patience. `seen`: Unix microseconds.
CREATE TABLE audit_index_gaps (
    seq BIGINT PRIMARY KEY NOT NULL,
    seen BIGINT NOT NULL
);

-- The AuditEvent rows as search rows: rid = -seq, ordered and looked up by it.
CREATE INDEX ix_audit_rid ON audit_log ((-seq));
