//! The audit console (`/console/`) on both backends, with authorization on.
//!
//! In a real browser: Debian's chromium, headless, with JavaScript off, driven
//! by selenium through chromium-driver (`tests/smart_clients/console_browser.py`):
//! a compliance user signs in, filters the search by patient and date, opens the
//! search event's detail (the decoded query, the agents), reads the patient's
//! disclosure report and the chain's state, pages through every event, signs
//! out; a clinician user is refused with a bare 403. Every view, and the
//! refusal, must leave an AuditEvent. Two screenshots go to a temporary folder,
//! or to the folder `FHIRGATE_CONSOLE_SCREENSHOTS` names (how `docs/` got its).
//!
//! Over plain HTTP: the session cookie's attributes, the CSRF check of the
//! sign-in form, every search filter, escaping of what callers put into
//! AuditEvents, a missing event, bad filters, and the refusal of other roles.
//!
//! A missing browser or Python package fails the test with what to install
//! (`.ci/run` installs them); nothing is skipped.

use std::path::{Path, PathBuf};

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use crate::smart_auth::code_flow::user;
use crate::smart_auth::{client_token, form_body, raw, spawn_auth};
use crate::support::server::{on_both_backends, Backend, Reply, TestApp};
use crate::support::{clients_dir, python};

const INSTALL: &str = "install the console test's dependencies as .ci/run does: \
     `apt-get install -y chromium chromium-driver`, \
     `python3 -m venv tests/smart_clients/.venv && \
     tests/smart_clients/.venv/bin/pip install -r tests/smart_clients/requirements.txt`";

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

/// Where the screenshots go: `FHIRGATE_CONSOLE_SCREENSHOTS` (e.g. `docs`), else
/// a temporary folder.
#[allow(clippy::disallowed_methods)] // a test's own knob, not a server setting
fn screenshot_dir(tmp: &Path) -> PathBuf {
    match std::env::var_os("FHIRGATE_CONSOLE_SCREENSHOTS") {
        Some(d) => Path::new(env!("CARGO_MANIFEST_DIR")).join(d),
        None => tmp.to_path_buf(),
    }
}

/// A FHIR request with a token and a chosen request id: a POST of the body, or
/// a GET.
async fn fhir(app: &TestApp, path: &str, token: &str, body: Option<&Value>, rid: &str) -> Reply {
    let method = match body {
        Some(_) => Method::POST,
        None => Method::GET,
    };
    crate::support::audit::send(app, method, path, token, body, rid).await
}

/// The AuditEvents the browser and the HTTP test look for.
struct Seeded {
    p1: String,
    writer: String,
    start: String,
}

async fn seed(app: &TestApp) -> Seeded {
    user(app, "cora", "Practitioner/c1", Role::Compliance, false);
    user(app, "doc", "Practitioner/d1", Role::Clinician, false);
    let (writer, token) = client_token(app, "system/Patient.cruds system/Observation.cruds").await;
    let (_, outsider) = client_token(app, "system/Observation.rs").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let start = fhirgate::fhir::instant(fhirgate::fhir::now_micros());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Console"}]});
    let r = fhir(app, "/Patient", &token, Some(&patient), "console-create-p1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let p1 = r.json()["id"].as_str().unwrap().to_string();
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
        "subject": {"reference": format!("Patient/{p1}")}});
    let r = fhir(app, "/Observation", &token, Some(&obs), "console-create-o1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let r = fhir(
        app,
        &format!("/Patient/{p1}"),
        &token,
        None,
        "console-read-p1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = fhir(
        app,
        &format!("/Observation?subject=Patient/{p1}"),
        &token,
        None,
        "console-search-o1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = fhir(
        app,
        &format!("/Patient/{p1}"),
        &outsider,
        None,
        "console-denied-p1",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    // What a caller writes into an AuditEvent (a parameter name the strict
    // search refuses, quoted in the outcome's reason) must come out escaped.
    let auth = format!("Bearer {token}");
    let r = app
        .send(
            Method::GET,
            "/Patient?%3Cscript%3Ealert(1)%3C/script%3E=x",
            &[
                ("Authorization", auth.as_str()),
                ("Prefer", "handling=strict"),
                ("X-Request-Id", "console-xss"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
    assert!(text(&r).contains("<script>alert(1)"), "{}", text(&r));
    // Enough events for more than one page of 25.
    for i in 0..20 {
        let r = fhir(
            app,
            "/Patient?name=nobody",
            &token,
            None,
            &format!("console-filler-{i}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    }
    Seeded { p1, writer, start }
}

/// The console's AuditEvents (client `fhirgate-console`), as (subtype codes, outcome, user).
async fn console_events(app: &TestApp) -> Vec<(String, String, String)> {
    let audits = app.audits_by_request().await;
    let mut out = Vec::new();
    for ev in audits.values().flatten() {
        let agents = ev["agent"].as_array().cloned().unwrap_or_default();
        let by_console = agents
            .iter()
            .any(|a| a["who"]["identifier"]["value"] == "fhirgate-console");
        if !by_console {
            continue;
        }
        let subtype: Vec<&str> = ev["subtype"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["code"].as_str())
            .collect();
        let user = agents
            .iter()
            .find_map(|a| a["who"]["reference"].as_str())
            .unwrap_or("")
            .to_string();
        out.push((
            subtype.join(" "),
            ev["outcome"].as_str().unwrap().to_string(),
            user,
        ));
    }
    out
}

async fn the_console_in_a_browser(backend: Backend) {
    let app = spawn_auth(backend, |s| {
        s.audit.index_interval_ms = 0;
        s.audit.chain_interval_ms = 100;
        s.audit.verify_interval_secs = 1;
    })
    .await;
    let seeded = seed(&app).await;
    let p1 = &seeded.p1;
    // The expected disclosures, from the API.
    let auditor = crate::support::audit::user_token(
        &app,
        "cora-api",
        "Practitioner/c2",
        Role::Compliance,
        "openid fhirUser user/AuditEvent.rs",
    )
    .await;
    let r = fhir(
        &app,
        &format!(
            "/Patient/{p1}/$disclosures?start={}&_count=100",
            seeded.start
        ),
        &auditor,
        None,
        "console-expected",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let expected: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["recorded"].as_str().unwrap().to_string())
        .collect();
    // Let the periodic verification run once.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let tmp = tempfile::tempdir().unwrap();
    let shots = screenshot_dir(tmp.path());
    std::fs::create_dir_all(&shots).unwrap();
    let config = json!({
        "root": app.root,
        "screenshots": shots,
        "compliance": {"username": "cora", "password": "cora-password"},
        "clinician": {"username": "doc", "password": "doc-password"},
        "search": {"patient": format!("Patient/{p1}"), "from": seeded.start},
        "open_entity_prefix": format!("/fhir/Observation?subject=Patient/{p1}"),
        "report": {"patient": format!("Patient/{p1}"), "start": seeded.start},
    });
    let script = clients_dir().join("console_browser.py");
    let program = python();
    let args = vec![script.to_string_lossy().to_string(), config.to_string()];
    let out = crate::support::run_client(program, args, INSTALL).await;

    assert_eq!(out["login_page"]["h1"], json!(["Audit console"]), "{out}");
    let after = &out["after_login"];
    assert_eq!(after["h1"], json!(["AuditEvents"]), "{after}");
    assert_eq!(
        after["nav"],
        json!(["Search", "Disclosure report", "Chain"]),
        "{after}"
    );
    assert_eq!(after["who"], json!(["cora (compliance)"]), "{after}");
    assert_eq!(after["scripts"], 0, "no script at all: {after}");

    let search = &out["search"];
    assert_eq!(
        search["inputs"],
        json!(["patient", "user", "client", "from", "to", "action", "outcome"]),
        "{search}"
    );
    assert_eq!(search["error"], json!([]), "{search}");
    let rows = search["rows"].as_array().unwrap();
    // Newest first: the denied read, the search, the read, the Observation, the Patient.
    let actions: Vec<&str> = rows
        .iter()
        .map(|r| r["cells"][1].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["R", "E", "R", "C", "C"], "{search}");
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["cells"][3].as_str().unwrap())
        .collect();
    assert!(outcomes[0].starts_with("4: "), "{outcomes:?}");
    assert!(outcomes[1..].iter().all(|o| *o == "0"), "{outcomes:?}");
    assert_eq!(rows[2]["cells"][5], seeded.writer.as_str());

    let ev = &out["event"];
    assert!(
        ev["link"]
            .as_str()
            .is_some_and(|l| l.contains("/console/event/")),
        "{ev}"
    );
    assert_eq!(ev["facts"]["Action"], "E", "{ev}");
    assert_eq!(ev["facts"]["Outcome"], "0", "{ev}");
    assert_eq!(ev["facts"]["Subtype"], "search-type", "{ev}");
    assert_eq!(
        ev["queries"],
        json!([format!("/fhir/Observation?subject=Patient/{p1}")]),
        "{ev}"
    );
    let agents: Vec<&str> = ev["tables"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"][1].as_str().unwrap())
        .collect();
    assert!(
        agents.contains(&format!("client {}", seeded.writer).as_str()),
        "{agents:?}"
    );
    let entities: Vec<&str> = ev["tables"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"][0].as_str().unwrap())
        .collect();
    assert!(
        entities.contains(&format!("Patient/{p1}").as_str()),
        "{entities:?}"
    );

    let report = &out["disclosures"];
    assert_eq!(report["error"], json!([]), "{report}");
    let recorded: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        recorded, expected,
        "the console's report is $disclosures': {report}"
    );

    let verdict = out["chain"]["verdict"][0].as_str().unwrap();
    assert!(
        verdict.starts_with("Verified up to position "),
        "{}",
        out["chain"]
    );
    let paging: Vec<u64> = out["paging"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(paging.len() >= 2 && paging[0] == 25, "{paging:?}");
    assert_eq!(out["after_logout"]["password_inputs"], 1, "{out}");

    let refused = &out["clinician"];
    assert_eq!(refused["h1"], json!(["Forbidden"]), "{refused}");
    assert_eq!(refused["tables"], 0, "{refused}");
    assert_eq!(refused["links"], 0, "{refused}");
    assert!(
        !refused["body"].as_str().unwrap().contains("AuditEvent"),
        "{refused}"
    );
    assert_eq!(
        out["clinician_after"]["password_inputs"], 1,
        "no session: {out}"
    );

    // Every view, and the refusal, was audited.
    let events = console_events(&app).await;
    let seen = |subtype: &str, outcome: &str, user: &str| {
        events
            .iter()
            .any(|(s, o, u)| s == subtype && o == outcome && u == user)
    };
    for subtype in [
        "search-type",
        "read",
        "operation disclosures",
        "operation chain-state",
        "login",
    ] {
        assert!(
            seen(subtype, "0", "Practitioner/c1"),
            "{subtype}: {events:?}"
        );
    }
    assert!(
        seen("operation console", "4", "Practitioner/d1"),
        "the refusal: {events:?}"
    );
    assert!(
        seen("login", "0", "Practitioner/d1"),
        "the clinician's password was right: {events:?}"
    );
    app.stop().await;
}

/// The value of the console's cookie in a response, if it sets one.
fn console_cookie(r: &Reply) -> Option<(String, String)> {
    r.headers
        .get_all("set-cookie")
        .filter_map(|h| h.to_str().ok())
        .find(|c| c.starts_with("fhirgate_console="))
        .map(|c| {
            let value = c["fhirgate_console=".len()..]
                .split(';')
                .next()
                .unwrap()
                .to_string();
            (value, c.to_string())
        })
}

fn csrf_of(html: &str) -> String {
    let at =
        html.find("name=\"csrf\" value=\"").expect("a CSRF input") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

async fn page(app: &TestApp, path: &str, cookie: Option<&str>) -> Reply {
    let c = cookie.map(|c| format!("fhirgate_console={c}"));
    let mut headers = Vec::new();
    if let Some(c) = &c {
        headers.push(("Cookie", c.as_str()));
    }
    app.send(Method::GET, &format!("{}{path}", app.root), &headers, None)
        .await
}

/// Signs in through the form; the session cookie, or the refused answer.
async fn sign_in(app: &TestApp, username: &str) -> Result<String, Reply> {
    let login = page(app, "/console/", None).await;
    assert_eq!(login.status, StatusCode::OK);
    let (pre, _) = console_cookie(&login).expect("a pre-sign-in session");
    let body = form_body(&[
        ("csrf", &csrf_of(&text(&login))),
        ("username", username),
        ("password", &format!("{username}-password")),
    ]);
    let cookie = format!("fhirgate_console={pre}");
    // Not following the redirect: it carries the new cookie.
    let r = raw(
        Method::POST,
        &format!("{}/console/login", app.root),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        Some(body),
    )
    .await;
    if r.status != StatusCode::SEE_OTHER {
        return Err(r);
    }
    assert_eq!(r.header("location").as_deref(), Some("/console/"));
    let (session, _) = console_cookie(&r).expect("a session cookie");
    assert_ne!(session, pre, "a new session after signing in");
    Ok(session)
}

async fn the_console_decides_access_and_escapes(backend: Backend) {
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 0).await;
    let seeded = seed(&app).await;
    let p1 = &seeded.p1;

    // Signed out: the sign-in page, with the login's cookie rules.
    let login = page(&app, "/console/", None).await;
    assert_eq!(login.status, StatusCode::OK);
    let (_, attrs) = console_cookie(&login).unwrap();
    for a in ["HttpOnly", "SameSite=Lax", "Path=/console"] {
        assert!(attrs.contains(a), "{a}: {attrs}");
    }
    let csp = login.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(login.header("cache-control").as_deref(), Some("no-store"));
    assert!(
        !text(&login).contains("<table"),
        "nothing before signing in"
    );

    // A sign-in without the session's CSRF token is refused.
    let body = form_body(&[
        ("csrf", "forged"),
        ("username", "cora"),
        ("password", "cora-password"),
    ]);
    let r = app
        .send(
            Method::POST,
            &format!("{}/console/login", app.root),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));

    // A wrong password.
    let login = page(&app, "/console/", None).await;
    let (pre, _) = console_cookie(&login).unwrap();
    let body = form_body(&[
        ("csrf", &csrf_of(&text(&login))),
        ("username", "cora"),
        ("password", "wrong"),
    ]);
    let r = app
        .send(
            Method::POST,
            &format!("{}/console/login", app.root),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &format!("fhirgate_console={pre}")),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", text(&r));

    // The clinician: 403 and nothing else, no session.
    let refused = sign_in(&app, "doc")
        .await
        .expect_err("a clinician is refused");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", text(&refused));
    let html = text(&refused);
    assert!(
        !html.contains("<table") && !html.contains("<nav") && !html.contains("<a "),
        "{html}"
    );
    assert!(
        console_cookie(&refused).is_some_and(|(v, _)| v.is_empty()),
        "the cookie is cleared"
    );

    // The compliance user: every filter.
    let cookie = sign_in(&app, "cora")
        .await
        .unwrap_or_else(|r| panic!("{}: {}", r.status, text(&r)));
    let c = Some(cookie.as_str());
    let search = |q: String| {
        let app = &app;
        async move {
            let r = page(app, &format!("/console/?{q}"), c).await;
            (r.status, text(&r))
        }
    };
    let rows = |html: &str| html.matches("<a href=\"/console/event/").count();
    let from = &seeded.start;
    let (status, html) = search(format!("patient=Patient/{p1}&from={from}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(rows(&html), 5, "{html}");
    let (_, html) = search(format!("patient={p1}&from={from}&action=R")).await;
    assert_eq!(rows(&html), 2, "{html}");
    let (_, html) = search(format!("patient={p1}&from={from}&outcome=4")).await;
    assert_eq!(rows(&html), 1, "{html}");
    assert!(html.contains("Patient/") && html.contains("4: "), "{html}");
    let (_, html) = search(format!("client={}&from={from}&action=C", seeded.writer)).await;
    assert_eq!(rows(&html), 2, "{html}");
    let (_, html) = search(format!("user=Practitioner/d1&from={from}")).await;
    assert_eq!(
        rows(&html),
        2,
        "the clinician's sign-in and its refusal: {html}"
    );
    let (_, html) = search(format!("patient={p1}&to={from}")).await;
    assert_eq!(rows(&html), 0, "{html}");
    // Escaped: the query a caller wrote, shown in the entity column.
    let (_, html) = search(format!("client={}&from={from}&outcome=4", seeded.writer)).await;
    assert_eq!(rows(&html), 1, "{html}");
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
    // Bad filters: 400 with the reason, audited.
    for q in [
        "from=yesterday",
        "patient=Patient/a%20b",
        "action=X",
        "user=d1",
    ] {
        let (status, html) = search(q.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {html}");
        assert!(html.contains("class=\"error\""), "{html}");
    }
    // An event that does not exist.
    let r = page(&app, "/console/event/nothing-here", c).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A forged cookie is no session.
    let r = page(&app, "/console/chain", Some("AAAA")).await;
    assert!(text(&r).contains("name=\"password\""), "{}", text(&r));

    let events = console_events(&app).await;
    let searches = events
        .iter()
        .filter(|(s, _, u)| s == "search-type" && u == "Practitioner/c1")
        .count();
    assert_eq!(searches, 11, "{events:?}");
    let failed = events
        .iter()
        .filter(|(s, o, u)| o == "4" && u == "Practitioner/c1" && !s.starts_with("login"))
        .count();
    assert_eq!(failed, 5, "4 bad filters and the missing event: {events:?}");
    assert!(
        events.contains(&("login-failed".into(), "4".into(), "Practitioner/c1".into())),
        "the wrong password: {events:?}"
    );
    app.stop().await;
}

on_both_backends!(
    the_console_in_a_browser,
    the_console_decides_access_and_escapes
);
