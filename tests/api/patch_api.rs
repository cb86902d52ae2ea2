//! `PATCH /fhir/[type]/[id]` against a real server on SQLite and PostgreSQL: JSON Patch and
//! FHIRPath Patch (JSON and XML) make new versions with history method PATCH; `If-Match`,
//! `Prefer`, every refusal (400, 404, 405, 410, 412, 415, 422) with nothing stored; racing
//! patches lose no update. Each test ends by checking that every request left exactly one
//! AuditEvent.

use awc::http::{Method, StatusCode};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend, Reply, TestApp};

const JSON_PATCH: (&str, &str) = ("Content-Type", "application/json-patch+json");
const FHIR_JSON: (&str, &str) = ("Content-Type", "application/fhir+json");
const FHIR_XML: (&str, &str) = ("Content-Type", "application/fhir+xml");

async fn patch(app: &TestApp, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    let b = serde_json::to_vec(body).unwrap();
    app.send(Method::PATCH, path, headers, Some(&b)).await
}

/// A FHIRPath Patch with one operation made of `parts` (each `{"name": ..., "value[x]": ...}`).
fn fhirpath_patch(kind: &str, path: &str, parts: Vec<Value>) -> Value {
    let mut all = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    all.extend(parts);
    json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": all}]})
}

async fn create_patient(app: &TestApp) -> String {
    let p = json!({"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "gender": "male", "birthDate": "1974-12-25"});
    let created = app.post_json("/Patient", &p).await;
    assert_eq!(created.status, StatusCode::CREATED);
    created.json()["id"].as_str().unwrap().to_string()
}

/// A server holding one patient; the patient's URL below /fhir.
async fn app_with_patient(backend: Backend) -> (TestApp, String) {
    let app = spawn_app(backend).await;
    let id = create_patient(&app).await;
    (app, format!("/Patient/{id}"))
}

fn assert_status(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
}

async fn version_of(app: &TestApp, path: &str) -> String {
    app.get(path).await.json()["meta"]["versionId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn json_patch_and_fhirpath_patch_make_new_versions(backend: Backend) {
    let (app, url) = app_with_patient(backend).await;

    let r = patch(
        &app,
        &url,
        &[JSON_PATCH],
        &json!([
            {"op": "test", "path": "/gender", "value": "male"},
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "add", "path": "/name/0/given/-", "value": "James"}
        ]),
    )
    .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.header("etag").unwrap(), "W/\"2\"");
    assert_eq!(
        r.header("content-location").unwrap(),
        format!("{}{url}/_history/2", app.base)
    );
    let body = r.json();
    assert_eq!(body["gender"], "female");
    assert_eq!(body["name"][0]["given"], json!(["Peter", "James"]));
    assert_eq!(body["meta"]["versionId"], "2");

    // FHIRPath Patch in JSON: a new element goes where the definition puts it.
    let r = patch(
        &app,
        &url,
        &[FHIR_JSON],
        &fhirpath_patch(
            "add",
            "Patient",
            vec![
                json!({"name": "name", "valueString": "active"}),
                json!({"name": "value", "valueBoolean": true}),
            ],
        ),
    )
    .await;
    assert_status(&r, StatusCode::OK);
    let body = r.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "resourceType",
            "id",
            "meta",
            "active",
            "name",
            "gender",
            "birthDate"
        ]
    );

    // FHIRPath Patch in XML, answering with an OperationOutcome as asked.
    let xml = r#"<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>
        <part><name value="type"/><valueCode value="replace"/></part>
        <part><name value="path"/><valueString value="Patient.birthDate"/></part>
        <part><name value="value"/><valueDate value="1975-01-02"/></part>
        </parameter></Parameters>"#;
    let r = app
        .send(
            Method::PATCH,
            &url,
            &[FHIR_XML, ("Prefer", "return=OperationOutcome")],
            Some(xml.as_bytes()),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let r = patch(
        &app,
        &url,
        &[JSON_PATCH, ("Prefer", "return=minimal")],
        &json!([
            {"op": "remove", "path": "/active"}
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").unwrap(), "W/\"5\"");

    let current = app.get(&url).await.json();
    assert_eq!(current["birthDate"], "1975-01-02");
    assert!(current.get("active").is_none());
    let history = app.get(&format!("{url}/_history")).await.json();
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["PATCH", "PATCH", "PATCH", "PATCH", "POST"]);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn if_match_must_name_the_current_version(backend: Backend) {
    let (app, url) = app_with_patient(backend).await;
    let ops = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
    let stale = patch(&app, &url, &[JSON_PATCH, ("If-Match", "W/\"2\"")], &ops).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.issue().0, "conflict");
    assert_eq!(version_of(&app, &url).await, "1");
    let bad = patch(&app, &url, &[JSON_PATCH, ("If-Match", "yesterday")], &ops).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let ok = patch(&app, &url, &[JSON_PATCH, ("If-Match", "W/\"1\"")], &ops).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["gender"], "other");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn refused_patches_change_nothing(backend: Backend) {
    let (app, url) = app_with_patient(backend).await;
    let url = url.as_str();
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let replace_gender = body(json!([{"op": "replace", "path": "/gender", "value": "other"}]));
    struct Case {
        what: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: Vec<u8>,
        status: StatusCode,
        code: &'static str,
        expression: Option<&'static str>,
    }
    let case = |what,
                headers: &[(&'static str, &'static str)],
                body: Vec<u8>,
                status,
                code,
                expression| Case {
        what,
        headers: headers.to_vec(),
        body,
        status,
        code,
        expression,
    };
    let cases = vec![
        case(
            "JSON Patch that is not an array",
            &[JSON_PATCH],
            body(json!({"op": "remove"})),
            StatusCode::BAD_REQUEST,
            "invalid",
            None,
        ),
        case(
            "JSON Patch that is not JSON",
            &[JSON_PATCH],
            b"[{".to_vec(),
            StatusCode::BAD_REQUEST,
            "structure",
            None,
        ),
        case(
            "unknown JSON Patch op",
            &[JSON_PATCH],
            body(json!([{"op": "merge", "path": "/a"}])),
            StatusCode::BAD_REQUEST,
            "invalid",
            None,
        ),
        case(
            "Parameters that are not a patch",
            &[FHIR_JSON],
            body(
                json!({"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("Parameters.parameter[0]"),
        ),
        case(
            "a resource that is not Parameters",
            &[FHIR_JSON],
            body(json!({"resourceType": "Patient"})),
            StatusCode::BAD_REQUEST,
            "invalid",
            None,
        ),
        case(
            "a path that is not FHIRPath",
            &[FHIR_JSON],
            body(fhirpath_patch("delete", "Patient.(", vec![])),
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("Parameters.parameter[0]"),
        ),
        case(
            "an operation without its value",
            &[FHIR_JSON],
            body(fhirpath_patch("replace", "Patient.gender", vec![])),
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("Parameters.parameter[0]"),
        ),
        case(
            "plain text",
            &[("Content-Type", "text/plain")],
            replace_gender.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            None,
        ),
        case(
            "XML Patch",
            &[("Content-Type", "application/xml-patch+xml")],
            b"<diff/>".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            None,
        ),
        case(
            "no Content-Type",
            &[],
            replace_gender.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            None,
        ),
        case(
            "a failing test",
            &[JSON_PATCH],
            body(
                json!([{"op": "test", "path": "/gender", "value": "female"}, {"op": "remove", "path": "/gender"}]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            None,
        ),
        case(
            "a missing target",
            &[JSON_PATCH],
            body(json!([{"op": "remove", "path": "/deceasedBoolean"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            None,
        ),
        case(
            "an unknown element",
            &[JSON_PATCH],
            body(json!([{"op": "add", "path": "/nickname", "value": "Jim"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "structure",
            Some("Patient.nickname"),
        ),
        case(
            "a wrong primitive",
            &[JSON_PATCH],
            body(json!([{"op": "replace", "path": "/birthDate", "value": "1974-13-01"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "value",
            Some("Patient.birthDate"),
        ),
        case(
            "a changed id",
            &[JSON_PATCH],
            body(json!([{"op": "replace", "path": "/id", "value": "someone-else"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "business-rule",
            Some("Patient.id"),
        ),
        case(
            "a removed id",
            &[JSON_PATCH],
            body(json!([{"op": "remove", "path": "/id"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "business-rule",
            Some("Patient.id"),
        ),
        case(
            "a changed type",
            &[JSON_PATCH],
            body(json!([{"op": "replace", "path": "/resourceType", "value": "Group"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "business-rule",
            Some("Patient.resourceType"),
        ),
        case(
            "FHIRPath replace of nothing",
            &[FHIR_JSON],
            body(fhirpath_patch(
                "replace",
                "Patient.maritalStatus",
                vec![json!({"name": "value", "valueCodeableConcept": {"text": "married"}})],
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            Some("Parameters.parameter[0]"),
        ),
        case(
            "FHIRPath add to a non-repeating element that has a value",
            &[FHIR_JSON],
            body(fhirpath_patch(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "gender"}),
                    json!({"name": "value", "valueCode": "other"}),
                ],
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            Some("Parameters.parameter[0]"),
        ),
        case(
            "FHIRPath value of a wrong type",
            &[FHIR_JSON],
            body(fhirpath_patch(
                "replace",
                "Patient.gender",
                vec![json!({"name": "value", "valueInteger": 3})],
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
            "structure",
            Some("Patient.gender"),
        ),
        case(
            "FHIRPath delete of several elements",
            &[FHIR_JSON],
            body(fhirpath_patch("delete", "Patient.descendants()", vec![])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            Some("Parameters.parameter[0]"),
        ),
    ];
    for c in &cases {
        let r = app
            .send(Method::PATCH, url, &c.headers, Some(&c.body))
            .await;
        assert_eq!(
            r.status,
            c.status,
            "{}: {}",
            c.what,
            String::from_utf8_lossy(&r.body)
        );
        let (code, diagnostics, expression) = r.issue();
        assert_eq!(code, c.code, "{}: {diagnostics}", c.what);
        assert!(!diagnostics.is_empty(), "{}", c.what);
        if let Some(e) = c.expression {
            assert_eq!(expression.as_deref(), Some(e), "{}: {diagnostics}", c.what);
        }
    }
    // Nothing was stored: the patient is still at version 1, as created.
    let current = app.get(url).await.json();
    assert_eq!(current["meta"]["versionId"], "1");
    assert_eq!(current["gender"], "male");
    let history = app.get(&format!("{url}/_history")).await.json();
    assert_eq!(history["entry"].as_array().unwrap().len(), 1);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn missing_deleted_and_read_only_targets_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let ops = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
    let r = patch(&app, "/Patient/nobody", &[JSON_PATCH], &ops).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.issue().0, "not-found");
    let r = patch(&app, "/Unicorn/1", &[JSON_PATCH], &ops).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = patch(&app, "/AuditEvent/a1", &[JSON_PATCH], &ops).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let id = create_patient(&app).await;
    let url = format!("/Patient/{id}");
    assert_eq!(app.delete(&url).await.status, StatusCode::OK);
    let r = patch(&app, &url, &[JSON_PATCH], &ops).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.issue().0, "deleted");
    // A conditional patch whose criteria match nothing (tests/bundle.rs has the rest).
    let r = patch(&app, "/Patient?identifier=x", &[JSON_PATCH], &ops).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let cs = app.get("/metadata").await.json();
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let codes = |t: &str| -> Vec<String> {
        resources.iter().find(|r| r["type"] == t).unwrap()["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(codes("Patient").contains(&"patch".to_string()));
    assert!(!codes("AuditEvent").contains(&"patch".to_string()));
    assert_eq!(cs["patchFormat"][0], "application/json-patch+json");
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// Racing patches without If-Match each apply to the version they find: all succeed and
/// the result holds every change. With one If-Match, exactly one wins and the others get 412.
async fn racing_patches_lose_no_update(backend: Backend) {
    const RACERS: usize = 4;
    let (app, url) = app_with_patient(backend).await;
    let patches = (0..RACERS).map(|i| {
        let body = fhirpath_patch("add", "Patient", vec![
            json!({"name": "name", "valueString": "identifier"}),
            json!({"name": "value", "valueIdentifier": {"system": "urn:racer", "value": format!("r{i}")}}),
        ]);
        let (app, url) = (&app, url.clone());
        async move { patch(app, &url, &[FHIR_JSON], &body).await.status }
    });
    let statuses = join_all(patches).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let current = app.get(&url).await.json();
    let mut values: Vec<&str> = current["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, ["r0", "r1", "r2", "r3"]);
    assert_eq!(current["meta"]["versionId"], (RACERS + 1).to_string());

    let version = (RACERS + 1).to_string();
    let etag = format!("W/\"{version}\"");
    let guarded = (0..RACERS).map(|i| {
        let ops = json!([{"op": "replace", "path": "/gender", "value": if i % 2 == 0 { "female" } else { "other" }}]);
        let (app, url, etag) = (&app, url.clone(), etag.clone());
        async move {
            patch(app, &url, &[JSON_PATCH, ("If-Match", etag.as_str())], &ops)
                .await
                .status
        }
    });
    let statuses = join_all(guarded).await;
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let lost = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((won, lost), (1, RACERS - 1), "{statuses:?}");
    assert_eq!(version_of(&app, &url).await, (RACERS + 2).to_string());
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    json_patch_and_fhirpath_patch_make_new_versions,
    if_match_must_name_the_current_version,
    refused_patches_change_nothing,
    missing_deleted_and_read_only_targets_are_refused,
    racing_patches_lose_no_update,
);
