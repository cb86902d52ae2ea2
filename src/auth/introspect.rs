//! Token introspection (RFC 7662) and revocation (RFC 7009). Both read the
//! database, not this node's caches, so a revocation made on any node shows at
//! once: introspection answers `active: false`, and every node's token check
//! refuses the token from its next revocation poll (at most a second later).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::events::Who;
use super::token::GrantDetails;
use super::{digest, field, now, read_form, AuthService, OAuthError};
use crate::audit::AuthEvent;
use crate::http::AppState;

fn no_store(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

/// `POST /auth/introspect`: a confidential client, or a bearer token with a
/// `system/` scope, asks about a token.
pub async fn introspect(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let svc = &state.auth;
    let form = match read_form(payload).await {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let caller = match svc.introspection_caller(&req, &form).await {
        Ok(c) => c,
        Err(e) => {
            let _ = svc
                .record(
                    &req,
                    AuthEvent::TokenRefused,
                    &Who::default(),
                    Some(&e.to_string()),
                )
                .await;
            return e.response();
        }
    };
    let Some(token) = field(&form, "token") else {
        return OAuthError::request("token is missing").response();
    };
    let answer = match svc.describe_token(token).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    if let Err(e) = svc
        .record(
            &req,
            AuthEvent::TokenIntrospected,
            &Who::client(&caller),
            None,
        )
        .await
    {
        return e.response();
    }
    no_store(answer)
}

/// `POST /auth/revoke`: the client a token was issued to revokes it (an
/// access token, or a refresh token with its whole grant). Unknown tokens
/// answer 200 too (RFC 7009 2.2).
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let svc = &state.auth;
    let form = match read_form(payload).await {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let client = match svc.authenticate_client(&req, &form, true).await {
        Ok(c) => c,
        Err(e) => {
            let _ = svc
                .record(
                    &req,
                    AuthEvent::TokenRefused,
                    &Who::default(),
                    Some(&e.to_string()),
                )
                .await;
            return e.response();
        }
    };
    let Some(token) = field(&form, "token") else {
        return OAuthError::request("token is missing").response();
    };
    let who = Who::client(client.id());
    match svc.revoke_token(client.id(), token).await {
        Ok(true) => {
            if let Err(e) = svc.record(&req, AuthEvent::TokenRevoked, &who, None).await {
                return e.response();
            }
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Ok(false) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(e) => {
            let _ = svc
                .record(&req, AuthEvent::TokenRefused, &who, Some(&e.to_string()))
                .await;
            e.response()
        }
    }
}

impl AuthService {
    /// Who may introspect: a confidential client, or a bearer token with a
    /// `system/` scope. Returns the caller's client id.
    async fn introspection_caller(
        &self,
        req: &HttpRequest,
        form: &[(String, String)],
    ) -> Result<String, OAuthError> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string());
        if let Some(t) = bearer {
            let claims = self
                .signer
                .verify(Some(&self.store), &t, true)
                .map_err(|e| {
                    OAuthError::client(format!("the bearer token is not accepted: {e}"))
                })?;
            let p = self
                .verify_bearer(&t)
                .await
                .map_err(|f| OAuthError::client(f.describe()))?;
            let system = super::scopes::Scopes::parse_lenient(&claims.scope)
                .0
                .has_level(crate::access::Level::System);
            if !system {
                return Err(OAuthError::client(
                    "introspection with a bearer token needs a system/ scope",
                ));
            }
            return Ok(p.client_id.clone().unwrap_or_default());
        }
        let client = self.authenticate_client(req, form, false).await?;
        Ok(client.id().to_string())
    }

    /// RFC 7662 answer for a token: an access token fhirgate signed that has not
    /// expired and was not revoked, or a live refresh token.
    async fn describe_token(&self, token: &str) -> Result<serde_json::Value, OAuthError> {
        let inactive = json!({ "active": false });
        if token.len() > 16 * 1024 {
            return Ok(inactive);
        }
        if token.split('.').count() == 3 {
            let Ok(c) = self.signer.verify(Some(&self.store), token, true) else {
                return Ok(inactive);
            };
            let mut ids = vec![c.jti.clone()];
            ids.extend(c.grant_id.clone());
            let revoked = self
                .store
                .call(move |s| {
                    s.auth_is_revoked(&ids.iter().map(String::as_str).collect::<Vec<_>>())
                })
                .await?;
            if revoked {
                return Ok(inactive);
            }
            let mut a = json!({
                "active": true,
                "scope": c.scope,
                "client_id": c.client_id,
                "sub": c.sub,
                "iss": c.iss,
                "aud": c.aud,
                "exp": c.exp,
                "iat": c.iat,
                "nbf": c.nbf,
                "jti": c.jti,
                "token_type": "Bearer",
            });
            if let Some(p) = c.patient {
                a["patient"] = json!(p);
            }
            if let Some(e) = c.encounter {
                a["encounter"] = json!(e);
            }
            if let Some(u) = c.fhir_user {
                a["fhirUser"] = json!(format!("{}/{u}", self.issuer));
            }
            return Ok(a);
        }
        let hash = digest(token);
        let Some(row) = self.store.call(move |s| s.auth_refresh(&hash)).await? else {
            return Ok(inactive);
        };
        let gid = row.grant_id.clone();
        let revoked = self
            .store
            .call(move |s| s.auth_is_revoked(&[gid.as_str()]))
            .await?;
        let hash = digest(token);
        let unused = !matches!(
            self.store.call(move |s| s.auth_refresh_used(&hash)).await?,
            Some(true)
        );
        if revoked || row.expires < now() || !unused {
            return Ok(inactive);
        }
        let d: GrantDetails = serde_json::from_str(&row.details).unwrap_or_default();
        let mut a = json!({
            "active": true,
            "scope": d.scope,
            "client_id": row.client_id,
            "exp": row.expires,
            "iss": self.issuer,
            "token_type": "refresh_token",
        });
        if let Some(u) = &d.username {
            a["sub"] = json!(u);
        }
        if let Some(p) = d.patient {
            a["patient"] = json!(p);
        }
        if let Some(u) = d.fhir_user {
            a["fhirUser"] = json!(format!("{}/{u}", self.issuer));
        }
        Ok(a)
    }

    /// Revokes `token` if it was issued to `client_id`; true when something was
    /// revoked.
    async fn revoke_token(&self, client_id: &str, token: &str) -> Result<bool, OAuthError> {
        if token.len() > 16 * 1024 {
            return Ok(false);
        }
        if token.split('.').count() == 3 {
            let Ok(c) = self.signer.verify(Some(&self.store), token, false) else {
                return Ok(false);
            };
            if c.client_id != client_id {
                return Err(OAuthError::new(
                    super::OAuthCode::UnauthorizedClient,
                    "the token was issued to another client",
                ));
            }
            let (jti, exp) = (c.jti.clone(), c.exp);
            self.store
                .call(move |s| s.auth_revoke(&jti, exp + 60, now()))
                .await?;
            self.tokens.mark_revoked(&c.jti);
            return Ok(true);
        }
        let hash = digest(token);
        let Some(row) = self.store.call(move |s| s.auth_refresh(&hash)).await? else {
            return Ok(false);
        };
        if row.client_id != client_id {
            return Err(OAuthError::new(
                super::OAuthCode::UnauthorizedClient,
                "the token was issued to another client",
            ));
        }
        self.revoke_grant(&row.grant_id).await?;
        Ok(true)
    }
}
