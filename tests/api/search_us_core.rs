//! US Core 6.1.0 search: every search parameter and every parameter combination of
//! the US Core server CapabilityStatement (read from the package, SHALL, SHOULD and
//! MAY alike) is answered under `Prefer: handling=strict`, on both backends; and
//! the SHALL combinations give the right resources on data made for them,
//! including the US Core parameters that search extensions (race, ethnicity).

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_with, Backend, Database, TestApp};

const US_CORE: &str = "hl7.fhir.us.core#6.1.0";
const RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";

fn capability_statement() -> Value {
    let tgz = support::shared_dir().join("fhir-packages/hl7.fhir.us.core-6.1.0.tgz");
    support::package_resources(&tgz)
        .into_iter()
        .find(|r| r["resourceType"] == "CapabilityStatement" && r["id"] == "us-core-server")
        .expect("the US Core server CapabilityStatement")
}

/// A value of the right shape for a parameter type.
fn sample(ptype: &str) -> &'static str {
    match ptype {
        "token" => "http://example.org/cs%7Cx",
        "date" => "ge2020-01-01",
        "reference" => "Patient/p1",
        "string" => "a",
        "quantity" => "5",
        "number" => "1",
        "uri" => "http://example.org/x",
        _ => "x",
    }
}

async fn us_core_app(backend: Backend) -> TestApp {
    spawn_with(Database::new(backend), |s| {
        s.packages.load = vec!["hl7.fhir.r4.core#4.0.1".into(), US_CORE.into()];
    })
    .await
}

async fn strict_ok(app: &TestApp, query: &str) -> Result<Value, String> {
    let r = app
        .send(Method::GET, query, &[("Prefer", "handling=strict")], None)
        .await;
    if r.status == StatusCode::OK {
        Ok(r.json())
    } else {
        Err(format!(
            "{query}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ))
    }
}

async fn every_us_core_parameter_and_combination_is_answered(backend: Backend) {
    let app = us_core_app(backend).await;
    let cs = capability_statement();
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        let types: std::collections::HashMap<&str, &str> = r["searchParam"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap(), p["type"].as_str().unwrap()))
            .collect();
        for (name, ptype) in &types {
            checked += 1;
            let value = if *name == "_id" { "x1" } else { sample(ptype) };
            if let Err(e) = strict_ok(&app, &format!("/{t}?{name}={value}")).await {
                failures.push(e);
            }
        }
        for combo in r["extension"].as_array().into_iter().flatten() {
            if !combo["url"]
                .as_str()
                .unwrap_or("")
                .ends_with("search-parameter-combination")
            {
                continue;
            }
            let names: Vec<&str> = combo["extension"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["url"] == "required")
                .filter_map(|x| x["valueString"].as_str())
                .collect();
            let query: Vec<String> = names
                .iter()
                .map(|n| format!("{n}={}", sample(types.get(n).copied().unwrap_or("token"))))
                .collect();
            checked += 1;
            if let Err(e) = strict_ok(&app, &format!("/{t}?{}", query.join("&"))).await {
                failures.push(e);
            }
        }
    }
    assert!(
        checked > 150,
        "the CapabilityStatement was read ({checked} searches)"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.stop().await;
}

fn ids(b: &Value) -> BTreeSet<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

async fn shall_combinations_find_their_resources(backend: Backend) {
    let app = us_core_app(backend).await;
    let cat = |c: &str, system: &str| json!([{"coding": [{"system": system, "code": c}]}]);
    let obs_cat = "http://terminology.hl7.org/CodeSystem/observation-category";
    let data = vec![
        json!({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-02-03",
               "name": [{"family": "Shaw", "given": ["Amy"]}],
               "extension": [{"url": RACE, "extension": [
                   {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}},
                   {"url": "text", "valueString": "White"}]}]}),
        json!({"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1975-05-06",
               "name": [{"family": "Shawn", "given": ["Bo"]}]}),
        json!({"resourceType": "Observation", "id": "lab1", "status": "final", "category": cat("laboratory", obs_cat),
               "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": "2021-04-01"}),
        json!({"resourceType": "Observation", "id": "vs1", "status": "final", "category": cat("vital-signs", obs_cat),
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": "2019-04-01"}),
        json!({"resourceType": "Observation", "id": "lab2", "status": "final", "category": cat("laboratory", obs_cat),
               "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, "subject": {"reference": "Patient/p2"},
               "effectiveDateTime": "2022-04-01"}),
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "category": cat("problem-list-item", "http://terminology.hl7.org/CodeSystem/condition-category"),
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}),
        json!({"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "aspirin"},
               "authoredOn": "2023-01-02"}),
    ];
    for r in &data {
        let path = format!(
            "/{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        assert_eq!(
            app.put_json(&path, r).await.status,
            StatusCode::CREATED,
            "{path}"
        );
    }
    for (query, want) in [
        ("/Observation?patient=p1&category=laboratory", vec!["lab1"]),
        ("/Observation?patient=p1&code=http://loinc.org%7C2339-0", vec!["lab1"]),
        ("/Observation?patient=p1&category=http://terminology.hl7.org/CodeSystem/observation-category%7Cvital-signs&date=lt2020", vec!["vs1"]),
        ("/Observation?patient=p2&code=http://loinc.org%7C2339-0&date=ge2022", vec!["lab2"]),
        ("/Condition?patient=p1&clinical-status=active", vec!["c1"]),
        ("/Condition?patient=p1&category=problem-list-item", vec!["c1"]),
        ("/MedicationRequest?patient=p1&intent=order&status=active", vec!["m1"]),
        ("/MedicationRequest?patient=p1&intent=order&authoredon=ge2023", vec!["m1"]),
        ("/Patient?name=shaw&gender=female", vec!["p1"]),
        ("/Patient?family=shaw&birthdate=1975-05-06", vec!["p2"]),
        ("/Patient?race=2106-3", vec!["p1"]),
        // US Core's race expression selects the code alone (`...value.code`).
        ("/Patient?race=urn:oid:2.16.840.1.113883.6.238%7C2106-3", vec![]),
    ] {
        let b = strict_ok(&app, query).await.unwrap_or_else(|e| panic!("{e}"));
        let want: BTreeSet<String> = want.into_iter().map(str::to_string).collect();
        assert_eq!(ids(&b), want, "{query}");
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    every_us_core_parameter_and_combination_is_answered,
    shall_combinations_find_their_resources,
);
