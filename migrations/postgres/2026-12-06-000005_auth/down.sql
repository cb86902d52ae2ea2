DROP TABLE auth_signing_keys;
DROP TABLE auth_jti;
DROP TABLE auth_revoked;
DROP TABLE auth_refresh_tokens;
DROP TABLE auth_codes;
DROP TABLE auth_launches;
DROP TABLE auth_users;
DROP TABLE auth_clients;
