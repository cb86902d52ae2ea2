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

use diesel::prelude::*;

use super::pool::with_conn;
use super::schema::{
    auth_clients as ac, auth_codes as co, auth_jti as aj, auth_launches as al,
    auth_refresh_tokens as rt, auth_revoked as rv, auth_signing_keys as sk, auth_users as au,
};
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

type ClientTuple = (
    String,
    String,
    String,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    i64,
);

fn client_of(t: ClientTuple) -> ClientRow {
    ClientRow {
        client_id: t.0,
        name: t.1,
        auth_method: t.2,
        secret_hash: t.3,
        jwks: t.4,
        jwks_uri: t.5,
        redirect_uris: serde_json::from_str(&t.6).unwrap_or_default(),
        scope: t.7,
        grant_types: t
            .8
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created: t.9,
    }
}

macro_rules! client_columns {
    () => {
        (
            ac::client_id,
            ac::name,
            ac::auth_method,
            ac::secret_hash,
            ac::jwks,
            ac::jwks_uri,
            ac::redirect_uris,
            ac::scope,
            ac::grant_types,
            ac::created,
        )
    };
}

type UserTuple = (String, String, String, String, bool, i64, i64, i64);

fn user_of(t: UserTuple) -> UserRow {
    UserRow {
        username: t.0,
        password_hash: t.1,
        fhir_user: t.2,
        role: t.3,
        break_glass: t.4,
        failed_logins: t.5,
        locked_until: t.6,
        created: t.7,
    }
}

macro_rules! user_columns {
    () => {
        (
            au::username,
            au::password_hash,
            au::fhir_user,
            au::role,
            au::break_glass,
            au::failed_logins,
            au::locked_until,
            au::created,
        )
    };
}

fn signing_aad(kid: &str) -> Vec<u8> {
    format!("fhirgate:signing-key:{kid}").into_bytes()
}

impl Store {
    /// Registers a client; `AlreadyExists` when the id is taken.
    pub fn auth_add_client(&self, row: &ClientRow) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&row.redirect_uris)
            .map_err(|e| StoreError::Prepare(e.to_string()))?;
        let grants = row.grant_types.join(",");
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::insert_into(ac::table)
            .values((
                ac::client_id.eq(&row.client_id),
                ac::name.eq(&row.name),
                ac::auth_method.eq(&row.auth_method),
                ac::secret_hash.eq(&row.secret_hash),
                ac::jwks.eq(&row.jwks),
                ac::jwks_uri.eq(&row.jwks_uri),
                ac::redirect_uris.eq(&uris),
                ac::scope.eq(&row.scope),
                ac::grant_types.eq(&grants),
                ac::created.eq(row.created),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        if n == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    pub fn auth_client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let t: Option<ClientTuple> = with_conn!(conn, |c| ac::table
            .filter(ac::client_id.eq(client_id))
            .select(client_columns!())
            .first(c)
            .optional())?;
        Ok(t.map(client_of))
    }

    pub fn auth_clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let rows: Vec<ClientTuple> = with_conn!(conn, |c| ac::table
            .select(client_columns!())
            .order(ac::created.asc())
            .load(c))?;
        Ok(rows.into_iter().map(client_of).collect())
    }

    /// Removes a client; false when there was none.
    pub fn auth_remove_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::delete(
            ac::table.filter(ac::client_id.eq(client_id))
        )
        .execute(c))?;
        Ok(n > 0)
    }

    /// Registers a user; `AlreadyExists` when the name is taken.
    pub fn auth_add_user(&self, row: &UserRow) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::insert_into(au::table)
            .values((
                au::username.eq(&row.username),
                au::password_hash.eq(&row.password_hash),
                au::fhir_user.eq(&row.fhir_user),
                au::role.eq(&row.role),
                au::break_glass.eq(row.break_glass),
                au::failed_logins.eq(row.failed_logins),
                au::locked_until.eq(row.locked_until),
                au::created.eq(row.created),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        if n == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    pub fn auth_user(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let t: Option<UserTuple> = with_conn!(conn, |c| au::table
            .filter(au::username.eq(username))
            .select(user_columns!())
            .first(c)
            .optional())?;
        Ok(t.map(user_of))
    }

    pub fn auth_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let rows: Vec<UserTuple> = with_conn!(conn, |c| au::table
            .select(user_columns!())
            .order(au::created.asc())
            .load(c))?;
        Ok(rows.into_iter().map(user_of).collect())
    }

    pub fn auth_remove_user(&self, username: &str) -> Result<bool, StoreError> {
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::delete(
            au::table.filter(au::username.eq(username))
        )
        .execute(c))?;
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
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| {
            // One statement increments, so concurrent failures on two nodes both count.
            diesel::update(au::table.filter(au::username.eq(username)))
                .set(au::failed_logins.eq(au::failed_logins + 1))
                .execute(c)?;
            let failures: Option<i64> = au::table
                .filter(au::username.eq(username))
                .select(au::failed_logins)
                .first(c)
                .optional()?;
            let failures = failures.unwrap_or(0);
            if max > 0 && failures >= max {
                let until = now + lockout_secs;
                diesel::update(au::table.filter(au::username.eq(username)))
                    .set((au::failed_logins.eq(0i64), au::locked_until.eq(until)))
                    .execute(c)?;
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
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::update(
            au::table.filter(au::username.eq(username))
        )
        .set(au::failed_logins.eq(0i64))
        .execute(c))?;
        Ok(())
    }

    pub fn auth_add_launch(&self, launch_hash: &[u8], row: &LaunchRow) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::insert_into(al::table)
            .values((
                al::launch_hash.eq(launch_hash),
                al::patient.eq(&row.patient),
                al::encounter.eq(&row.encounter),
                al::username.eq(&row.username),
                al::expires.eq(row.expires),
                al::used.eq(false),
            ))
            .execute(c))?;
        Ok(())
    }

    /// An unused, unexpired launch (not spent by looking).
    pub fn auth_launch(
        &self,
        launch_hash: &[u8],
        now: i64,
    ) -> Result<Option<LaunchRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let t: Option<(String, Option<String>, Option<String>, i64)> =
            with_conn!(conn, |c| al::table
                .filter(al::launch_hash.eq(launch_hash))
                .filter(al::used.eq(false))
                .filter(al::expires.gt(now))
                .select((al::patient, al::encounter, al::username, al::expires))
                .first(c)
                .optional())?;
        Ok(t.map(|(patient, encounter, username, expires)| LaunchRow {
            patient,
            encounter,
            username,
            expires,
        }))
    }

    /// Spends a launch; false when it was spent or expired meanwhile.
    pub fn auth_spend_launch(&self, launch_hash: &[u8], now: i64) -> Result<bool, StoreError> {
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::update(
            al::table
                .filter(al::launch_hash.eq(launch_hash))
                .filter(al::used.eq(false))
                .filter(al::expires.gt(now))
        )
        .set(al::used.eq(true))
        .execute(c))?;
        Ok(n == 1)
    }

    pub fn auth_add_code(&self, code_hash: &[u8], row: &CodeRow) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::insert_into(co::table)
            .values((
                co::code_hash.eq(code_hash),
                co::client_id.eq(&row.client_id),
                co::redirect_uri.eq(&row.redirect_uri),
                co::code_challenge.eq(&row.code_challenge),
                co::grant_id.eq(&row.grant_id),
                co::details.eq(&row.details),
                co::expires.eq(row.expires),
                co::used.eq(false),
            ))
            .execute(c))?;
        Ok(())
    }

    /// Spends an authorization code (expiry is the caller's to judge).
    pub fn auth_redeem_code(&self, code_hash: &[u8]) -> Result<Redeemed<CodeRow>, StoreError> {
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| {
            let won = diesel::update(
                co::table
                    .filter(co::code_hash.eq(code_hash))
                    .filter(co::used.eq(false)),
            )
            .set(co::used.eq(true))
            .execute(c)?
                == 1;
            let t: Option<(String, String, String, String, String, i64)> = co::table
                .filter(co::code_hash.eq(code_hash))
                .select((
                    co::client_id,
                    co::redirect_uri,
                    co::code_challenge,
                    co::grant_id,
                    co::details,
                    co::expires,
                ))
                .first(c)
                .optional()?;
            Ok(match t {
                None => Redeemed::Unknown,
                Some((client_id, redirect_uri, code_challenge, grant_id, details, expires)) => {
                    let row = CodeRow {
                        client_id,
                        redirect_uri,
                        code_challenge,
                        grant_id,
                        details,
                        expires,
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
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::insert_into(rt::table)
            .values((
                rt::token_hash.eq(token_hash),
                rt::grant_id.eq(&row.grant_id),
                rt::client_id.eq(&row.client_id),
                rt::details.eq(&row.details),
                rt::expires.eq(row.expires),
                rt::used.eq(false),
                rt::created.eq(now),
            ))
            .execute(c))?;
        Ok(())
    }

    /// Spends a refresh token (expiry is the caller's to judge).
    pub fn auth_redeem_refresh(
        &self,
        token_hash: &[u8],
    ) -> Result<Redeemed<RefreshRow>, StoreError> {
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| {
            let won = diesel::update(
                rt::table
                    .filter(rt::token_hash.eq(token_hash))
                    .filter(rt::used.eq(false)),
            )
            .set(rt::used.eq(true))
            .execute(c)?
                == 1;
            let t: Option<(String, String, String, i64)> = rt::table
                .filter(rt::token_hash.eq(token_hash))
                .select((rt::grant_id, rt::client_id, rt::details, rt::expires))
                .first(c)
                .optional()?;
            Ok(match t {
                None => Redeemed::Unknown,
                Some((grant_id, client_id, details, expires)) => {
                    let row = RefreshRow {
                        grant_id,
                        client_id,
                        details,
                        expires,
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

    /// The refresh token a client holds, without spending it (revocation, RFC 7009).
    pub fn auth_refresh(&self, token_hash: &[u8]) -> Result<Option<RefreshRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let t: Option<(String, String, String, i64)> = with_conn!(conn, |c| rt::table
            .filter(rt::token_hash.eq(token_hash))
            .select((rt::grant_id, rt::client_id, rt::details, rt::expires))
            .first(c)
            .optional())?;
        Ok(t.map(|(grant_id, client_id, details, expires)| RefreshRow {
            grant_id,
            client_id,
            details,
            expires,
        }))
    }

    /// Whether a refresh token was spent (None: unknown).
    pub fn auth_refresh_used(&self, token_hash: &[u8]) -> Result<Option<bool>, StoreError> {
        let mut conn = self.pool.get()?;
        Ok(with_conn!(conn, |c| rt::table
            .filter(rt::token_hash.eq(token_hash))
            .select(rt::used)
            .first::<bool>(c)
            .optional())?)
    }

    /// Records a revoked token or grant id (again: nothing changes).
    pub fn auth_revoke(&self, token_id: &str, expires: i64, now: i64) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::insert_into(rv::table)
            .values((
                rv::token_id.eq(token_id),
                rv::expires.eq(expires),
                rv::revoked_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        Ok(())
    }

    /// Revocations recorded after `seq`, oldest first.
    pub fn auth_revoked_since(&self, seq: i64) -> Result<Vec<RevokedRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let rows: Vec<(i64, String, i64)> = with_conn!(conn, |c| rv::table
            .filter(rv::seq.gt(seq))
            .select((rv::seq, rv::token_id, rv::expires))
            .order(rv::seq.asc())
            .limit(10_000)
            .load(c))?;
        Ok(rows
            .into_iter()
            .map(|(seq, token_id, expires)| RevokedRow {
                seq,
                token_id,
                expires,
            })
            .collect())
    }

    /// Is any of these ids revoked?
    pub fn auth_is_revoked(&self, ids: &[&str]) -> Result<bool, StoreError> {
        let mut conn = self.pool.get()?;
        let n: i64 = with_conn!(conn, |c| rv::table
            .filter(rv::token_id.eq_any(ids))
            .count()
            .get_result(c))?;
        Ok(n > 0)
    }

    /// Remembers a client assertion's `jti` until it expires; false when the
    /// client used it before (a replay), on any node.
    pub fn auth_remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::insert_into(aj::table)
            .values((
                aj::client_id.eq(client_id),
                aj::jti.eq(jti),
                aj::expires.eq(expires),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        Ok(n == 1)
    }

    /// Forgets what can no longer be used: expired codes, launches, refresh
    /// tokens, `jti`s, and revocations of tokens that expired anyway. `grace`
    /// seconds past expiry are kept (clock leeway, reuse detection).
    pub fn auth_purge_expired(&self, now: i64, grace: i64) -> Result<usize, StoreError> {
        let before = now - grace;
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| {
            let mut n = diesel::delete(co::table.filter(co::expires.lt(before))).execute(c)?;
            n += diesel::delete(al::table.filter(al::expires.lt(before))).execute(c)?;
            n += diesel::delete(rt::table.filter(rt::expires.lt(before))).execute(c)?;
            n += diesel::delete(aj::table.filter(aj::expires.lt(before))).execute(c)?;
            n += diesel::delete(rv::table.filter(rv::expires.lt(before))).execute(c)?;
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
        let mut conn = self.pool.get()?;
        with_conn!(conn, |c| diesel::insert_into(sk::table)
            .values((
                sk::kid.eq(kid),
                sk::alg.eq(alg),
                sk::key_id.eq(key_id),
                sk::sealed.eq(&sealed),
                sk::public_jwk.eq(public_jwk),
                sk::created.eq(now),
            ))
            .execute(c))?;
        Ok(())
    }

    /// Every signing key, newest first, opened where this node holds the data key.
    pub fn auth_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        let rows: Vec<(String, String, i64, Vec<u8>, String, i64)> =
            with_conn!(conn, |c| sk::table
                .select((
                    sk::kid,
                    sk::alg,
                    sk::key_id,
                    sk::sealed,
                    sk::public_jwk,
                    sk::created
                ))
                .order((sk::created.desc(), sk::kid.desc()))
                .load(c))?;
        rows.into_iter()
            .map(|(kid, alg, key_id, sealed, public_jwk, created)| {
                let private_pkcs8 = match ring.open_box(key_id, &sealed, &signing_aad(&kid)) {
                    Ok(p) => Some(p),
                    Err(crate::crypto::KeyError::UnknownDataKey(_)) => None,
                    Err(e) => return Err(StoreError::Keys(e)),
                };
                Ok(SigningKeyRow {
                    kid,
                    alg,
                    private_pkcs8,
                    public_jwk,
                    created,
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
        let mut conn = self.pool.get()?;
        let n = with_conn!(conn, |c| diesel::delete(
            sk::table.filter(sk::kid.eq_any(&old))
        )
        .execute(c))?;
        Ok(n)
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
