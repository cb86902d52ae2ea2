//! Every kind of AuditEvent the server makes claims its profile in `meta.profile`
//! and meets it: each event in the store is validated by fhirgate's own validator
//! (the server's, with `ihe.iti.balp` and `profiles/` loaded) against every
//! profile it claims, after the test drove every interaction kind, succeeding and
//! failing: read, vread, search with patients on the page, create, update, patch,
//! delete, history, a transaction Bundle, operations, capabilities, token issue and
//! refusal, sign-in failure and lockout, consent given and refused, denials.
//! Events made under a token name the client, the user and the token's `jti`
//! (BALP OAUTHaccessTokenUse), with the purpose of use of a break-glass token.

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use crate::smart_auth::code_flow::{granted, public_client, run_flow, user, Choices};
use crate::smart_auth::{bearer, claims, client_token, post_form, secret_client, spawn_auth};
use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
const OWN: &str = "https://fhirgate.org/fhir/StructureDefinition/";

fn profiles(ev: &Value) -> Vec<String> {
    ev["meta"]["profile"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn claims_profile(ev: &Value, suffix: &str) -> bool {
    profiles(ev).iter().any(|p| p.ends_with(suffix))
}

/// Every AuditEvent in the store.
async fn all_events(app: &TestApp) -> Vec<Value> {
    app.audits_by_request()
        .await
        .into_values()
        .flatten()
        .collect()
}

/// Validates every AuditEvent against every profile it claims (named explicitly,
/// so an unknown profile is an error, not a warning); returns the events.
pub(crate) async fn validate_all(app: &TestApp) -> Vec<Value> {
    let events = all_events(app).await;
    assert!(!events.is_empty());
    let mut failures = Vec::new();
    for ev in &events {
        let claimed = profiles(ev);
        if claimed.is_empty() {
            failures.push(format!("claims no profile: {ev}"));
            continue;
        }
        let issues = app.state.validator.validate(ev, &claimed);
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| {
                matches!(
                    i.severity,
                    fhirgate::fhir::Severity::Error | fhirgate::fhir::Severity::Fatal
                )
            })
            .map(|i| format!("{} at {:?}", i.diagnostics, i.expression))
            .collect();
        if !errors.is_empty() {
            failures.push(format!("{claimed:?}: {errors:#?}\n{ev}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} AuditEvents do not meet the profiles they claim (fhirgate's own profiles are \
         derived by a set-up step: `python3 tools/generate_profiles.py ihe.iti.balp-1.1.4.tgz`):\n{}",
        failures.len(),
        events.len(),
        failures.join("\n\n")
    );
    events
}

/// The events of one request id.
async fn events_of(app: &TestApp, rid: &str) -> Vec<Value> {
    app.audits_by_request()
        .await
        .remove(rid)
        .unwrap_or_default()
}

async fn send_as(
    app: &TestApp,
    method: Method,
    path: &str,
    rid: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> StatusCode {
    let auth = token.map(bearer);
    let mut headers: Vec<(&str, &str)> = vec![("X-Request-Id", rid)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let ct = match method.as_str() {
        "PATCH" => "application/json-patch+json",
        _ => "application/fhir+json",
    };
    headers.push(("Content-Type", ct));
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    app.send(method, path, &headers, bytes.as_deref())
        .await
        .status
}

/// A GET with a request id, and a token or none.
async fn get(app: &TestApp, path: &str, rid: &str, token: Option<&str>) -> StatusCode {
    send_as(app, Method::GET, path, rid, token, None).await
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn patient_refs(ev: &Value) -> Vec<String> {
    ev["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["role"]["code"] == "1")
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
        .collect()
}

/// Without authorization (development mode): every RESTful interaction kind,
/// succeeding and failing, and the PatientQuery events of a search page.
async fn rest_interactions_make_events_that_meet_their_profiles(backend: Backend) {
    let app = spawn_app(backend).await;
    // Create (a Patient, an Observation about it).
    let r1 = rid();
    assert_eq!(
        send_as(
            &app,
            Method::PUT,
            "/Patient/p1",
            &r1,
            None,
            Some(&json!({"resourceType": "Patient", "id": "p1", "active": true})),
        )
        .await,
        StatusCode::CREATED
    );
    let ev = &events_of(&app, &r1).await[0];
    assert!(claims_profile(ev, "IHE.BasicAudit.PatientCreate"), "{ev}");
    for (id, patient) in [("p2", "p2"), ("p3", "p3")] {
        let _ = send_as(
            &app,
            Method::PUT,
            &format!("/Patient/{id}"),
            &rid(),
            None,
            Some(&json!({"resourceType": "Patient", "id": id})),
        )
        .await;
        for n in 0..2 {
            let _ = send_as(
                &app,
                Method::POST,
                "/Observation",
                &rid(),
                None,
                Some(&json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": format!("o{n}")},
                    "subject": {"reference": format!("Patient/{patient}")}})),
            )
            .await;
        }
    }
    // Read, vread, update, patch, history, delete.
    let r_read = rid();
    assert_eq!(
        get(&app, "/Patient/p1", &r_read, None).await,
        StatusCode::OK
    );
    let ev = &events_of(&app, &r_read).await[0];
    assert!(claims_profile(ev, "IHE.BasicAudit.PatientRead"), "{ev}");
    let _ = get(&app, "/Patient/p1/_history/1", &rid(), None).await;
    let _ = send_as(
        &app,
        Method::PUT,
        "/Patient/p1",
        &rid(),
        None,
        Some(&json!({"resourceType": "Patient", "id": "p1", "active": false})),
    )
    .await;
    let r_patch = rid();
    assert_eq!(
        send_as(
            &app,
            Method::PATCH,
            "/Patient/p1",
            &r_patch,
            None,
            Some(&json!([{"op": "replace", "path": "/active", "value": true}])),
        )
        .await,
        StatusCode::OK
    );
    let ev = &events_of(&app, &r_patch).await[0];
    assert!(claims_profile(ev, "IHE.BasicAudit.PatientUpdate"), "{ev}");
    let _ = get(&app, "/Patient/p1/_history", &rid(), None).await;
    let _ = get(&app, "/Patient/_history", &rid(), None).await;
    let _ = get(&app, "/_history", &rid(), None).await;
    let _ = get(&app, "/metadata", &rid(), None).await;

    // A search with two patients' data on its page: one Query event naming no
    // patient, one PatientQuery event per patient.
    let r_search = rid();
    assert_eq!(
        get(&app, "/Observation?status=final", &r_search, None).await,
        StatusCode::OK
    );
    let evs = events_of(&app, &r_search).await;
    let (query, per_patient): (Vec<&Value>, Vec<&Value>) = evs
        .iter()
        .partition(|e| claims_profile(e, "IHE.BasicAudit.Query"));
    assert_eq!(query.len(), 1, "{evs:#?}");
    assert!(patient_refs(query[0]).is_empty(), "{}", query[0]);
    let mut named: Vec<String> = per_patient
        .iter()
        .inspect(|e| assert!(claims_profile(e, "IHE.BasicAudit.PatientQuery"), "{e}"))
        .flat_map(|e| patient_refs(e))
        .collect();
    named.sort();
    assert_eq!(named, vec!["Patient/p2", "Patient/p3"]);
    // A compartment search and a system search.
    let _ = get(&app, "/Patient/p2/Observation", &rid(), None).await;
    let _ = get(&app, "/?_type=Patient", &rid(), None).await;

    // Operations: $validate of a resource.
    let r_op = rid();
    let _ = send_as(
        &app,
        Method::POST,
        "/Patient/$validate",
        &r_op,
        None,
        Some(&json!({"resourceType": "Patient", "active": true})),
    )
    .await;
    let ev = &events_of(&app, &r_op).await[0];
    assert!(claims_profile(ev, "AuditEvent.Rest"), "{ev}");

    // A transaction: each entry's event carries the Bundle's request id.
    let r_tx = rid();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c0b8e-1111-4a6b-9a61-000000000001",
         "resource": {"resourceType": "Patient", "active": true},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "subject": {"reference": "urn:uuid:6f1c0b8e-1111-4a6b-9a61-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/p2"}},
    ]});
    assert_eq!(
        send_as(&app, Method::POST, "", &r_tx, None, Some(&tx)).await,
        StatusCode::OK
    );
    let evs = events_of(&app, &r_tx).await;
    assert_eq!(evs.len(), 4, "the Bundle's and each entry's: {evs:#?}");
    assert!(evs
        .iter()
        .any(|e| e["subtype"][0]["code"] == "transaction" && claims_profile(e, "AuditEvent.Rest")));
    assert_eq!(
        evs.iter()
            .filter(|e| claims_profile(e, "IHE.BasicAudit.PatientCreate"))
            .count(),
        2,
        "{evs:#?}"
    );

    // Failures: a read of what is not there, an invalid create, a bad search, a
    // delete of an unknown type, an update with a stale version; and a delete.
    let r_missing = rid();
    assert_eq!(
        get(&app, "/Patient/nope", &r_missing, None).await,
        StatusCode::NOT_FOUND
    );
    let ev = &events_of(&app, &r_missing).await[0];
    assert_eq!(ev["outcome"], "4");
    assert!(
        profiles(ev).contains(&format!("{OWN}AuditEvent.Failure.Read")),
        "{ev}"
    );
    let r_bad = rid();
    assert!(send_as(
        &app,
        Method::POST,
        "/Patient",
        &r_bad,
        None,
        Some(&json!({"resourceType": "Patient", "gender": "neither"})),
    )
    .await
    .is_client_error());
    let ev = &events_of(&app, &r_bad).await[0];
    assert!(claims_profile(ev, "AuditEvent.Failure.Create"), "{ev}");
    let _ = get(&app, "/Observation?nonsense=1", &rid(), None).await;
    let _ = get(&app, "/Patient/p1/_history/99", &rid(), None).await;
    let _ = send_as(
        &app,
        Method::PUT,
        "/Patient/p1",
        &rid(),
        None,
        Some(&json!({"resourceType": "Patient", "id": "other"})),
    )
    .await;
    let r_del = rid();
    assert_eq!(
        send_as(&app, Method::DELETE, "/Patient/p3", &r_del, None, None).await,
        StatusCode::OK
    );
    let ev = &events_of(&app, &r_del).await[0];
    assert!(claims_profile(ev, "IHE.BasicAudit.PatientDelete"), "{ev}");
    let _ = send_as(&app, Method::DELETE, "/AuditEvent/x", &rid(), None, None).await;

    let events = validate_all(&app).await;
    // The validator does judge these profiles: BALP's success-only pattern refuses
    // a failed read, and PatientRead refuses a read that names no patient.
    let mut broken = events_of(&app, &r_read).await.remove(0);
    broken["outcome"] = json!("4");
    assert!(fhirgate::fhir::outcome::has_errors(
        &app.state.validator.validate(&broken, &profiles(&broken))
    ));
    let mut broken = events_of(&app, &r_read).await.remove(0);
    let entities = broken["entity"].as_array_mut().unwrap();
    entities.retain(|e| e["role"]["code"] != "1");
    assert!(fhirgate::fhir::outcome::has_errors(
        &app.state.validator.validate(&broken, &profiles(&broken))
    ));
    // Every claimed profile was one of BALP's or fhirgate's.
    for ev in &events {
        for p in profiles(ev) {
            assert!(p.starts_with(BALP) || p.starts_with(OWN), "{p}");
        }
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// With SMART authorization: token issue and refusal, sign-in failure and
/// lockout, consent given and refused, denials, and events made under user,
/// backend and break-glass tokens naming the client, the user and the `jti`.
async fn token_and_authorization_events_meet_their_profiles(backend: Backend) {
    let app = spawn_auth(backend, |s| {
        s.auth.max_failed_logins = 2;
    })
    .await;
    // A backend service token (client_credentials): issue (ITI-71 + AuthZ permit).
    let (backend_id, admin) = client_token(&app, "system/*.cruds").await;
    let admin_claims = claims(&admin);
    let r_pat = rid();
    assert_eq!(
        send_as(
            &app,
            Method::PUT,
            "/Patient/bp1",
            &r_pat,
            Some(&admin),
            Some(&json!({"resourceType": "Patient", "id": "bp1"})),
        )
        .await,
        StatusCode::CREATED
    );
    let ev = &events_of(&app, &r_pat).await[0];
    assert_token_use(ev, &backend_id, None, &admin_claims);
    let _ = send_as(
        &app,
        Method::POST,
        "/Observation",
        &rid(),
        Some(&admin),
        Some(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/bp1"}}),
        ),
    )
    .await;
    // A token refused: wrong secret, unsupported grant, a scope not registered.
    let (id2, _) = secret_client(&app, "system/Patient.rs");
    let refused = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.rs"),
        ],
        &[(
            "Authorization",
            &crate::smart_auth::basic(&id2, "not-the-secret"),
        )],
    )
    .await;
    assert!(refused.status.is_client_error());
    let _ = post_form(&app, "/auth/token", &[("grant_type", "password")], &[]).await;

    // A clinician: sign-in failures up to the lockout, then a user with consent.
    let client_id = public_client(&app);
    user(&app, "nurse", "Practitioner/n1", Role::Clinician, false);
    for _ in 0..2 {
        let o = run_flow(
            &app,
            &client_id,
            "launch/patient patient/*.rs",
            "nurse",
            Choices {
                password: Some("wrong"),
                ..Choices::default()
            },
        )
        .await;
        assert_eq!(o.last.status, StatusCode::UNAUTHORIZED);
    }
    user(&app, "doc", "Practitioner/d1", Role::Clinician, true);
    // Consent refused.
    let o = run_flow(
        &app,
        &client_id,
        "launch/patient patient/*.rs",
        "doc",
        Choices {
            patient: Some("Patient/bp1"),
            deny: true,
            ..Choices::default()
        },
    )
    .await;
    assert_eq!(o.last.status, StatusCode::FOUND);
    // Consent given, a user token, a read and a search under it.
    let t = granted(
        &app,
        &client_id,
        "launch/patient patient/*.rs openid fhirUser",
        "doc",
        Choices {
            patient: Some("Patient/bp1"),
            ..Choices::default()
        },
    )
    .await;
    let tok = t["access_token"].as_str().unwrap().to_string();
    let tok_claims = claims(&tok);
    let r_read = rid();
    assert_eq!(
        get(&app, "/Patient/bp1", &r_read, Some(&tok)).await,
        StatusCode::OK
    );
    let ev = &events_of(&app, &r_read).await[0];
    assert_token_use(ev, &client_id, Some("Practitioner/d1"), &tok_claims);
    let r_search = rid();
    assert_eq!(
        get(&app, "/Observation", &r_search, Some(&tok)).await,
        StatusCode::OK
    );
    for ev in events_of(&app, &r_search).await {
        assert_token_use(&ev, &client_id, Some("Practitioner/d1"), &tok_claims);
    }
    // A denial: a type outside the scopes (403), recorded as the interaction's
    // failure and as an authorization decision with the reason.
    let r_denied = rid();
    assert_eq!(
        get(&app, "/AuditEvent", &r_denied, Some(&tok)).await,
        StatusCode::FORBIDDEN
    );
    let evs = events_of(&app, &r_denied).await;
    assert_eq!(evs.len(), 2, "{evs:#?}");
    let decision = evs
        .iter()
        .find(|e| claims_profile(e, "AuditEvent.AuthZ"))
        .expect("an AuthZ deny event");
    assert_eq!(decision["outcome"], "4");
    assert!(decision["outcomeDesc"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    let failure = evs
        .iter()
        .find(|e| claims_profile(e, "AuditEvent.Failure.Query"))
        .expect("the search's failure event");
    assert_token_use(failure, &client_id, Some("Practitioner/d1"), &tok_claims);
    // A batch entry outside the scopes (a write with a read-only token): the
    // entry's failure and an authorization decision, with the Bundle's request id.
    let r_batch = rid();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
            "subject": {"reference": "Patient/bp1"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/bp1"}},
    ]});
    assert_eq!(
        send_as(&app, Method::POST, "", &r_batch, Some(&tok), Some(&batch)).await,
        StatusCode::OK
    );
    let evs = events_of(&app, &r_batch).await;
    assert!(
        evs.iter()
            .any(|e| claims_profile(e, "AuditEvent.AuthZ") && e["outcome"] == "4"),
        "{evs:#?}"
    );
    assert!(evs
        .iter()
        .any(|e| claims_profile(e, "AuditEvent.Failure.PatientCreate") && e["outcome"] == "4"));
    // A missing token (401).
    let _ = get(&app, "/Patient/bp1", &rid(), None).await;
    let _ = get(&app, "/Patient/bp1", &rid(), Some("not.a.token")).await;

    // Break-glass: purposeOfUse BTG in the events made under the token.
    let t = granted(
        &app,
        &client_id,
        "launch/patient patient/Observation.rs",
        "doc",
        Choices {
            patient: Some("Patient/bp1"),
            break_glass: Some("patient unconscious"),
            ..Choices::default()
        },
    )
    .await;
    let btg = t["access_token"].as_str().unwrap().to_string();
    let r_btg = rid();
    assert_eq!(
        get(&app, "/Patient/bp1", &r_btg, Some(&btg)).await,
        StatusCode::OK
    );
    let ev = &events_of(&app, &r_btg).await[0];
    assert_token_use(ev, &client_id, Some("Practitioner/d1"), &claims(&btg));
    let user_agent = ev["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["requestor"] == true)
        .unwrap();
    assert_eq!(
        user_agent["purposeOfUse"][0]["coding"][0]["code"], "BTG",
        "{ev}"
    );
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "BTG");

    let events = validate_all(&app).await;
    let tagged = |code: &str, outcome: &str| {
        events.iter().any(|e| {
            e["outcome"] == outcome
                && e["meta"]["tag"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["system"] == "urn:fhirgate:auth-event" && t["code"] == code)
        })
    };
    for (code, outcome, profile) in [
        ("token-issued", "0", "IHE.IUA.71"),
        ("token-refused", "4", "AuditEvent.Failure.TokenRequest"),
        ("authz-permit", "0", "AuditEvent.AuthZ"),
        ("authz-deny", "4", "AuditEvent.AuthZ"),
        ("consent-given", "0", "AuditEvent.AuthZ"),
        ("consent-refused", "4", "AuditEvent.AuthZ"),
        ("login", "0", "AuditEvent.Authentication"),
        ("login-failed", "4", "AuditEvent.Authentication"),
        ("account-locked", "4", "AuditEvent.Authentication"),
    ] {
        assert!(
            tagged(code, outcome),
            "no {code} event with outcome {outcome}"
        );
        assert!(
            events
                .iter()
                .any(|e| claims_profile(e, profile) && e["meta"]["tag"][0]["code"] == code),
            "no {code} event claims {profile}"
        );
    }
    // The permit of a token issue names the token it issued.
    let jti = admin_claims["jti"].as_str().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["meta"]["tag"][0]["code"] == "authz-permit"
                && e["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["what"]["identifier"]["value"] == jti)),
        "no AuthZ permit names the token {jti}"
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains("not-the-secret") && !text.contains("doc-password") && !text.contains(&tok),
        "no secret in an AuditEvent"
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// An event made under a token names the client (`who.identifier`, system
/// `urn:fhirgate:client`), the user (`who.reference` = fhirUser and
/// `who.identifier` = sub) and the token's `jti` in the user agent's `policy`,
/// and claims OAUTHaccessTokenUse.Comprehensive.
fn assert_token_use(ev: &Value, client_id: &str, fhir_user: Option<&str>, token: &Value) {
    assert!(
        claims_profile(ev, "IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive"),
        "{ev}"
    );
    let agents = ev["agent"].as_array().unwrap();
    assert!(
        agents.iter().any(
            |a| a["who"]["identifier"]["system"] == "urn:fhirgate:client"
                && a["who"]["identifier"]["value"] == client_id
        ),
        "the client is named: {ev}"
    );
    let jti = token["jti"].as_str().unwrap();
    let policy = format!("{}{jti}", fhirgate::audit::JTI_POLICY_PREFIX);
    let user = agents
        .iter()
        .find(|a| a["policy"][0] == policy.as_str())
        .unwrap_or_else(|| panic!("no agent holds the jti {jti}: {ev}"));
    assert_eq!(user["requestor"], true);
    assert_eq!(user["who"]["identifier"]["value"], token["sub"], "{ev}");
    if let Some(u) = fhir_user {
        assert_eq!(user["who"]["reference"], u, "{ev}");
    }
}

on_both_backends!(
    rest_interactions_make_events_that_meet_their_profiles,
    token_and_authorization_events_meet_their_profiles
);
