//! The authorization code flow with PKCE, driven through the HTML forms the way a
//! script drives them: hidden inputs carried, the session cookie kept, the
//! consent checkboxes ticked or not.

use awc::http::{Method, StatusCode};
use base64::Engine as _;
use fhirgate::auth::clients::{ClientKind, ClientSpec};
use fhirgate::auth::scopes::Role;
use fhirgate::auth::users::UserSpec;
use serde_json::Value;

use super::*;
use crate::support::server::{Backend, Reply, TestApp};

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let mut b = [0u8; 48];
        openssl::rand::rand_bytes(&mut b).unwrap();
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(openssl::sha::sha256(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

pub fn public_client(app: &TestApp) -> String {
    client(
        app,
        ClientSpec {
            name: "Test <App>".into(),
            redirect_uris: vec![REDIRECT.into()],
            kind: ClientKind::Public,
            scope: None,
            grant_types: None,
        },
    )
    .0
}

pub fn user(app: &TestApp, name: &str, fhir_user: &str, role: Role, break_glass: bool) {
    fhirgate::auth::users::register(
        &app.store,
        &UserSpec {
            username: name.into(),
            password: format!("{name}-password"),
            fhir_user: fhir_user.into(),
            role,
            break_glass,
        },
    )
    .expect("register user");
}

/// What the simulated user does on the pages.
#[derive(Default)]
pub struct Choices<'a> {
    pub password: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub untick: Vec<&'a str>,
    pub break_glass: Option<&'a str>,
    pub deny: bool,
    pub launch: Option<&'a str>,
}

pub struct Outcome {
    pub pkce: Pkce,
    pub state: String,
    /// The last answer (the redirect, or the page where it stopped).
    pub last: Reply,
    /// The scopes the consent page offered.
    pub offered: Vec<String>,
}

fn authorize_url(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    pkce: &Pkce,
    state: &str,
    launch: Option<&str>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("aud", &app.base)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(l) = launch {
        q.append_pair("launch", l);
    }
    format!("{}/auth/authorize?{}", app.root, q.finish())
}

async fn post_page(app: &TestApp, fields: &[(String, String)], cookie: &str) -> Reply {
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    post_form(app, "/auth/authorize", &pairs, &[("Cookie", cookie)]).await
}

/// Signs in as `username` and answers the pages; stops at the redirect.
pub async fn run_flow(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    username: &str,
    c: Choices<'_>,
) -> Outcome {
    let pkce = Pkce::new();
    let state = uuid::Uuid::new_v4().to_string();
    let login = raw(
        Method::GET,
        &authorize_url(app, client_id, scope, &pkce, &state, c.launch),
        &[],
        None,
    )
    .await;
    assert_eq!(
        login.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&login.body)
    );
    let html = String::from_utf8_lossy(&login.body).to_string();
    assert!(
        html.contains(r#"<form method="post""#)
            && html.contains(r#"name="username""#)
            && html.contains(r#"name="password""#)
    );
    let set_cookie = login.header("set-cookie").unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let mut cookie = session_cookie(&login).unwrap();
    let mut fields = hidden_inputs(&html);
    let password = c
        .password
        .map(str::to_string)
        .unwrap_or(format!("{username}-password"));
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password));
    let mut page = post_page(app, &fields, &cookie).await;
    let mut offered = Vec::new();
    loop {
        if page.status != StatusCode::OK {
            return Outcome {
                pkce,
                state,
                last: page,
                offered,
            };
        }
        if let Some(c2) = session_cookie(&page) {
            cookie = c2;
        }
        let html = String::from_utf8_lossy(&page.body).to_string();
        let mut fields = hidden_inputs(&html);
        if html.contains(r#"<select name="patient""#) {
            let pick = c.patient.expect("the picker was shown; the test must pick");
            assert!(
                unescape(&html).contains(&format!(r#"<option value="{pick}">"#)),
                "{pick} not offered: {html}"
            );
            fields.push(("patient".into(), pick.into()));
            page = post_page(app, &fields, &cookie).await;
            continue;
        }
        offered = checkbox_values(&html, "scope");
        assert!(!offered.is_empty(), "a consent page with scopes: {html}");
        for s in &offered {
            if !c.untick.contains(&s.as_str()) {
                fields.push(("scope".into(), s.clone()));
            }
        }
        if let Some(reason) = c.break_glass {
            assert!(html.contains(r#"name="break_glass" value="on""#));
            fields.push(("break_glass".into(), "on".into()));
            fields.push(("reason".into(), reason.into()));
        }
        fields.push((
            "decision".into(),
            if c.deny { "deny" } else { "allow" }.into(),
        ));
        let last = post_page(app, &fields, &cookie).await;
        return Outcome {
            pkce,
            state,
            last,
            offered,
        };
    }
}

pub async fn exchange(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> Reply {
    post_form(
        app,
        "/auth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
        &[],
    )
    .await
}

/// The whole flow, then the code's exchange: the token response's JSON.
pub async fn granted(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    username: &str,
    c: Choices<'_>,
) -> Value {
    let o = run_flow(app, client_id, scope, username, c).await;
    exchange(app, client_id, &code_of(&o), &o.pkce.verifier)
        .await
        .json()
}

/// The code of a successful flow.
pub fn code_of(o: &Outcome) -> String {
    assert_eq!(
        o.last.status,
        StatusCode::FOUND,
        "{}",
        String::from_utf8_lossy(&o.last.body)
    );
    let p = location_params(&o.last);
    assert_eq!(param(&p, "state"), Some(o.state.as_str()), "state echoed");
    assert!(o.last.header("location").unwrap().starts_with(REDIRECT));
    param(&p, "code").expect("a code").to_string()
}

async fn standalone_patient_launch_with_refresh_rotation_and_code_reuse(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let admin = system_token(&app, "system/*.cruds").await;
    let me = create_patient(&app, &admin, "Own").await;
    let client_id = public_client(&app);
    user(&app, "pat", &format!("Patient/{me}"), Role::Patient, false);
    let scope = "openid fhirUser launch/patient patient/*.rs offline_access user/*.rs";
    let o = run_flow(&app, &client_id, scope, "pat", Choices::default()).await;
    assert!(
        !o.offered.contains(&"user/*.rs".to_string()),
        "a patient cannot approve user/ scopes: {:?}",
        o.offered
    );
    let code = code_of(&o);

    let t = exchange(&app, &client_id, &code, &o.pkce.verifier).await;
    assert_eq!(
        t.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&t.body)
    );
    assert_eq!(t.header("cache-control").as_deref(), Some("no-store"));
    let tok = t.json();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["patient"], me.as_str());
    assert!(tok["scope"].as_str().unwrap().contains("patient/*.rs"));
    let access = tok["access_token"].as_str().unwrap().to_string();
    let refresh = tok["refresh_token"]
        .as_str()
        .expect("offline_access gives a refresh token")
        .to_string();
    let id = claims(
        tok["id_token"]
            .as_str()
            .expect("openid fhirUser gives an id_token"),
    );
    assert_eq!(id["fhirUser"], format!("{}/Patient/{me}", app.base));
    assert_eq!(id["aud"], client_id.as_str());
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].is_string());

    let read = fhir(
        &app,
        Method::GET,
        &format!("/Patient/{me}"),
        Some(&access),
        None,
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.header("cache-control").as_deref(), Some("no-store"));
    let create = fhir(
        &app,
        Method::POST,
        "/Patient",
        Some(&access),
        Some(&serde_json::json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(
        create.status,
        StatusCode::FORBIDDEN,
        "patient/*.rs does not create"
    );
    let audit = fhir(
        &app,
        Method::GET,
        "/AuditEvent?_count=1",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(
        audit.status,
        StatusCode::FORBIDDEN,
        "wildcards never include AuditEvent"
    );
    let history = fhir(
        &app,
        Method::GET,
        "/AuditEvent/_history",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(history.status, StatusCode::FORBIDDEN, "nor their history");
    let own = fhir(
        &app,
        Method::GET,
        &format!("/Patient/{me}/_history"),
        Some(&access),
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);

    // Refresh: rotated on every use. A public client may leave out its
    // client_id (the SMART JavaScript client does).
    let r1 = post_form(
        &app,
        "/auth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        &[],
    )
    .await;
    assert_eq!(
        r1.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r1.body)
    );
    let r1 = r1.json();
    let refresh2 = r1["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh);
    let access2 = r1["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            &format!("/Patient/{me}"),
            Some(&access2),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    // A narrower scope on refresh is allowed, a wider one is not.
    let wider = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
            ("client_id", &client_id),
            ("scope", "patient/*.cruds"),
        ],
        &[],
    )
    .await;
    assert_eq!(wider.status, StatusCode::BAD_REQUEST);
    assert_eq!(wider.json()["error"], "invalid_scope");

    // The first refresh token again: replay; the whole family is revoked.
    let replay = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
        &[],
    )
    .await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.json()["error"], "invalid_grant");
    let after = fhir(
        &app,
        Method::GET,
        &format!("/Patient/{me}"),
        Some(&access2),
        None,
    )
    .await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "the family's access token is revoked"
    );
    assert!(after
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));

    // A second flow: the code used twice revokes what the first use gave.
    let o2 = run_flow(
        &app,
        &client_id,
        "launch/patient patient/Patient.rs",
        "pat",
        Choices::default(),
    )
    .await;
    let code2 = code_of(&o2);
    let wrong = exchange(&app, &client_id, &code2, &Pkce::new().verifier).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "wrong PKCE verifier");
    assert_eq!(wrong.json()["error"], "invalid_grant");
    let o3 = run_flow(
        &app,
        &client_id,
        "launch/patient patient/Patient.rs",
        "pat",
        Choices::default(),
    )
    .await;
    let code3 = code_of(&o3);
    let first = exchange(&app, &client_id, &code3, &o3.pkce.verifier).await;
    assert_eq!(first.status, StatusCode::OK);
    let a3 = first.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            &format!("/Patient/{me}"),
            Some(&a3),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let second = exchange(&app, &client_id, &code3, &o3.pkce.verifier).await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    assert_eq!(second.json()["error"], "invalid_grant");
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            &format!("/Patient/{me}"),
            Some(&a3),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    let events = auth_events(&app).await;
    for (code, outcome) in [
        ("login", "0"),
        ("consent-given", "0"),
        ("token-issued", "0"),
        ("token-refused", "4"),
    ] {
        assert!(
            has_event(&events, code, outcome),
            "no {code} event with outcome {outcome}"
        );
    }
    // The token issued to the app names the client and the user.
    let issued_to_app = events.iter().any(|e| {
        let agents = e["agent"].as_array().cloned().unwrap_or_default();
        auth_code(e) == Some("token-issued")
            && agents.iter().any(|a| {
                a["who"]["identifier"]["system"] == "urn:fhirgate:client"
                    && a["who"]["identifier"]["value"] == client_id.as_str()
            })
            && agents
                .iter()
                .any(|a| a["who"]["reference"] == format!("Patient/{me}"))
    });
    assert!(
        issued_to_app,
        "no token-issued event names the app and the user"
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(&refresh) && !text.contains(&code) && !text.contains("pat-password"),
        "no secrets in AuditEvents"
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn authorization_errors_go_to_the_page_or_the_redirect_uri(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let client_id = public_client(&app);
    user(&app, "pat", "Patient/p1", Role::Patient, false);
    let pkce = Pkce::new();
    // Unknown client, unregistered redirect URI: an error page, no redirect.
    let unknown = raw(
        Method::GET,
        &authorize_url(&app, "nobody", "patient/*.rs", &pkce, "s", None),
        &[],
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.header("location").is_none());
    let other = authorize_url(&app, &client_id, "patient/*.rs", &pkce, "s", None)
        .replace("callback", "elsewhere");
    let r = raw(Method::GET, &other, &[], None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_none());
    assert!(String::from_utf8_lossy(&r.body).contains("redirect_uri"));
    // plain PKCE, a wrong aud: back to the client with the error and the state.
    let plain = authorize_url(&app, &client_id, "patient/*.rs", &pkce, "st8", None)
        .replace("code_challenge_method=S256", "code_challenge_method=plain");
    let r = raw(Method::GET, &plain, &[], None).await;
    assert_eq!(r.status, StatusCode::FOUND);
    let p = location_params(&r);
    assert_eq!(param(&p, "error"), Some("invalid_request"));
    assert_eq!(param(&p, "state"), Some("st8"));
    let bad_aud = authorize_url(&app, &client_id, "patient/*.rs", &pkce, "st8", None)
        .replace("%2Ffhir", "%2Fother");
    let r = raw(Method::GET, &bad_aud, &[], None).await;
    assert_eq!(
        param(&location_params(&r), "error"),
        Some("invalid_request")
    );
    // Deny.
    let o = run_flow(
        &app,
        &client_id,
        "launch/patient patient/*.rs",
        "pat",
        Choices {
            deny: true,
            ..Choices::default()
        },
    )
    .await;
    assert_eq!(o.last.status, StatusCode::FOUND);
    let p = location_params(&o.last);
    assert_eq!(param(&p, "error"), Some("access_denied"));
    assert_eq!(param(&p, "state"), Some(o.state.as_str()));
    assert!(param(&p, "code").is_none());
    // A form posted without the session's CSRF token is refused.
    let login = raw(
        Method::GET,
        &authorize_url(&app, &client_id, "patient/*.rs", &pkce, "s", None),
        &[],
        None,
    )
    .await;
    let mut fields = hidden_inputs(&String::from_utf8_lossy(&login.body));
    fields.retain(|(k, _)| k != "csrf");
    fields.push(("csrf".into(), "forged".into()));
    fields.push(("username".into(), "pat".into()));
    fields.push(("password".into(), "pat-password".into()));
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let forged = post_form(
        &app,
        "/auth/authorize",
        &pairs,
        &[("Cookie", &session_cookie(&login).unwrap())],
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let events = auth_events(&app).await;
    assert!(has_event(&events, "consent-refused", "4"));
    app.stop().await;
}

async fn clinicians_pick_a_patient_and_may_break_the_glass(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let admin = system_token(&app, "system/*.cruds").await;
    let p = create_patient(&app, &admin, "Picked").await;
    let other = create_patient(&app, &admin, "Other").await;
    let client_id = public_client(&app);
    user(&app, "doc", "Practitioner/d1", Role::Clinician, true);
    user(&app, "auditor", "Practitioner/a1", Role::Compliance, false);

    let t = granted(
        &app,
        &client_id,
        "launch/patient patient/*.rs openid fhirUser",
        "doc",
        Choices {
            patient: Some(&format!("Patient/{p}")),
            ..Choices::default()
        },
    )
    .await;
    assert_eq!(t["patient"], p.as_str());
    assert_eq!(t["need_patient_banner"], true);

    // Break-glass: user/*.rs for at most an hour, purpose of use BTG in every AuditEvent.
    let t = granted(
        &app,
        &client_id,
        "launch/patient patient/Observation.rs",
        "doc",
        Choices {
            patient: Some(&format!("Patient/{p}")),
            break_glass: Some("patient unconscious in ER"),
            ..Choices::default()
        },
    )
    .await;
    assert!(
        t["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "user/*.rs"),
        "{t}"
    );
    assert!(t["expires_in"].as_i64().unwrap() <= 3600);
    assert!(t.get("refresh_token").is_none());
    let btg = t["access_token"].as_str().unwrap().to_string();
    let rid = uuid::Uuid::new_v4().to_string();
    let read = app
        .send(
            Method::GET,
            &format!("/Patient/{other}"),
            &[("Authorization", &bearer(&btg)), ("X-Request-Id", &rid)],
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    let ev = &app.audits_by_request().await[&rid][0];
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "BTG", "{ev}");
    assert_eq!(ev["purposeOfEvent"][0]["text"], "patient unconscious in ER");

    // Compliance: only the audit trail, and only when named.
    let o = run_flow(
        &app,
        &client_id,
        "user/AuditEvent.rs user/Observation.rs user/*.rs",
        "auditor",
        Choices::default(),
    )
    .await;
    assert_eq!(o.offered, vec!["user/AuditEvent.rs".to_string()]);
    let t = exchange(&app, &client_id, &code_of(&o), &o.pkce.verifier)
        .await
        .json();
    let tok = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            &format!("/Patient/{p}"),
            Some(&tok),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn an_ehr_launch_carries_patient_and_encounter_once(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let client_id = public_client(&app);
    user(&app, "doc", "Practitioner/d1", Role::Clinician, false);
    let launch =
        fhirgate::auth::new_launch(&app.store, "Patient/p9", Some("Encounter/e9"), Some("doc"))
            .unwrap();
    let t = granted(
        &app,
        &client_id,
        "launch openid fhirUser patient/*.rs",
        "doc",
        Choices {
            launch: Some(&launch),
            ..Choices::default()
        },
    )
    .await;
    assert_eq!(t["patient"], "p9");
    assert_eq!(t["encounter"], "e9");
    let again = raw(
        Method::GET,
        &authorize_url(
            &app,
            &client_id,
            "launch patient/*.rs",
            &Pkce::new(),
            "x",
            Some(&launch),
        ),
        &[],
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::FOUND);
    assert_eq!(
        param(&location_params(&again), "error"),
        Some("invalid_request"),
        "a launch is single use"
    );
    app.stop().await;
}

crate::support::server::on_both_backends!(
    standalone_patient_launch_with_refresh_rotation_and_code_reuse,
    authorization_errors_go_to_the_page_or_the_redirect_uri,
    clinicians_pick_a_patient_and_may_break_the_glass,
    an_ehr_launch_carries_patient_and_encounter_once,
);
