//! Synthetic patient data shaped like Synthea's FHIR output, made here at test time
//! (a small deterministic generator, no network): a "hospital" transaction of
//! Organizations and Practitioners created conditionally (`ifNoneExist`), then one
//! transaction per patient whose entries refer to each other by `urn:uuid`
//! placeholders (encounters, conditions, observations with components, reports,
//! procedures, medication requests, immunizations, claims, care plans, a
//! provenance over everything) and to the hospital's resources by conditional
//! references (`Organization?identifier=...`). Every Bundle loads without an error
//! on both backends, and every reference in the stored data resolves to a stored
//! resource.

use std::collections::{BTreeSet, HashSet};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend};

const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// A tiny linear congruential generator: the same data on every run.
pub(crate) struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "urn:uuid:{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a as u32,
            (b & 0xffff) as u16,
            self.below(0xfff),
            self.below(0xfff),
            (self.next() << 16 | self.next()) & 0xffff_ffff_ffff
        )
    }
}

fn post(full_url: &str, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": t}})
}

pub(crate) fn hospital() -> Value {
    let mut entries = Vec::new();
    for o in 0..3 {
        let resource = json!({"resourceType": "Organization", "active": true, "name": format!("Hospital {o}"),
            "identifier": [{"system": SYNTHEA, "value": format!("org-{o}")}],
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}]});
        entries.push(json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000000{o}"), "resource": resource,
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": format!("identifier={SYNTHEA}|org-{o}")}}));
        let practitioner = json!({"resourceType": "Practitioner", "active": true,
            "identifier": [{"system": NPI, "value": format!("99990{o}")}], "name": [{"family": format!("Doctor{o}"), "prefix": ["Dr."]}]});
        entries.push(json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000010{o}"), "resource": practitioner,
            "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": format!("identifier={NPI}|99990{o}")}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// One patient's record: a transaction of a few hundred entries.
pub(crate) fn patient(rng: &mut Rng, n: usize) -> Value {
    let loinc = "http://loinc.org";
    let snomed = "http://snomed.info/sct";
    let mut entries = Vec::new();
    let mut all = Vec::new();
    let pat = rng.uuid();
    entries.push(post(&pat, json!({"resourceType": "Patient",
        "identifier": [{"system": SYNTHEA, "value": format!("patient-{n}")}],
        "name": [{"use": "official", "family": format!("Family{n}"), "given": [format!("Given{n}")]}],
        "gender": if n % 2 == 0 { "female" } else { "male" }, "birthDate": format!("19{:02}-0{}-1{}", 40 + n % 50, 1 + n % 9, n % 9),
        "address": [{"line": [format!("{n} Main Street")], "city": "Springfield", "state": "MA", "postalCode": "01101"}],
        "telecom": [{"system": "phone", "value": format!("555-01{n:02}"), "use": "home"}],
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": "Boston", "country": "US"}}]})));
    all.push(pat.clone());
    let org = format!("Organization?identifier={SYNTHEA}|org-{}", n % 3);
    let doc = format!("Practitioner?identifier={NPI}|99990{}", n % 3);
    let coverage = rng.uuid();
    entries.push(post(
        &coverage,
        json!({"resourceType": "Coverage", "status": "active",
        "beneficiary": {"reference": pat}, "payor": [{"reference": org}]}),
    ));
    all.push(coverage.clone());
    for e in 0..(8 + rng.below(8)) {
        let enc = rng.uuid();
        let day = format!(
            "20{:02}-{:02}-{:02}",
            10 + e % 12,
            1 + rng.below(12),
            1 + rng.below(28)
        );
        entries.push(post(
            &enc,
            json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [coding(snomed, "185349003", "Encounter for check up")],
            "subject": {"reference": pat},
            "participant": [{"individual": {"reference": doc}}],
            "period": {"start": format!("{day}T09:00:00Z"), "end": format!("{day}T09:30:00Z")},
            "serviceProvider": {"reference": org}}),
        ));
        all.push(enc.clone());
        let cond = rng.uuid();
        entries.push(post(&cond, json!({"resourceType": "Condition",
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "code": coding(snomed, "44054006", "Diabetes"), "subject": {"reference": pat},
            "encounter": {"reference": enc}, "onsetDateTime": format!("{day}T09:00:00Z")})));
        all.push(cond.clone());
        let mut results = Vec::new();
        for o in 0..(10 + rng.below(10)) {
            let obs = rng.uuid();
            let mut r = json!({"resourceType": "Observation", "status": "final",
                "category": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital signs")],
                "code": coding(loinc, "29463-7", "Body Weight"), "subject": {"reference": pat},
                "encounter": {"reference": enc}, "effectiveDateTime": format!("{day}T09:1{}:00Z", o % 10),
                "valueQuantity": {"value": 60 + rng.below(40), "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
            if o % 5 == 0 {
                r["code"] = coding(loinc, "85354-9", "Blood pressure panel");
                r.as_object_mut().unwrap().remove("valueQuantity");
                r["component"] = json!([
                    {"code": coding(loinc, "8480-6", "Systolic"), "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                    {"code": coding(loinc, "8462-4", "Diastolic"), "valueQuantity": {"value": 80, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]);
            }
            entries.push(post(&obs, r));
            all.push(obs.clone());
            results.push(json!({"reference": obs}));
        }
        let report = rng.uuid();
        entries.push(post(&report, json!({"resourceType": "DiagnosticReport", "status": "final",
            "code": coding(loinc, "51990-0", "Basic metabolic panel"), "subject": {"reference": pat},
            "encounter": {"reference": enc}, "effectiveDateTime": format!("{day}T09:20:00Z"),
            "issued": format!("{day}T09:20:00.000Z"), "performer": [{"reference": doc}], "result": results})));
        all.push(report);
        let proc_ = rng.uuid();
        entries.push(post(&proc_, json!({"resourceType": "Procedure", "status": "completed",
            "code": coding(snomed, "430193006", "Medication reconciliation"), "subject": {"reference": pat},
            "encounter": {"reference": enc}, "performedDateTime": format!("{day}T09:05:00Z"),
            "reasonReference": [{"reference": cond}]})));
        all.push(proc_.clone());
        let med = rng.uuid();
        entries.push(post(&med, json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": coding("http://www.nlm.nih.gov/research/umls/rxnorm", "860975", "Metformin"),
            "subject": {"reference": pat}, "encounter": {"reference": enc}, "authoredOn": format!("{day}T09:25:00Z"),
            "requester": {"reference": doc}, "reasonReference": [{"reference": cond}]})));
        all.push(med.clone());
        let imm = rng.uuid();
        entries.push(post(
            &imm,
            json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": coding("http://hl7.org/fhir/sid/cvx", "140", "Influenza"),
            "patient": {"reference": pat}, "encounter": {"reference": enc},
            "occurrenceDateTime": format!("{day}T09:15:00Z"), "primarySource": true}),
        ));
        all.push(imm);
        let claim = rng.uuid();
        entries.push(post(&claim, json!({"resourceType": "Claim", "status": "active",
            "type": coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
            "use": "claim", "patient": {"reference": pat}, "created": format!("{day}T09:30:00Z"),
            "provider": {"reference": org}, "priority": coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
            "prescription": {"reference": med},
            "procedure": [{"sequence": 1, "procedureReference": {"reference": proc_}}],
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": coverage}}],
            "item": [{"sequence": 1, "productOrService": coding(snomed, "185349003", "Check up"), "encounter": [{"reference": enc}]}],
            "total": {"value": 125.5, "currency": "USD"}})));
        all.push(claim);
    }
    let plan = rng.uuid();
    entries.push(post(&plan, json!({"resourceType": "CarePlan", "status": "active", "intent": "order",
        "subject": {"reference": pat}, "author": {"reference": doc},
        "contained": [{"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
                       "description": {"text": "Weight loss"}, "subject": {"reference": pat}}],
        "goal": [{"reference": "#g1"}],
        "activity": [{"detail": {"status": "in-progress", "code": coding(snomed, "229065009", "Exercise therapy"),
                                 "performer": [{"reference": doc}]}}]})));
    all.push(plan);
    let prov = rng.uuid();
    entries.push(post(&prov, json!({"resourceType": "Provenance",
        "target": all.iter().map(|u| json!({"reference": u})).collect::<Vec<_>>(),
        "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"type": coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", "Author"),
                   "who": {"reference": doc}, "onBehalfOf": {"reference": org}}]})));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Every `reference` string of a resource (contained references excepted).
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(r)) if !r.starts_with('#') => out.push(r.clone()),
                    _ => references(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

async fn synthetic_patient_bundles_load_and_every_reference_resolves(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.post_json("", &hospital()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Loading the hospital again finds every resource (ifNoneExist): nothing new.
    let again = app.post_json("", &hospital()).await.json();
    assert!(again["entry"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["response"]["status"] == "200 OK"));
    let mut rng = Rng(20261201);
    let mut loaded = 0;
    for n in 0..6 {
        let b = patient(&mut rng, n);
        let entries = b["entry"].as_array().unwrap().len();
        assert!(entries > 100, "a patient Bundle of {entries} entries");
        let r = app.post_json("", &b).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "patient {n}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let resp = r.json();
        assert!(resp["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["response"]["status"] == "201 Created"));
        loaded += entries;
    }
    // Every stored resource, and every reference in them.
    let types = [
        "Patient",
        "Organization",
        "Practitioner",
        "Coverage",
        "Encounter",
        "Condition",
        "Observation",
        "DiagnosticReport",
        "Procedure",
        "MedicationRequest",
        "Immunization",
        "Claim",
        "CarePlan",
        "Provenance",
    ];
    let mut stored: HashSet<String> = HashSet::new();
    let mut refs: Vec<String> = Vec::new();
    for t in types {
        let mut url = format!("/{t}?_count=1000");
        loop {
            let page = app.get(&url).await.json();
            for e in page["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                stored.insert(format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                ));
                references(r, &mut refs);
            }
            match page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(next) => url = next["url"].as_str().unwrap().to_string(),
                None => break,
            }
        }
    }
    assert_eq!(
        stored.len(),
        loaded + 6,
        "patients' resources plus the hospital's six"
    );
    let unresolved: BTreeSet<&String> = refs.iter().filter(|r| !stored.contains(*r)).collect();
    assert!(
        unresolved.is_empty(),
        "references that name no stored resource: {unresolved:?}"
    );
    assert!(refs.len() > loaded, "{} references", refs.len());
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(synthetic_patient_bundles_load_and_every_reference_resolves);
