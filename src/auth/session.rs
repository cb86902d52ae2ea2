//! The login sessions of the authorization pages and of the audit console: a
//! cookie holding a sealed `{sid, csrf, user, exp}` (sealed under the database's
//! data key, so any node opens it; `HttpOnly`, `SameSite=Lax`, `Secure` under
//! TLS, path `/auth` or `/console`: one [`Place`] each, with its own cookie name
//! and sealing purpose, so one place's cookie never opens in the other), and
//! the CSRF token every form carries, which must equal the session's.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::HttpRequest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{now, random_token, same, AuthService};

pub const COOKIE: &str = "fhirgate_session";
/// How long a sign-in lasts.
const SESSION_SECS: i64 = 30 * 60;

/// Where a session lives: the same cookie rules, a cookie of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The authorization endpoint's login, picker and consent pages.
    Authorize,
    /// The audit console (`/console/`).
    Console,
}

impl Place {
    fn cookie(self) -> &'static str {
        match self {
            Place::Authorize => COOKIE,
            Place::Console => "fhirgate_console",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Place::Authorize => "/auth",
            Place::Console => "/console",
        }
    }

    fn purpose(self) -> &'static str {
        match self {
            Place::Authorize => "auth-session",
            Place::Console => "console-session",
        }
    }
}

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
    /// The request's unexpired session of the authorization pages.
    pub(crate) fn session_of(&self, req: &HttpRequest) -> Option<Session> {
        self.session_in(req, Place::Authorize)
    }

    /// The request's unexpired session of `place`, if its cookie opens.
    pub(crate) fn session_in(&self, req: &HttpRequest, place: Place) -> Option<Session> {
        let c = req.cookie(place.cookie())?;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c.value())
            .ok()?;
        let plain = self.store.auth_open(&sealed, place.purpose())?;
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
        self.session_cookie_in(s, Place::Authorize)
    }

    pub(crate) fn session_cookie_in(&self, s: &Session, place: Place) -> Option<Cookie<'static>> {
        let plain = serde_json::to_vec(s).ok()?;
        let sealed = self.store.auth_seal(&plain, place.purpose()).ok()?;
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed);
        Some(
            Cookie::build(place.cookie(), value)
                .path(place.path())
                .http_only(true)
                .same_site(SameSite::Lax)
                .secure(self.tls)
                .max_age(time::Duration::seconds(SESSION_SECS))
                .finish(),
        )
    }

    /// The cookie that ends a session of `place` (signing out).
    pub(crate) fn expired_cookie_in(&self, place: Place) -> Cookie<'static> {
        Cookie::build(place.cookie(), "")
            .path(place.path())
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.tls)
            .max_age(time::Duration::ZERO)
            .finish()
    }
}
