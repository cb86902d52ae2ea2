//! The token endpoint (`POST /auth/token`): `authorization_code` (single-use
//! codes of at most 60 s, bound to client, redirect URI and PKCE verifier; a
//! second use revokes what the first issued), `refresh_token` (rotated on every
//! use; a used one presented again revokes its whole family) and
//! `client_credentials` (SMART Backend Services, tokens of at most 300 s).
//! Answers are `no-store`; every issue and refusal is audited.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::clients::Client;
use super::events::Who;
use super::jwt::{AccessClaims, IdClaims};
use super::scopes::{Scope, Scopes};
use super::{digest, field, now, random_token, read_form, AuthService, OAuthCode, OAuthError};
use crate::access::{Level, PurposeOfUse};
use crate::audit::AuthEvent;
use crate::http::AppState;
use crate::store::{Redeemed, RefreshRow};

/// Backend-services tokens live at most this long (SMART Backend Services).
pub const BACKEND_MAX_SECS: u64 = 300;
/// Break-glass tokens live at most this long.
pub const BREAK_GLASS_MAX_SECS: u64 = 3600;

/// What a user approved: carried by the code and the refresh-token family.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct GrantDetails {
    pub scope: String,
    /// The patient in context, as its id.
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub username: Option<String>,
    /// `Practitioner/ID` etc.
    pub fhir_user: Option<String>,
    pub role: Option<String>,
    /// `BTG` for break-glass.
    pub purpose: Option<String>,
    pub reason: Option<String>,
    pub nonce: Option<String>,
}

impl GrantDetails {
    fn who(&self, client_id: &str) -> Who {
        Who {
            client_id: Some(client_id.to_string()),
            user: self.fhir_user.clone(),
            patient: self.patient.as_ref().map(|p| format!("Patient/{p}")),
            purpose: self.purpose.clone().map(|code| PurposeOfUse {
                code,
                reason: self.reason.clone(),
            }),
            ..Who::default()
        }
    }
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encounter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    need_patient_banner: Option<bool>,
    /// The access token's `jti` and `sub`, for the AuditEvents (not sent).
    #[serde(skip)]
    jti: String,
    #[serde(skip)]
    sub: String,
}

pub async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let svc = &state.auth;
    let addr = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    if let Err(l) = svc.limits.address(&addr) {
        let e = OAuthError::limited(l.retry_after_secs);
        if let Err(unavailable) = svc
            .record(
                &req,
                AuthEvent::RateLimited,
                &Who::default(),
                Some(&e.description),
            )
            .await
        {
            return unavailable.response();
        }
        return e.response();
    }
    let form = match read_form(payload).await {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let mut who = Who {
        request: Some(token_request_summary(&form)),
        ..Who::default()
    };
    let result = svc.token(&req, &form, &mut who).await;
    match result {
        Ok(body) => {
            who.token_id = Some(body.jti.clone());
            who.subject = Some(body.sub.clone());
            if let Err(unavailable) = svc.record(&req, AuthEvent::TokenIssued, &who, None).await {
                return unavailable.response();
            }
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::PRAGMA, "no-cache"))
                .json(body)
        }
        Err(e) => {
            tracing::info!(oauth.error = e.code.as_str(), "token request refused");
            if let Err(unavailable) = svc
                .record(&req, AuthEvent::TokenRefused, &who, Some(&e.to_string()))
                .await
            {
                return unavailable.response();
            }
            e.response()
        }
    }
}

/// What a token request asked, for its AuditEvent: the grant type and the scope,
/// nothing that could be used (no code, verifier, secret, assertion or token).
fn token_request_summary(form: &[(String, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for key in ["grant_type", "scope"] {
        if let Some(v) = field(form, key) {
            out.append_pair(key, &crate::fhir::types::truncate(v, 500));
        }
    }
    out.finish()
}

/// Does the request say which client sends it (any client authentication or a
/// `client_id`)?
fn names_a_client(req: &HttpRequest, form: &[(String, String)]) -> bool {
    req.headers().contains_key(header::AUTHORIZATION)
        || ["client_id", "client_secret", "client_assertion"]
            .iter()
            .any(|f| field(form, f).is_some())
}

/// PKCE S256: base64url(SHA-256(verifier)) = challenge (RFC 7636 4.6).
fn pkce_holds(verifier: &str, challenge: &str) -> bool {
    let valid = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    valid
        && super::same(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(openssl::sha::sha256(verifier.as_bytes()))
                .as_bytes(),
            challenge.as_bytes(),
        )
}

impl AuthService {
    async fn token(
        &self,
        req: &HttpRequest,
        form: &[(String, String)],
        who: &mut Who,
    ) -> Result<TokenResponse, OAuthError> {
        let grant_type = field(form, "grant_type")
            .ok_or_else(|| OAuthError::request("grant_type is missing"))?;
        if !matches!(
            grant_type,
            "authorization_code" | "refresh_token" | "client_credentials"
        ) {
            return Err(OAuthError::new(
                OAuthCode::UnsupportedGrantType,
                "grant_type must be authorization_code, refresh_token or client_credentials",
            ));
        }
        let public_ok = grant_type != "client_credentials";
        let client = if grant_type == "refresh_token" && !names_a_client(req, form) {
            // RFC 6749 6 asks a public client for no client_id on refresh (the
            // SMART JavaScript client sends none): its refresh token names it.
            self.refresh_token_client(form).await
        } else {
            self.authenticate_client(req, form, public_ok).await
        };
        if let Some(id) = field(form, "client_id") {
            who.client_id = Some(crate::fhir::types::truncate(id, 200));
        }
        let client = client?;
        who.client_id = Some(client.id().to_string());
        if !client.may_use(grant_type) {
            return Err(OAuthError::new(
                OAuthCode::UnauthorizedClient,
                format!("this client is not registered for {grant_type}"),
            ));
        }
        match grant_type {
            "authorization_code" => self.code_grant(&client, form, who).await,
            "refresh_token" => self.refresh_grant(&client, form, who).await,
            _ => self.client_credentials(&client, form),
        }
    }

    /// The public client a refresh token was issued to (a confidential one must
    /// authenticate).
    async fn refresh_token_client(&self, form: &[(String, String)]) -> Result<Client, OAuthError> {
        let token = field(form, "refresh_token")
            .ok_or_else(|| OAuthError::request("refresh_token is missing"))?;
        let hash = digest(token);
        let row = self
            .store
            .call(move |s| s.auth_refresh(&hash))
            .await?
            .ok_or_else(|| OAuthError::grant("the refresh token is not known"))?;
        let client = self.load_client(&row.client_id).await?;
        if !client.public {
            return Err(OAuthError::client(
                "this client must authenticate (client secret or signed assertion)",
            ));
        }
        Ok(client)
    }

    async fn code_grant(
        &self,
        client: &Client,
        form: &[(String, String)],
        who: &mut Who,
    ) -> Result<TokenResponse, OAuthError> {
        let need = |name: &str| {
            field(form, name).ok_or_else(|| OAuthError::request(format!("{name} is missing")))
        };
        let (code, redirect_uri, verifier) =
            (need("code")?, need("redirect_uri")?, need("code_verifier")?);
        let hash = digest(code);
        let redeemed = self.store.call(move |s| s.auth_redeem_code(&hash)).await?;
        let row = match redeemed {
            Redeemed::Unknown => return Err(OAuthError::grant("the code is not known")),
            Redeemed::Reused(row) => {
                // RFC 6749 4.1.2: a code used twice revokes what it gave.
                self.revoke_grant(&row.grant_id).await?;
                return Err(OAuthError::grant(
                    "the code was used before; the tokens issued for it are revoked",
                ));
            }
            Redeemed::Fresh(row) => row,
        };
        if row.expires < now() {
            return Err(OAuthError::grant("the code has expired"));
        }
        if row.client_id != client.id() {
            return Err(OAuthError::grant("the code was issued to another client"));
        }
        if row.redirect_uri != redirect_uri {
            return Err(OAuthError::grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        if !pkce_holds(verifier, &row.code_challenge) {
            return Err(OAuthError::grant(
                "the code_verifier does not match the code_challenge",
            ));
        }
        let details: GrantDetails = serde_json::from_str(&row.details)
            .map_err(|_| OAuthError::grant("the code's grant is unreadable"))?;
        let request = who.request.take();
        *who = details.who(client.id());
        who.request = request;
        self.issue(client, &details, &row.grant_id).await
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        form: &[(String, String)],
        who: &mut Who,
    ) -> Result<TokenResponse, OAuthError> {
        let token = field(form, "refresh_token")
            .ok_or_else(|| OAuthError::request("refresh_token is missing"))?;
        let hash = digest(token);
        let redeemed = self
            .store
            .call(move |s| s.auth_redeem_refresh(&hash))
            .await?;
        let row = match redeemed {
            Redeemed::Unknown => return Err(OAuthError::grant("the refresh token is not known")),
            Redeemed::Reused(row) => {
                self.revoke_grant(&row.grant_id).await?;
                tracing::warn!(client.id = %row.client_id, "a used refresh token was presented again; its family is revoked");
                return Err(OAuthError::grant(
                    "the refresh token was used before; every token of its grant is revoked",
                ));
            }
            Redeemed::Fresh(row) => row,
        };
        let mut details: GrantDetails = serde_json::from_str(&row.details)
            .map_err(|_| OAuthError::grant("the refresh token's grant is unreadable"))?;
        let request = who.request.take();
        *who = details.who(client.id());
        who.request = request;
        if row.expires < now() {
            return Err(OAuthError::grant("the refresh token has expired"));
        }
        if row.client_id != client.id() {
            return Err(OAuthError::grant(
                "the refresh token was issued to another client",
            ));
        }
        let gid = row.grant_id.clone();
        if self
            .store
            .call(move |s| s.auth_is_revoked(&[gid.as_str()]))
            .await?
        {
            return Err(OAuthError::grant("the grant was revoked"));
        }
        if let Some(narrower) = field(form, "scope") {
            let had = Scopes::parse_lenient(&details.scope).0;
            let (asked, _) = Scopes::parse_lenient(narrower);
            if asked.is_empty() || asked.iter().any(|s| !had.contains(s)) {
                return Err(OAuthError::scope(
                    "a refresh may only narrow the scopes that were granted",
                ));
            }
            details.scope = asked.to_string();
        }
        self.issue(client, &details, &row.grant_id).await
    }

    fn client_credentials(
        &self,
        client: &Client,
        form: &[(String, String)],
    ) -> Result<TokenResponse, OAuthError> {
        let asked = field(form, "scope")
            .ok_or_else(|| OAuthError::request("scope is missing (e.g. system/*.rs)"))?;
        let (asked, _) = Scopes::parse_lenient(asked);
        let granted = asked
            .filter(|s| matches!(s, Scope::Resource(r) if r.level == Level::System))
            .within(client.max.as_ref());
        if granted.is_empty() {
            return Err(OAuthError::scope(
                "none of the requested scopes can be granted to this client (system/ scopes within its registration)",
            ));
        }
        // The grant must compile (a granular scope's search must be usable).
        self.compile_grant(&granted, None, None)
            .map_err(OAuthError::scope)?;
        let iat = now();
        let secs = self.access_secs(Some(BACKEND_MAX_SECS));
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.issuer.clone(),
            sub: client.id().to_string(),
            client_id: client.id().to_string(),
            scope: granted.to_string(),
            exp: iat + secs,
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            patient: None,
            encounter: None,
            fhir_user: None,
            role: None,
            grant_id: None,
            purpose_of_use: None,
            purpose_reason: None,
        };
        let access_token = self.sign(&claims)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: secs,
            jti: claims.jti,
            sub: claims.sub,
            scope: claims.scope,
            refresh_token: None,
            id_token: None,
            patient: None,
            encounter: None,
            need_patient_banner: None,
        })
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, OAuthError> {
        self.signer.sign(claims).map_err(|e| {
            tracing::error!(error = %e, "a token could not be signed");
            OAuthError::new(OAuthCode::ServerError, "the token could not be signed")
        })
    }

    /// The tokens of a user's grant: access token, refresh token (for
    /// `offline_access`/`online_access`, not for break-glass), `id_token` (for
    /// `openid` with `fhirUser` or `profile`).
    async fn issue(
        &self,
        client: &Client,
        d: &GrantDetails,
        grant_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let scopes = Scopes::parse_lenient(&d.scope).0;
        let iat = now();
        let btg = d.purpose.as_deref() == Some("BTG");
        let secs = self.access_secs(btg.then_some(BREAK_GLASS_MAX_SECS));
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.issuer.clone(),
            sub: d
                .username
                .clone()
                .unwrap_or_else(|| client.id().to_string()),
            client_id: client.id().to_string(),
            scope: d.scope.clone(),
            exp: iat + secs,
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            patient: d.patient.clone(),
            encounter: d.encounter.clone(),
            fhir_user: d.fhir_user.clone(),
            role: d.role.clone(),
            grant_id: Some(grant_id.to_string()),
            purpose_of_use: d.purpose.clone(),
            purpose_reason: d.reason.clone(),
        };
        let access_token = self.sign(&claims)?;
        let wants_refresh =
            scopes.contains(&Scope::OfflineAccess) || scopes.contains(&Scope::OnlineAccess);
        let refresh_token = if wants_refresh && !btg && client.may_use("refresh_token") {
            let token = random_token().map_err(|_| {
                OAuthError::new(OAuthCode::ServerError, "no randomness for a refresh token")
            })?;
            let row = RefreshRow {
                grant_id: grant_id.to_string(),
                client_id: client.id().to_string(),
                details: serde_json::to_string(d)
                    .map_err(|_| OAuthError::new(OAuthCode::ServerError, "grant not storable"))?,
                expires: iat + self.settings.refresh_token_secs as i64,
            };
            let hash = digest(&token);
            self.store
                .call(move |s| s.auth_add_refresh(&hash, &row, iat))
                .await?;
            Some(token)
        } else {
            None
        };
        let id_token = if scopes.contains(&Scope::OpenId)
            && (scopes.contains(&Scope::FhirUser) || scopes.contains(&Scope::Profile))
        {
            let id = IdClaims {
                iss: self.issuer.clone(),
                sub: claims.sub.clone(),
                aud: client.id().to_string(),
                exp: iat + secs,
                iat,
                fhir_user: d.fhir_user.as_ref().map(|u| format!("{}/{u}", self.issuer)),
                nonce: d.nonce.clone(),
                name: d.username.clone(),
            };
            Some(self.sign(&id)?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: secs,
            scope: d.scope.clone(),
            refresh_token,
            id_token,
            need_patient_banner: d.patient.as_ref().map(|_| true),
            patient: d.patient.clone(),
            encounter: d.encounter.clone(),
            jti: claims.jti,
            sub: claims.sub,
        })
    }

    /// Revokes a grant: its refresh tokens and every access token issued in it,
    /// on every node.
    pub(crate) async fn revoke_grant(&self, grant_id: &str) -> Result<(), OAuthError> {
        let until = now()
            + self
                .settings
                .refresh_token_secs
                .max(self.settings.access_token_secs) as i64;
        let id = grant_id.to_string();
        self.store
            .call(move |s| s.auth_revoke(&id, until, now()))
            .await?;
        self.tokens.mark_revoked(grant_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_holds(verifier, challenge));
        assert!(!pkce_holds(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
        assert!(!pkce_holds("short", challenge));
    }
}
