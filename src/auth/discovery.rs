//! Discovery: `/fhir/.well-known/smart-configuration` (SMART App Launch 2.0,
//! every required field, capabilities true to what works),
//! `/fhir/.well-known/openid-configuration`, and the public signing keys at
//! `/auth/jwks`. JSON whatever the `Accept`, readable from any origin; the
//! discovery documents are audited like `metadata`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::events::origin;
use crate::access::AccessContext;
use crate::audit::{AuditRecord, Interaction};
use crate::http::AppState;

const SCOPES: [&str; 14] = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "system/*.cruds",
];

fn answer(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .json(body)
}

async fn audited(req: &HttpRequest, state: &AppState, body: Value) -> HttpResponse {
    let (request_id, remote) = origin(req);
    let ctx = AccessContext::open(request_id, remote);
    let record = AuditRecord::new(Interaction::Capabilities, &ctx);
    if let Err(e) = state.audit.record(&record).await {
        tracing::error!(error = %e, "the AuditEvent could not be recorded; the response is withheld");
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "5"))
            .json(json!({"error": "temporarily_unavailable", "error_description": "the audit trail is unavailable"}));
    }
    answer(body)
}

pub async fn smart_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = &state.auth;
    let body = json!({
        "issuer": a.issuer,
        "jwks_uri": format!("{}/auth/jwks", a.auth_base),
        "authorization_endpoint": a.authorize_endpoint(),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint": a.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "introspection_endpoint": format!("{}/auth/introspect", a.auth_base),
        "revocation_endpoint": format!("{}/auth/revoke", a.auth_base),
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-banner",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ],
    });
    audited(&req, &state, body).await
}

pub async fn openid_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = &state.auth;
    let body = json!({
        "issuer": a.issuer,
        "authorization_endpoint": a.authorize_endpoint(),
        "token_endpoint": a.token_endpoint(),
        "jwks_uri": format!("{}/auth/jwks", a.auth_base),
        "introspection_endpoint": format!("{}/auth/introspect", a.auth_base),
        "revocation_endpoint": format!("{}/auth/revoke", a.auth_base),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [super::jwt::ALG],
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "fhirUser", "nonce", "name"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "code_challenge_methods_supported": ["S256"],
    });
    audited(&req, &state, body).await
}

pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    answer(state.auth.signer.jwks())
}
