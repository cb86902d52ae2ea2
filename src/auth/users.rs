//! Users of the login page: registration (`fhirgate users add|list|remove`,
//! passwords hashed with argon2id, read from a file with its trailing line
//! breaks removed) and login with throttling: each failure in a row answers
//! slower, and the `auth.max_failed_logins`-th locks the account for
//! `auth.lockout_secs` (counted in the database, so on every node).

use std::path::Path;
use std::time::Duration;

use actix_web::HttpRequest;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use super::events::Who;
use super::scopes::Role;
use super::{now, AuthService};
use crate::audit::AuthEvent;
use crate::store::{Store, StoreError, UserRow};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("a user named {0} exists already")]
    Exists(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        UserError::Store(e)
    }
}

/// `fhirgate users add`.
#[derive(Clone)]
pub struct UserSpec {
    pub username: String,
    pub password: String,
    /// `Patient/ID`, `Practitioner/ID` or `RelatedPerson/ID`.
    pub fhir_user: String,
    pub role: Role,
    pub break_glass: bool,
}

/// A password file's content without its trailing line breaks (DESIGN section 12).
pub fn read_password_file(path: &Path) -> Result<String, UserError> {
    let text = std::fs::read_to_string(path).map_err(|source| UserError::PasswordFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 100
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// `Type/id` of a user's FHIR resource, checked.
pub fn parse_fhir_user(s: &str) -> Result<String, UserError> {
    let (t, id) = s
        .split_once('/')
        .ok_or_else(|| UserError::Invalid(format!("--fhir-user `{s}` is not Type/ID")))?;
    if !matches!(t, "Patient" | "Practitioner" | "RelatedPerson") {
        return Err(UserError::Invalid(
            "--fhir-user must be a Patient, Practitioner or RelatedPerson".into(),
        ));
    }
    crate::fhir::types::Id::parse(id)
        .map_err(|e| UserError::Invalid(format!("--fhir-user: {e}")))?;
    Ok(format!("{t}/{id}"))
}

/// A hash no password matches, checked for unknown users.
static DUMMY_HASH: once_cell::sync::Lazy<String> =
    once_cell::sync::Lazy::new(|| hash_password("no user has this password").unwrap_or_default());

pub fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn register(store: &Store, spec: &UserSpec) -> Result<(), UserError> {
    if !valid_username(&spec.username) {
        return Err(UserError::Invalid(
            "--username must be 1 to 100 of A-Z a-z 0-9 . _ - @".into(),
        ));
    }
    if spec.password.is_empty() {
        return Err(UserError::Invalid("the password file is empty".into()));
    }
    let fhir_user = parse_fhir_user(&spec.fhir_user)?;
    if spec.role == Role::Patient && !fhir_user.starts_with("Patient/") {
        return Err(UserError::Invalid(
            "a user with the patient role must be a Patient (--fhir-user Patient/ID)".into(),
        ));
    }
    if spec.break_glass && spec.role != Role::Clinician {
        return Err(UserError::Invalid("--break-glass is for clinicians".into()));
    }
    let row = UserRow {
        username: spec.username.clone(),
        password_hash: hash_password(&spec.password)?,
        fhir_user,
        role: spec.role.as_str().into(),
        break_glass: spec.break_glass,
        failed_logins: 0,
        locked_until: 0,
        created: now(),
    };
    store.auth_add_user(&row).map_err(|e| match e {
        StoreError::AlreadyExists => UserError::Exists(spec.username.clone()),
        other => UserError::Store(other),
    })
}

/// `users list`: one JSON object per user, no password hash.
pub fn list(store: &Store) -> Result<Vec<serde_json::Value>, UserError> {
    Ok(store
        .auth_users()?
        .into_iter()
        .map(|u| {
            serde_json::json!({
                "username": u.username,
                "fhir_user": u.fhir_user,
                "role": u.role,
                "break_glass": u.break_glass,
                "locked_until": (u.locked_until > 0).then_some(u.locked_until),
                "created": u.created,
            })
        })
        .collect())
}

pub fn remove(store: &Store, username: &str) -> Result<bool, UserError> {
    Ok(store.auth_remove_user(username)?)
}

/// A user who signed in.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub fhir_user: String,
    pub role: Role,
    pub break_glass: bool,
}

impl User {
    fn of(row: &UserRow) -> Option<User> {
        Some(User {
            username: row.username.clone(),
            fhir_user: row.fhir_user.clone(),
            role: row.role.parse().ok()?,
            break_glass: row.break_glass,
        })
    }
}

/// Why a login was refused, as the page says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefused {
    Wrong,
    Locked,
    Throttled(u64),
    Unavailable,
}

impl LoginRefused {
    pub fn message(&self) -> String {
        match self {
            LoginRefused::Wrong => "The username or password is wrong.".into(),
            LoginRefused::Locked => {
                "This account is locked after too many failed sign-ins; try again later.".into()
            }
            LoginRefused::Throttled(s) => {
                format!("Too many sign-in attempts from this address; try again in {s} s.")
            }
            LoginRefused::Unavailable => {
                "Signing in is not possible right now; try again later.".into()
            }
        }
    }
}

impl AuthService {
    /// The user a session names, if it still exists.
    pub(crate) async fn session_user(&self, username: &str) -> Option<User> {
        let name = username.to_string();
        let row = self.store.call(move |s| s.auth_user(&name)).await.ok()??;
        if row.locked_until > now() {
            return None;
        }
        User::of(&row)
    }

    /// The grant of a signed-in audit console user: the scopes the console works
    /// with (`user/AuditEvent.rs`) as far as the user's role allows them, so a
    /// patient's or clinician's grant holds nothing and the access module refuses
    /// it (`AccessContext::decide_audit_console`).
    pub(crate) fn console_grant(&self, role: Role) -> Result<crate::access::Grant, String> {
        let (scopes, _) = super::scopes::Scopes::parse_lenient("user/AuditEvent.rs");
        let scopes = scopes.filter(|s| role.allows(s));
        self.compile_grant(&scopes, None, Some(role))
    }

    /// Checks a sign-in, counting failures and locking the account after too
    /// many; every outcome is audited.
    pub(crate) async fn login(
        &self,
        req: &HttpRequest,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<User, LoginRefused> {
        let addr = req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut who = Who::client(client_id);
        if let Err(l) = self.limits.address(&addr) {
            let _ = self
                .record(
                    req,
                    AuthEvent::RateLimited,
                    &who,
                    Some("sign-in attempts from this address are rate limited"),
                )
                .await;
            return Err(LoginRefused::Throttled(l.retry_after_secs));
        }
        let name = username.to_string();
        let row = if valid_username(username) {
            self.store
                .call(move |s| s.auth_user(&name))
                .await
                .map_err(|_| LoginRefused::Unavailable)?
        } else {
            None
        };
        let Some(row) = row else {
            // The same work as a real check, so timing does not tell who exists.
            let pw = password.to_string();
            let _ = tokio::task::spawn_blocking(move || password_matches(&DUMMY_HASH, &pw)).await;
            let _ = self
                .record(req, AuthEvent::LoginFailed, &who, Some("unknown username"))
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(LoginRefused::Wrong);
        };
        who.user = Some(row.fhir_user.clone());
        if row.locked_until > now() {
            let _ = self
                .record(
                    req,
                    AuthEvent::LoginFailed,
                    &who,
                    Some("the account is locked"),
                )
                .await;
            return Err(LoginRefused::Locked);
        }
        let (hash, pw) = (row.password_hash.clone(), password.to_string());
        let ok = tokio::task::spawn_blocking(move || password_matches(&hash, &pw))
            .await
            .unwrap_or(false);
        if ok {
            let name = row.username.clone();
            let _ = self
                .store
                .call(move |s| s.auth_login_succeeded(&name))
                .await;
            self.record(req, AuthEvent::LoginSucceeded, &who, None)
                .await
                .map_err(|_| LoginRefused::Unavailable)?;
            return User::of(&row).ok_or(LoginRefused::Unavailable);
        }
        let (name, max, lockout) = (
            row.username.clone(),
            i64::from(self.settings.max_failed_logins),
            self.settings.lockout_secs as i64,
        );
        let failures = self
            .store
            .call(move |s| s.auth_login_failed(&name, now(), max, lockout))
            .await
            .map_err(|_| LoginRefused::Unavailable)?;
        let _ = self
            .record(req, AuthEvent::LoginFailed, &who, Some("wrong password"))
            .await;
        if failures.locked_until.is_some() {
            tracing::warn!(user.role = %row.role, "an account was locked after failed sign-ins");
            let _ = self
                .record(
                    req,
                    AuthEvent::AccountLocked,
                    &who,
                    Some("too many failed sign-ins"),
                )
                .await;
            return Err(LoginRefused::Locked);
        }
        // Each failure in a row answers slower (at most 2 s).
        let delay = (failures.failures.clamp(1, 8) as u64) * 250;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Err(LoginRefused::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches(&h, "correct horse"));
        assert!(!password_matches(&h, "correct horse "));
        assert!(!password_matches("not a hash", "x"));
    }

    #[test]
    fn password_files_lose_only_trailing_line_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, " s3cret \r\n\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap(), " s3cret ");
    }

    #[test]
    fn fhir_users_are_patient_practitioner_or_related_person() {
        assert_eq!(
            parse_fhir_user("Practitioner/p1").unwrap(),
            "Practitioner/p1"
        );
        assert!(parse_fhir_user("Organization/o1").is_err());
        assert!(parse_fhir_user("Patient/").is_err());
        assert!(parse_fhir_user("Patient").is_err());
    }
}
