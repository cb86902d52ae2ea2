//! The audit console at `/console/` for compliance staff (DESIGN section 12):
//! server-rendered HTML (minijinja, auto-escaped), plain CSS, no script, so
//! every flow works with JavaScript off. Pages: sign-in, a search of
//! AuditEvents (a GET form with `patient`, `user`, `client`, `from`, `to`,
//! `action`, `outcome`; paged), an event's detail (decoded query, agents,
//! entities, outcome), a patient's disclosure report, and the chain's state.
//!
//! Sign-in reuses the authorization server's machinery: the same password check
//! with throttling, lockout and their AuditEvents (`AuthService::login`, client
//! `fhirgate-console`), the same sealed `HttpOnly` `SameSite=Lax` session cookie
//! (its own name, path `/console`) and CSRF token on every form. A console
//! user's grant is `user/AuditEvent.rs` as far as the role allows, and
//! `AccessContext::decide_audit_console` decides (compliance and admin users;
//! anyone else gets a bare 403, audited).
//!
//! Searches and reports run through the search engine exactly as the API's
//! (`AuditEvent?...` parameters, the audit indexer's catch-up, sealed cursors
//! bound to the console and the user); the chain's state is read from the
//! chainer's last verification and the stored chain, never verified per view.
//!
//! Architecture invariant: every console view, and every refusal, is recorded
//! as an AuditEvent before its page is sent (as `http::exchange` does for the
//! API); no page, log line or AuditEvent holds a password or session cookie.

mod pages;
mod view;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use crate::access::AccessContext;
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::auth::users::User;
use crate::auth::{LoginRefused, Place, Session};
use crate::http::{AppState, RequestId};

pub use pages::Pages;

/// The client every console sign-in and view is recorded under.
pub const CLIENT_ID: &str = "fhirgate-console";

/// The console's routes (registered before the FHIR routes).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/console",
        web::get().to(|| async {
            HttpResponse::Found()
                .insert_header((header::LOCATION, "/console/"))
                .finish()
        }),
    )
    .service(
        web::scope("/console")
            .route("/", web::get().to(view::search))
            .route("/login", web::get().to(login_page))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/event/{id}", web::get().to(view::event))
            .route("/disclosures", web::get().to(view::disclosures))
            .route("/chain", web::get().to(view::chain))
            .route("/console.css", web::get().to(css))
            .default_service(web::to(not_found)),
    );
}

/// The console's pages (compiled at start-up into the server's state).
fn pages(state: &AppState) -> &Pages {
    &state.console
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/css; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(pages::CSS)
}

async fn not_found(state: web::Data<AppState>) -> HttpResponse {
    pages(&state).message(
        StatusCode::NOT_FOUND,
        "Not found",
        "The console has no such page.",
    )
}

/// A signed-in console user whose access was decided.
pub(crate) struct Viewer {
    pub user: User,
    pub session: Session,
    pub ctx: AccessContext,
}

impl Viewer {
    /// What the layout shows of the user (and the sign-out form's CSRF token).
    fn template_value(&self) -> minijinja::Value {
        minijinja::context! {
            username => self.user.username,
            role => self.user.role.as_str(),
            csrf => self.session.csrf,
        }
    }
}

/// The access context of a console request by `user`, with its grant.
fn context(req: &HttpRequest, state: &AppState, user: &User) -> AccessContext {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let mut ctx = AccessContext::open(request_id, req.peer_addr().map(|a| a.ip().to_string()));
    ctx.client_id = Some(CLIENT_ID.into());
    ctx.user = Some(user.fhir_user.clone());
    ctx.subject = Some(user.username.clone());
    // A grant that cannot be compiled is an empty one: deny by default.
    ctx.grant = state
        .auth
        .console_grant(user.role)
        .unwrap_or_else(|_| crate::access::Grant::Restricted(Default::default()));
    ctx
}

/// The signed-in viewer of a request, or the answer instead: the sign-in page
/// (no session), or a 403 that says nothing more, audited (a user whose role may
/// not use the console).
pub(crate) async fn viewer(
    req: &HttpRequest,
    state: &AppState,
    interaction: &Interaction,
) -> Result<Viewer, HttpResponse> {
    let auth = &state.auth;
    let session = auth
        .session_in(req, Place::Console)
        .filter(|s| s.user.is_some());
    let Some(session) = session else {
        return Err(login_form(state, req, None, StatusCode::OK));
    };
    let Some(user) = auth
        .session_user(session.user.as_deref().unwrap_or(""))
        .await
    else {
        // Removed or locked since signing in.
        return Err(login_form(state, req, None, StatusCode::OK));
    };
    let ctx = context(req, state, &user);
    if let Err(denied) = ctx.decide_audit_console() {
        let mut rec = AuditRecord::new(interaction.clone(), &ctx);
        rec.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
        rec.query = Some(path_and_query(req));
        return Err(refuse(state, rec, &denied.0).await);
    }
    Ok(Viewer { user, session, ctx })
}

/// The request's path and query, as a console view's AuditEvent records it.
pub(crate) fn path_and_query(req: &HttpRequest) -> String {
    match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    }
}

/// Records a refusal and answers a bare 403.
async fn refuse(state: &AppState, mut rec: AuditRecord, why: &str) -> HttpResponse {
    rec.outcome = Outcome::ClientError(why.to_string());
    if state.audit.record(&rec).await.is_err() {
        return unavailable(state);
    }
    pages(state).message(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "This account may not use the audit console.",
    )
}

/// Records a view's AuditEvent with its outcome, then answers its page: no
/// page leaves without its AuditEvent.
pub(crate) async fn answer(
    state: &AppState,
    mut rec: AuditRecord,
    status: StatusCode,
    failure: Option<String>,
    page: HttpResponse,
) -> HttpResponse {
    rec.outcome = match failure {
        None => Outcome::Success,
        Some(why) => Outcome::from_status(status.as_u16(), why),
    };
    if let Err(e) = state.audit.record(&rec).await {
        tracing::error!(error = %e, "a console view's AuditEvent could not be recorded; the page is withheld");
        return unavailable(state);
    }
    page
}

fn unavailable(state: &AppState) -> HttpResponse {
    let mut r = pages(state).message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The audit trail cannot record this view right now, so it is not shown; try again later.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    r
}

/// The sign-in page with a fresh pre-sign-in session (its CSRF token).
fn login_form(
    state: &AppState,
    req: &HttpRequest,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let auth = &state.auth;
    let session = auth
        .session_in(req, Place::Console)
        .filter(|s| s.user.is_none())
        .or_else(|| auth.new_session(None));
    let Some(session) = session else {
        return pages(state).message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "No session could be made; try again later.",
        );
    };
    let mut resp = pages(state).render(
        status,
        "login.html",
        minijinja::context! { csrf => session.csrf, error => error },
    );
    if let Some(c) = auth.session_cookie_in(&session, Place::Console) {
        let _ = resp.add_cookie(&c);
    }
    resp
}

async fn login_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    login_form(&state, &req, None, StatusCode::OK)
}

/// `POST /console/login`: the CSRF token of the pre-sign-in session, then the
/// authorization server's password check (throttling, lockout, AuditEvents),
/// then the access decision: only a user who may use the console gets a
/// session (a new one: a planted session id is worth nothing).
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let auth = &state.auth;
    let fields = match crate::auth::read_form(payload).await {
        Ok(f) => f,
        Err(e) => return login_form(&state, &req, Some(&e.description), StatusCode::BAD_REQUEST),
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let pre = auth
        .session_in(&req, Place::Console)
        .filter(|s| s.user.is_none() && s.csrf_matches(field("csrf")));
    if pre.is_none() {
        return login_form(
            &state,
            &req,
            Some("The form has expired or did not come from this session; sign in again."),
            StatusCode::FORBIDDEN,
        );
    }
    let user = match auth
        .login(
            &req,
            CLIENT_ID,
            field("username").unwrap_or(""),
            field("password").unwrap_or(""),
        )
        .await
    {
        Ok(u) => u,
        Err(refused) => {
            let status = match refused {
                LoginRefused::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                LoginRefused::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            return login_form(&state, &req, Some(&refused.message()), status);
        }
    };
    let ctx = context(&req, &state, &user);
    if let Err(denied) = ctx.decide_audit_console() {
        let mut rec = AuditRecord::new(Interaction::Operation("console".into()), &ctx);
        rec.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
        rec.query = Some(req.path().to_string());
        let mut resp = refuse(&state, rec, &denied.0).await;
        let _ = resp.add_cookie(&auth.expired_cookie_in(Place::Console));
        return resp;
    }
    let Some(session) = auth.new_session(Some(user.username.clone())) else {
        return unavailable(&state);
    };
    let mut resp = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    if let Some(c) = auth.session_cookie_in(&session, Place::Console) {
        let _ = resp.add_cookie(&c);
    }
    resp
}

/// `POST /console/logout` (with the session's CSRF token): the cookie is
/// expired. The sealed session itself stays valid until it expires (30 min);
/// a copy of the cookie taken before signing out still opens until then.
async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let auth = &state.auth;
    let fields = crate::auth::read_form(payload).await.unwrap_or_default();
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    let signed_in = auth.session_in(&req, Place::Console);
    if !signed_in.as_ref().is_some_and(|s| s.csrf_matches(csrf)) {
        return pages(&state).message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form did not come from this session.",
        );
    }
    let mut resp = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    let _ = resp.add_cookie(&auth.expired_cookie_in(Place::Console));
    resp
}
