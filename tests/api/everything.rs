//! `Patient/{id}/$everything` and `Encounter/{id}/$everything` (issue 16) on
//! both backends: the answer is the compartment search of the same caller plus
//! every resource its resources refer to that the caller may read, exactly, on
//! every page; `start`/`end` take care dates, `_since` record dates, `_type`
//! narrows; under a patient's token another patient's record is not found;
//! bad parameters are 400.

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use crate::smart_auth::code_flow::{granted, public_client, user, Choices};
use crate::smart_auth::{bearer, spawn_auth};
use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> crate::support::server::Reply {
    let auth = token.map(bearer);
    let mut h = vec![];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    app.send(Method::GET, path, &h, None).await
}

/// Every entry of every page from `first`, as `Type/id` with its search mode.
async fn all_pages(app: &TestApp, first: &str, token: Option<&str>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut url = first.to_string();
    let mut pages = 0;
    loop {
        let r = get(app, &url, token).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{url}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let b = r.json();
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().into_iter().flatten() {
            let res = &e["resource"];
            if res["resourceType"] == "OperationOutcome" {
                continue;
            }
            out.insert((
                format!(
                    "{}/{}",
                    res["resourceType"].as_str().unwrap(),
                    res["id"].as_str().unwrap()
                ),
                e["search"]["mode"].as_str().unwrap_or("").to_string(),
            ));
        }
        pages += 1;
        assert!(pages < 100, "too many pages");
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    out
}

fn ids(entries: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

/// Two patients: p1 with dated and undated data referring to a practitioner, an
/// organization and a medication; p2 with data of its own.
async fn load(app: &TestApp, token: Option<&str>) {
    let auth = token.map(bearer);
    let put = |path: String, body: Value| {
        let auth = auth.clone();
        async move {
            let b = serde_json::to_vec(&body).unwrap();
            let mut h = vec![("Content-Type", "application/fhir+json")];
            if let Some(a) = &auth {
                h.push(("Authorization", a.as_str()));
            }
            let r = app.send(Method::PUT, &path, &h, Some(&b)).await;
            assert!(
                r.status.is_success(),
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    };
    put(
        "/Organization/org1".into(),
        json!({"resourceType": "Organization", "id": "org1", "name": "Clinic"}),
    )
    .await;
    put(
        "/Practitioner/pr1".into(),
        json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Doc"}]}),
    )
    .await;
    put(
        "/Medication/m1".into(),
        json!({"resourceType": "Medication", "id": "m1", "code": {"text": "aspirin"}}),
    )
    .await;
    put(
        "/Organization/unrelated".into(),
        json!({"resourceType": "Organization", "id": "unrelated", "name": "Other"}),
    )
    .await;
    for p in ["p1", "p2"] {
        put(
            format!("/Patient/{p}"),
            json!({"resourceType": "Patient", "id": p,
            "managingOrganization": {"reference": "Organization/org1"}}),
        )
        .await;
        put(format!("/Encounter/{p}-e2021"), json!({"resourceType": "Encounter", "id": format!("{p}-e2021"),
            "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{p}")}, "period": {"start": "2021-03-01", "end": "2021-03-01"}})).await;
        for (year, performer) in [("2020", false), ("2023", true)] {
            let mut o = json!({"resourceType": "Observation", "id": format!("{p}-o{year}"), "status": "final",
                "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p}")},
                "encounter": {"reference": format!("Encounter/{p}-e2021")},
                "effectiveDateTime": format!("{year}-06-01")});
            if performer {
                o["performer"] = json!([{"reference": "Practitioner/pr1"}]);
            }
            put(format!("/Observation/{p}-o{year}"), o).await;
        }
        put(
            format!("/Condition/{p}-c"),
            json!({"resourceType": "Condition", "id": format!("{p}-c"),
            "code": {"text": "y"}, "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        put(format!("/MedicationRequest/{p}-mr"), json!({"resourceType": "MedicationRequest", "id": format!("{p}-mr"),
            "status": "active", "intent": "order", "medicationReference": {"reference": "Medication/m1"},
            "subject": {"reference": format!("Patient/{p}")}})).await;
    }
}

/// The compartment search of `token`'s caller plus what it refers to that the
/// caller may read: what `$everything` must answer.
async fn expected(app: &TestApp, patient: &str, token: Option<&str>) -> BTreeSet<String> {
    let mut want = ids(&all_pages(app, &format!("/Patient/{patient}/*?_count=1000"), token).await);
    want.insert(format!("Patient/{patient}"));
    for r in ["Organization/org1", "Practitioner/pr1", "Medication/m1"] {
        if get(app, &format!("/{r}"), token).await.status == StatusCode::OK {
            want.insert(r.to_string());
        }
    }
    want
}

async fn everything_is_the_compartment_and_what_it_refers_to(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app, None).await;
    let got = all_pages(&app, "/Patient/p1/$everything", None).await;
    let want = expected(&app, "p1", None).await;
    assert_eq!(ids(&got), want);
    for r in [
        "Organization/org1",
        "Practitioner/pr1",
        "Medication/m1",
        "Observation/p1-o2020",
        "Encounter/p1-e2021",
    ] {
        assert!(want.contains(r), "{r}");
    }
    assert!(
        !want
            .iter()
            .any(|k| k.contains("p2") || k.ends_with("unrelated")),
        "{want:?}"
    );
    // Referenced resources outside the compartment come as includes.
    assert!(
        got.contains(&("Practitioner/pr1".into(), "include".into())),
        "{got:?}"
    );
    // Paged by _count: the same resources over several pages.
    let paged = all_pages(&app, "/Patient/p1/$everything?_count=2", None).await;
    assert_eq!(ids(&paged), want);
    // A page link carries its types: `_type` beside it is refused.
    let first = app.get("/Patient/p1/$everything?_count=2").await.json();
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.get(&format!("{next}&_type=Observation")).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Care dates: the 2020 Observation and the 2021 Encounter are outside
    // 2022-2024; undated data (the Patient, the Condition) and the MedicationRequest
    // without a date stay.
    // (The 2021 Encounter still comes, as what the 2023 Observation refers to.)
    let dated_modes = all_pages(
        &app,
        "/Patient/p1/$everything?start=2022-01-01&end=2024-12-31&_count=3",
        None,
    )
    .await;
    let dated = ids(&dated_modes);
    assert!(dated.contains("Observation/p1-o2023"), "{dated:?}");
    assert!(!dated.contains("Observation/p1-o2020"), "{dated:?}");
    let encounter = "Encounter/p1-e2021".to_string();
    assert!(
        !dated_modes.contains(&(encounter.clone(), "match".into())),
        "{dated_modes:?}"
    );
    assert!(
        dated_modes.contains(&(encounter, "include".into())),
        "{dated_modes:?}"
    );
    assert!(
        dated.contains("Patient/p1")
            && dated.contains("Condition/p1-c")
            && dated.contains("MedicationRequest/p1-mr"),
        "{dated:?}"
    );
    // _type narrows (the references of what is left come along, the patient too).
    let obs = ids(&all_pages(&app, "/Patient/p1/$everything?_type=Observation", None).await);
    let want_obs: BTreeSet<String> = [
        "Observation/p1-o2020",
        "Observation/p1-o2023",
        "Practitioner/pr1",
        "Encounter/p1-e2021",
        "Patient/p1",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(obs, want_obs);
    // _since: only what changed after it (and what that refers to).
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = app
        .put_json("/Condition/p1-c", &json!({"resourceType": "Condition", "id": "p1-c", "code": {"text": "z"}, "subject": {"reference": "Patient/p1"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let recent = ids(&all_pages(
        &app,
        &format!(
            "/Patient/p1/$everything?_since={}",
            since.replace('+', "%2B")
        ),
        None,
    )
    .await);
    assert_eq!(
        recent,
        BTreeSet::from(["Condition/p1-c".to_string(), "Patient/p1".to_string()])
    );
    // Encounter/$everything: the Encounter's compartment.
    let enc = ids(&all_pages(&app, "/Encounter/p1-e2021/$everything", None).await);
    assert!(
        enc.contains("Encounter/p1-e2021") && enc.contains("Observation/p1-o2020"),
        "{enc:?}"
    );
    assert!(!enc.iter().any(|k| k.contains("p2-")), "{enc:?}");
    // Refused: unknown parameters, bad dates, types outside the compartment, a
    // missing patient.
    for (path, status) in [
        ("/Patient/p1/$everything?foo=1", StatusCode::BAD_REQUEST),
        (
            "/Patient/p1/$everything?start=last-week",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/Patient/p1/$everything?_type=Organization",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/Encounter/p1-e2021/$everything?start=2020",
            StatusCode::BAD_REQUEST,
        ),
        ("/Patient/nobody/$everything", StatusCode::NOT_FOUND),
    ] {
        let r = app.get(path).await;
        assert_eq!(
            r.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn everything_answers_what_a_patient_and_a_clinician_may_see(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let (_, admin) = crate::smart_auth::client_token(&app, "system/*.cruds").await;
    load(&app, Some(&admin)).await;
    let client_id = public_client(&app);
    user(&app, "pat", "Patient/p1", Role::Patient, false);
    let t = granted(
        &app,
        &client_id,
        "launch/patient patient/*.rs",
        "pat",
        Choices::default(),
    )
    .await;
    let patient = t["access_token"].as_str().unwrap().to_string();
    user(&app, "doc", "Practitioner/pr1", Role::Clinician, false);
    let t = granted(&app, &client_id, "user/*.rs", "doc", Choices::default()).await;
    let clinician = t["access_token"].as_str().unwrap().to_string();
    for token in [&patient, &clinician] {
        let got = ids(&all_pages(&app, "/Patient/p1/$everything?_count=3", Some(token)).await);
        let want = expected(&app, "p1", Some(token)).await;
        assert_eq!(got, want);
        assert!(want.contains("Observation/p1-o2023"));
    }
    // The patient's token does not reach another patient's record.
    let r = get(&app, "/Patient/p2/$everything", Some(&patient)).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The clinician's does.
    let got = ids(&all_pages(&app, "/Patient/p2/$everything", Some(&clinician)).await);
    assert!(got.contains("Observation/p2-o2020"), "{got:?}");
    // Its AuditEvents meet their profiles (a Query event and PatientQuery events).
    crate::audit_balp::validate_all(&app).await;
    app.stop().await;
}

on_both_backends!(
    everything_is_the_compartment_and_what_it_refers_to,
    everything_answers_what_a_patient_and_a_clinician_may_see,
);
