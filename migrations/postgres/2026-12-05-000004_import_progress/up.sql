-- What `fhirgate import` has committed: one row per unit of work (a batch of
-- NDJSON lines, a transaction Bundle, an entry of a batch Bundle), written in the
-- same transaction as the unit's resources, so a resumed import skips exactly
-- what is stored. `unit` names the file by path, size and modification time.
CREATE TABLE import_progress (
    unit TEXT NOT NULL,
    part BIGINT NOT NULL,
    done_at BIGINT NOT NULL,
    PRIMARY KEY (unit, part)
);
