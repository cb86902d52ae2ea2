//! `GET /fhir/AuditEvent/$verify`: the audit chain verified now (everything
//! committed is linked first), as a Parameters resource with `verified`, `head`
//! and, when broken, `brokenAt` and `problem` (DESIGN section 12). For callers
//! who may search every AuditEvent; one verification runs at a time per node.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::AppState;
use crate::audit::chain::VerifyOptions;
use crate::audit::Interaction;

pub async fn verify(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("verify".into()));
    let result = async {
        ex.precondition()?;
        ex.audit.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
        ex.ctx
            .decide_audit_verify()
            .map_err(|d| ApiError::Forbidden(d.0))?;
        let chainer = state.chainer.clone();
        let options = VerifyOptions {
            checkpoint_file: state.settings.audit.checkpoint_file.clone(),
            public_key_pem: None,
        };
        // Not under the request deadline: a long chain takes as long as it takes
        // (at the speed of SHA-256 over the stored rows), but one at a time.
        let verdict = tokio::task::spawn_blocking(move || {
            let Some(_one) = chainer.verifying.try_lock() else {
                return Ok(None);
            };
            chainer.verify(&options).map(Some)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the verification did not finish: {e}")))?
        .map_err(|e| ApiError::Internal(format!("the verification failed to run: {e}")))?
        .ok_or_else(|| {
            ApiError::Unavailable(
                "a verification of the audit chain is running on this node; try again when it is done"
                    .into(),
            )
        })?;
        let mut params = vec![
            json!({"name": "verified", "valueInteger": verdict.verified.min(i32::MAX as i64)}),
            json!({"name": "head", "valueString": verdict.head}),
        ];
        if let Some((at, problem)) = &verdict.broken {
            params.push(json!({"name": "brokenAt", "valueInteger": (*at).min(i32::MAX as i64)}));
            params.push(json!({"name": "problem", "valueString": problem}));
        }
        Ok(Reply::new(
            StatusCode::OK,
            Body::Resource(json!({"resourceType": "Parameters", "parameter": params})),
        ))
    }
    .await;
    ex.finish(&state, result).await
}
