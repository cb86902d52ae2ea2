-- The tamper-evident chain of the audit log (issue 14, item 3). Each AuditEvent,
-- once committed, gets a position in one chain (1, 2, 3, ... for the whole
-- database, whatever node wrote it) and a SHA-256 hash over the previous hash and
-- the event's stored bytes. The chain is built after commit by a chainer that
-- tails audit_log by seq, like the audit indexer, so the group commit of reads and
-- the write transactions take no chain lock. audit_log itself stays insert-only.
CREATE TABLE audit_chain (
    pos BIGINT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL UNIQUE,
    hash BLOB NOT NULL
);

-- One row: every seq <= after_seq is chained, or was not visible when the chainer
-- passed it (audit_chain_gaps); head_pos and head_hash are the chain's last link
-- (0 and NULL before the first). Each chainer commit moves generation on,
-- conditionally on the generation it read: two chainers never both extend it.
CREATE TABLE audit_chain_state (
    id INTEGER PRIMARY KEY NOT NULL,
    after_seq BIGINT NOT NULL,
    head_pos BIGINT NOT NULL,
    head_hash BLOB,
    generation BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
INSERT INTO audit_chain_state (id, after_seq, head_pos, head_hash, generation, updated)
    VALUES (1, 0, 0, NULL, 0, 0);

CREATE TABLE audit_chain_gaps (
    seq BIGINT PRIMARY KEY NOT NULL,
    seen BIGINT NOT NULL
);

-- Signed checkpoints of the chain's head: position, hash, time (Unix
-- microseconds), the signing key and an ECDSA P-256 signature (DER). A purge
-- checkpoint (purged_before set: the date the purge removed events before) marks
-- where the kept chain starts: the links up to its position were removed.
CREATE TABLE audit_checkpoints (
    pos BIGINT PRIMARY KEY NOT NULL,
    hash BLOB NOT NULL,
    time BIGINT NOT NULL,
    kid TEXT NOT NULL,
    signature BLOB NOT NULL,
    purged_before BIGINT
);

-- The audit signing keys: the private key sealed under a data key (enveloped by
-- the master key), the public key as PEM. The oldest signs.
CREATE TABLE audit_signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    key_id BIGINT NOT NULL,
    sealed BLOB NOT NULL,
    public_pem TEXT NOT NULL,
    created BIGINT NOT NULL
);
