-- SMART authorization, shared by every node: registered clients and users, EHR
-- launch contexts, authorization codes, refresh-token families, revoked token
-- ids, the client-assertion `jti` replay store and fhirgate's signing keys.
-- Secrets, codes, launch ids and refresh tokens are stored as SHA-256 hashes
-- (they are random, 256 bits); passwords as argon2 PHC strings; signing keys
-- sealed under a data key (envelope under the master key). Times: Unix seconds.

CREATE TABLE auth_clients (
    client_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    -- none (public), client_secret, private_key_jwt
    auth_method TEXT NOT NULL,
    secret_hash BLOB,
    jwks TEXT,
    jwks_uri TEXT,
    -- JSON array of exact redirect URIs
    redirect_uris TEXT NOT NULL,
    -- the most the client may get; NULL: every scope
    scope TEXT,
    -- comma-separated grant types
    grant_types TEXT NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE auth_users (
    username TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    fhir_user TEXT NOT NULL,
    role TEXT NOT NULL,
    break_glass BOOLEAN NOT NULL,
    failed_logins BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE auth_launches (
    launch_hash BLOB PRIMARY KEY NOT NULL,
    patient TEXT NOT NULL,
    encounter TEXT,
    username TEXT,
    expires BIGINT NOT NULL,
    used BOOLEAN NOT NULL
);

CREATE TABLE auth_codes (
    code_hash BLOB PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    -- what the user approved (JSON: scope, patient, encounter, user, purpose of use)
    details TEXT NOT NULL,
    expires BIGINT NOT NULL,
    used BOOLEAN NOT NULL
);

-- Every refresh token of a grant (its family) is kept until it expires: a used
-- one presented again revokes the whole family.
CREATE TABLE auth_refresh_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    grant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    details TEXT NOT NULL,
    expires BIGINT NOT NULL,
    used BOOLEAN NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX ix_auth_refresh_grant ON auth_refresh_tokens (grant_id);

-- Revoked access-token ids (`jti`) and grant ids; every node polls new rows by seq.
CREATE TABLE auth_revoked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id TEXT NOT NULL,
    expires BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX ux_auth_revoked_token ON auth_revoked (token_id);

-- Client-assertion ids seen (SMART Backend Services: a replayed `jti` is refused).
CREATE TABLE auth_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);

-- fhirgate's token signing keys (ES256); the newest signs. `created` is in Unix
-- microseconds, so that keys made within one second still have an order.
CREATE TABLE auth_signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    alg TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    sealed BLOB NOT NULL,
    public_jwk TEXT NOT NULL,
    created BIGINT NOT NULL
);
