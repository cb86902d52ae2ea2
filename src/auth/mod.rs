//! fhirgate's SMART authorization: its own authorization server (SMART App
//! Launch 2.0 code flow with PKCE, SMART Backend Services, refresh, RFC 7662
//! introspection, RFC 7009 revocation, discovery), tokens of external issuers,
//! and the check of every FHIR request's bearer token that turns it into an
//! [`AccessContext`](crate::access::AccessContext) with a compiled grant.
//!
//! One file per idea: `scopes` (SMART scopes -> permissions, role bounds), `jwt`
//! (signing keys and fhirgate's own tokens), `clients` (registration and client
//! authentication), `users` (registration, login, lockout), `session` (the
//! sealed login cookie and CSRF), `pages` (the HTML forms), `authorize` (the
//! authorization endpoint), `token` (the token endpoint), `introspect`
//! (introspection and revocation), `discovery` (`.well-known` and `/auth/jwks`),
//! `issuers` (external issuers and remote JWK Sets), `bearer` (the token check
//! of FHIR requests, its cache and the revocation list), `ratelimit`,
//! `headers` (CORS, HSTS, `Cache-Control`), `events` (their AuditEvents).
//!
//! Architecture invariant: everything another node must know lives in the
//! database (clients, users, codes, refresh families, revocations, `jti`s,
//! signing keys); a node's memory holds only caches of it (verified tokens,
//! revocations polled every second, JWK Sets, rate-limit buckets).
//! Architecture invariant: no token, secret, password, code or key reaches a log
//! line or an AuditEvent; they are stored hashed or sealed.
//! Architecture invariant: the data layer never sees a token; it sees the
//! `Grant` compiled here.

mod authorize;
mod bearer;
pub mod clients;
mod discovery;
mod error;
mod events;
mod headers;
mod introspect;
mod issuers;
pub mod jwt;
mod pages;
mod ratelimit;
pub mod scopes;
mod session;
mod token;
pub mod users;

use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::web;
use base64::Engine as _;

use crate::audit::AuditWriter;
use crate::config::{AuthSettings, Settings};
use crate::search::SearchEngine;
use crate::store::Store;

pub use authorize::{new_launch, LaunchError};
pub use bearer::{authenticate, AuthFailure, Authentication, Principal};
pub use error::{OAuthCode, OAuthError};
pub use headers::secure_headers;
pub(crate) use pages::templates;
pub use session::{Place, Session};
pub use users::LoginRefused;

/// The authorization server and token checker of one node.
pub struct AuthService {
    pub(crate) settings: AuthSettings,
    pub(crate) tls: bool,
    /// The FHIR base URL: `iss` and `aud` of fhirgate's tokens.
    pub(crate) issuer: String,
    /// Where `/auth/...` lives (the base URL without `/fhir`).
    pub(crate) auth_base: String,
    pub(crate) store: Store,
    pub(crate) search: Arc<SearchEngine>,
    pub(crate) audit: AuditWriter,
    pub(crate) signer: jwt::Signer,
    pub(crate) limits: ratelimit::RateLimits,
    pub(crate) keysets: issuers::KeySets,
    pub(crate) tokens: bearer::TokenCache,
    pub(crate) pages: pages::Pages,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error("token signing keys: {0}")]
    Keys(#[from] jwt::JwtError),
    #[error("the login pages: {0}")]
    Pages(String),
    #[error("auth.issuers: {0}")]
    Issuer(String),
}

impl AuthService {
    /// Loads (or on first start makes) the signing keys, the revocation list and
    /// the pages, and starts the node's poller of revocations.
    pub fn start(
        settings: &Settings,
        store: Store,
        search: Arc<SearchEngine>,
        audit: AuditWriter,
    ) -> Result<Arc<AuthService>, AuthStartError> {
        for i in &settings.auth.issuers {
            if !(i.jwks_uri.starts_with("https://") || i.jwks_uri.starts_with("http://")) {
                return Err(AuthStartError::Issuer(format!(
                    "the jwks_uri of {} is not an http(s) URL",
                    i.issuer
                )));
            }
        }
        let issuer = settings.base_url();
        let signer = jwt::Signer::load(&store, &issuer)?;
        let tokens = bearer::TokenCache::default();
        tokens.poll_revocations(&store);
        let svc = Arc::new(AuthService {
            settings: settings.auth.clone(),
            tls: settings.uses_tls(),
            issuer,
            auth_base: settings.auth_base(),
            store,
            search,
            audit,
            signer,
            limits: ratelimit::RateLimits::new(&settings.ratelimit),
            keysets: issuers::KeySets::default(),
            tokens,
            pages: pages::Pages::new().map_err(AuthStartError::Pages)?,
        });
        start_poller(Arc::downgrade(&svc));
        Ok(svc)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/auth/token", self.auth_base)
    }

    pub fn authorize_endpoint(&self) -> String {
        format!("{}/auth/authorize", self.auth_base)
    }

    /// Lifetime of an access token issued now (capped for backend services).
    fn access_secs(&self, cap: Option<u64>) -> i64 {
        let s = self.settings.access_token_secs.max(1);
        cap.map_or(s, |c| s.min(c)) as i64
    }
}

/// Every second: new revocations (from any node). Every minute: forget what
/// expired (database rows, cached tokens, idle rate-limit buckets). Ends when the
/// service is dropped.
fn start_poller(svc: Weak<AuthService>) {
    let spawned = std::thread::Builder::new()
        .name("auth-revocations".into())
        .spawn(move || {
            let mut tick: u64 = 0;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(svc) = svc.upgrade() else { return };
                svc.tokens.poll_revocations(&svc.store);
                tick += 1;
                if tick % 60 == 0 {
                    if let Err(e) = svc.signer.reload(&svc.store) {
                        tracing::warn!(error = %e, "the signing keys could not be reloaded");
                    }
                    svc.tokens.forget_expired(now());
                    svc.limits.forget_idle();
                    if let Err(e) = svc.store.auth_purge_expired(now(), 3600) {
                        tracing::debug!(error = %e, "expired authorization rows not purged");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the revocation poller; revocations made on other nodes are seen only by introspection");
    }
}

/// Routes of the authorization server and the SMART discovery documents (these
/// before the FHIR routes, which would take `.well-known` for a type).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/fhir/.well-known/smart-configuration",
        web::get().to(discovery::smart_configuration),
    )
    .route(
        "/fhir/.well-known/openid-configuration",
        web::get().to(discovery::openid_configuration),
    )
    .service(
        web::scope("/auth")
            .service(
                web::resource("/authorize")
                    .route(web::get().to(authorize::get))
                    .route(web::post().to(authorize::post))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(endpoint("/token", web::post().to(token::post)))
            .service(endpoint(
                "/introspect",
                web::post().to(introspect::introspect),
            ))
            .service(endpoint("/revoke", web::post().to(introspect::revoke)))
            .service(endpoint("/jwks", web::get().to(discovery::jwks)))
            .default_service(web::to(not_found)),
    );
}

/// One endpoint whose other methods get an OAuth error, not a bare 405.
fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

async fn not_found() -> actix_web::HttpResponse {
    let mut r = OAuthError::request("no such endpoint of the authorization server").response();
    *r.status_mut() = actix_web::http::StatusCode::NOT_FOUND;
    r
}

async fn method_not_allowed() -> actix_web::HttpResponse {
    let mut r = OAuthError::request("this endpoint does not take this HTTP method").response();
    *r.status_mut() = actix_web::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// 256 random bits, base64url: codes, refresh tokens, secrets, launch ids.
pub(crate) fn random_token() -> Result<String, openssl::error::ErrorStack> {
    let mut b = [0u8; 32];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// What is stored of a random secret: SHA-256 (the secret has 256 bits of
/// entropy, so a slow hash adds nothing).
pub(crate) fn digest(secret: &str) -> Vec<u8> {
    openssl::sha::sha256(secret.as_bytes()).to_vec()
}

/// Compares two byte strings in constant time.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// A form body's fields in order (repeated names kept: consent's `scope`s).
pub(crate) fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of a field.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a form body of at most 64 KiB, sent within 30 s (a form that small
/// arrives at once from any client; a slow one only holds a connection).
pub(crate) async fn read_form(
    mut payload: web::Payload,
) -> Result<Vec<(String, String)>, OAuthError> {
    use futures_util::StreamExt;
    const LIMIT: usize = 64 * 1024;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| OAuthError::request(format!("the body could not be read: {e}")))?;
            if body.len() + chunk.len() > LIMIT {
                return Err(OAuthError::request("the form is larger than 64 KiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(TIMEOUT, read)
        .await
        .map_err(|_| OAuthError::request("the form did not arrive within 30 s"))??;
    Ok(form_fields(&body))
}
