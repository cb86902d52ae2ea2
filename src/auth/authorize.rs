//! The authorization endpoint (`GET|POST /auth/authorize`, SMART App Launch
//! 2.0): the request is checked (an unknown client or an unregistered redirect
//! URI gets an error page and no redirect; every other problem goes back to the
//! redirect URI as `error=...&state=...`), then the user signs in, picks a
//! patient when a non-patient user asks for `launch/patient`, and approves or
//! unticks the scopes; `allow` redirects with a code (single use, 60 s), `deny`
//! with `error=access_denied`.
//!
//! The pages post back to this endpoint with the request in hidden inputs and
//! a `step` (`login`, `patient`, `consent`); every post is checked again from
//! the start, and carries the session's CSRF token.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::clients::Client;
use super::events::Who;
use super::pages::{Hidden, PatientChoice, ScopeChoice};
use super::scopes::{Role, Scope, Scopes};
use super::session::Session;
use super::token::GrantDetails;
use super::users::User;
use super::{digest, field, form_fields, now, random_token, read_form, AuthService};
use crate::access::{AccessContext, Level, PurposeOfUse};
use crate::audit::AuthEvent;
use crate::http::AppState;
use crate::store::{CodeRow, LaunchRow};

/// Codes live at most this long (DESIGN section 11).
const CODE_SECS: i64 = 60;
/// The request parameters carried from page to page.
const CARRIED: [&str; 10] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "requested_scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
];

pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let fields = form_fields(req.query_string().as_bytes());
    flow(&req, &state.auth, fields).await
}

pub async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    match read_form(payload).await {
        Ok(fields) => flow(&req, &state.auth, fields).await,
        Err(e) => state
            .auth
            .pages
            .error(StatusCode::BAD_REQUEST, &e.description),
    }
}

/// A checked authorization request.
struct Checked {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    /// What the client asked for, within its registration.
    requested: Scopes,
    launch: Option<(Vec<u8>, LaunchRow)>,
    /// The request's parameters, to carry in hidden inputs.
    carried: Vec<Hidden>,
}

/// How a request ends early.
enum Stop {
    /// An error page; nothing is sent to the client.
    Page(StatusCode, String),
    /// `error=...` to the client's redirect URI.
    Redirect {
        uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

/// `uri` with `params` added to its query.
fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", s.finish())
}

fn found(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

impl Stop {
    fn response(self, svc: &AuthService) -> HttpResponse {
        match self {
            Stop::Page(status, message) => svc.pages.error(status, &message),
            Stop::Redirect {
                uri,
                state,
                error,
                description,
            } => {
                let mut params = vec![
                    ("error", error),
                    ("error_description", description.as_str()),
                ];
                if let Some(s) = &state {
                    params.push(("state", s.as_str()));
                }
                found(&with_query(&uri, &params))
            }
        }
    }
}

async fn flow(req: &HttpRequest, svc: &AuthService, fields: Vec<(String, String)>) -> HttpResponse {
    let checked = match svc.check_request(&fields).await {
        Ok(c) => c,
        Err(stop) => return stop.response(svc),
    };
    let step = field(&fields, "step");
    let session = svc.session_of(req);
    let result = match step {
        None => match session.as_ref().and_then(|s| s.user.clone()) {
            Some(name) => match svc.session_user(&name).await {
                Some(user) => {
                    svc.after_login(req, &checked, session, &user, &fields)
                        .await
                }
                None => Ok(svc.login_page(&checked, session, None, StatusCode::OK)),
            },
            None => Ok(svc.login_page(&checked, session, None, StatusCode::OK)),
        },
        Some("login") => svc.login_step(req, &checked, session, &fields).await,
        Some("patient") | Some("consent") => {
            let Some(s) = session.filter(|s| s.csrf_matches(field(&fields, "csrf"))) else {
                return svc.login_page(
                    &checked,
                    None,
                    Some("The form has expired or did not come from this session; sign in again."),
                    StatusCode::FORBIDDEN,
                );
            };
            let user = match &s.user {
                Some(name) => svc.session_user(name).await,
                None => None,
            };
            let Some(user) = user else {
                return svc.login_page(
                    &checked,
                    None,
                    Some("Sign in first."),
                    StatusCode::FORBIDDEN,
                );
            };
            if step == Some("consent") {
                svc.consent_step(req, &checked, &s, &user, &fields).await
            } else {
                svc.after_login(req, &checked, Some(s), &user, &fields)
                    .await
            }
        }
        Some(_) => Err(Stop::Page(
            StatusCode::BAD_REQUEST,
            "the form's step is not one of this server's".into(),
        )),
    };
    result.unwrap_or_else(|stop| stop.response(svc))
}

impl AuthService {
    /// Checks the authorization request in the order RFC 6749 4.1.2.1 asks:
    /// first what decides whether the client may be redirected to at all.
    async fn check_request(&self, fields: &[(String, String)]) -> Result<Checked, Stop> {
        let page = |m: &str| Stop::Page(StatusCode::BAD_REQUEST, m.to_string());
        let client_id = field(fields, "client_id").ok_or_else(|| page("client_id is missing"))?;
        let client = self
            .load_client(client_id)
            .await
            .map_err(|e| match e.code {
                super::OAuthCode::InvalidClient => page("the client_id names no registered client"),
                _ => Stop::Page(StatusCode::SERVICE_UNAVAILABLE, e.description),
            })?;
        let redirect_uri = field(fields, "redirect_uri")
            .ok_or_else(|| page("redirect_uri is missing"))?
            .to_string();
        if !client.row.redirect_uris.contains(&redirect_uri) {
            return Err(page(
                "the redirect_uri is not one the client registered (it must match exactly)",
            ));
        }
        let state = field(fields, "state").map(str::to_string);
        let back = |error: &'static str, description: &str| Stop::Redirect {
            uri: redirect_uri.clone(),
            state: state.clone(),
            error,
            description: description.to_string(),
        };
        if field(fields, "response_type") != Some("code") {
            return Err(back(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        if !client.may_use("authorization_code") {
            return Err(back(
                "unauthorized_client",
                "the client is not registered for the authorization code flow",
            ));
        }
        match field(fields, "code_challenge_method") {
            Some("S256") => {}
            Some(_) => {
                return Err(back(
                    "invalid_request",
                    "code_challenge_method must be S256 (plain is refused)",
                ))
            }
            None => {
                return Err(back(
                    "invalid_request",
                    "PKCE is required: code_challenge_method=S256",
                ))
            }
        }
        let challenge = field(fields, "code_challenge").unwrap_or("");
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(back(
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)",
            ));
        }
        let aud = field(fields, "aud").unwrap_or("");
        if aud.trim_end_matches('/') != self.issuer {
            return Err(back(
                "invalid_request",
                "aud must be this server's FHIR base URL",
            ));
        }
        let asked = field(fields, "requested_scope")
            .or_else(|| field(fields, "scope"))
            .unwrap_or("");
        let (asked, _) = Scopes::parse_lenient(asked);
        let requested = asked
            .filter(|s| !matches!(s, Scope::Resource(r) if r.level == Level::System))
            .within(client.max.as_ref());
        if requested.is_empty() {
            return Err(back(
                "invalid_scope",
                "none of the requested scopes can be granted to this client",
            ));
        }
        let launch = match field(fields, "launch") {
            None | Some("") => None,
            Some(id) => {
                let hash = digest(id);
                let h = hash.clone();
                let row = self
                    .store
                    .call(move |s| s.auth_launch(&h, now()))
                    .await
                    .map_err(|_| {
                        Stop::Page(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the database is unavailable".into(),
                        )
                    })?
                    .ok_or_else(|| {
                        back("invalid_request", "the launch is unknown, used or expired")
                    })?;
                Some((hash, row))
            }
        };
        let mut carried = Vec::new();
        for name in CARRIED {
            let value = match name {
                "requested_scope" => Some(requested.to_string()),
                n => field(fields, n).map(str::to_string),
            };
            if let Some(value) = value {
                carried.push(Hidden {
                    name: name.to_string(),
                    value,
                });
            }
        }
        Ok(Checked {
            client,
            redirect_uri,
            state,
            requested,
            launch,
            carried,
        })
    }

    fn hidden(&self, checked: &Checked, session: &Session, extra: &[(&str, &str)]) -> Vec<Hidden> {
        let mut h = checked.carried.clone();
        h.push(Hidden {
            name: "csrf".into(),
            value: session.csrf.clone(),
        });
        for (n, v) in extra {
            h.push(Hidden {
                name: n.to_string(),
                value: v.to_string(),
            });
        }
        h
    }

    /// A page with the session cookie set.
    fn with_cookie(&self, mut resp: HttpResponse, session: &Session) -> HttpResponse {
        if let Some(c) = self.session_cookie(session) {
            let _ = resp.add_cookie(&c);
        }
        resp
    }

    fn login_page(
        &self,
        checked: &Checked,
        session: Option<Session>,
        error: Option<&str>,
        status: StatusCode,
    ) -> HttpResponse {
        let Some(session) = session
            .filter(|s| s.user.is_none())
            .or_else(|| self.new_session(None))
        else {
            return self
                .pages
                .error(StatusCode::SERVICE_UNAVAILABLE, "no session could be made");
        };
        let resp = self.pages.render(
            status,
            "login.html",
            minijinja::context! {
                client_name => checked.client.row.name,
                action => self.authorize_endpoint(),
                hidden => self.hidden(checked, &session, &[]),
                error => error,
            },
            Some(&checked.redirect_uri),
        );
        self.with_cookie(resp, &session)
    }

    async fn login_step(
        &self,
        req: &HttpRequest,
        checked: &Checked,
        session: Option<Session>,
        fields: &[(String, String)],
    ) -> Result<HttpResponse, Stop> {
        let Some(session) = session.filter(|s| s.csrf_matches(field(fields, "csrf"))) else {
            return Ok(self.login_page(
                checked,
                None,
                Some("The form has expired or did not come from this session; sign in again."),
                StatusCode::FORBIDDEN,
            ));
        };
        let username = field(fields, "username").unwrap_or("");
        let password = field(fields, "password").unwrap_or("");
        match self
            .login(req, checked.client.id(), username, password)
            .await
        {
            Ok(user) => {
                let Some(fresh) = self.new_session(Some(user.username.clone())) else {
                    return Err(Stop::Page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no session could be made".into(),
                    ));
                };
                self.after_login(req, checked, Some(fresh), &user, fields)
                    .await
            }
            Err(refused) => {
                let status = match refused {
                    super::users::LoginRefused::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                    super::users::LoginRefused::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                };
                let mut resp =
                    self.login_page(checked, Some(session), Some(&refused.message()), status);
                if let super::users::LoginRefused::Throttled(s) = refused {
                    if let Ok(v) = header::HeaderValue::from_str(&s.to_string()) {
                        resp.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                }
                Ok(resp)
            }
        }
    }

    /// The patient in context: the launch's, the patient user's own, or the one
    /// picked. `Ok(None)`: none is needed. `Err(None)`: the picker must be shown.
    async fn patient_context(
        &self,
        checked: &Checked,
        user: &User,
        picked: Option<&str>,
    ) -> Result<Option<(String, Option<String>)>, Result<Stop, Option<String>>> {
        let denied = |m: &str| {
            Ok(Stop::Redirect {
                uri: checked.redirect_uri.clone(),
                state: checked.state.clone(),
                error: "access_denied",
                description: m.to_string(),
            })
        };
        let own = user.fhir_user.strip_prefix("Patient/").map(str::to_string);
        if let Some((_, launch)) = &checked.launch {
            if launch
                .username
                .as_deref()
                .is_some_and(|u| u != user.username)
            {
                return Err(denied("the launch was made for another user"));
            }
            let id = launch.patient.trim_start_matches("Patient/").to_string();
            if user.role == Role::Patient && own.as_deref() != Some(id.as_str()) {
                return Err(denied("a patient may only launch with their own record"));
            }
            let encounter = launch
                .encounter
                .as_ref()
                .map(|e| e.trim_start_matches("Encounter/").to_string());
            return Ok(Some((id, encounter)));
        }
        if user.role == Role::Patient {
            return Ok(own.map(|id| (id, None)));
        }
        let wants = checked.requested.contains(&Scope::LaunchPatient)
            || checked.requested.has_level(Level::Patient);
        if !wants {
            return Ok(None);
        }
        let Some(picked) = picked else {
            return Err(Err(None));
        };
        let id = picked.strip_prefix("Patient/").unwrap_or("");
        if crate::fhir::types::Id::parse(id).is_err() {
            return Err(Err(Some("Choose a patient from the list.".into())));
        }
        let (i, ctx) = (id.to_string(), AccessContext::system());
        let exists = self
            .store
            .call(move |s| s.read(&ctx, "Patient", &i, None))
            .await
            .map_err(|_| {
                Ok(Stop::Page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable".into(),
                ))
            })?
            .is_some_and(|v| !v.deleted);
        if !exists {
            return Err(Err(Some("That patient does not exist.".into())));
        }
        Ok(Some((id.to_string(), None)))
    }

    /// After sign-in: the patient picker if one is needed, else the consent page.
    async fn after_login(
        &self,
        req: &HttpRequest,
        checked: &Checked,
        session: Option<Session>,
        user: &User,
        fields: &[(String, String)],
    ) -> Result<HttpResponse, Stop> {
        let Some(session) = session else {
            return Ok(self.login_page(checked, None, None, StatusCode::OK));
        };
        let _ = req;
        match self
            .patient_context(checked, user, field(fields, "patient"))
            .await
        {
            Ok(context) => Ok(self.consent_page(checked, &session, user, context.as_ref(), None)),
            Err(Ok(stop)) => Err(stop),
            Err(Err(error)) => Ok(self.picker_page(checked, &session, error.as_deref()).await),
        }
    }

    async fn picker_page(
        &self,
        checked: &Checked,
        session: &Session,
        error: Option<&str>,
    ) -> HttpResponse {
        let patients = self.patient_choices().await;
        let resp = self.pages.render(
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            "patient.html",
            minijinja::context! {
                client_name => checked.client.row.name,
                action => self.authorize_endpoint(),
                hidden => self.hidden(checked, session, &[]),
                patients => patients,
                error => error,
            },
            Some(&checked.redirect_uri),
        );
        self.with_cookie(resp, session)
    }

    /// Up to 200 patients to choose from, with their names.
    async fn patient_choices(&self) -> Vec<PatientChoice> {
        let search = self.search.clone();
        let pairs = vec![("_count".to_string(), "200".to_string())];
        let found = self
            .store
            .call(move |s| {
                let ctx = AccessContext::system();
                Ok(search
                    .parse(vec!["Patient".into()], &pairs, false)
                    .and_then(|r| search.execute(s, &ctx, &r, None)))
            })
            .await;
        let Ok(Ok(result)) = found else {
            tracing::warn!("the patient picker could not list patients");
            return Vec::new();
        };
        result
            .matches
            .iter()
            .filter_map(|h| {
                let v: serde_json::Value = serde_json::from_slice(&h.version.body).ok()?;
                let id = v["id"].as_str()?.to_string();
                let name = v["name"][0].clone();
                let mut label = name["text"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        let given: Vec<&str> = name["given"]
                            .as_array()
                            .map(|g| g.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        format!(
                            "{} {}",
                            given.join(" "),
                            name["family"].as_str().unwrap_or("")
                        )
                        .trim()
                        .to_string()
                    });
                if label.is_empty() {
                    label = format!("Patient/{id}");
                }
                if let Some(b) = v["birthDate"].as_str() {
                    label = format!("{label} ({b})");
                }
                Some(PatientChoice {
                    reference: format!("Patient/{id}"),
                    label,
                })
            })
            .collect()
    }

    /// The scopes this user may approve for this request.
    fn approvable(&self, checked: &Checked, user: &User, has_patient: bool) -> Scopes {
        checked.requested.filter(|s| {
            user.role.allows(s)
                && match s {
                    Scope::Resource(r) => r.level != Level::Patient || has_patient,
                    Scope::LaunchPatient | Scope::Launch => has_patient,
                    Scope::LaunchEncounter => checked
                        .launch
                        .as_ref()
                        .is_some_and(|(_, l)| l.encounter.is_some()),
                    _ => true,
                }
        })
    }

    fn consent_page(
        &self,
        checked: &Checked,
        session: &Session,
        user: &User,
        context: Option<&(String, Option<String>)>,
        error: Option<&str>,
    ) -> HttpResponse {
        let scopes: Vec<ScopeChoice> = self
            .approvable(checked, user, context.is_some())
            .iter()
            .map(|s| ScopeChoice {
                scope: s.to_string(),
                label: describe(s),
            })
            .collect();
        let mut extra = Vec::new();
        if let Some((p, _)) = context {
            extra.push(("patient", format!("Patient/{p}")));
        }
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = self.pages.render(
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            "consent.html",
            minijinja::context! {
                client_name => checked.client.row.name,
                action => self.authorize_endpoint(),
                hidden => self.hidden(checked, session, &extra),
                scopes => scopes,
                patient => context.map(|(p, _)| format!("Patient/{p}")),
                break_glass => user.break_glass && user.role == Role::Clinician,
                error => error,
            },
            Some(&checked.redirect_uri),
        );
        self.with_cookie(resp, session)
    }

    async fn consent_step(
        &self,
        req: &HttpRequest,
        checked: &Checked,
        session: &Session,
        user: &User,
        fields: &[(String, String)],
    ) -> Result<HttpResponse, Stop> {
        let context = match self
            .patient_context(checked, user, field(fields, "patient"))
            .await
        {
            Ok(c) => c,
            Err(Ok(stop)) => return Err(stop),
            Err(Err(error)) => {
                return Ok(self.picker_page(checked, session, error.as_deref()).await)
            }
        };
        let mut who = Who {
            client_id: Some(checked.client.id().to_string()),
            user: Some(user.fhir_user.clone()),
            patient: context.as_ref().map(|(p, _)| format!("Patient/{p}")),
            purpose: None,
            ..Who::default()
        };
        let denied = |description: &str| Stop::Redirect {
            uri: checked.redirect_uri.clone(),
            state: checked.state.clone(),
            error: "access_denied",
            description: description.to_string(),
        };
        if field(fields, "decision") != Some("allow") {
            self.record(
                req,
                AuthEvent::ConsentRefused,
                &who,
                Some("the user denied access"),
            )
            .await
            .map_err(|e| Stop::Page(StatusCode::SERVICE_UNAVAILABLE, e.description))?;
            return Err(denied("the user denied access"));
        }
        let approvable = self.approvable(checked, user, context.is_some());
        let mut granted = Scopes::default();
        for (k, v) in fields {
            if k == "scope" {
                if let Some(s) = approvable.iter().find(|s| s.to_string() == *v) {
                    granted.push(s.clone());
                }
            }
        }
        let mut purpose = None;
        if field(fields, "break_glass") == Some("on") {
            if !(user.break_glass && user.role == Role::Clinician) {
                return Err(Stop::Page(
                    StatusCode::FORBIDDEN,
                    "this user may not use emergency access".into(),
                ));
            }
            let reason = field(fields, "reason").unwrap_or("").trim();
            if reason.is_empty() || reason.len() > 500 {
                return Ok(self.consent_page(
                    checked,
                    session,
                    user,
                    context.as_ref(),
                    Some("Emergency access needs a reason (at most 500 characters)."),
                ));
            }
            if let Ok(s) = "user/*.rs".parse::<Scope>() {
                granted.push(s);
            }
            purpose = Some(PurposeOfUse {
                code: "BTG".into(),
                reason: Some(reason.to_string()),
            });
        }
        if !granted.iter().any(|s| matches!(s, Scope::Resource(_))) {
            self.record(
                req,
                AuthEvent::ConsentRefused,
                &who,
                Some("no data access was approved"),
            )
            .await
            .map_err(|e| Stop::Page(StatusCode::SERVICE_UNAVAILABLE, e.description))?;
            return Err(Stop::Redirect {
                uri: checked.redirect_uri.clone(),
                state: checked.state.clone(),
                error: "invalid_scope",
                description: "no access to data was approved".into(),
            });
        }
        if let Some((hash, _)) = &checked.launch {
            let h = hash.clone();
            let spent = self
                .store
                .call(move |s| s.auth_spend_launch(&h, now()))
                .await
                .map_err(|_| {
                    Stop::Page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is unavailable".into(),
                    )
                })?;
            if !spent {
                return Err(Stop::Redirect {
                    uri: checked.redirect_uri.clone(),
                    state: checked.state.clone(),
                    error: "invalid_request",
                    description: "the launch was used meanwhile".into(),
                });
            }
        }
        let details = GrantDetails {
            scope: granted.to_string(),
            patient: context.as_ref().map(|(p, _)| p.clone()),
            encounter: context.as_ref().and_then(|(_, e)| e.clone()),
            username: Some(user.username.clone()),
            fhir_user: Some(user.fhir_user.clone()),
            role: Some(user.role.as_str().into()),
            purpose: purpose.as_ref().map(|p| p.code.clone()),
            reason: purpose.as_ref().and_then(|p| p.reason.clone()),
            nonce: field(fields, "nonce").map(|n| crate::fhir::types::truncate(n, 256)),
        };
        who.purpose = purpose;
        let unavailable = || {
            Stop::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the code could not be made".into(),
            )
        };
        let code = random_token().map_err(|_| unavailable())?;
        let row = CodeRow {
            client_id: checked.client.id().to_string(),
            redirect_uri: checked.redirect_uri.clone(),
            code_challenge: field(fields, "code_challenge").unwrap_or("").to_string(),
            grant_id: uuid::Uuid::new_v4().to_string(),
            details: serde_json::to_string(&details).map_err(|_| unavailable())?,
            expires: now() + CODE_SECS,
        };
        let hash = digest(&code);
        self.store
            .call(move |s| s.auth_add_code(&hash, &row))
            .await
            .map_err(|_| unavailable())?;
        self.record(req, AuthEvent::ConsentGiven, &who, None)
            .await
            .map_err(|e| Stop::Page(StatusCode::SERVICE_UNAVAILABLE, e.description))?;
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = &checked.state {
            params.push(("state", s.as_str()));
        }
        Ok(found(&with_query(&checked.redirect_uri, &params)))
    }
}

/// Why `fhirgate launch` refused.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// How long an EHR launch id may be used.
const LAUNCH_SECS: i64 = 300;

/// `fhirgate launch`: an opaque, single-use EHR launch id (5 minutes) for the
/// `launch` parameter, carrying the patient, the encounter and, when named,
/// the only user who may use it.
pub fn new_launch(
    store: &crate::store::Store,
    patient: &str,
    encounter: Option<&str>,
    user: Option<&str>,
) -> Result<String, LaunchError> {
    let typed = |s: &str, t: &str| -> Result<String, LaunchError> {
        let id = s
            .strip_prefix(&format!("{t}/"))
            .ok_or_else(|| LaunchError::Invalid(format!("`{s}` is not {t}/ID")))?;
        crate::fhir::types::Id::parse(id).map_err(LaunchError::Invalid)?;
        Ok(id.to_string())
    };
    let patient = typed(patient, "Patient")?;
    let encounter = encounter.map(|e| typed(e, "Encounter")).transpose()?;
    if let Some(u) = user {
        if store.auth_user(u)?.is_none() {
            return Err(LaunchError::Invalid(format!("there is no user named {u}")));
        }
    }
    let id = random_token()?;
    store.auth_add_launch(
        &digest(&id),
        &LaunchRow {
            patient,
            encounter,
            username: user.map(str::to_string),
            expires: now() + LAUNCH_SECS,
        },
    )?;
    Ok(id)
}

/// What a scope means, for the consent page.
fn describe(s: &Scope) -> String {
    match s {
        Scope::Resource(r) => {
            let what = r.resource_type.as_deref().unwrap_or("every kind of record");
            let whose = match r.level {
                Level::Patient => "of the patient",
                Level::User => "you can see",
                Level::System => "of the system",
            };
            let mut verbs = Vec::new();
            for (a, v) in [
                (crate::access::Action::Read, "read"),
                (crate::access::Action::Search, "search"),
                (crate::access::Action::Create, "create"),
                (crate::access::Action::Update, "change"),
                (crate::access::Action::Delete, "delete"),
            ] {
                if r.actions.contains(a) {
                    verbs.push(v);
                }
            }
            let filter = if r.query.is_some() {
                " (only some of them)"
            } else {
                ""
            };
            format!("{} {what} {whose}{filter}", verbs.join(", "))
        }
        Scope::OpenId => "Know who you are".into(),
        Scope::FhirUser => "Know your FHIR user record".into(),
        Scope::Profile => "Know your profile".into(),
        Scope::Launch => "Use the context the EHR launched it with".into(),
        Scope::LaunchPatient => "Know which patient is selected".into(),
        Scope::LaunchEncounter => "Know which encounter is selected".into(),
        Scope::OfflineAccess => "Keep access after you sign out".into(),
        Scope::OnlineAccess => "Keep access while you are signed in".into(),
    }
}
