//! The login session of the authorization pages: a cookie holding a sealed
//! `{sid, csrf, user, exp}` (sealed under the database's data key, so any node
//! opens it; `HttpOnly`, `SameSite=Lax`, `Secure` under TLS, path `/auth`), and
//! the CSRF token every form carries, which must equal the session's.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::HttpRequest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{now, random_token, same, AuthService};

pub const COOKIE: &str = "fhirgate_session";
/// How long a sign-in lasts.
const SESSION_SECS: i64 = 30 * 60;
const PURPOSE: &str = "auth-session";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub sid: String,
    pub csrf: String,
    /// The signed-in user's name.
    pub user: Option<String>,
    pub exp: i64,
}

impl Session {
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| same(p.as_bytes(), self.csrf.as_bytes()))
    }
}

impl AuthService {
    /// The request's unexpired session, if its cookie opens.
    pub(crate) fn session_of(&self, req: &HttpRequest) -> Option<Session> {
        let c = req.cookie(COOKIE)?;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c.value())
            .ok()?;
        let plain = self.store.auth_open(&sealed, PURPOSE)?;
        let s: Session = serde_json::from_slice(&plain).ok()?;
        (s.exp > now()).then_some(s)
    }

    /// A new session (new id and CSRF token: also after a sign-in, so a session
    /// id planted before it is worth nothing).
    pub(crate) fn new_session(&self, user: Option<String>) -> Option<Session> {
        Some(Session {
            sid: random_token().ok()?,
            csrf: random_token().ok()?,
            user,
            exp: now() + SESSION_SECS,
        })
    }

    pub(crate) fn session_cookie(&self, s: &Session) -> Option<Cookie<'static>> {
        let plain = serde_json::to_vec(s).ok()?;
        let sealed = self.store.auth_seal(&plain, PURPOSE).ok()?;
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed);
        Some(
            Cookie::build(COOKIE, value)
                .path("/auth")
                .http_only(true)
                .same_site(SameSite::Lax)
                .secure(self.tls)
                .max_age(time::Duration::seconds(SESSION_SECS))
                .finish(),
        )
    }
}
