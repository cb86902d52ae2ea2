//! Content negotiation (FHIR R4 http 3.1.0.1.x): the response format from
//! `_format` or `Accept`, the request format from `Content-Type`, `_pretty`, and
//! the query string as ordered pairs.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::error::ApiError;
use crate::fhir::Format;

/// The query string as decoded (name, value) pairs, in order.
#[derive(Debug, Clone, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(req: &HttpRequest) -> Query {
        Query(
            form_urlencoded::parse(req.query_string().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn format_from_mime(m: &str) -> Option<Format> {
    let m = m
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match m.as_str() {
        "application/fhir+json" | "application/json" | "json" | "application/json+fhir" => {
            Some(Format::Json)
        }
        "application/fhir+xml"
        | "application/xml"
        | "text/xml"
        | "xml"
        | "application/xml+fhir" => Some(Format::Xml),
        _ => None,
    }
}

/// The format of the response: `_format` wins over `Accept`; JSON by default.
pub fn response_format(req: &HttpRequest, q: &Query) -> Result<Format, ApiError> {
    if let Some(f) = q.get("_format") {
        return format_from_mime(f).ok_or_else(|| {
            ApiError::NotAcceptable(format!(
                "_format `{}` is not supported; use json or xml",
                crate::fhir::types::truncate(f, 60)
            ))
        });
    }
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
    else {
        return Ok(Format::Json);
    };
    let mut any = false;
    for part in accept.split(',') {
        let mime = part.split(';').next().unwrap_or("").trim();
        if let Some(f) = format_from_mime(mime) {
            return Ok(f);
        }
        if mime == "*/*" || mime == "application/*" || mime.is_empty() {
            any = true;
        }
    }
    if any {
        Ok(Format::Json)
    } else {
        Err(ApiError::NotAcceptable(
            "the Accept header names no format fhirgate writes; use application/fhir+json or application/fhir+xml".into(),
        ))
    }
}

/// The format of the request body, from `Content-Type`.
pub fn request_format(req: &HttpRequest) -> Result<Format, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "the request has no Content-Type; send application/fhir+json or application/fhir+xml".into(),
            )
        })?;
    format_from_mime(ct).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "Content-Type `{}` is not supported; send application/fhir+json or application/fhir+xml",
            crate::fhir::types::truncate(ct, 80)
        ))
    })
}

pub fn pretty(q: &Query) -> bool {
    q.get("_pretty") == Some("true")
}

pub use crate::fhir::types::parse_etag;
