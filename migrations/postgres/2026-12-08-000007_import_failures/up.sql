-- Lines of an NDJSON file (or the one resource of a JSON file) that `fhirgate
-- import` could not store, recorded in the transaction that committed the rest of
-- their batch: a rerun on the same file retries exactly these lines (a setting may
-- have changed, a referenced resource may exist now) and reports those that fail
-- again. A line stored by a retry loses its row in that retry's transaction.
CREATE TABLE import_failures (
    unit TEXT NOT NULL,
    line BIGINT NOT NULL,
    PRIMARY KEY (unit, line)
);
