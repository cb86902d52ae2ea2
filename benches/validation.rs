//! Profile validation throughput, full mode, on the two resources of the issue's goal
//! (at least 5,000 validations per second per core):
//!
//! - `us_core_patient`: a Patient claiming US Core Patient 6.1.0 (identifier, name, telecom,
//!   address, race and ethnicity extensions), validated against core Patient and US Core.
//! - `us_core_lab_observation`: an Observation claiming US Core Laboratory Result
//!   Observation (category slice, LOINC code, valueQuantity, reference range).
//!
//! Each is measured as a write runs it (`validate_profiles`, after the strict reader) and
//! as `$validate`/the CLI run it (`validate`: strict reader included). Plans are compiled
//! and value sets expanded before measuring (first-use costs are not in the figures).
//!
//! Run: `cargo bench -j1 --bench validation -- --warm-up-time 2 --measurement-time 5`; the
//! figures are in docs/benchmarks.md. Packages come from the test package cache
//! (`target/tmp/fhir-packages`), installed from `../shared/fhir-packages` when missing.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fhirgate::fhir::{outcome, Model};
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use fhirgate::terminology::Terminology;
use fhirgate::validation::{Validator, ValidatorOptions};
use serde_json::{json, Value};

fn validator() -> Validator {
    let shared = match std::env::var_os("FHIRGATE_TEST_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fhir-packages");
    let cache = PackageCache::new(&dir, "http://127.0.0.1:9/unused-registry");
    let refs: Vec<PackageRef> = [
        ("hl7.fhir.r4.core#4.0.1", "hl7.fhir.r4.core-4.0.1.tgz"),
        ("hl7.fhir.us.core#6.1.0", "hl7.fhir.us.core-6.1.0.tgz"),
    ]
    .iter()
    .map(|(r, file)| {
        let r: PackageRef = r.parse().expect("package reference");
        if !cache.is_installed(&r) {
            cache
                .install_file(&shared.join("fhir-packages").join(file))
                .expect("install package");
        }
        r
    })
    .collect();
    let set = Arc::new(PackageSet::load(&cache, &refs).expect("load packages"));
    let model = Arc::new(Model::new(set.clone()));
    Validator::new(
        model,
        Arc::new(Terminology::new(set)),
        ValidatorOptions::default(),
    )
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "bench",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                {"url": "text", "valueString": "White"}]},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino"}},
                {"url": "text", "valueString": "Not Hispanic or Latino"}]}
        ],
        "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male", "birthDate": "1974-12-25",
        "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "state": "VT", "postalCode": "3999"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]}}]
    })
}

fn lab_observation() -> Value {
    json!({
        "resourceType": "Observation", "id": "bench-lab",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"]},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}], "text": "Glucose"},
        "subject": {"reference": "Patient/bench"},
        "effectiveDateTime": "2023-03-11T09:31:00-05:00",
        "issued": "2023-03-11T15:31:00.000Z",
        "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}],
        "referenceRange": [{"low": {"value": 3.1, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
                            "high": {"value": 6.2, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}]
    })
}

fn bench(c: &mut Criterion) {
    let v = validator();
    let mut group = c.benchmark_group("validation");
    group.throughput(Throughput::Elements(1));
    for (name, resource) in [
        ("us_core_patient", patient()),
        ("us_core_lab_observation", lab_observation()),
    ] {
        let issues = v.validate(&resource, &[]);
        assert!(
            !outcome::has_errors(&issues),
            "{name} must be valid: {issues:?}"
        );
        group.bench_function(format!("{name}/profiles"), |b| {
            b.iter(|| v.validate_profiles(std::hint::black_box(&resource), &[]))
        });
        group.bench_function(format!("{name}/with_structure"), |b| {
            b.iter(|| v.validate(std::hint::black_box(&resource), &[]))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
