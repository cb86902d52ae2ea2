//! Response headers every answer needs: CORS for the origins of
//! `server.cors_origins` (any origin for the discovery documents and the
//! public keys; preflights answered here), `Cache-Control: no-store` on FHIR
//! responses (they may hold patient data; not on `metadata`) and on the
//! authorization server's, and `Strict-Transport-Security` under TLS.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::http::AppState;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, If-Modified-Since, X-Request-Id";
const EXPOSE_HEADERS: &str =
    "Location, Content-Location, ETag, Last-Modified, X-Request-Id, Retry-After, WWW-Authenticate";

fn is_public(path: &str) -> bool {
    path.starts_with("/fhir/.well-known/") || path == "/auth/jwks"
}

pub async fn secure_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let path = req.path().to_string();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = origin.filter(|o| {
        is_public(&path)
            || state
                .settings
                .server
                .cors_origins
                .iter()
                .any(|a| a == "*" || a.trim_end_matches('/') == o)
    });
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if let Some(o) = &allowed {
            let resp = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.as_str()))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                ))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .insert_header((header::VARY, "Origin"))
                .finish();
            return Ok(req.into_response(resp));
        }
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    let h = res.headers_mut();
    if let Some(o) = allowed {
        let o = if is_public(&path) { "*".to_string() } else { o };
        if let Ok(v) = HeaderValue::from_str(&o) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
    let private = (path.starts_with("/fhir") && !is_public(&path) && path != "/fhir/metadata")
        || (path.starts_with("/auth") && path != "/auth/jwks");
    if private && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if state.settings.tls.cert.is_some() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    Ok(res)
}
