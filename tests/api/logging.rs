//! Logs never hold patient data: a real server process at debug level, JSON logs,
//! a patient created, read, updated and refused; the captured log is searched for
//! the patient's name, identifier and phone.

use serde_json::json;

use crate::support;

#[actix_rt::test]
async fn the_log_never_holds_patient_data() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    fhirgate::crypto::MasterKey::generate()
        .unwrap()
        .write_new_file(&key)
        .unwrap();
    let db = format!("sqlite://{}", dir.path().join("fhirgate.db").display());
    let log = dir.path().join("server.log");
    let server = support::process::start(
        &db,
        &key,
        &log,
        &[
            ("FHIRGATE_LOG__LEVEL", "debug"),
            ("FHIRGATE_LOG__FORMAT", "json"),
        ],
    );
    let client = awc::Client::default();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Zyxwvutson", "given": ["Quentina"]}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-778899"}], "telecom": [{"system": "phone", "value": "555-867-5309"}]});
    let mut created = client
        .post(format!("{}/Patient", server.base))
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(patient.to_string())
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let body: serde_json::Value = created.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    client
        .get(format!("{}/Patient/{id}?name=Zyxwvutson", server.base))
        .send()
        .await
        .unwrap();
    let mut bad = patient.clone();
    bad["birthDate"] = json!("Zyxwvutson");
    client
        .put(format!("{}/Patient/{id}", server.base))
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(bad.to_string())
        .await
        .unwrap();
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("request finished"),
        "the server logged: {text}"
    );
    assert!(
        text.lines()
            .all(|l| l.trim().is_empty() || serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON logs"
    );
    for secret in ["Zyxwvutson", "Quentina", "MRN-778899", "867-5309"] {
        assert!(!text.contains(secret), "the log holds {secret}");
    }
}

/// The text log of a server whose output is not a terminal (here a file, as under
/// systemd or `fhirgate serve 2>&1 | tee`) holds no colour codes (ANSI escapes).
#[actix_rt::test]
async fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    fhirgate::crypto::MasterKey::generate()
        .unwrap()
        .write_new_file(&key)
        .unwrap();
    let db = format!("sqlite://{}", dir.path().join("fhirgate.db").display());
    let log = dir.path().join("server.log");
    let server = support::process::start(&db, &key, &log, &[("FHIRGATE_LOG__FORMAT", "text")]);
    let r = awc::Client::default()
        .get(format!("{}/Patient/nobody", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("fhirgate serving") && text.contains("request finished"),
        "the server logged: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the log: {text:?}"
    );
}
