//! FHIR search against a real server on SQLite and PostgreSQL, with data designed
//! so that every case has one known answer: each parameter type, modifier and
//! prefix, chains, `_has`, includes, sorting, paging across inserts, compartments,
//! system search, lenient and strict handling, and malformed values. Every
//! request is audited.

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

const MRN: &str = "http://hospital.example.org/mrn";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

fn data() -> Vec<Value> {
    vec![
        json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Smith", "prefix": ["Dr"]}]}),
        json!({"resourceType": "Organization", "id": "org1", "name": "Acme Health"}),
        json!({"resourceType": "Group", "id": "g1", "type": "animal", "actual": true}),
        json!({"resourceType": "Patient", "id": "pat-a", "active": true,
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "gender": "male", "birthDate": "1974-12-25",
            "identifier": [{"system": MRN, "value": "A1",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "telecom": [{"system": "phone", "value": "555-1111"}, {"system": "email", "value": "peter@example.org"}],
            "address": [{"city": "Brisbane", "line": ["534 Erewhon St"]}],
            "generalPractitioner": [{"reference": "Practitioner/pr1"}]}),
        json!({"resourceType": "Patient", "id": "pat-b",
            "name": [{"family": "Müller", "given": ["Zoë"]}],
            "gender": "female", "birthDate": "1990-05",
            "identifier": [{"system": MRN, "value": "B2"}],
            "address": [{"city": "São Paulo"}]}),
        json!({"resourceType": "Patient", "id": "pat-c",
            "name": [{"family": "Chalmerston", "given": ["Anna"]}],
            "gender": "female", "birthDate": "2001-01-01",
            "telecom": [{"system": "email", "value": "anna@example.org"}],
            "address": [{"city": "Brisbane"}]}),
        json!({"resourceType": "Patient", "id": "pat-d",
            "name": [{"family": "van der Berg", "given": ["Jan"]}],
            "gender": "other", "birthDate": "1974",
            "managingOrganization": {"reference": "Organization/org1"}}),
        json!({"resourceType": "Patient", "id": "pat-e",
            "name": [{"family": "Averyveryverylongfamilyname", "given": ["Bob"]}]}),
        json!({"resourceType": "Observation", "id": "obs-1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": "Patient/pat-a"},
            "effectiveDateTime": "2020-03-01T10:00:00Z",
            "valueQuantity": {"value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"}}),
        json!({"resourceType": "Observation", "id": "obs-2", "status": "amended",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": "Patient/pat-a"},
            "effectiveDateTime": "2021-06-15",
            "valueQuantity": {"value": 80000, "unit": "g", "system": UCUM, "code": "g"}}),
        json!({"resourceType": "Observation", "id": "obs-3", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
            "subject": {"reference": "Patient/pat-b"},
            "effectivePeriod": {"start": "2019-01-01", "end": "2019-01-02"},
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]}),
        json!({"resourceType": "Observation", "id": "obs-4", "status": "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose"}]},
            "subject": {"reference": "Patient/pat-c"},
            "performer": [{"reference": "Practitioner/pr1"}],
            "effectiveDateTime": "2022-01-01",
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}}),
        json!({"resourceType": "Observation", "id": "obs-5", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": "Group/g1"},
            "effectiveDateTime": "2020",
            "valueQuantity": {"value": 70, "unit": "kg"}}),
        json!({"resourceType": "Observation", "id": "obs-6", "status": "final",
            "code": {"text": "Covid test"},
            "subject": {"reference": "Patient/pat-d"},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}]}}),
        json!({"resourceType": "List", "id": "list1", "status": "current", "mode": "working",
            "entry": [{"item": {"reference": "Patient/pat-a"}}, {"item": {"reference": "Patient/pat-c"}}]}),
        json!({"resourceType": "Provenance", "id": "prov1", "target": [{"reference": "Observation/obs-1"}],
            "recorded": "2020-03-01T10:05:00Z", "agent": [{"who": {"reference": "Practitioner/pr1"}}]}),
        json!({"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
            "subject": {"reference": "Patient/pat-a"},
            "prediction": [{"probabilityDecimal": 0.45}]}),
        json!({"resourceType": "Encounter", "id": "enc1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pat-a"}}),
        json!({"resourceType": "ValueSet", "id": "vs1", "url": "http://example.org/fhir/ValueSet/colors", "status": "active"}),
    ]
}

async fn load(app: &TestApp) {
    for r in data() {
        let path = format!(
            "/{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let reply = app.put_json(&path, &r).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn mode_ids(bundle: &Value, mode: &str) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or_default(),
                e["resource"]["id"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

async fn search(app: &TestApp, query: &str) -> Value {
    let r = app.get(query).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{query}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let b = r.json();
    assert_eq!(b["type"], "searchset", "{query}");
    b
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// (query, the ids it matches, in any order)
const UNORDERED: &[(&str, &[&str])] = &[
    // string: case- and accent-insensitive starts-with, :exact, :contains
    ("/Patient?family=chal", &["pat-a", "pat-c"]),
    ("/Patient?family=CHALMERS", &["pat-a", "pat-c"]),
    ("/Patient?family:exact=Chalmers", &["pat-a"]),
    ("/Patient?family:exact=chalmers", &[]),
    ("/Patient?family=muller", &["pat-b"]),
    ("/Patient?family:exact=M%C3%BCller", &["pat-b"]),
    ("/Patient?family:contains=ERST", &["pat-c"]),
    ("/Patient?family:contains=al", &["pat-a", "pat-c"]),
    ("/Patient?family:contains=verylongfam", &["pat-e"]),
    ("/Patient?name=zoe", &["pat-b"]),
    ("/Patient?given=pet,ann", &["pat-a", "pat-c"]),
    ("/Patient?family=averyveryverylongfam", &["pat-e"]),
    ("/Patient?family=averyveryverylongfamx", &[]),
    ("/Patient?name=van%20der", &["pat-d"]),
    ("/Patient?address-city=sao", &["pat-b"]),
    ("/Patient?address=534%20ere", &["pat-a"]),
    ("/Patient?address=erewhon", &[]),
    ("/Patient?family=chal&given=anna", &["pat-c"]),
    ("/Patient?phonetic=Chalmurs", &["pat-a", "pat-c"]),
    // token: code, system|code, |code, system|, :not, :text, :of-type, :missing
    ("/Patient?gender=male", &["pat-a"]),
    ("/Patient?gender=female,other", &["pat-b", "pat-c", "pat-d"]),
    ("/Patient?gender:not=male", &["pat-b", "pat-c", "pat-d", "pat-e"]),
    ("/Patient?gender:missing=true", &["pat-e"]),
    ("/Patient?gender:missing=false", &["pat-a", "pat-b", "pat-c", "pat-d"]),
    ("/Patient?identifier=http://hospital.example.org/mrn%7CA1", &["pat-a"]),
    ("/Patient?identifier=A1", &["pat-a"]),
    ("/Patient?identifier=%7CA1", &[]),
    ("/Patient?identifier=http://hospital.example.org/mrn%7C", &["pat-a", "pat-b"]),
    ("/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203%7CMR%7CA1", &["pat-a"]),
    ("/Patient?telecom=555-1111", &["pat-a"]),
    ("/Patient?email=anna@example.org", &["pat-c"]),
    ("/Patient?active=true", &["pat-a"]),
    ("/Observation?code:text=body%20w", &["obs-1", "obs-2", "obs-5"]),
    ("/Observation?code:text=weight", &[]),
    ("/Observation?code:text=covid", &["obs-6"]),
    ("/Observation?code=http://loinc.org%7C29463-7,http://loinc.org%7C2339-0", &["obs-1", "obs-2", "obs-4", "obs-5"]),
    ("/Observation?category=vital-signs", &["obs-1", "obs-2"]),
    ("/Observation?status=final&code=29463-7", &["obs-1", "obs-5"]),
    ("/Observation?value-concept=http://snomed.info/sct%7C10828004", &["obs-6"]),
    // terminology: the implied system of bound codes, :in, :not-in, :below, :above
    ("/Patient?gender=http://hl7.org/fhir/administrative-gender%7Cmale", &["pat-a"]),
    ("/Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender", &["pat-a", "pat-b", "pat-c", "pat-d"]),
    ("/Patient?gender:not-in=http://hl7.org/fhir/ValueSet/administrative-gender", &["pat-e"]),
    ("/Observation?status:in=http://hl7.org/fhir/ValueSet/observation-status&code=29463-7", &["obs-1", "obs-2", "obs-5"]),
    ("/Encounter?class:below=http://terminology.hl7.org/CodeSystem/v3-ActCode%7C_ActEncounterCode", &["enc1"]),
    ("/Encounter?class:below=http://terminology.hl7.org/CodeSystem/v3-ActCode%7CAMB", &["enc1"]),
    ("/Encounter?class:below=http://terminology.hl7.org/CodeSystem/v3-ActCode%7C_ActAccountCode", &[]),
    ("/Encounter?class:above=http://terminology.hl7.org/CodeSystem/v3-ActCode%7CAMB", &["enc1"]),
    // date: precision ranges and every prefix
    ("/Patient?birthdate=1974", &["pat-a", "pat-d"]),
    ("/Patient?birthdate=1974-12-25", &["pat-a"]),
    ("/Patient?birthdate=ge1990", &["pat-b", "pat-c"]),
    ("/Patient?birthdate=gt1990-05", &["pat-c"]),
    ("/Patient?birthdate=lt1980", &["pat-a", "pat-d"]),
    ("/Patient?birthdate=le1974-12-25", &["pat-a", "pat-d"]),
    ("/Patient?birthdate=sa1990", &["pat-c"]),
    ("/Patient?birthdate=eb1975", &["pat-a", "pat-d"]),
    ("/Patient?birthdate=ne1974", &["pat-b", "pat-c"]),
    ("/Patient?birthdate=ap1990-05-15", &["pat-b"]),
    ("/Patient?birthdate=1974&birthdate=lt1974-06", &["pat-d"]),
    ("/Observation?date=2019", &["obs-3"]),
    ("/Observation?date=2019-01-01", &[]),
    ("/Observation?date=ge2021", &["obs-2", "obs-4"]),
    ("/Observation?date=gt2020", &["obs-2", "obs-4"]),
    ("/Observation?date=ge2020", &["obs-1", "obs-2", "obs-4", "obs-5"]),
    ("/Observation?date=2020-03-01T10:00:00Z", &["obs-1"]),
    ("/Observation?date=2020-03-01T11:00:00%2B01:00", &["obs-1"]),
    ("/Observation?date:missing=true", &["obs-6"]),
    ("/Patient?_lastUpdated=gt2000-01-01", &["pat-a", "pat-b", "pat-c", "pat-d", "pat-e"]),
    ("/Patient?_lastUpdated=lt2000-01-01", &[]),
    // number
    ("/RiskAssessment?probability=0.45", &["ra1"]),
    ("/RiskAssessment?probability=gt0.4", &["ra1"]),
    ("/RiskAssessment?probability=lt0.4", &[]),
    ("/RiskAssessment?probability=0.4", &[]),
    ("/RiskAssessment?probability=ap0.44", &["ra1"]),
    // quantity: any unit, system|code, ||code, UCUM conversion
    ("/Observation?value-quantity=72.5", &["obs-1"]),
    ("/Observation?value-quantity=72.5%7Chttp://unitsofmeasure.org%7Ckg", &["obs-1"]),
    ("/Observation?value-quantity=gt75%7Chttp://unitsofmeasure.org%7Ckg", &["obs-2"]),
    ("/Observation?value-quantity=80%7Chttp://unitsofmeasure.org%7Ckg", &["obs-2"]),
    ("/Observation?value-quantity=80000%7Chttp://unitsofmeasure.org%7Cg", &["obs-2"]),
    ("/Observation?value-quantity=lt71%7C%7Ckg", &["obs-5"]),
    ("/Observation?value-quantity=70000%7C%7Cg", &[]),
    ("/Observation?component-value-quantity=gt100%7Chttp://unitsofmeasure.org%7Cmm%5BHg%5D", &["obs-3"]),
    // reference: Type/id, id, :Type, absolute local URL, :missing
    ("/Observation?subject=Patient/pat-a", &["obs-1", "obs-2"]),
    ("/Observation?subject=pat-a", &["obs-1", "obs-2"]),
    ("/Observation?patient=pat-a", &["obs-1", "obs-2"]),
    ("/Observation?subject:Patient=pat-b", &["obs-3"]),
    ("/Observation?subject:Group=g1", &["obs-5"]),
    ("/Observation?subject:Group=pat-a", &[]),
    ("/Observation?performer:missing=false", &["obs-4"]),
    ("/Observation?subject=Patient/pat-a,Patient/pat-c", &["obs-1", "obs-2", "obs-4"]),
    // chains, to two levels, and reverse chains, nested
    ("/Observation?subject:Patient.family=chalmers", &["obs-1", "obs-2", "obs-4"]),
    ("/Observation?subject:Patient.gender=female", &["obs-3", "obs-4"]),
    ("/Observation?patient.general-practitioner.name=smith", &["obs-1", "obs-2"]),
    ("/Observation?patient.general-practitioner:Practitioner.family=smi", &["obs-1", "obs-2"]),
    ("/Patient?_has:Observation:patient:code=29463-7", &["pat-a"]),
    ("/Patient?_has:Observation:patient:status=preliminary", &["pat-c"]),
    ("/Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=29463-7", &["pr1"]),
    // special parameters
    ("/Patient?_id=pat-a,pat-b", &["pat-a", "pat-b"]),
    ("/Patient?_id:not=pat-a&gender=male,female", &["pat-b", "pat-c"]),
    ("/Patient?_list=list1", &["pat-a", "pat-c"]),
    // composites
    ("/Observation?code-value-quantity=http://loinc.org%7C29463-7$gt75%7Chttp://unitsofmeasure.org%7Ckg", &["obs-2"]),
    ("/Observation?code-value-quantity=http://loinc.org%7C29463-7$72.5", &["obs-1"]),
    ("/Observation?component-code-value-quantity=http://loinc.org%7C8480-6$120", &["obs-3"]),
    ("/Observation?component-code-value-quantity=http://loinc.org%7C8462-4$120", &[]),
    ("/Observation?combo-code-value-quantity=http://loinc.org%7C8462-4$80", &["obs-3"]),
    ("/Observation?code-value-concept=http://snomed.info/sct%7C10828004$http://snomed.info/sct%7C10828004", &[]),
    // uri: exact, :below, :above
    ("/ValueSet?url=http://example.org/fhir/ValueSet/colors", &["vs1"]),
    ("/ValueSet?url:below=http://example.org/fhir", &["vs1"]),
    ("/ValueSet?url:below=http://example.org/fhi", &[]),
    ("/ValueSet?url:above=http://example.org/fhir/ValueSet/colors/v2", &["vs1"]),
    // compartments
    ("/Patient/pat-a/Observation", &["obs-1", "obs-2"]),
    ("/Patient/pat-a/Observation?code=29463-7&date=ge2021", &["obs-2"]),
    ("/Patient/pat-a/RiskAssessment", &["ra1"]),
];

/// (query, the ids it matches, in this order)
const ORDERED: &[(&str, &[&str])] = &[
    (
        "/Patient?_sort=birthdate",
        &["pat-d", "pat-a", "pat-b", "pat-c", "pat-e"],
    ),
    (
        "/Patient?_sort=-birthdate",
        &["pat-c", "pat-b", "pat-d", "pat-a", "pat-e"],
    ),
    (
        "/Patient?_sort=family",
        &["pat-e", "pat-a", "pat-c", "pat-b", "pat-d"],
    ),
    (
        "/Patient?_sort=-family",
        &["pat-d", "pat-b", "pat-c", "pat-a", "pat-e"],
    ),
    (
        "/Patient?_sort=gender,-birthdate",
        &["pat-c", "pat-b", "pat-a", "pat-d", "pat-e"],
    ),
    (
        "/Observation?_sort=-date",
        &["obs-4", "obs-2", "obs-5", "obs-1", "obs-3", "obs-6"],
    ),
    (
        "/Observation?patient=pat-a&_sort=-date&_count=10",
        &["obs-2", "obs-1"],
    ),
    (
        "/Observation?_sort=value-quantity&code=29463-7",
        &["obs-5", "obs-1", "obs-2"],
    ),
    ("/Patient?_sort=-_id&gender=female", &["pat-c", "pat-b"]),
    (
        "/Patient?family:contains=al&_sort=-family",
        &["pat-c", "pat-a"],
    ),
];

async fn every_parameter_type_has_its_known_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let mut failures = Vec::new();
    for (query, want) in UNORDERED {
        let got: BTreeSet<String> = match_ids(&search(&app, query).await).into_iter().collect();
        if got != set(want) {
            failures.push(format!("{query}: got {got:?}, want {want:?}"));
        }
    }
    for (query, want) in ORDERED {
        let got = match_ids(&search(&app, query).await);
        if got != *want {
            failures.push(format!("{query}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn includes_totals_and_result_controls(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let b = search(&app, "/Observation?_id=obs-1&_include=Observation:patient").await;
    assert_eq!(mode_ids(&b, "match"), set(&["Observation/obs-1"]));
    assert_eq!(mode_ids(&b, "include"), set(&["Patient/pat-a"]));
    let b = search(&app, "/Observation?_id=obs-1&_include=Observation:patient&_include:iterate=Patient:general-practitioner").await;
    assert_eq!(
        mode_ids(&b, "include"),
        set(&["Patient/pat-a", "Practitioner/pr1"])
    );
    let b = search(&app, "/Observation?_id=obs-4&_include=*").await;
    assert_eq!(
        mode_ids(&b, "include"),
        set(&["Patient/pat-c", "Practitioner/pr1"])
    );
    let b = search(
        &app,
        "/Observation?_id=obs-1,obs-4&_include=Observation:performer:Practitioner",
    )
    .await;
    assert_eq!(mode_ids(&b, "include"), set(&["Practitioner/pr1"]));
    let b = search(&app, "/Patient?_id=pat-a&_revinclude=Observation:patient").await;
    assert_eq!(
        mode_ids(&b, "include"),
        set(&["Observation/obs-1", "Observation/obs-2"])
    );
    let b = search(&app, "/Observation?_id=obs-1&_revinclude=Provenance:target").await;
    assert_eq!(mode_ids(&b, "include"), set(&["Provenance/prov1"]));
    // The total counts matches only, not includes.
    assert_eq!(b["total"], 1);

    let b = search(&app, "/Patient?gender=female&_total=none").await;
    assert!(b.get("total").is_none());
    assert_eq!(match_ids(&b).len(), 2);
    let b = search(&app, "/Patient?gender=female&_summary=count").await;
    assert_eq!(b["total"], 2);
    assert!(b.get("entry").is_none());
    let b = search(&app, "/Patient?_count=0").await;
    assert_eq!(b["total"], 5);
    assert!(b.get("entry").is_none());
    let b = search(&app, "/Observation?_id=obs-1&_elements=status").await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["status"], "final");
    assert!(r.get("valueQuantity").is_none());
    assert!(r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["code"] == "SUBSETTED"));
    let b = search(&app, "/Observation?_id=obs-1&_summary=true").await;
    assert!(b["entry"][0]["resource"].get("code").is_some());

    // System search, with and without _type; POST _search.
    let b = search(&app, "/?_type=Patient,Practitioner&name=smith").await;
    assert_eq!(mode_ids(&b, "match"), set(&["Practitioner/pr1"]));
    assert!(b["link"][0]["url"]
        .as_str()
        .unwrap()
        .contains("_type=Patient,Practitioner"));
    let b = search(&app, "/?_id=obs-1,pat-b").await;
    assert_eq!(
        mode_ids(&b, "match"),
        set(&["Observation/obs-1", "Patient/pat-b"])
    );
    let post = app
        .send(
            Method::POST,
            "/Patient/_search",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(b"family=chal&gender=female"),
        )
        .await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(match_ids(&post.json()), vec!["pat-c"]);
    let post = app
        .send(
            Method::POST,
            "/_search",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(b"_type=Observation&code=2339-0"),
        )
        .await;
    assert_eq!(match_ids(&post.json()), vec!["obs-4"]);
    let wrong = app
        .send(
            Method::POST,
            "/Patient/_search",
            &[("Content-Type", "application/fhir+json")],
            Some(b"{}"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let b = search(&app, "/Patient/pat-a/*").await;
    assert!(mode_ids(&b, "match").is_superset(&set(&[
        "Observation/obs-1",
        "Observation/obs-2",
        "RiskAssessment/ra1",
        "Patient/pat-a"
    ])));
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// Follows `next` links from `query`, returning the ids page by page.
async fn pages(app: &TestApp, query: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut url = query.to_string();
    for _ in 0..20 {
        let b = search(app, &url).await;
        out.push(match_ids(&b));
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    out
}

async fn paging_is_stable_while_resources_are_added(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    // Plain order: pages of two over six Observations.
    let p = pages(&app, "/Observation?_count=2").await;
    assert_eq!(p.len(), 3, "{p:?}");
    let all: Vec<String> = p.concat();
    assert_eq!(all.len(), 6);
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 6);

    // An insert between page fetches neither repeats nor skips a resource.
    let first = search(&app, "/Observation?_count=2&_sort=-date").await;
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !next.contains("date"),
        "the cursor does not show the query in clear: {next}"
    );
    let newer = json!({"resourceType": "Observation", "id": "obs-new", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "effectiveDateTime": "2030-01-01"});
    assert_eq!(
        app.put_json("/Observation/obs-new", &newer).await.status,
        StatusCode::CREATED
    );
    let mut seen = match_ids(&first);
    let mut url = next;
    loop {
        let b = search(&app, &url).await;
        seen.extend(match_ids(&b));
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["obs-4", "obs-2", "obs-5", "obs-1", "obs-3", "obs-6"]
    );

    // previous goes back to the page before.
    let p1 = search(&app, "/Patient?_count=2&_sort=family").await;
    let n = p1["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let p2 = search(&app, &n).await;
    assert_eq!(match_ids(&p2), vec!["pat-c", "pat-b"]);
    let prev = p2["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "previous")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(match_ids(&search(&app, &prev).await), match_ids(&p1));
    assert_eq!(p1["total"], 5);

    // A damaged cursor is refused.
    let bad = app.get("/Observation?_cursor=AAAA").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn unknown_parameters_are_lenient_unless_strict_and_bad_values_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let b = search(&app, "/Patient?gender=male&nonsense=1").await;
    assert_eq!(match_ids(&b), vec!["pat-a"]);
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert_eq!(outcome["resource"]["issue"][0]["expression"][0], "nonsense");
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(self_link.ends_with("/Patient?gender=male"), "{self_link}");

    let strict = app
        .send(
            Method::GET,
            "/Patient?gender=male&nonsense=1",
            &[("Prefer", "handling=strict")],
            None,
        )
        .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    let (code, _, expr) = strict.issue();
    assert_eq!(code, "not-supported");
    assert_eq!(expr.as_deref(), Some("nonsense"));

    for (query, expression) in [
        ("/Patient?birthdate=2020-13", "birthdate"),
        ("/Patient?birthdate=xx2020", "birthdate"),
        ("/Patient?birthdate=ge", "birthdate"),
        ("/Observation?value-quantity=abc", "value-quantity"),
        ("/RiskAssessment?probability=1.2.3", "probability"),
        ("/Patient?_count=many", "_count"),
        ("/Patient?family:nonsense=x", "family:nonsense"),
        ("/Patient?birthdate:exact=1974", "birthdate:exact"),
        ("/Patient?_sort=nonsense", "_sort"),
        ("/Observation?_include=Observation:nonsense", "_include"),
        ("/Observation?_include=Observation:status", "_include"),
        ("/Patient?_id=a%20b", "_id"),
        ("/Patient?gender:missing=maybe", "gender:missing"),
        ("/Observation?status.name=x", "status.name"),
        (
            "/Observation?code-value-quantity=only-one-part",
            "code-value-quantity",
        ),
        ("/Patient?identifier:of-type=a%7Cb", "identifier:of-type"),
    ] {
        let r = app.get(query).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (_, _, expr) = r.issue();
        assert_eq!(expr.as_deref(), Some(expression), "{query}");
    }
    // Unknown parameters deep in a chain or _has are unknown parameters too, and a
    // value set the packages cannot enumerate (LOINC) is not searched by halves.
    for query in [
        "/Observation?code:in=http://hl7.org/fhir/ValueSet/observation-codes",
        "/Observation?subject:Patient.nonsense=x",
        "/Patient?_has:Observation:nonsense:code=x",
    ] {
        let b = search(&app, query).await;
        assert!(mode_ids(&b, "outcome").len() == 1, "{query}");
        let strict = app
            .send(Method::GET, query, &[("Prefer", "handling=strict")], None)
            .await;
        assert_eq!(strict.status, StatusCode::BAD_REQUEST, "{query}");
    }
    let unknown_type = app.get("/Nonsense?x=1").await;
    assert_eq!(unknown_type.status, StatusCode::NOT_FOUND);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn index_follows_updates_and_deletes(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let mut p = data().into_iter().find(|r| r["id"] == "pat-b").unwrap();
    p["name"][0]["family"] = json!("Schmidt");
    assert_eq!(
        app.put_json("/Patient/pat-b", &p).await.status,
        StatusCode::OK
    );
    assert!(match_ids(&search(&app, "/Patient?family=muller").await).is_empty());
    assert_eq!(
        match_ids(&search(&app, "/Patient?family=schmidt").await),
        vec!["pat-b"]
    );
    assert_eq!(app.delete("/Patient/pat-b").await.status, StatusCode::OK);
    assert!(match_ids(&search(&app, "/Patient?family=schmidt").await).is_empty());
    assert!(match_ids(&search(&app, "/Patient?_id=pat-b").await).is_empty());
    // Re-created after the delete, it is found again.
    assert_eq!(
        app.put_json("/Patient/pat-b", &p).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        match_ids(&search(&app, "/Patient?family=schmidt").await),
        vec!["pat-b"]
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// A resource with more index rows than one insert statement takes (SQLite
/// writes them in chunks of up to 128 rows, a power of two each): every row is
/// written, whatever chunk it fell in. 300 identifiers (several blind forms
/// each) and 200 quantities (numbers) of one resource, each found on its own.
async fn every_index_row_of_a_large_resource_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let identifiers: Vec<Value> = (0..300)
        .map(|i| json!({"system": "urn:test:chunks", "value": format!("v{i}")}))
        .collect();
    let r = app
        .put_json(
            "/Patient/many-ids",
            &json!({"resourceType": "Patient", "id": "many-ids", "identifier": identifiers}),
        )
        .await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let components: Vec<Value> = (0..200)
        .map(|i| {
            json!({"code": {"text": "c"}, "valueQuantity": {"value": 1000 + i, "unit": "mg",
                "system": "http://unitsofmeasure.org", "code": "mg"}})
        })
        .collect();
    let r = app
        .put_json(
            "/Observation/many-values",
            &json!({"resourceType": "Observation", "id": "many-values", "status": "final",
                "code": {"text": "x"}, "component": components}),
        )
        .await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    for i in 0..300 {
        let q = format!("/Patient?identifier=urn:test:chunks|v{i}");
        assert_eq!(match_ids(&search(&app, &q).await), vec!["many-ids"], "{q}");
    }
    for i in 0..200 {
        let q = format!("/Observation?component-value-quantity={}", 1000 + i);
        assert_eq!(
            match_ids(&search(&app, &q).await),
            vec!["many-values"],
            "{q}"
        );
    }
    // Every row extraction makes is in the database, no more, no fewer.
    let mut expected = [0usize; 5];
    for path in ["/Patient/many-ids", "/Observation/many-values"] {
        let rows = app
            .state
            .search
            .stored_index_rows(&app.get(path).await.json());
        let distinct: BTreeSet<_> = rows.blind.iter().collect();
        for (n, rows) in expected.iter_mut().zip([
            distinct.len(),
            rows.dates.len(),
            rows.numbers.len(),
            rows.references.len(),
            rows.uris.len(),
        ]) {
            *n += rows;
        }
    }
    assert!(expected[0] > 600 && expected[2] >= 200, "{expected:?}");
    let written: Vec<usize> = app
        .db
        .written_rows()
        .into_iter()
        .filter(|(t, _)| t.starts_with("search_"))
        .map(|(_, n)| n as usize)
        .collect();
    assert_eq!(written, expected);
    // And nothing that was not written.
    assert!(match_ids(&search(&app, "/Patient?identifier=urn:test:chunks|v300").await).is_empty());
    assert!(
        match_ids(&search(&app, "/Observation?component-value-quantity=1200").await).is_empty()
    );
    app.stop().await;
}

on_both_backends!(
    every_index_row_of_a_large_resource_is_written,
    every_parameter_type_has_its_known_answers,
    includes_totals_and_result_controls,
    paging_is_stable_while_resources_are_added,
    unknown_parameters_are_lenient_unless_strict_and_bad_values_are_refused,
    index_follows_updates_and_deletes,
);
