//! OAuth 2.0 error answers of the `/auth` endpoints (RFC 6749 section 5.2):
//! `{"error": ..., "error_description": ...}` with 400, 401 for a client that
//! failed to authenticate, 429 with `Retry-After` when rate limited, 503 when
//! the database is away. Never a framework page, never a 500 for client input.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;

use crate::store::StoreError;

/// The RFC 6749 error codes fhirgate answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    AccessDenied,
    /// RFC 6749 has no code for throttling; the de facto one.
    SlowDown,
    TemporarilyUnavailable,
    ServerError,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthCode::AccessDenied => "access_denied",
            OAuthCode::SlowDown => "slow_down",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::ServerError => "server_error",
        }
    }
}

/// One OAuth error, with a description for the client (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: OAuthCode,
    pub description: String,
    /// Seconds to wait (rate limited).
    pub retry_after: Option<u64>,
    /// The client tried HTTP Basic: a 401 names the scheme.
    pub basic: bool,
}

impl OAuthError {
    pub fn new(code: OAuthCode, description: impl Into<String>) -> OAuthError {
        OAuthError {
            code,
            description: description.into(),
            retry_after: None,
            basic: false,
        }
    }

    pub fn request(d: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthCode::InvalidRequest, d)
    }

    pub fn client(d: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthCode::InvalidClient, d)
    }

    pub fn grant(d: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthCode::InvalidGrant, d)
    }

    pub fn scope(d: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthCode::InvalidScope, d)
    }

    pub fn limited(retry_after: u64) -> OAuthError {
        OAuthError {
            retry_after: Some(retry_after),
            ..OAuthError::new(
                OAuthCode::SlowDown,
                format!("too many requests from this address; try again in {retry_after} s"),
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.code {
            OAuthCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthCode::SlowDown => StatusCode::TOO_MANY_REQUESTS,
            OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON answer, not cacheable.
    pub fn response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status());
        b.insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        if let Some(s) = self.retry_after {
            b.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if self.code == OAuthCode::InvalidClient {
            b.insert_header((
                header::WWW_AUTHENTICATE,
                if self.basic {
                    "Basic realm=\"fhirgate\""
                } else {
                    "Bearer realm=\"fhirgate\""
                },
            ));
        }
        b.json(serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        }))
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            OAuthError::new(
                OAuthCode::TemporarilyUnavailable,
                "the database is unavailable; try again later",
            )
        } else {
            tracing::error!(error = %e, "store failure in the authorization server");
            OAuthError::new(
                OAuthCode::ServerError,
                "the server failed to process the request; the failure is logged",
            )
        }
    }
}
