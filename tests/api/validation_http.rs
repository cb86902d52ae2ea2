//! Validation through the real server (both backends) and the built binary: a create that
//! fails a required profile answers 422, stores nothing and is audited; `$validate` answers
//! 200 with the issues; `fhirgate validate` exits 0 or 1.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_with, Backend, Database};

const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";

fn us_core_settings(s: &mut fhirgate::config::Settings) {
    s.packages.load = vec![
        "hl7.fhir.r4.core#4.0.1".into(),
        "hl7.fhir.us.core#6.1.0".into(),
    ];
    s.validation
        .required_profiles
        .insert("Patient".into(), vec![US_CORE_PATIENT.into()]);
}

fn has_issue(oo: &Value, wanted: impl Fn(&Value) -> bool) -> bool {
    oo["issue"]
        .as_array()
        .is_some_and(|is| is.iter().any(wanted))
}

fn conforming_patient() -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7"}],
           "name": [{"family": "Chalmers", "given": ["Peter"]}], "gender": "male"})
}

async fn create_failing_a_required_profile_is_422_stores_nothing_and_is_audited(backend: Backend) {
    let app = spawn_with(Database::new(backend), us_core_settings).await;
    let mut bad = conforming_patient();
    bad.as_object_mut().unwrap().remove("gender");
    let r = app.post_json("/Patient", &bad).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let oo = r.json();
    let issue = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["severity"] == "error" && i["expression"][0] == "Patient")
        .unwrap_or_else(|| panic!("no error at Patient: {oo}"));
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Patient.gender"),
        "{issue}"
    );
    assert_eq!(
        issue["extension"][0]["valueString"]
            .as_str()
            .map(|s| s.starts_with(US_CORE_PATIENT)),
        Some(true),
        "{issue}"
    );
    // the answer names the setting that decides what is checked (issue 13)
    assert!(
        has_issue(&oo, |i| i["severity"] == "information"
            && i["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("validation.mode"))),
        "{oo}"
    );
    // an update-as-create is refused the same way
    let mut bad_put = bad.clone();
    bad_put["id"] = json!("p1");
    let r = app.put_json("/Patient/p1", &bad_put).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // a transaction with one such entry: 422, the entry named, nothing of it stored
    let bundle = |kind: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": conforming_patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": bad.clone(), "request": {"method": "POST", "url": "Patient"}}]})
    };
    let r = app.post_json("", &bundle("transaction")).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let oo = r.json();
    assert!(
        has_issue(&oo, |i| i["severity"] == "error"
            && i["expression"][0] == "Bundle.entry[1].resource"
            && i["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("Patient.gender"))),
        "{oo}"
    );
    let history = app.get("/Patient/_history").await;
    assert_eq!(history.status, StatusCode::OK);
    assert!(
        history.json().get("entry").is_none(),
        "nothing was stored: {}",
        history.json()
    );
    let ok = app.post_json("/Patient", &conforming_patient()).await;
    assert_eq!(
        ok.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&ok.body)
    );
    // in a batch only that entry fails, with 422
    let r = app.post_json("", &bundle("batch")).await;
    assert_eq!(r.status, StatusCode::OK);
    let b = r.json();
    let status = |i: usize| {
        b["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(status(0).starts_with("201"), "{b}");
    assert!(status(1).starts_with("422"), "{b}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn validate_operation_answers_200_with_the_issues(backend: Backend) {
    let app = spawn_with(Database::new(backend), us_core_settings).await;
    let mut bad = conforming_patient();
    bad["gender"] = json!("unknownish");
    let r = app.post_json("/Patient/$validate", &bad).await;
    assert_eq!(r.status, StatusCode::OK);
    let oo = r.json();
    assert!(
        has_issue(&oo, |i| i["severity"] == "error"
            && i["code"] == "code-invalid"
            && i["expression"][0] == "Patient.gender"),
        "{oo}"
    );
    // Parameters with a profile; the instance form checks the id for mode=update
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": conforming_patient()},
        {"name": "mode", "valueCode": "update"}]});
    let r = app.post_json("/Patient/p9/$validate", &params).await;
    assert_eq!(r.status, StatusCode::OK);
    let oo = r.json();
    assert!(
        has_issue(&oo, |i| i["expression"][0] == "Patient.id"),
        "{oo}"
    );
    let good = app
        .post_json("/Patient/$validate", &conforming_patient())
        .await;
    assert_eq!(good.status, StatusCode::OK);
    let oo = good.json();
    assert!(!has_issue(&oo, |i| i["severity"] == "error"), "{oo}");
    let delete = app
        .post_json("/Patient/p9/$validate?mode=delete", &conforming_patient())
        .await;
    assert_eq!(delete.json()["issue"][0]["severity"], "information");
    // malformed requests are 400 and 415, not 200
    for (content_type, body, status) in [
        (
            "application/fhir+json",
            &b"{not json"[..],
            StatusCode::BAD_REQUEST,
        ),
        ("text/plain", &b"x"[..], StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let r = app
            .send(
                Method::POST,
                "/Patient/$validate",
                &[("Content-Type", content_type)],
                Some(body),
            )
            .await;
        assert_eq!(r.status, status, "{content_type}");
    }
    // only POST runs the operation
    assert_eq!(
        app.get("/Patient/$validate").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // the CapabilityStatement declares the operation and the required profile
    let cs = app.get("/metadata").await.json();
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient["operation"][0]["name"], "validate");
    assert_eq!(patient["supportedProfile"][0], US_CORE_PATIENT);
    // and it is itself a valid CapabilityStatement
    let r = app.post_json("/CapabilityStatement/$validate", &cs).await;
    let oo = r.json();
    assert!(!has_issue(&oo, |i| i["severity"] == "error"), "{oo}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    create_failing_a_required_profile_is_422_stores_nothing_and_is_audited,
    validate_operation_answers_200_with_the_issues,
);

fn run_validate(args: &[&str]) -> (i32, Vec<Value>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .arg("validate")
        .args(args)
        .env("FHIRGATE_PACKAGES__CACHE", support::package_cache())
        .env(
            "FHIRGATE_PACKAGES__REGISTRY",
            "http://127.0.0.1:9/no-registry",
        )
        .env("FHIRGATE_LOG__LEVEL", "warn")
        .output()
        .expect("run fhirgate validate");
    let outcomes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), outcomes)
}

#[test]
fn the_validate_command_exits_1_exactly_when_a_file_has_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, conforming_patient().to_string()).unwrap();
    let mut b = conforming_patient();
    b["gender"] = json!("unknownish");
    std::fs::write(&bad, b.to_string()).unwrap();
    let xml = dir.path().join("good.xml");
    std::fs::write(
        &xml,
        r#"<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>"#,
    )
    .unwrap();
    let (code, outcomes) = run_validate(&[good.to_str().unwrap(), xml.to_str().unwrap()]);
    assert_eq!(code, 0, "{outcomes:?}");
    assert_eq!(outcomes.len(), 2);
    let missing = dir.path().join("missing.json");
    let (code, outcomes) = run_validate(&[good.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{outcomes:?}");
    assert_eq!(outcomes[1]["issue"][0]["severity"], "fatal");
    let (code, outcomes) = run_validate(&[good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{outcomes:?}");
    assert_eq!(outcomes.len(), 2);
    assert!(has_issue(&outcomes[1], |i| i["expression"][0] == "Patient.gender"));
    // the XML patient has no identifier or name: US Core refuses it
    let (code, outcomes) = run_validate(&[
        xml.to_str().unwrap(),
        "--package",
        "hl7.fhir.us.core#6.1.0",
        "--profile",
        US_CORE_PATIENT,
    ]);
    assert_eq!(code, 1, "{outcomes:?}");
    let (code, _) = run_validate(&[
        good.to_str().unwrap(),
        "--package",
        "hl7.fhir.us.core#6.1.0",
        "--profile",
        US_CORE_PATIENT,
    ]);
    assert_eq!(code, 0);
}

#[test]
fn a_required_profile_that_is_unknown_or_of_another_type_stops_the_start() {
    let settings = |profile: &str| {
        let mut s = fhirgate::config::Settings::default();
        s.packages.cache = Some(support::package_cache());
        s.packages.registry = "http://127.0.0.1:9/no-registry".into();
        us_core_settings(&mut s);
        s.validation
            .required_profiles
            .insert("Patient".into(), vec![profile.into()]);
        s
    };
    for (profile, words) in [
        (
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab",
            "constrains Observation, not Patient",
        ),
        (
            "http://partner.test/StructureDefinition/nope",
            "for Patient",
        ),
    ] {
        let s = settings(profile);
        let model = fhirgate::startup::load_model(&s).expect("packages");
        let err = fhirgate::startup::build_validator(&s, &model)
            .err()
            .unwrap_or_else(|| panic!("{profile} was accepted"));
        assert!(err.to_string().contains(words), "{err}");
    }
    let s = settings(US_CORE_PATIENT);
    let model = fhirgate::startup::load_model(&s).expect("packages");
    assert!(fhirgate::startup::build_validator(&s, &model).is_ok());
}
