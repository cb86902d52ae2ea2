//! The SMART authorization server's state, shared by every node through the
//! database: registered clients and users, EHR launch contexts, authorization
//! codes, refresh-token families, revoked token ids, the client-assertion `jti`
//! replay store, login failures and lockouts, and the token signing keys.
//!
//! The callers hash what is secret before it comes here (client secrets, codes,
//! launch ids and refresh tokens: SHA-256 of 256 random bits; passwords: argon2);
//! signing keys are sealed here under the active data key, so they are enveloped
//! under the master key like every resource body. Single use (codes, launches,
//! refresh tokens, `jti`s) is decided by one conditional statement, so two nodes
//! racing for the same code cannot both win.
//!
//! Times are Unix seconds. Nothing here knows OAuth's rules; `crate::auth` does.

use diesel::QueryableByName;

use super::conn::{AnyConn, Count};
use super::sql::{Bind, Sql};
use super::{Store, StoreError};

/// A registered OAuth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    /// `none` (public), `client_secret` or `private_key_jwt`.
    pub auth_method: String,
    /// SHA-256 of the client secret.
    pub secret_hash: Option<Vec<u8>>,
    /// The client's JWK Set (JSON), registered from a file.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    /// The most the client may ever get; None: every scope.
    pub scope: Option<String>,
    pub grant_types: Vec<String>,
    pub created: i64,
}

/// A registered user of the login page.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// `Patient/ID`, `Practitioner/ID` or `RelatedPerson/ID`.
    pub fhir_user: String,
    pub role: String,
    pub break_glass: bool,
    pub failed_logins: i64,
    /// Unix seconds until which logins are refused (0: not locked).
    pub locked_until: i64,
    pub created: i64,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("username", &self.username)
            .field("fhir_user", &self.fhir_user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An EHR launch context (`fhirgate launch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRow {
    pub patient: String,
    pub encounter: Option<String>,
    /// The only user who may use the launch, when named.
    pub username: Option<String>,
    pub expires: i64,
}

/// An authorization code, bound to its client, redirect URI and PKCE challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    /// The grant (refresh-token family) the code starts.
    pub grant_id: String,
    /// What the user approved, as the auth module serialised it.
    pub details: String,
    pub expires: i64,
}

/// A refresh token of a grant's family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    pub grant_id: String,
    pub client_id: String,
    pub details: String,
    pub expires: i64,
}

/// What presenting a single-use value found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed<T> {
    /// First use: the value is now spent.
    Fresh(T),
    /// It was spent before (a replay).
    Reused(T),
    Unknown,
}

/// A token signing key, opened.
#[derive(Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    /// PKCS#8 DER of the private key; None when it is sealed under a data key
    /// this node does not hold yet (made by `keys rotate` after it started).
    pub private_pkcs8: Option<Vec<u8>>,
    /// The public key as a JWK (JSON).
    pub public_jwk: String,
    pub created: i64,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeyRow({}, {})", self.kid, self.alg)
    }
}

/// A revoked token or grant id, in the order revocations were recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedRow {
    pub seq: i64,
    pub token_id: String,
    pub expires: i64,
}

/// Login failures after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failures in a row (0 right after a lockout starts).
    pub failures: i64,
    /// Set when this failure locked the account.
    pub locked_until: Option<i64>,
}

#[derive(QueryableByName)]
struct ClientLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    client_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    auth_method: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    secret_hash: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    jwks: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    jwks_uri: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    redirect_uris: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    scope: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    grant_types: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    created: i64,
}

const CLIENT_COLUMNS: &str = "client_id, name, auth_method, secret_hash, jwks, jwks_uri, redirect_uris, scope, grant_types, created";

impl From<ClientLine> for ClientRow {
    fn from(t: ClientLine) -> ClientRow {
        ClientRow {
            client_id: t.client_id,
            name: t.name,
            auth_method: t.auth_method,
            secret_hash: t.secret_hash,
            jwks: t.jwks,
            jwks_uri: t.jwks_uri,
            redirect_uris: serde_json::from_str(&t.redirect_uris).unwrap_or_default(),
            scope: t.scope,
            grant_types: t
                .grant_types
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            created: t.created,
        }
    }
}

#[derive(QueryableByName)]
struct UserLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    username: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    password_hash: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    fhir_user: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    role: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    break_glass: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed_logins: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    locked_until: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    created: i64,
}

const USER_COLUMNS: &str =
    "username, password_hash, fhir_user, role, break_glass, failed_logins, locked_until, created";

impl From<UserLine> for UserRow {
    fn from(t: UserLine) -> UserRow {
        UserRow {
            username: t.username,
            password_hash: t.password_hash,
            fhir_user: t.fhir_user,
            role: t.role,
            break_glass: t.break_glass,
            failed_logins: t.failed_logins,
            locked_until: t.locked_until,
            created: t.created,
        }
    }
}

#[derive(QueryableByName)]
struct LaunchLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    patient: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    encounter: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    username: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    expires: i64,
}

#[derive(QueryableByName)]
struct CodeLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    client_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    redirect_uri: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    code_challenge: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    grant_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    details: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    expires: i64,
}

#[derive(QueryableByName)]
struct RefreshLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    grant_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    client_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    details: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    expires: i64,
}

impl From<RefreshLine> for RefreshRow {
    fn from(t: RefreshLine) -> RefreshRow {
        RefreshRow {
            grant_id: t.grant_id,
            client_id: t.client_id,
            details: t.details,
            expires: t.expires,
        }
    }
}

#[derive(QueryableByName)]
struct Used {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    used: bool,
}

#[derive(QueryableByName)]
struct RevokedLine {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    token_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    expires: i64,
}

#[derive(QueryableByName)]
struct SigningLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    kid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    alg: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    key_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    sealed: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    public_jwk: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    created: i64,
}

fn signing_aad(kid: &str) -> Vec<u8> {
    format!("fhirgate:signing-key:{kid}").into_bytes()
}

/// A text that may be NULL, as a bound value or the literal.
fn opt_text(sql: &mut Sql, v: Option<&str>) {
    match v {
        Some(t) => {
            sql.text(t);
        }
        None => {
            sql.push("NULL");
        }
    }
}

fn bytes(sql: &mut Sql, v: &[u8]) {
    sql.bind(Bind::Bytes(v.to_vec()));
}

/// Marks a single-use value spent, if it was not; true when this call spent it.
/// One conditional statement: two nodes racing cannot both win.
fn spend(c: &mut AnyConn, table: &str, key: &str, hash: &[u8]) -> Result<bool, StoreError> {
    let mut sql = c.sql();
    sql.push(&format!("UPDATE {table} SET used = "))
        .boolean(true)
        .push(&format!(" WHERE {key} = "));
    bytes(&mut sql, hash);
    sql.push(" AND used = ").boolean(false);
    Ok(c.execute(sql)? == 1)
}

impl Store {
    /// Registers a client; `AlreadyExists` when the id is taken.
    pub fn auth_add_client(&self, row: &ClientRow) -> Result<(), StoreError> {
        let uris = serde_json::Value::from(row.redirect_uris.clone()).to_string();
        let grants = row.grant_types.join(",");
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "INSERT INTO auth_clients ({CLIENT_COLUMNS}) VALUES ("
            ))
            .text(&row.client_id)
            .push(", ")
            .text(&row.name)
            .push(", ")
            .text(&row.auth_method)
            .push(", ");
            match &row.secret_hash {
                Some(h) => bytes(&mut sql, h),
                None => {
                    sql.push("NULL");
                }
            }
            sql.push(", ");
            opt_text(&mut sql, row.jwks.as_deref());
            sql.push(", ");
            opt_text(&mut sql, row.jwks_uri.as_deref());
            sql.push(", ").text(&uris).push(", ");
            opt_text(&mut sql, row.scope.as_deref());
            sql.push(", ")
                .text(&grants)
                .push(", ")
                .i64(row.created)
                .push(") ON CONFLICT DO NOTHING");
            c.execute(sql)
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    pub fn auth_client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE client_id = "
            ))
            .text(client_id);
            Ok(c.load::<ClientLine>(sql)?
                .into_iter()
                .next()
                .map(ClientRow::from))
        })
    }

    pub fn auth_clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT {CLIENT_COLUMNS} FROM auth_clients ORDER BY created, client_id"
            ));
            Ok(c.load::<ClientLine>(sql)?
                .into_iter()
                .map(ClientRow::from)
                .collect())
        })
    }

    /// Removes a client; false when there was none.
    pub fn auth_remove_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("DELETE FROM auth_clients WHERE client_id = ")
                .text(client_id);
            c.execute(sql)
        })?;
        Ok(n > 0)
    }

    /// Registers a user; `AlreadyExists` when the name is taken.
    pub fn auth_add_user(&self, row: &UserRow) -> Result<(), StoreError> {
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push(&format!("INSERT INTO auth_users ({USER_COLUMNS}) VALUES ("))
                .text(&row.username)
                .push(", ")
                .text(&row.password_hash)
                .push(", ")
                .text(&row.fhir_user)
                .push(", ")
                .text(&row.role)
                .push(", ")
                .boolean(row.break_glass)
                .push(", ")
                .i64(row.failed_logins)
                .push(", ")
                .i64(row.locked_until)
                .push(", ")
                .i64(row.created)
                .push(") ON CONFLICT DO NOTHING");
            c.execute(sql)
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    pub fn auth_user(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT {USER_COLUMNS} FROM auth_users WHERE username = "
            ))
            .text(username);
            Ok(c.load::<UserLine>(sql)?
                .into_iter()
                .next()
                .map(UserRow::from))
        })
    }

    pub fn auth_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(&format!(
                "SELECT {USER_COLUMNS} FROM auth_users ORDER BY created, username"
            ));
            Ok(c.load::<UserLine>(sql)?
                .into_iter()
                .map(UserRow::from)
                .collect())
        })
    }

    pub fn auth_remove_user(&self, username: &str) -> Result<bool, StoreError> {
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("DELETE FROM auth_users WHERE username = ")
                .text(username);
            c.execute(sql)
        })?;
        Ok(n > 0)
    }

    /// Counts a failed login; the `max`-th failure in a row locks the account
    /// until `now + lockout_secs` and starts the count again.
    pub fn auth_login_failed(
        &self,
        username: &str,
        now: i64,
        max: i64,
        lockout_secs: i64,
    ) -> Result<LoginFailures, StoreError> {
        self.pool.write(|c| {
            // One statement increments, so concurrent failures on two nodes both count.
            let mut sql = c.sql();
            sql.push("UPDATE auth_users SET failed_logins = failed_logins + 1 WHERE username = ")
                .text(username);
            c.execute(sql)?;
            let mut sql = c.sql();
            sql.push("SELECT failed_logins AS n FROM auth_users WHERE username = ")
                .text(username);
            let failures = c.load::<Count>(sql)?.first().map_or(0, |r| r.n);
            if max > 0 && failures >= max {
                let until = now + lockout_secs;
                let mut sql = c.sql();
                sql.push("UPDATE auth_users SET failed_logins = 0, locked_until = ")
                    .i64(until)
                    .push(" WHERE username = ")
                    .text(username);
                c.execute(sql)?;
                return Ok(LoginFailures {
                    failures: 0,
                    locked_until: Some(until),
                });
            }
            Ok(LoginFailures {
                failures,
                locked_until: None,
            })
        })
    }

    /// A successful login clears the failure count.
    pub fn auth_login_succeeded(&self, username: &str) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE auth_users SET failed_logins = 0 WHERE username = ")
                .text(username);
            c.execute(sql)?;
            Ok(())
        })
    }

    pub fn auth_add_launch(&self, launch_hash: &[u8], row: &LaunchRow) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push(
                "INSERT INTO auth_launches (launch_hash, patient, encounter, username, expires, used) VALUES (",
            );
            bytes(&mut sql, launch_hash);
            sql.push(", ").text(&row.patient).push(", ");
            opt_text(&mut sql, row.encounter.as_deref());
            sql.push(", ");
            opt_text(&mut sql, row.username.as_deref());
            sql.push(", ")
                .i64(row.expires)
                .push(", ")
                .boolean(false)
                .push(")");
            c.execute(sql)?;
            Ok(())
        })
    }

    /// An unused, unexpired launch (not spent by looking).
    pub fn auth_launch(
        &self,
        launch_hash: &[u8],
        now: i64,
    ) -> Result<Option<LaunchRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push(
                "SELECT patient, encounter, username, expires FROM auth_launches WHERE launch_hash = ",
            );
            bytes(&mut sql, launch_hash);
            sql.push(" AND used = ")
                .boolean(false)
                .push(" AND expires > ")
                .i64(now);
            Ok(c.load::<LaunchLine>(sql)?.into_iter().next().map(|l| LaunchRow {
                patient: l.patient,
                encounter: l.encounter,
                username: l.username,
                expires: l.expires,
            }))
        })
    }

    /// Spends a launch; false when it was spent or expired meanwhile.
    pub fn auth_spend_launch(&self, launch_hash: &[u8], now: i64) -> Result<bool, StoreError> {
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("UPDATE auth_launches SET used = ")
                .boolean(true)
                .push(" WHERE launch_hash = ");
            bytes(&mut sql, launch_hash);
            sql.push(" AND used = ")
                .boolean(false)
                .push(" AND expires > ")
                .i64(now);
            c.execute(sql)
        })?;
        Ok(n == 1)
    }

    pub fn auth_add_code(&self, code_hash: &[u8], row: &CodeRow) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("INSERT INTO auth_codes (code_hash, client_id, redirect_uri, code_challenge, grant_id, details, expires, used) VALUES (");
            bytes(&mut sql, code_hash);
            sql.push(", ")
                .text(&row.client_id)
                .push(", ")
                .text(&row.redirect_uri)
                .push(", ")
                .text(&row.code_challenge)
                .push(", ")
                .text(&row.grant_id)
                .push(", ")
                .text(&row.details)
                .push(", ")
                .i64(row.expires)
                .push(", ")
                .boolean(false)
                .push(")");
            c.execute(sql)?;
            Ok(())
        })
    }

    /// Spends an authorization code (expiry is the caller's to judge).
    pub fn auth_redeem_code(&self, code_hash: &[u8]) -> Result<Redeemed<CodeRow>, StoreError> {
        self.pool.write(|c| {
            let won = spend(c, "auth_codes", "code_hash", code_hash)?;
            let mut sql = c.sql();
            sql.push("SELECT client_id, redirect_uri, code_challenge, grant_id, details, expires FROM auth_codes WHERE code_hash = ");
            bytes(&mut sql, code_hash);
            Ok(match c.load::<CodeLine>(sql)?.into_iter().next() {
                None => Redeemed::Unknown,
                Some(l) => {
                    let row = CodeRow {
                        client_id: l.client_id,
                        redirect_uri: l.redirect_uri,
                        code_challenge: l.code_challenge,
                        grant_id: l.grant_id,
                        details: l.details,
                        expires: l.expires,
                    };
                    if won {
                        Redeemed::Fresh(row)
                    } else {
                        Redeemed::Reused(row)
                    }
                }
            })
        })
    }

    pub fn auth_add_refresh(
        &self,
        token_hash: &[u8],
        row: &RefreshRow,
        now: i64,
    ) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("INSERT INTO auth_refresh_tokens (token_hash, grant_id, client_id, details, expires, used, created) VALUES (");
            bytes(&mut sql, token_hash);
            sql.push(", ")
                .text(&row.grant_id)
                .push(", ")
                .text(&row.client_id)
                .push(", ")
                .text(&row.details)
                .push(", ")
                .i64(row.expires)
                .push(", ")
                .boolean(false)
                .push(", ")
                .i64(now)
                .push(")");
            c.execute(sql)?;
            Ok(())
        })
    }

    fn refresh_row(c: &mut AnyConn, token_hash: &[u8]) -> Result<Option<RefreshRow>, StoreError> {
        let mut sql = c.sql();
        sql.push("SELECT grant_id, client_id, details, expires FROM auth_refresh_tokens WHERE token_hash = ");
        bytes(&mut sql, token_hash);
        Ok(c.load::<RefreshLine>(sql)?
            .into_iter()
            .next()
            .map(RefreshRow::from))
    }

    /// Spends a refresh token (expiry is the caller's to judge).
    pub fn auth_redeem_refresh(
        &self,
        token_hash: &[u8],
    ) -> Result<Redeemed<RefreshRow>, StoreError> {
        self.pool.write(|c| {
            let won = spend(c, "auth_refresh_tokens", "token_hash", token_hash)?;
            Ok(match Self::refresh_row(c, token_hash)? {
                None => Redeemed::Unknown,
                Some(row) if won => Redeemed::Fresh(row),
                Some(row) => Redeemed::Reused(row),
            })
        })
    }

    /// The refresh token a client holds, without spending it (revocation, RFC 7009).
    pub fn auth_refresh(&self, token_hash: &[u8]) -> Result<Option<RefreshRow>, StoreError> {
        self.pool.read(|c| Self::refresh_row(c, token_hash))
    }

    /// Whether a refresh token was spent (None: unknown).
    pub fn auth_refresh_used(&self, token_hash: &[u8]) -> Result<Option<bool>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT used FROM auth_refresh_tokens WHERE token_hash = ");
            bytes(&mut sql, token_hash);
            Ok(c.load::<Used>(sql)?.into_iter().next().map(|u| u.used))
        })
    }

    /// Records a revoked token or grant id (again: nothing changes).
    pub fn auth_revoke(&self, token_id: &str, expires: i64, now: i64) -> Result<(), StoreError> {
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("INSERT INTO auth_revoked (token_id, expires, revoked_at) VALUES (")
                .text(token_id)
                .push(", ")
                .i64(expires)
                .push(", ")
                .i64(now)
                .push(") ON CONFLICT DO NOTHING");
            c.execute(sql)?;
            Ok(())
        })
    }

    /// Revocations recorded after `seq`, oldest first.
    pub fn auth_revoked_since(&self, seq: i64) -> Result<Vec<RevokedRow>, StoreError> {
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT seq, token_id, expires FROM auth_revoked WHERE seq > ")
                .i64(seq)
                .push(" ORDER BY seq LIMIT 10000");
            Ok(c.load::<RevokedLine>(sql)?
                .into_iter()
                .map(|r| RevokedRow {
                    seq: r.seq,
                    token_id: r.token_id,
                    expires: r.expires,
                })
                .collect())
        })
    }

    /// Is any of these ids revoked?
    pub fn auth_is_revoked(&self, ids: &[&str]) -> Result<bool, StoreError> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT COUNT(*) AS n FROM auth_revoked WHERE ");
            sql.in_texts("token_id", &ids);
            Ok(c.load::<Count>(sql)?.first().is_some_and(|r| r.n > 0))
        })
    }

    /// Remembers a client assertion's `jti` until it expires; false when the
    /// client used it before (a replay), on any node.
    pub fn auth_remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires: i64,
    ) -> Result<bool, StoreError> {
        let n = self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("INSERT INTO auth_jti (client_id, jti, expires) VALUES (")
                .text(client_id)
                .push(", ")
                .text(jti)
                .push(", ")
                .i64(expires)
                .push(") ON CONFLICT DO NOTHING");
            c.execute(sql)
        })?;
        Ok(n == 1)
    }

    /// Forgets what can no longer be used: expired codes, launches, refresh
    /// tokens, `jti`s, and revocations of tokens that expired anyway. `grace`
    /// seconds past expiry are kept (clock leeway, reuse detection).
    pub fn auth_purge_expired(&self, now: i64, grace: i64) -> Result<usize, StoreError> {
        let before = now - grace;
        self.pool.write(|c| {
            let mut n = 0;
            for table in [
                "auth_codes",
                "auth_launches",
                "auth_refresh_tokens",
                "auth_jti",
                "auth_revoked",
            ] {
                let mut sql = c.sql();
                sql.push(&format!("DELETE FROM {table} WHERE expires < "))
                    .i64(before);
                n += c.execute(sql)?;
            }
            Ok(n)
        })
    }

    /// Stores a signing key, its private half sealed under the active data key;
    /// `now` in Unix microseconds.
    pub fn auth_add_signing_key(
        &self,
        kid: &str,
        alg: &str,
        private_pkcs8: &[u8],
        public_jwk: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let (key_id, sealed) = self.keyring()?.seal(private_pkcs8, &signing_aad(kid))?;
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("INSERT INTO auth_signing_keys (kid, alg, key_id, sealed, public_jwk, created) VALUES (")
                .text(kid)
                .push(", ")
                .text(alg)
                .push(", ")
                .i64(key_id)
                .push(", ");
            bytes(&mut sql, &sealed);
            sql.push(", ")
                .text(public_jwk)
                .push(", ")
                .i64(now)
                .push(")");
            c.execute(sql)?;
            Ok(())
        })
    }

    /// Every signing key, newest first, opened where this node holds the data key.
    pub fn auth_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let ring = self.keyring()?;
        let rows = self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT kid, alg, key_id, sealed, public_jwk, created FROM auth_signing_keys ORDER BY created DESC, kid DESC");
            c.load::<SigningLine>(sql)
        })?;
        rows.into_iter()
            .map(|l| {
                let private_pkcs8 = match ring.open_box(l.key_id, &l.sealed, &signing_aad(&l.kid)) {
                    Ok(p) => Some(p),
                    Err(crate::crypto::KeyError::UnknownDataKey(_)) => None,
                    Err(e) => return Err(StoreError::Keys(e)),
                };
                Ok(SigningKeyRow {
                    kid: l.kid,
                    alg: l.alg,
                    private_pkcs8,
                    public_jwk: l.public_jwk,
                    created: l.created,
                })
            })
            .collect()
    }

    /// Removes signing keys created before `before` (Unix microseconds) except
    /// the newest `keep` (their tokens have expired).
    pub fn auth_prune_signing_keys(&self, before: i64, keep: usize) -> Result<usize, StoreError> {
        let keys = self.auth_signing_keys()?;
        let old: Vec<String> = keys
            .into_iter()
            .skip(keep)
            .filter(|k| k.created < before)
            .map(|k| k.kid)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        self.pool.write(|c| {
            let mut sql = c.sql();
            sql.push("DELETE FROM auth_signing_keys WHERE ");
            sql.in_texts("kid", &old);
            c.execute(sql)
        })
    }

    /// Seals a small value (a login session) so that any node of this database
    /// can open it: `key id (8 bytes) || sealed box`.
    pub fn auth_seal(&self, plaintext: &[u8], purpose: &str) -> Result<Vec<u8>, StoreError> {
        let (key_id, sealed) = self
            .keyring()?
            .seal(plaintext, format!("fhirgate:{purpose}").as_bytes())?;
        let mut out = key_id.to_be_bytes().to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Store::auth_seal`] sealed for `purpose`; None when it was
    /// altered, sealed for another purpose, or not by this database.
    pub fn auth_open(&self, sealed: &[u8], purpose: &str) -> Option<Vec<u8>> {
        if sealed.len() < 8 {
            return None;
        }
        let (id, rest) = sealed.split_at(8);
        let key_id = i64::from_be_bytes(id.try_into().ok()?);
        self.keyring()
            .ok()?
            .open_box(key_id, rest, format!("fhirgate:{purpose}").as_bytes())
            .ok()
    }
}
