//! One FHIR interaction from request to response: negotiated format, access
//! context, the AuditEvent that goes with it, and the reply. `finish` makes the
//! audit durable (unless a write already committed it with the data) before the
//! response leaves: a read is never answered without its AuditEvent.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;

use super::error::ApiError;
use super::negotiate::{self, Query};
use super::{AppState, RequestId};
use crate::access::AccessContext;
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::{self, operation_outcome, Format};

/// What a handler answers with.
pub enum Body {
    /// Stored JSON bytes, sent as they are when JSON is wanted without subsetting.
    Stored(Vec<u8>),
    Resource(Value),
    Empty,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Body,
    pub headers: Vec<(HeaderName, String)>,
}

impl Reply {
    pub fn new(status: StatusCode, body: Body) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

pub struct Exchange {
    pub ctx: AccessContext,
    pub query: Query,
    pub format: Format,
    format_error: Option<ApiError>,
    pub pretty: bool,
    pub audit: AuditRecord,
    /// The AuditEvent was committed with the data (writes).
    pub audit_committed: bool,
}

impl Exchange {
    pub fn begin(state: &AppState, req: &HttpRequest, interaction: Interaction) -> Exchange {
        let query = Query::parse(req);
        let negotiated = negotiate::response_format(req, &query);
        Exchange::begin_negotiated(state, req, interaction, query, negotiated)
    }

    /// For the Bulk Data endpoints, whose answers are NDJSON files and a JSON
    /// manifest: an `Accept` of `application/fhir+ndjson` or `application/ndjson`
    /// is what a bulk client sends, and errors are answered in JSON.
    pub fn begin_bulk(state: &AppState, req: &HttpRequest, interaction: Interaction) -> Exchange {
        let query = Query::parse(req);
        let ndjson = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|a| a.contains("ndjson"));
        let negotiated = match negotiate::response_format(req, &query) {
            Err(_) if ndjson => Ok(Format::Json),
            other => other,
        };
        Exchange::begin_negotiated(state, req, interaction, query, negotiated)
    }

    fn begin_negotiated(
        state: &AppState,
        req: &HttpRequest,
        interaction: Interaction,
        query: Query,
        negotiated: Result<Format, ApiError>,
    ) -> Exchange {
        let (format, format_error) = match negotiated {
            Ok(f) => (f, None),
            Err(e) => (Format::Json, Some(e)),
        };
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let remote = req.peer_addr().map(|a| a.ip().to_string());
        let mut ctx = AccessContext::open(request_id, remote);
        // The token check ran in the middleware (`auth::authenticate`); without
        // `auth.enabled` the context stays open (development mode, loopback only).
        let mut auth_error = None;
        if state.settings.auth.enabled {
            match req.extensions().get::<crate::auth::Authentication>() {
                Some(crate::auth::Authentication(Ok(p))) => p.apply_to(&mut ctx),
                Some(crate::auth::Authentication(Err(f))) => {
                    ctx.grant = crate::access::Grant::Restricted(Default::default());
                    auth_error = Some(match f {
                        crate::auth::AuthFailure::RateLimited(s) => ApiError::TooManyRequests {
                            message: f.describe(),
                            retry_after: *s,
                        },
                        other => ApiError::Unauthorized(other.describe()),
                    });
                }
                None => {
                    ctx.grant = crate::access::Grant::Restricted(Default::default());
                    auth_error = Some(ApiError::Unauthorized(
                        crate::auth::AuthFailure::Missing.describe(),
                    ));
                }
            }
        }
        let mut audit = AuditRecord::new(interaction, &ctx);
        if audit.interaction.action() == crate::audit::AuditAction::Execute
            && audit.interaction.code() != "operation"
        {
            audit.query = Some(path_and_query(req));
        }
        let pretty = negotiate::pretty(&query);
        let mut ex = Exchange {
            ctx,
            query,
            format,
            format_error,
            pretty,
            audit,
            audit_committed: false,
        };
        // `metadata` is answered without a token (SMART clients read it first).
        if ex.format_error.is_none() && ex.audit.interaction != Interaction::Capabilities {
            ex.format_error = auth_error;
        }
        ex
    }

    /// The negotiation or authorization failure found at `begin`, if any.
    pub fn precondition(&mut self) -> Result<(), ApiError> {
        match self.format_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The interaction of one entry of a Bundle posted in this exchange: the same
    /// caller and format, its own AuditEvent (and the entry's URL as its query).
    pub fn for_entry(&self, interaction: Interaction, url: &str) -> Exchange {
        let query_string = url.split_once('?').map_or("", |(_, q)| q);
        let query = Query(
            form_urlencoded::parse(query_string.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        let mut audit = AuditRecord::new(interaction, &self.ctx);
        if audit.interaction.action() == crate::audit::AuditAction::Execute {
            audit.query = Some(url.to_string());
        }
        Exchange {
            ctx: self.ctx.clone(),
            query,
            format: self.format,
            format_error: None,
            pretty: self.pretty,
            audit,
            audit_committed: false,
        }
    }

    /// Puts the outcome into the audit record and makes it durable (unless a write
    /// committed it with the data). Err when the audit trail is unavailable: then
    /// nothing may be answered.
    pub async fn record(
        &mut self,
        state: &AppState,
        result: &Result<Reply, ApiError>,
    ) -> Result<(), ApiError> {
        match result {
            Ok(_) => self.audit.outcome = Outcome::Success,
            Err(e) => {
                self.audit.outcome = Outcome::from_status(e.status().as_u16(), e.describe());
                // Every denial is recorded as an authorization decision too.
                self.audit.denied = matches!(e, ApiError::Forbidden(_));
                if e.status().is_server_error() {
                    tracing::warn!(status = e.status().as_u16(), "request failed");
                }
            }
        }
        if self.audit_committed {
            return Ok(());
        }
        state.audit.record(&self.audit).await.map_err(|e| {
            tracing::error!(error = %e, "the AuditEvent could not be recorded; the response is withheld");
            ApiError::Unavailable(format!(
                "the AuditEvent of this request could not be recorded ({e}), so it is not answered; try again later"
            ))
        })
    }

    /// Records the audit (if a write did not) and builds the HTTP response.
    pub async fn finish(
        mut self,
        state: &AppState,
        result: Result<Reply, ApiError>,
    ) -> HttpResponse {
        if let Err(unrecorded) = self.record(state, &result).await {
            // A request that failed because the database is unavailable says so
            // (its reason is the honest one), not only that its AuditEvent could
            // not be recorded; nothing of the record was disclosed either way.
            return match &result {
                Err(e @ ApiError::Unavailable(_)) => self.error_response(state, e),
                _ => self.error_response(state, &unrecorded),
            };
        }
        match result {
            Ok(r) => self.response(state, r),
            Err(e) => self.error_response(state, &e),
        }
    }

    pub fn error_response(&self, state: &AppState, e: &ApiError) -> HttpResponse {
        let oo = operation_outcome(&e.issues());
        let mut reply = Reply::new(e.status(), Body::Resource(oo));
        if matches!(e, ApiError::Unauthorized(_)) {
            reply = reply.header(header::WWW_AUTHENTICATE, "Bearer realm=\"fhirgate\"");
        }
        if matches!(e, ApiError::Unavailable(_)) {
            reply = reply.header(header::RETRY_AFTER, "5");
        }
        if let ApiError::TooManyRequests { retry_after, .. } = e {
            reply = reply.header(header::RETRY_AFTER, retry_after.to_string());
        }
        self.response(state, reply)
    }

    fn response(&self, state: &AppState, reply: Reply) -> HttpResponse {
        let mut b = HttpResponse::build(reply.status);
        for (name, value) in &reply.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                b.insert_header((name.clone(), v));
            }
        }
        let bytes = match reply.body {
            Body::Empty => return b.finish(),
            Body::Stored(bytes) if self.format == Format::Json && !self.pretty => bytes,
            Body::Stored(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => match fhir::serialize(&state.model, &v, self.format, self.pretty) {
                    Ok(b) => b,
                    Err(e) => return internal(&e.diagnostics),
                },
                Err(e) => return internal(&e.to_string()),
            },
            Body::Resource(v) => {
                match fhir::serialize(&state.model, &v, self.format, self.pretty) {
                    Ok(b) => b,
                    Err(e) => return internal(&e.diagnostics),
                }
            }
        };
        b.insert_header((
            header::CONTENT_TYPE,
            format!("{}; charset=utf-8", self.format.mime()),
        ));
        b.body(bytes)
    }
}

fn internal(detail: &str) -> HttpResponse {
    tracing::error!(error = detail, "could not serialise a response");
    HttpResponse::InternalServerError()
        .insert_header((header::CONTENT_TYPE, "application/fhir+json; charset=utf-8"))
        .body(r#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"the server failed to write the response"}]}"#)
}

/// The request's path and query string, as AuditEvents record what was asked.
pub fn path_and_query(req: &HttpRequest) -> String {
    match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    }
}

/// Reads the request body, refusing more than the configured limit with a 413.
pub async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Vec<u8>, ApiError> {
    let limit = state.settings.server.max_body_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(
                    "structure",
                    format!("the request body could not be read: {e}"),
                )
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    // A body sent slowly must not hold a worker's memory and a connection
    // for ever (issue 13): the whole body has `server.body_timeout_secs`.
    let body = match state.settings.server.body_timeout() {
        None => read.await?,
        Some(t) => tokio::time::timeout(t, read).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s (setting server.body_timeout_secs)",
                t.as_secs()
            ))
        })??,
    };
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "required",
            "the request has no body; send a resource",
        ));
    }
    Ok(body)
}
