//! The one mapping from errors to HTTP: status, OperationOutcome issue code and
//! message. Every interaction and every framework rejection goes through
//! [`ApiError`], so a client never sees framework plain text. A 500 carries a
//! generic message; the detail goes to the log.

use actix_web::http::StatusCode;

use crate::fhir::{Issue, Severity};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed request or resource; every issue found.
    BadRequest(Vec<Issue>),
    /// 401: no or bad credentials.
    Unauthorized(String),
    /// 403: the caller may not do this.
    Forbidden(String),
    /// 404: unknown type, id or version.
    NotFound(String),
    /// 405: the interaction is not allowed here.
    MethodNotAllowed(String),
    /// 406: the client accepts no format fhirgate writes.
    NotAcceptable(String),
    /// 409: a conflicting state (e.g. the id exists).
    Conflict(String),
    /// 410: the resource was deleted.
    Gone(String),
    /// 408: the body did not arrive in time (`server.body_timeout_secs`).
    RequestTimeout(String),
    /// 499 (nginx's "client closed request"): the client hung up and its work was
    /// stopped; nobody reads the answer, the AuditEvent records it.
    ClientClosed(String),
    /// 412: `If-Match` did not match.
    PreconditionFailed(String),
    /// 413: body or bundle too large.
    PayloadTooLarge(String),
    /// 415: a body format fhirgate does not read.
    UnsupportedMediaType(String),
    /// 422: well-formed but not acceptable by the rules (profiles, business rules).
    Unprocessable(Vec<Issue>),
    /// 429: rate limited; the client may try again after this many seconds.
    TooManyRequests { message: String, retry_after: u64 },
    /// 501: a FHIR interaction this server does not implement.
    NotImplemented(String),
    /// 503: the database is unreachable or overloaded.
    Unavailable(String),
    /// 500: a fault of the server; the detail is logged, not sent.
    Internal(String),
    /// The same error, at an element of what the client sent (a Bundle entry's
    /// `request.url`, a reference in its resource).
    At {
        expression: String,
        error: Box<ApiError>,
    },
    /// The error of one entry of a Bundle: its issues say which entry (`label`) and
    /// point into it (`location`) where they point nowhere more precise.
    Entry {
        label: String,
        location: String,
        error: Box<ApiError>,
    },
    /// Several errors at once (the entries of a failed transaction): the status they
    /// share, else 400, and all their issues.
    Several(Vec<ApiError>),
}

impl ApiError {
    pub fn bad_request(code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError::BadRequest(vec![Issue::error(code, msg)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::ClientClosed(_) => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::REQUEST_TIMEOUT)
            }
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::At { error, .. } | ApiError::Entry { error, .. } => error.status(),
            ApiError::Several(errors) => {
                let first = errors
                    .first()
                    .map_or(StatusCode::BAD_REQUEST, |e| e.status());
                if errors.iter().all(|e| e.status() == first) {
                    first
                } else {
                    StatusCode::BAD_REQUEST
                }
            }
        }
    }

    /// The issues of the OperationOutcome that reports this error.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code: &'static str, msg: &str| vec![Issue::error(code, msg.to_string())];
        match self {
            ApiError::BadRequest(i) | ApiError::Unprocessable(i) => i.clone(),
            ApiError::Unauthorized(m) => one("login", m),
            ApiError::Forbidden(m) => one("forbidden", m),
            ApiError::NotFound(m) => one("not-found", m),
            ApiError::MethodNotAllowed(m) | ApiError::NotAcceptable(m) | ApiError::UnsupportedMediaType(m) => {
                one("not-supported", m)
            }
            ApiError::NotImplemented(m) => one("not-supported", m),
            ApiError::TooManyRequests { message, .. } => one("throttled", message),
            ApiError::Conflict(m) | ApiError::PreconditionFailed(m) => one("conflict", m),
            ApiError::Gone(m) => one("deleted", m),
            ApiError::RequestTimeout(m) => one("timeout", m),
            ApiError::ClientClosed(m) => one("incomplete", m),
            ApiError::PayloadTooLarge(m) => one("too-costly", m),
            ApiError::Unavailable(m) => vec![Issue::error("transient", m.clone())],
            ApiError::Internal(_) => vec![Issue::error(
                "exception",
                "the server failed to process the request; the failure is logged with the request id",
            )
            .severity(Severity::Fatal)],
            ApiError::At { expression, error } => error
                .issues()
                .into_iter()
                .map(|mut i| {
                    if i.expression.is_none() {
                        i.expression = Some(expression.clone());
                    }
                    i
                })
                .collect(),
            ApiError::Entry {
                label,
                location,
                error,
            } => error
                .issues()
                .into_iter()
                .map(|mut i| {
                    i.diagnostics = format!("{label}: {}", i.diagnostics);
                    if i.expression.is_none() {
                        i.expression = Some(location.clone());
                    }
                    i
                })
                .collect(),
            ApiError::Several(errors) => errors.iter().flat_map(ApiError::issues).collect(),
        }
    }

    /// A one-line description for AuditEvent.outcomeDesc and logs (no resource content).
    pub fn describe(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".into(),
            other => other
                .issues()
                .first()
                .map(|i| i.diagnostics.clone())
                .unwrap_or_default(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("the resource does not exist".into()),
            StoreError::AlreadyExists => {
                ApiError::Conflict("a resource with this id already exists".into())
            }
            StoreError::VersionConflict { current } => ApiError::PreconditionFailed(format!(
                "If-Match does not name the current version (the current version is {current})"
            )),
            StoreError::MultipleMatches(n) => ApiError::PreconditionFailed(format!(
                "the If-None-Exist criteria match {n} resources; they must match at most one"
            )),
            StoreError::Contention => ApiError::Conflict(
                "the resource is being changed by another request; try again".into(),
            ),
            StoreError::Forbidden(denied) => ApiError::Forbidden(denied.0),
            StoreError::TooManySubscriptions { max } => ApiError::Unprocessable(vec![Issue::error(
                "business-rule",
                format!(
                    "this server allows at most {max} active subscriptions (setting subscriptions.max_active); set the status of one to off, or delete one, first"
                ),
            )]),
            StoreError::Timeout { budget_secs } => {
                tracing::warn!(
                    budget_secs,
                    "request stopped at its deadline in the database"
                );
                ApiError::BadRequest(vec![Issue::error(
                    "too-costly",
                    format!(
                        "the request needed more than its {budget_s} s in the database and was stopped (setting server.request_timeout_secs); narrow it",
                        budget_s = budget_secs
                    ),
                )])
            }
            StoreError::Cancelled => {
                tracing::info!("the client hung up; its work in the database was stopped");
                ApiError::ClientClosed(
                    "the client closed the connection before the answer; the work was stopped"
                        .into(),
                )
            }
            StoreError::Unavailable(why @ crate::store::Unavailable::ShareExhausted(_)) => {
                tracing::warn!(error = %why, "connection share exhausted");
                ApiError::Unavailable(format!("{why}; try again later"))
            }
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "database unavailable");
                ApiError::Unavailable(format!("{why}; try again later"))
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<crate::search::SearchError> for ApiError {
    fn from(e: crate::search::SearchError) -> Self {
        use crate::search::SearchError as S;
        match e {
            S::UnknownParameter { ref name, .. } | S::Unsupported { ref name, .. } => {
                ApiError::BadRequest(vec![
                    Issue::error("not-supported", e.to_string()).at(name.clone())
                ])
            }
            S::BadValue { ref name, .. } | S::BadModifier { ref name, .. } => {
                ApiError::BadRequest(vec![Issue::error("value", e.to_string()).at(name.clone())])
            }
            S::TooCostly(m) => ApiError::BadRequest(vec![Issue::error("too-costly", m)]),
            S::BadCursor | S::CursorElsewhere | S::CursorOtherCaller => {
                ApiError::BadRequest(vec![Issue::error("value", e.to_string()).at("_cursor")])
            }
            S::Store(s) => ApiError::from(s),
        }
    }
}

impl From<crate::bundle::EntryError> for ApiError {
    fn from(e: crate::bundle::EntryError) -> Self {
        use crate::bundle::EntryError as E;
        match e {
            E::Invalid(issues) => ApiError::BadRequest(issues),
            E::Unprocessable(issues) => ApiError::Unprocessable(issues),
            E::NotFound(m) => ApiError::NotFound(m),
            E::Gone(m) => ApiError::Gone(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::PreconditionFailed(m) => ApiError::PreconditionFailed(m),
            E::MethodNotAllowed(m) => ApiError::MethodNotAllowed(m),
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::NotImplemented(m) => ApiError::NotImplemented(m),
            E::Store(s) => ApiError::from(s),
            E::At { expression, error } => ApiError::At {
                expression,
                error: Box::new(ApiError::from(*error)),
            },
        }
    }
}

impl From<crate::bundle::ReadError> for ApiError {
    fn from(e: crate::bundle::ReadError) -> Self {
        use crate::bundle::ReadError as R;
        match e {
            R::Invalid(issues) => ApiError::BadRequest(issues),
            R::TooManyEntries { .. } => ApiError::PayloadTooLarge(e.to_string()),
            R::NotABundle(_) => ApiError::BadRequest(vec![Issue::error("invalid", e.to_string())]),
            R::WrongType(_) => ApiError::BadRequest(vec![
                Issue::error("invalid", e.to_string()).at("Bundle.type")
            ]),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status(), self.describe())
    }
}
