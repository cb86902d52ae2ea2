//! The standard SMART clients against a real server, as partner apps use it:
//! the SMART JavaScript client (npm `fhirclient`) in headless Debian chromium
//! (a standalone patient launch with a refresh, and an EHR launch), Python
//! `fhirclient` 4.4.0 as a confidential client, and backend services whose
//! keys and assertions PyJWT makes. The clients live in `tests/smart_clients/`
//! (pinned in its `package.json`/`package-lock.json` and `requirements.txt`);
//! each prints one JSON object of what it saw, and the assertions are here.
//!
//! A missing Node package, browser or Python package fails the test with what
//! to install (`.ci/run` installs them); nothing is skipped.

use std::ffi::OsString;

use awc::http::{Method, StatusCode};
use fhirgate::auth::clients::{ClientKind, ClientSpec};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use super::code_flow::user;
use super::*;
use crate::support::process::free_port;
use crate::support::python;
use crate::support::server::{Backend, TestApp};

const INSTALL: &str = "install the SMART client test dependencies as .ci/run does: \
     `apt-get install -y chromium chromium-driver`, \
     `PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix tests/smart_clients`, \
     `python3 -m venv tests/smart_clients/.venv && \
     tests/smart_clients/.venv/bin/pip install -r tests/smart_clients/requirements.txt`";

/// `FHIRGATE_NODE`, else `node`.
#[allow(clippy::disallowed_methods)] // a test's own knob, not a server setting
fn node() -> OsString {
    std::env::var_os("FHIRGATE_NODE").unwrap_or_else(|| "node".into())
}

async fn run_client(program: OsString, args: Vec<String>) -> Value {
    crate::support::run_client(program, args, INSTALL).await
}

/// Two patients, each with Observations; the apps act for the first.
struct Records {
    own: String,
    other: String,
    own_observations: Vec<String>,
    other_observations: Vec<String>,
    encounter: String,
}

async fn create(app: &TestApp, token: &str, body: Value) -> String {
    let kind = body["resourceType"].as_str().unwrap().to_string();
    let r = fhir(
        app,
        Method::POST,
        &format!("/{kind}"),
        Some(token),
        Some(&body),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["id"].as_str().expect("an id").to_string()
}

fn observation(patient: &str, text: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": text},
        "subject": {"reference": format!("Patient/{patient}")}})
}

async fn records(app: &TestApp) -> Records {
    let admin = system_token(app, "system/*.cruds").await;
    let own = create_patient(app, &admin, "Smartclients").await;
    let other = create_patient(app, &admin, "Smartclients").await;
    let mut own_observations = Vec::new();
    for text in ["heart rate", "body weight"] {
        own_observations.push(create(app, &admin, observation(&own, text)).await);
    }
    let other_observations = vec![create(app, &admin, observation(&other, "other's")).await];
    let encounter = create(
        app,
        &admin,
        json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{own}")}}),
    )
    .await;
    own_observations.sort();
    Records {
        own,
        other,
        own_observations,
        other_observations,
        encounter,
    }
}

/// The ids of a client's `[{id, subject}]` list, sorted, each checked to be
/// about `patient`.
fn observation_ids(list: &Value, patient: &str) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list of Observations: {list}"))
        .iter()
        .map(|o| {
            assert_eq!(o["subject"], format!("Patient/{patient}"), "{o}");
            o["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// What every client must have seen of the two patients.
fn assert_sees_only_own(who: &str, out: &Value, r: &Records) {
    assert_eq!(out["patient_id"], r.own.as_str(), "{who}: {out}");
    assert_eq!(out["patient"]["id"], r.own.as_str(), "{who}: {out}");
    assert_eq!(out["patient"]["family"], "Smartclients", "{who}: {out}");
    assert_eq!(
        observation_ids(&out["observations"], &r.own),
        r.own_observations,
        "{who}: the patient's Observations"
    );
    assert_eq!(
        observation_ids(&out["all_observations"], &r.own),
        r.own_observations,
        "{who}: a search naming no patient finds only the token's patient"
    );
    assert_eq!(
        out["other_patient_read"],
        json!({"status": 404, "id": null}),
        "{who}: another patient's record does not exist for this token"
    );
    let other_obs = &out["other_patient_observations"];
    assert_eq!(other_obs["status"], 200, "{who}: {other_obs}");
    let leaked: Vec<&Value> = other_obs["observations"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: a search answer: {other_obs}"))
        .iter()
        .collect();
    assert!(
        leaked.is_empty(),
        "{who}: a search for another patient's Observations finds nothing, not {leaked:?} \
         (theirs: {:?})",
        r.other_observations
    );
}

fn assert_pkce_and_aud(who: &str, out: &Value, app: &TestApp) {
    let p = &out["authorize_params"];
    assert_eq!(p["code_challenge_method"], "S256", "{who}: {p}");
    assert_eq!(p["aud"], app.base.as_str(), "{who}: {p}");
}

/// What the app reported, once the launch reached the app with no error.
fn app_report<'a>(launch: &str, flow: &'a Value) -> &'a Value {
    let a = &flow["app"];
    assert!(
        a.is_object() && a.get("error").is_none() && flow.get("driver_error").is_none(),
        "{launch}: the app did not finish: {flow:#}"
    );
    a
}

async fn the_smart_javascript_client_launches_in_a_browser(backend: Backend) {
    let app_port = free_port();
    let app_origin = format!("http://127.0.0.1:{app_port}");
    let origin = app_origin.clone();
    // The app's pages and fhirgate are two origins: the operator lists the app's.
    let app = spawn_auth(backend, move |s| s.server.cors_origins = vec![origin]).await;
    let r = records(&app).await;
    user(
        &app,
        "alice",
        &format!("Patient/{}", r.own),
        Role::Patient,
        false,
    );
    user(&app, "doc", "Practitioner/d1", Role::Clinician, false);
    let (client_id, _) = client(
        &app,
        ClientSpec {
            name: "SMART JS test app".into(),
            redirect_uris: vec![format!("{app_origin}/index.html")],
            kind: ClientKind::Public,
            scope: None,
            grant_types: None,
        },
    );
    let launch = fhirgate::auth::new_launch(
        &app.store,
        &format!("Patient/{}", r.own),
        Some(&format!("Encounter/{}", r.encounter)),
        Some("doc"),
    )
    .unwrap();
    let config = json!({
        "fhir_base": app.base,
        "app_port": app_port,
        "client_id": client_id,
        "other_patient": r.other,
        "standalone": {"username": "alice", "password": "alice-password",
            "scope": "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"},
        "ehr": {"username": "doc", "password": "doc-password", "launch": launch,
            "scope": "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/Encounter.rs"},
    });
    let out = run_client(
        node(),
        vec![
            "tests/smart_clients/browser_launch.mjs".into(),
            config.to_string(),
        ],
    )
    .await;
    assert_eq!(
        out["off_loopback_requests"],
        json!([]),
        "the browser asked for nothing but 127.0.0.1"
    );

    let s = &out["standalone"];
    assert_eq!(s["pages"], json!(["login", "consent"]), "standalone: {s}");
    assert_pkce_and_aud("standalone", s, &app);
    let offered: Vec<&str> = s["offered_scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["scope"].as_str().unwrap())
        .collect();
    assert!(
        offered.contains(&"patient/Observation.rs") && offered.contains(&"offline_access"),
        "{offered:?}"
    );
    let a = app_report("standalone", s);
    assert_sees_only_own("standalone", a, &r);
    assert_eq!(a["fhir_user"], format!("Patient/{}", r.own), "{a}");
    assert_eq!(a["token_type"], "Bearer");
    assert_eq!(a["encounter_id"], Value::Null, "{a}");
    assert_eq!(a["has_id_token"], true);
    assert_eq!(a["has_refresh_token"], true, "offline_access: {a}");
    let refresh = &a["refresh"];
    assert_eq!(refresh["access_token_changed"], true, "{refresh}");
    assert_eq!(refresh["refresh_token_rotated"], true, "{refresh}");
    assert_eq!(
        refresh["patient_after_refresh"],
        r.own.as_str(),
        "{refresh}"
    );
    assert!(
        refresh["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|x| x == "patient/Observation.rs"),
        "{refresh}"
    );

    let e = &out["ehr"];
    assert_eq!(e["pages"], json!(["login", "consent"]), "ehr: {e}");
    assert_pkce_and_aud("ehr", e, &app);
    assert!(
        e["authorize_params"]["names"]
            .as_array()
            .unwrap()
            .contains(&json!("launch")),
        "{e}"
    );
    let a = app_report("ehr", e);
    assert_sees_only_own("ehr", a, &r);
    assert_eq!(a["fhir_user"], "Practitioner/d1", "{a}");
    assert_eq!(a["encounter_id"], r.encounter.as_str(), "{a}");
    assert_eq!(
        a["encounter"],
        json!({"id": r.encounter, "subject": format!("Patient/{}", r.own)})
    );
    assert_eq!(
        a["has_refresh_token"], false,
        "no offline_access asked: {a}"
    );
    assert!(a.get("refresh").is_none(), "{a}");
    app.stop().await;
}

async fn python_fhirclient_runs_a_confidential_code_flow(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let r = records(&app).await;
    user(&app, "doc", "Practitioner/d1", Role::Clinician, false);
    let redirect = "http://127.0.0.1:9/smart/callback";
    let (client_id, secret) = client(
        &app,
        ClientSpec {
            name: "Python confidential app".into(),
            redirect_uris: vec![redirect.into()],
            kind: ClientKind::Secret,
            scope: None,
            grant_types: Some(vec!["authorization_code".into(), "refresh_token".into()]),
        },
    );
    let config = json!({
        "fhir_base": app.base,
        "client_id": client_id,
        "client_secret": secret.expect("a secret"),
        "redirect_uri": redirect,
        // fhirclient adds launch/patient itself.
        "scope": "openid fhirUser offline_access patient/Patient.rs patient/Observation.rs",
        "username": "doc",
        "password": "doc-password",
        "pick_patient": format!("Patient/{}", r.own),
        "other_patient": r.other,
    });
    let out = run_client(
        python(),
        vec![
            "tests/smart_clients/confidential_flow.py".into(),
            config.to_string(),
        ],
    )
    .await;
    assert_eq!(
        out["pages"],
        json!(["login", "patient-picker", "consent"]),
        "{out}"
    );
    assert_pkce_and_aud("python", &out, &app);
    assert!(out["authorize_params"]["scope"]
        .as_str()
        .unwrap()
        .starts_with("launch/patient "));
    assert_eq!(out["redirected_to_registered_uri"], true);
    assert_eq!(out["ready"], true);
    assert_eq!(out["token_type"], "Bearer");
    assert_eq!(out["has_refresh_token"], true, "{out}");
    assert_sees_only_own("python", &out, &r);
    assert_eq!(out["reauthorized"], true, "{out}");
    assert_eq!(out["access_token_changed"], true, "{out}");
    assert_eq!(out["patient_after_refresh"], r.own.as_str());
    // The flow and the refresh authenticated the client (HTTP Basic).
    let events = auth_events(&app).await;
    assert!(has_event(&events, "token-issued", "0"), "{events:?}");
    app.stop().await;
}

async fn backend_services_sign_with_pyjwt_keys(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let r = records(&app).await;
    let keys = tempfile::tempdir().unwrap();
    let made = run_client(
        python(),
        vec![
            "tests/smart_clients/backend_services.py".into(),
            "keys".into(),
            keys.path().to_string_lossy().into_owned(),
        ],
    )
    .await;
    let (client_id, _) = client(
        &app,
        ClientSpec {
            name: "Python backend service".into(),
            redirect_uris: vec![],
            kind: ClientKind::JwksFile(made["jwks_file"].as_str().unwrap().into()),
            scope: Some("system/Patient.rs".into()),
            grant_types: Some(vec!["client_credentials".into()]),
        },
    );
    let config = json!({
        "fhir_base": app.base,
        "client_id": client_id,
        "keys_dir": keys.path(),
        "scope": "system/Patient.rs",
        "search": "Patient?family=Smartclients&_total=accurate",
    });
    let out = run_client(
        python(),
        vec![
            "tests/smart_clients/backend_services.py".into(),
            "token".into(),
            config.to_string(),
        ],
    )
    .await;
    let mut both = vec![format!("Patient/{}", r.own), format!("Patient/{}", r.other)];
    both.sort();
    for alg in ["RS384", "ES384"] {
        let a = &out[alg];
        assert_eq!(a["token_status"], 200, "{alg}: {a}");
        assert_eq!(a["token_type"], "Bearer", "{alg}");
        assert_eq!(a["scope"], "system/Patient.rs", "{alg}");
        let expires = a["expires_in"].as_u64().unwrap();
        assert!((1..=300).contains(&expires), "{alg}: expires_in {expires}");
        assert_eq!(a["has_refresh_token"], false, "{alg}");
        assert_eq!(a["search_status"], 200, "{alg}: {a}");
        assert_eq!(a["search_total"], 2, "{alg}: {a}");
        assert_eq!(
            a["search_found"],
            json!(both),
            "{alg}: a system search sees every patient"
        );
        assert_eq!(
            a["replayed_assertion"],
            json!({"status": 401, "error": "invalid_client"}),
            "{alg}: a jti is used once"
        );
        assert_eq!(
            a["unregistered_key"],
            json!({"status": 401, "error": "invalid_client"}),
            "{alg}: a key the client did not register"
        );
    }
    app.stop().await;
}

crate::support::server::on_both_backends!(
    the_smart_javascript_client_launches_in_a_browser,
    python_fhirclient_runs_a_confidential_code_flow,
    backend_services_sign_with_pyjwt_keys,
);
