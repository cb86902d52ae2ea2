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
