//! The AuditEvents of the authorization server: token issued or refused (and
//! why), revoked, introspected, login succeeded or failed, account locked,
//! consent given or refused, rate limited. Each names who (the client as
//! `who.identifier` with system `urn:fhirgate:client`, the user as
//! `who.reference` = fhirUser), from where, when, and the outcome; none holds a
//! token, secret, password or code.

use actix_web::{HttpMessage, HttpRequest};

use super::AuthService;
use crate::access::{AccessContext, PurposeOfUse};
use crate::audit::{AuditRecord, AuthEvent, Interaction, Outcome};
use crate::http::RequestId;

/// Who an authorization event is about.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub client_id: Option<String>,
    /// The user's fhirUser reference.
    pub user: Option<String>,
    pub patient: Option<String>,
    pub purpose: Option<PurposeOfUse>,
    /// The `jti` and `sub` of the token issued (the AuthZ permit names it).
    pub token_id: Option<String>,
    pub subject: Option<String>,
    /// What a token request asked (grant type and scope), never a secret.
    pub request: Option<String>,
}

impl Who {
    pub fn client(client_id: &str) -> Who {
        Who {
            client_id: Some(client_id.to_string()),
            ..Who::default()
        }
    }
}

/// The request id and client address of a request.
pub fn origin(req: &HttpRequest) -> (String, Option<String>) {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    (request_id, req.peer_addr().map(|a| a.ip().to_string()))
}

impl AuthService {
    /// Records an authorization event and waits until it is durable. Err when
    /// the audit trail is unavailable: the caller must not answer success.
    pub(crate) async fn record(
        &self,
        req: &HttpRequest,
        event: AuthEvent,
        who: &Who,
        failure: Option<&str>,
    ) -> Result<(), super::OAuthError> {
        let (request_id, remote) = origin(req);
        let mut ctx = AccessContext::open(request_id, remote);
        ctx.client_id = who.client_id.clone();
        ctx.user = who.user.clone();
        ctx.purpose_of_use = who.purpose.clone();
        ctx.token_id = who.token_id.clone();
        ctx.subject = who.subject.clone();
        let mut rec = AuditRecord::new(Interaction::Auth(event), &ctx);
        if let Some(p) = &who.patient {
            rec.patients = vec![p.clone()];
        }
        rec.query = who.request.clone();
        rec.outcome = match failure {
            None => Outcome::Success,
            Some(why) => Outcome::ClientError(why.to_string()),
        };
        self.audit.record(&rec).await.map_err(|e| {
            tracing::error!(error = %e, "an authorization AuditEvent could not be recorded");
            super::OAuthError::new(
                super::OAuthCode::TemporarilyUnavailable,
                "the audit trail is unavailable; try again later",
            )
        })
    }
}
