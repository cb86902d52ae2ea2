//! Hostile requests (issue 13): each case sends what an attacker would and checks
//! that it is answered with a 4xx OperationOutcome naming the problem, that nothing
//! was stored, and that the server still answers a cheap GET afterwards; on both
//! backends.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::smart_auth::{fhir, spawn_auth, system_token};
use crate::support::server::{on_both_backends, Backend, Reply, TestApp};

/// The answer is `status` with an OperationOutcome whose first issue has `code`;
/// returns the diagnostics.
fn refused(r: &Reply, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let (c, diagnostics, _) = r.issue();
    assert_eq!(c, code, "{diagnostics}");
    diagnostics
}

/// The `_cursor` of a Bundle's `relation` link.
fn cursor_of(bundle: &Value, relation: &str) -> String {
    let url = bundle["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == relation))
        .and_then(|l| l["url"].as_str())
        .unwrap_or_else(|| panic!("no {relation} link in {bundle}"));
    url.split("_cursor=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .unwrap_or_else(|| panic!("no cursor in {url}"))
        .to_string()
}

/// A cheap read still answers (the server is up and not starved).
async fn still_answers(app: &TestApp, token: Option<&str>) {
    let r = fhir(app, Method::GET, "/metadata", token, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = fhir(app, Method::GET, "/Patient?_count=1", token, None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Item 6: a page link is bound to the search it continues (type, compartment,
/// query) and to the caller it was issued to; nothing may be added beside it.
async fn cursors_are_bound_to_their_search_and_caller(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let a = system_token(&app, "system/*.cruds").await;
    let b = system_token(&app, "system/*.cruds").await;
    for p in ["p1", "p2"] {
        let r = fhir(
            &app,
            Method::PUT,
            &format!("/Patient/{p}"),
            Some(&a),
            Some(&json!({"resourceType": "Patient", "id": p})),
        )
        .await;
        assert!(
            r.status.is_success(),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        for i in 0..3 {
            let r = fhir(
                &app,
                Method::POST,
                "/Observation",
                Some(&a),
                Some(&json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": format!("o{i}")},
                    "subject": {"reference": format!("Patient/{p}")}})),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
    }
    let first = fhir(
        &app,
        Method::GET,
        "/Observation?status=final&_count=2",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let cursor = cursor_of(&first.json(), "next");

    // Its own caller at its own URL pages on (with a format beside it).
    let next = fhir(
        &app,
        Method::GET,
        &format!("/Observation?_cursor={cursor}&_format=json"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(next.json()["entry"].as_array().map(Vec::len), Some(2));

    // Another type: refused, not answered with Observations.
    let r = fhir(
        &app,
        Method::GET,
        &format!("/Patient?_cursor={cursor}"),
        Some(&a),
        None,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "value");
    // A system search or a compartment is another URL too.
    for url in [
        format!("?_cursor={cursor}"),
        format!("/Patient/p1/Observation?_cursor={cursor}"),
    ] {
        let r = fhir(&app, Method::GET, &url, Some(&a), None).await;
        refused(&r, StatusCode::BAD_REQUEST, "value");
    }
    // Parameters beside it are refused, not dropped.
    for extra in [
        "status=cancelled",
        "_count=50",
        "_summary=count",
        "_cursor=x",
    ] {
        let r = fhir(
            &app,
            Method::GET,
            &format!("/Observation?_cursor={cursor}&{extra}"),
            Some(&a),
            None,
        )
        .await;
        let why = refused(&r, StatusCode::BAD_REQUEST, "invalid");
        assert!(why.contains("_cursor"), "{why}");
    }
    // Another client with the same scopes may not use it.
    let r = fhir(
        &app,
        Method::GET,
        &format!("/Observation?_cursor={cursor}"),
        Some(&b),
        None,
    )
    .await;
    let why = refused(&r, StatusCode::BAD_REQUEST, "value");
    assert!(why.contains("another client"), "{why}");

    // A compartment's cursor does not page another patient's compartment.
    let comp = fhir(
        &app,
        Method::GET,
        "/Patient/p1/Observation?_count=1",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(comp.status, StatusCode::OK);
    let c = cursor_of(&comp.json(), "next");
    let r = fhir(
        &app,
        Method::GET,
        &format!("/Patient/p2/Observation?_cursor={c}"),
        Some(&a),
        None,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "value");
    let r = fhir(
        &app,
        Method::GET,
        &format!("/Patient/p1/Observation?_cursor={c}"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    still_answers(&app, Some(&a)).await;
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(cursors_are_bound_to_their_search_and_caller);

/// Nothing of a resource was written (versions, current rows, index rows).
fn nothing_stored(app: &TestApp) {
    for (table, n) in app.db.written_rows() {
        assert_eq!(n, 0, "{table} has {n} rows");
    }
}

/// No byte XML 1.0 cannot carry (control characters other than tab, CR, LF).
fn assert_xml_chars(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(
        !text
            .chars()
            .any(|c| c < ' ' && !matches!(c, '\t' | '\r' | '\n')),
        "not well-formed XML: {text:?}"
    );
    let mut reader = quick_xml::Reader::from_str(&text);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML ({e}): {text}"),
        }
    }
}

/// Item 4: control characters (NUL included) in strings, uris and references,
/// and decimals no index can hold, are refused with 400 on create and in search
/// parameters, on both backends alike; error answers in XML stay well-formed.
async fn input_fhir_forbids_is_refused_and_never_stored(backend: Backend) {
    let app = crate::support::server::spawn_app(backend).await;
    let nines = "9".repeat(5000);
    let bodies: Vec<(&str, String)> = vec![
        (
            "Patient",
            r#"{"resourceType":"Patient","name":[{"family":"a\u0000b"}]}"#.into(),
        ),
        (
            "Patient",
            r#"{"resourceType":"Patient","name":[{"family":"bell\u0007"}]}"#.into(),
        ),
        (
            "Patient",
            r#"{"resourceType":"Patient","identifier":[{"system":"urn:x\u0000y","value":"1"}]}"#
                .into(),
        ),
        (
            "Patient",
            r#"{"resourceType":"Patient","managingOrganization":{"reference":"Organization/o\u0000"}}"#
                .into(),
        ),
        (
            "Patient",
            r#"{"resourceType":"Patient","meta":{"profile":["http://x/\u0000"]}}"#.into(),
        ),
        (
            "Observation",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e309}}"#
                .into(),
        ),
        (
            "Observation",
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{nines}}}}}"#
            ),
        ),
        (
            "RiskAssessment",
            r#"{"resourceType":"RiskAssessment","status":"final","subject":{"reference":"Patient/p"},"prediction":[{"probabilityDecimal":-1e400}]}"#
                .into(),
        ),
    ];
    for (t, body) in &bodies {
        let r = app
            .send(
                Method::POST,
                &format!("/{t}"),
                &[("Content-Type", "application/fhir+json")],
                Some(body.as_bytes()),
            )
            .await;
        refused(&r, StatusCode::BAD_REQUEST, "value");
        // The same in an update and in a transaction.
        let r = app
            .send(
                Method::PUT,
                &format!("/{t}/x1"),
                &[("Content-Type", "application/fhir+json")],
                Some(body.replacen('{', r#"{"id":"x1","#, 1).as_bytes()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let tx = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"resource":{},"request":{{"method":"POST","url":"Patient"}}}}]}}"#,
        bodies[2].1
    );
    let r = app
        .send(
            Method::POST,
            "",
            &[("Content-Type", "application/fhir+json")],
            Some(tx.as_bytes()),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    nothing_stored(&app);

    // Search values: strings, tokens, uris, references, and names.
    for q in [
        "/Patient?family=a%00b",
        "/Patient?identifier=urn:x%00y|1",
        "/Patient?organization=Organization/o%00",
        "/Patient?_profile=http://x/%00",
        "/Observation?subject=Patient/%07",
        "/Patient?fam%00ily=x",
        "/Observation?value-quantity=1e309",
    ] {
        let r = app.get(q).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{q}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (code, _, _) = r.issue();
        assert!(matches!(code.as_str(), "value"), "{q}: {code}");
    }

    // An error that quotes what the client sent is still well-formed XML.
    let r = app
        .send(
            Method::POST,
            "/Patient",
            &[
                ("Content-Type", "application/fhir+json"),
                ("Accept", "application/fhir+xml"),
            ],
            Some(br#"{"resourceType":"Pat\u0007ient\u0000"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_xml_chars(&r.body);
    let r = app.get("/Patient?n%07=1&_format=xml").await;
    assert_xml_chars(&r.body);
    nothing_stored(&app);

    // A decimal at the edge of the range is kept exactly as sent and indexed.
    let r = app
        .post_json(
            "/Observation",
            &serde_json::from_str::<Value>(
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.7e308,"system":"http://unitsofmeasure.org","code":"km"}}"#,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let kept = r.json()["valueQuantity"]["value"].to_string();
    assert_eq!(kept.parse::<f64>().ok(), Some(1.7e308), "{kept}");
    let r = app.get("/Observation?value-quantity=gt1e308").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["total"], 1);

    still_answers(&app, None).await;
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(input_fhir_forbids_is_refused_and_never_stored);
