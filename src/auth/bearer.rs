//! The token check of every FHIR request: `Authorization: Bearer` verified
//! (fhirgate's own ES256 tokens, or an external issuer's), not revoked, and
//! turned into a [`Principal`] whose grant is compiled once per token and cached
//! with it, so a request with a known token costs a hash-map look-up. The
//! revocation list is every node's: revocations are polled from the database
//! every second, and this node's own take effect at once.
//!
//! The middleware [`authenticate`] puts an [`Authentication`] into the request;
//! `http::exchange::Exchange::begin` turns it into the `AccessContext` or into
//! the 401/429 answer (an OperationOutcome, audited like every FHIR request).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use super::clients::peek_claims;
use super::jwt::LEEWAY_SECS;
use super::scopes::{Role, Scopes};
use super::{now, AuthService};
use crate::access::{Grant, Level, PurposeOfUse};
use crate::http::AppState;
use crate::store::Store;

/// The largest bearer token looked at.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The most verified tokens a node keeps.
const MAX_CACHED: usize = 100_000;

/// Who a valid token speaks for, and what it may touch.
#[derive(Debug)]
pub struct Principal {
    pub client_id: Option<String>,
    /// The user's FHIR reference (`fhirUser`).
    pub user: Option<String>,
    pub subject: Option<String>,
    /// The token's `jti`.
    pub token_id: Option<String>,
    pub purpose_of_use: Option<PurposeOfUse>,
    pub grant: Grant,
    pub exp: i64,
    pub nbf: i64,
    /// The ids whose revocation ends the token (its `jti`, its grant).
    revocable: Vec<String>,
}

/// Why a FHIR request's credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid(String),
    /// Seconds until the client may try again.
    RateLimited(u64),
}

impl AuthFailure {
    pub fn describe(&self) -> String {
        match self {
            AuthFailure::Missing => {
                "this request needs an access token (Authorization: Bearer ...)".into()
            }
            AuthFailure::Invalid(why) => format!("the access token is not accepted: {why}"),
            AuthFailure::RateLimited(s) => {
                format!("too many requests from this client; try again in {s} s")
            }
        }
    }
}

impl Principal {
    /// The caller this token stands for, in `ctx` (which keeps its request id and
    /// address).
    pub fn apply_to(&self, ctx: &mut crate::access::AccessContext) {
        ctx.client_id = self.client_id.clone();
        ctx.user = self.user.clone();
        ctx.subject = self.subject.clone();
        ctx.token_id = self.token_id.clone();
        ctx.purpose_of_use = self.purpose_of_use.clone();
        ctx.grant = self.grant.clone();
    }
}

/// What the token check decided for one request (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Authentication(pub Result<Arc<Principal>, AuthFailure>);

/// Verified tokens and revoked ids of this node.
#[derive(Default)]
pub struct TokenCache {
    verified: RwLock<HashMap<String, Arc<Principal>>>,
    revoked: RwLock<HashSet<String>>,
    last_seq: Mutex<i64>,
}

impl TokenCache {
    /// Reads the revocations recorded since the last poll (by any node).
    pub fn poll_revocations(&self, store: &Store) {
        let mut last = self.last_seq.lock();
        match store.auth_revoked_since(*last) {
            Ok(rows) if !rows.is_empty() => {
                let mut set = self.revoked.write();
                for r in rows {
                    *last = (*last).max(r.seq);
                    set.insert(r.token_id);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "revocations could not be polled"),
        }
    }

    pub fn mark_revoked(&self, id: &str) {
        self.revoked.write().insert(id.to_string());
    }

    pub fn is_revoked(&self, ids: &[String]) -> bool {
        let set = self.revoked.read();
        ids.iter().any(|i| set.contains(i))
    }

    /// Drops cached tokens that expired.
    pub fn forget_expired(&self, now: i64) {
        self.verified
            .write()
            .retain(|_, p| p.exp + LEEWAY_SECS as i64 >= now);
    }
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// Middleware: checks the bearer token of every FHIR request (not the
/// discovery documents) when `auth.enabled`.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let path = req.path();
    if path.starts_with("/fhir") && !path.starts_with("/fhir/.well-known") {
        if let Some(state) = req.app_data::<web::Data<AppState>>().cloned() {
            if state.settings.auth.enabled {
                let bearer = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|h| h.to_str().map(str::to_string));
                let outcome = state.auth.check(bearer).await;
                req.extensions_mut().insert(Authentication(outcome));
            }
        }
    }
    next.call(req).await
}

impl AuthService {
    /// The principal of an `Authorization` header value, rate limited per client.
    async fn check(
        &self,
        header: Option<Result<String, header::ToStrError>>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let value = match header {
            None => return Err(AuthFailure::Missing),
            Some(Err(_)) => {
                return Err(AuthFailure::Invalid(
                    "the Authorization header is not readable text".into(),
                ))
            }
            Some(Ok(v)) => v,
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(AuthFailure::Invalid(
                    "the Authorization header is not a Bearer token".into(),
                ))
            }
        };
        let p = self.verify_bearer(token).await?;
        let key = p
            .client_id
            .as_deref()
            .or(p.subject.as_deref())
            .unwrap_or("-");
        self.limits
            .client(key)
            .map_err(|l| AuthFailure::RateLimited(l.retry_after_secs))?;
        Ok(p)
    }

    /// A token's principal: from the cache, else verified and compiled.
    pub(crate) async fn verify_bearer(&self, token: &str) -> Result<Arc<Principal>, AuthFailure> {
        let now = now();
        let cached = self.tokens.verified.read().get(token).cloned();
        let p = match cached {
            Some(p) => p,
            None => {
                let p = Arc::new(self.verify_new(token).await?);
                let mut cache = self.tokens.verified.write();
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(token.to_string(), p.clone());
                p
            }
        };
        let leeway = LEEWAY_SECS as i64;
        if p.exp + leeway < now {
            self.tokens.verified.write().remove(token);
            return Err(AuthFailure::Invalid("the token has expired".into()));
        }
        if p.nbf > now + leeway {
            return Err(AuthFailure::Invalid("the token is not valid yet".into()));
        }
        if self.tokens.is_revoked(&p.revocable) {
            return Err(AuthFailure::Invalid("the token was revoked".into()));
        }
        Ok(p)
    }

    async fn verify_new(&self, token: &str) -> Result<Principal, AuthFailure> {
        let invalid = |s: String| AuthFailure::Invalid(s);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid(format!(
                "the token is larger than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if token.is_empty() || token.split('.').count() != 3 {
            return Err(invalid("the token is not a JWT".into()));
        }
        let iss = peek_claims::<Peek>(token)
            .and_then(|p| p.iss)
            .ok_or_else(|| invalid("the token's claims are unreadable or name no issuer".into()))?;
        if iss == self.issuer {
            let store = self.store.clone();
            let claims = self
                .signer
                .verify(Some(&store), token, true)
                .map_err(|e| invalid(e.to_string()))?;
            let scopes = Scopes::parse_lenient(&claims.scope).0;
            let role = claims.role.as_deref().and_then(|r| r.parse::<Role>().ok());
            let grant = self
                .compile_grant(&scopes, claims.patient.as_deref(), role)
                .map_err(invalid)?;
            let mut revocable = vec![claims.jti.clone()];
            revocable.extend(claims.grant_id.clone());
            return Ok(Principal {
                client_id: Some(claims.client_id),
                user: claims.fhir_user,
                subject: Some(claims.sub),
                token_id: Some(claims.jti),
                purpose_of_use: claims.purpose_of_use.map(|code| PurposeOfUse {
                    code,
                    reason: claims.purpose_reason,
                }),
                grant,
                exp: claims.exp,
                nbf: claims.nbf,
                revocable,
            });
        }
        let Some(issuer) = self.external_issuer(&iss).cloned() else {
            return Err(invalid("the token's issuer is not trusted".into()));
        };
        let claims = self
            .verify_external(&issuer, token)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let scopes = Scopes::parse_lenient(claims.scope.as_deref().unwrap_or("")).0;
        // An external user has no fhirgate role: audit scopes only at system level.
        let scopes = scopes.filter(|s| match s {
            super::scopes::Scope::Resource(r) => {
                r.level == Level::System || r.resource_type.as_deref() != Some("AuditEvent")
            }
            _ => true,
        });
        let grant = self
            .compile_grant(&scopes, claims.patient.as_deref(), None)
            .map_err(invalid)?;
        let jti = claims.jti.clone();
        Ok(Principal {
            client_id: claims
                .client_id
                .or(claims.azp)
                .map(|c| format!("{iss}#{c}")),
            user: claims.fhir_user,
            subject: claims.sub,
            token_id: jti.clone(),
            purpose_of_use: None,
            grant,
            exp: claims.exp,
            nbf: claims.nbf.unwrap_or(0),
            revocable: jti.into_iter().collect(),
        })
    }

    /// The grant of a token's scopes: its permissions, the patient compartment of
    /// `patient` for `patient/` scopes, operator work for the admin role.
    pub(crate) fn compile_grant(
        &self,
        scopes: &Scopes,
        patient: Option<&str>,
        role: Option<Role>,
    ) -> Result<Grant, String> {
        let patient = patient.map(|p| p.strip_prefix("Patient/").unwrap_or(p));
        if let Some(p) = patient {
            if crate::fhir::types::Id::parse(p).is_err() {
                return Err("the token's patient is not a Patient id".into());
            }
        }
        let grant = Grant::compile(&scopes.permissions(), patient, &self.search)
            .map_err(|e| format!("the token's scopes cannot be used: {e}"))?;
        Ok(if role == Some(Role::Admin) {
            grant.with_operator()
        } else {
            grant
        })
    }
}
