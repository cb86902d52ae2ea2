//! Profile validation in-process: one table-driven case per defect class, each with the
//! exact `expression` and severity it must produce (and a clean twin where that matters);
//! every US Core 6.1.0 and IHE BALP 1.1.4 StructureDefinition compiles; the BALP examples
//! meet the profiles they claim. Discriminator kinds that no loaded package uses
//! (`profile`, `exists`) and fixed/pattern rules come from a small test package written
//! into a temporary package cache beside the core package.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fhirgate::fhir::{Issue, Model, Severity};
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use fhirgate::terminology::{Membership, Terminology};
use fhirgate::validation::{Validator, ValidatorOptions};
use serde_json::{json, Value};

use crate::support;

const TEST_PATIENT: &str = "http://fhirgate.test/StructureDefinition/test-patient";
const TEST_OBSERVATION: &str = "http://fhirgate.test/StructureDefinition/test-observation";
const TEST_BUNDLE: &str = "http://fhirgate.test/StructureDefinition/test-bundle";
const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";

fn el(id: &str, min: u32, max: &str, types: &[&str], extra: Value) -> Value {
    let path: String = id
        .split('.')
        .map(|s| s.split(':').next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join(".");
    let mut e = json!({"id": id, "path": path, "min": min, "max": max});
    if !types.is_empty() {
        e["type"] = json!(types.iter().map(|t| json!({"code": t})).collect::<Vec<_>>());
    }
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    e
}

fn profile(url: &str, ty: &str, elements: Vec<Value>) -> Value {
    json!({
        "resourceType": "StructureDefinition", "url": url, "name": "Test", "status": "draft",
        "kind": "resource", "abstract": false, "type": ty, "derivation": "constraint",
        "baseDefinition": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
        "snapshot": {"element": elements}
    })
}

/// The test package: a Patient profile (fixed, pattern, value/pattern/type/exists slicing,
/// closed slicing) and an Observation profile (profile discriminator).
fn test_package(dir: &Path) {
    let pkg = dir.join("fhirgate.test#0.0.1/package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        r#"{"name": "fhirgate.test", "version": "0.0.1", "fhirVersions": ["4.0.1"]}"#,
    )
    .unwrap();
    let patient = profile(
        TEST_PATIENT,
        "Patient",
        vec![
            el("Patient", 0, "*", &[], json!({})),
            el(
                "Patient.identifier",
                0,
                "*",
                &["Identifier"],
                json!({"slicing": {
                "discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}}),
            ),
            el(
                "Patient.identifier:mrn",
                1,
                "1",
                &["Identifier"],
                json!({"sliceName": "mrn"}),
            ),
            el(
                "Patient.identifier:mrn.system",
                1,
                "1",
                &["uri"],
                json!({"fixedUri": "urn:mrn"}),
            ),
            el(
                "Patient.active",
                0,
                "1",
                &["boolean"],
                json!({"fixedBoolean": true}),
            ),
            el(
                "Patient.name",
                0,
                "*",
                &["HumanName"],
                json!({"slicing": {
                "discriminator": [{"type": "pattern", "path": "use"}], "rules": "open"}}),
            ),
            el(
                "Patient.name:official",
                1,
                "1",
                &["HumanName"],
                json!({"sliceName": "official"}),
            ),
            el(
                "Patient.name:official.use",
                1,
                "1",
                &["code"],
                json!({"patternCode": "official"}),
            ),
            el(
                "Patient.deceased[x]",
                0,
                "1",
                &["boolean", "dateTime"],
                json!({"slicing": {
                "discriminator": [{"type": "type", "path": "$this"}], "rules": "open"}}),
            ),
            el(
                "Patient.deceased[x]:deceasedBoolean",
                0,
                "0",
                &["boolean"],
                json!({"sliceName": "deceasedBoolean"}),
            ),
            el(
                "Patient.maritalStatus",
                0,
                "1",
                &["CodeableConcept"],
                json!({"patternCodeableConcept": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}}),
            ),
            el(
                "Patient.telecom",
                0,
                "*",
                &["ContactPoint"],
                json!({"slicing": {"discriminator": [{"type": "value", "path": "system"}],
                "rules": "openAtEnd", "ordered": true}}),
            ),
            el(
                "Patient.telecom:phone",
                0,
                "*",
                &["ContactPoint"],
                json!({"sliceName": "phone"}),
            ),
            el(
                "Patient.telecom:phone.system",
                1,
                "1",
                &["code"],
                json!({"fixedCode": "phone"}),
            ),
            el(
                "Patient.telecom:email",
                0,
                "*",
                &["ContactPoint"],
                json!({"sliceName": "email"}),
            ),
            el(
                "Patient.telecom:email.system",
                1,
                "1",
                &["code"],
                json!({"fixedCode": "email"}),
            ),
            el(
                "Patient.birthDate",
                0,
                "1",
                &["date"],
                json!({"minValueDate": "1900-01-01", "maxValueDate": "2100-12-31"}),
            ),
            el(
                "Patient.multipleBirth[x]",
                0,
                "1",
                &["boolean", "integer"],
                json!({"maxValueInteger": 9}),
            ),
            el(
                "Patient.contact",
                0,
                "*",
                &["BackboneElement"],
                json!({"slicing": {
                "discriminator": [{"type": "exists", "path": "name"}], "rules": "open"}}),
            ),
            el(
                "Patient.contact:named",
                1,
                "*",
                &["BackboneElement"],
                json!({"sliceName": "named"}),
            ),
            el(
                "Patient.contact:named.name",
                1,
                "1",
                &["HumanName"],
                json!({}),
            ),
        ],
    );
    let observation = profile(
        TEST_OBSERVATION,
        "Observation",
        vec![
            el("Observation", 0, "*", &[], json!({})),
            el(
                "Observation.component",
                0,
                "*",
                &["BackboneElement"],
                json!({"slicing": {
                "discriminator": [{"type": "profile", "path": "value"}], "rules": "closed"}}),
            ),
            el(
                "Observation.component:simple",
                0,
                "*",
                &["BackboneElement"],
                json!({"sliceName": "simple"}),
            ),
            el(
                "Observation.component:simple.code",
                1,
                "1",
                &["CodeableConcept"],
                json!({}),
            ),
            json!({"id": "Observation.component:simple.value[x]", "path": "Observation.component.value[x]",
                   "min": 1, "max": "1",
                   "type": [{"code": "Quantity", "profile": ["http://hl7.org/fhir/StructureDefinition/SimpleQuantity"]}]}),
        ],
    );
    let bundle = profile(
        TEST_BUNDLE,
        "Bundle",
        vec![
            el("Bundle", 0, "*", &[], json!({})),
            el("Bundle.entry", 0, "*", &["BackboneElement"], json!({})),
            json!({"id": "Bundle.entry.resource", "path": "Bundle.entry.resource", "min": 0, "max": "1",
                   "type": [{"code": "Patient", "profile": [US_CORE_PATIENT]}]}),
        ],
    );
    std::fs::write(
        pkg.join("StructureDefinition-test-bundle.json"),
        bundle.to_string(),
    )
    .unwrap();
    std::fs::write(
        pkg.join("StructureDefinition-test-patient.json"),
        patient.to_string(),
    )
    .unwrap();
    std::fs::write(
        pkg.join("StructureDefinition-test-observation.json"),
        observation.to_string(),
    )
    .unwrap();
}

/// Core, US Core, BALP and the test package, in a temporary cache that links the shared
/// test cache's packages.
fn validator() -> &'static Validator {
    static V: OnceLock<(tempfile::TempDir, Validator)> = OnceLock::new();
    &V.get_or_init(|| {
        let shared = support::package_cache();
        let dir = tempfile::tempdir().unwrap();
        let refs: Vec<PackageRef> = [
            "hl7.fhir.r4.core#4.0.1",
            "hl7.fhir.us.core#6.1.0",
            "ihe.iti.balp#1.1.4",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        for r in &refs {
            let name = r.to_string();
            std::os::unix::fs::symlink(shared.join(&name), dir.path().join(&name)).unwrap();
        }
        test_package(dir.path());
        let cache = PackageCache::new(dir.path(), "http://127.0.0.1:9/no-registry");
        let mut all = refs;
        all.push("fhirgate.test#0.0.1".parse().unwrap());
        let set = Arc::new(PackageSet::load(&cache, &all).expect("load packages"));
        let model = Arc::new(Model::new(set.clone()));
        let terminology = Arc::new(Terminology::new(set));
        let v = Validator::new(model, terminology, ValidatorOptions::default());
        (dir, v)
    })
    .1
}

fn show(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| {
            format!(
                "  {:?} {} @ {:?}: {}",
                i.severity, i.code, i.expression, i.diagnostics
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// (defect class, resource, profiles, expected expression, severity, issue code, words in
/// the diagnostics)
type Case = (
    &'static str,
    Value,
    Vec<&'static str>,
    &'static str,
    Severity,
    &'static str,
    &'static str,
);

fn patient(extra: Value) -> Value {
    let mut p = json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": "urn:mrn", "value": "1"}],
        "name": [{"use": "official", "family": "Chalmers"}],
        "contact": [{"name": {"family": "Smith"}}]});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn cases() -> Vec<Case> {
    let us_core_patient = || {
        json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "1"}], "name": [{"family": "Chalmers"}]})
    };
    vec![
        (
            "cardinality (min)",
            us_core_patient(),
            vec![US_CORE_PATIENT],
            "Patient",
            Severity::Error,
            "required",
            "Patient.gender: at least 1 required",
        ),
        (
            "type not allowed by the profile",
            json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "weight"}, "valueString": "heavy"}),
            vec!["http://hl7.org/fhir/StructureDefinition/bodyweight"],
            "Observation.valueString",
            Severity::Error,
            "structure",
            "type String is not allowed",
        ),
        (
            "primitive format",
            patient(json!({"birthDate": "1970-13-01"})),
            vec![],
            "Patient.birthDate",
            Severity::Error,
            "value",
            "not a valid date",
        ),
        (
            "base64 with white space",
            json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVs bG8="}),
            vec![],
            "Binary.data",
            Severity::Error,
            "value",
            "white space",
        ),
        (
            "fixed",
            patient(json!({"active": false})),
            vec![TEST_PATIENT],
            "Patient.active",
            Severity::Error,
            "value",
            "must be exactly true",
        ),
        (
            "pattern",
            patient(
                json!({"maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "S"}]}}),
            ),
            vec![TEST_PATIENT],
            "Patient.maritalStatus",
            Severity::Error,
            "value",
            "does not match the pattern",
        ),
        (
            "value discriminator, closed slicing",
            patient(json!({"identifier": [{"system": "urn:other", "value": "1"}]})),
            vec![TEST_PATIENT],
            "Patient.identifier[0]",
            Severity::Error,
            "structure",
            "matches none of the slices",
        ),
        (
            "value discriminator, slice cardinality",
            patient(json!({"identifier": [{"system": "urn:other", "value": "1"}]})),
            vec![TEST_PATIENT],
            "Patient",
            Severity::Error,
            "structure",
            "slice mrn of Patient.identifier: at least 1 required, found 0",
        ),
        (
            "pattern discriminator",
            patient(json!({"name": [{"use": "nickname", "given": ["Jim"]}]})),
            vec![TEST_PATIENT],
            "Patient",
            Severity::Error,
            "structure",
            "slice official of Patient.name: at least 1 required, found 0",
        ),
        (
            "type discriminator",
            patient(json!({"deceasedBoolean": false})),
            vec![TEST_PATIENT],
            "Patient",
            Severity::Error,
            "structure",
            "slice deceasedBoolean of Patient.deceased[x]: at most 0 allowed, found 1",
        ),
        (
            "exists discriminator",
            patient(json!({"contact": [{"telecom": [{"system": "phone", "value": "1"}]}]})),
            vec![TEST_PATIENT],
            "Patient",
            Severity::Error,
            "structure",
            "slice named of Patient.contact: at least 1 required, found 0",
        ),
        (
            "profile discriminator, closed slicing",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "component": [{"code": {"text": "c"}, "valueQuantity": {"value": 1, "comparator": "<"}}]}),
            vec![TEST_OBSERVATION],
            "Observation.component[0]",
            Severity::Error,
            "structure",
            "matches none of the slices",
        ),
        (
            "slicing that cannot be evaluated (resolve() outside the instance)",
            json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "lipids"},
                   "result": [{"reference": "Observation/cholesterol"}]}),
            vec!["http://hl7.org/fhir/StructureDefinition/lipidprofile"],
            "DiagnosticReport.result[0]",
            Severity::Warning,
            "processing",
            "cannot be told apart",
        ),
        (
            "profile of a nested resource named by the element type",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1",
                   "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}],
                                "name": [{"family": "Chalmers"}]}}]}),
            vec![TEST_BUNDLE],
            "Bundle.entry[0].resource",
            Severity::Error,
            "required",
            "Patient.gender: at least 1 required",
        ),
        (
            "required binding",
            patient(json!({"gender": "unknownish"})),
            vec![],
            "Patient.gender",
            Severity::Error,
            "code-invalid",
            "required binding",
        ),
        (
            "extensible binding",
            patient(json!({"maritalStatus": {"coding": [{"system": "urn:other", "code": "x"}]}})),
            vec![],
            "Patient.maritalStatus",
            Severity::Warning,
            "code-invalid",
            "extensible binding",
        ),
        (
            "invariant",
            patient(json!({"contact": [{"gender": "male"}]})),
            vec![],
            "Patient.contact[0]",
            Severity::Error,
            "invariant",
            "pat-1",
        ),
        (
            "unknown modifier extension",
            patient(
                json!({"modifierExtension": [{"url": "http://partner.test/fhir/StructureDefinition/m", "valueBoolean": true}]}),
            ),
            vec![],
            "Patient.modifierExtension[0]",
            Severity::Error,
            "extension",
            "modifier extension",
        ),
        (
            "unknown HL7-namespace extension",
            patient(
                json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/no-such-extension", "valueBoolean": true}]}),
            ),
            vec![],
            "Patient.extension[0]",
            Severity::Error,
            "extension",
            "not defined",
        ),
        (
            "unknown other-namespace extension",
            patient(
                json!({"extension": [{"url": "http://partner.test/fhir/StructureDefinition/x", "valueBoolean": true}]}),
            ),
            vec![],
            "Patient.extension[0]",
            Severity::Warning,
            "extension",
            "not defined",
        ),
        (
            "bad reference target type",
            patient(json!({
            "contained": [{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}],
            "generalPractitioner": [{"reference": "#o1"}]})),
            vec![],
            "Patient.generalPractitioner[0]",
            Severity::Error,
            "structure",
            "names a Observation",
        ),
        (
            "Bundle fullUrl names another type",
            json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "http://x.test/fhir/Observation/1", "resource": {"resourceType": "Patient", "id": "1"}}]}),
            vec![],
            "Bundle.entry[0].fullUrl",
            Severity::Error,
            "invalid",
            "does not agree",
        ),
        (
            "Bundle fullUrl with another id",
            json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "http://x.test/fhir/Patient/2", "resource": {"resourceType": "Patient", "id": "1"}}]}),
            vec![],
            "Bundle.entry[0].fullUrl",
            Severity::Warning,
            "invalid",
            "does not agree",
        ),
        (
            "minValue (date, month precision)",
            patient(json!({"birthDate": "1850-05"})),
            vec![TEST_PATIENT],
            "Patient.birthDate",
            Severity::Error,
            "value",
            "below the minimum \"1900-01-01\"",
        ),
        (
            "maxValue (integer in a choice)",
            patient(json!({"multipleBirthInteger": 12})),
            vec![TEST_PATIENT],
            "Patient.multipleBirthInteger",
            Severity::Error,
            "value",
            "above the maximum 9",
        ),
        (
            "slicing openAtEnd (an unsliced value before a sliced one)",
            patient(
                json!({"telecom": [{"system": "fax", "value": "1"}, {"system": "phone", "value": "2"}]}),
            ),
            vec![TEST_PATIENT],
            "Patient.telecom[1]",
            Severity::Error,
            "structure",
            "openAtEnd",
        ),
        (
            "ordered slices out of order",
            patient(
                json!({"telecom": [{"system": "email", "value": "a@b.test"}, {"system": "phone", "value": "2"}]}),
            ),
            vec![TEST_PATIENT],
            "Patient.telecom[1]",
            Severity::Error,
            "structure",
            "slice phone must come before slice email",
        ),
        (
            "extension outside its context",
            patient(json!({"address": [{"city": "Springfield", "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                 "valueCode": "F"}]}]})),
            vec![],
            "Patient.address[0].extension[0]",
            Severity::Error,
            "structure",
            "is not allowed here: its definition allows it on Patient",
        ),
        (
            "core extension outside its context (a warning: R4 does it itself)",
            patient(json!({"address": [{"city": "Springfield", "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                 "valueAddress": {"city": "Shelbyville"}}]}]})),
            vec![],
            "Patient.address[0].extension[0]",
            Severity::Warning,
            "structure",
            "is not allowed here: its definition allows it on Patient",
        ),
        (
            "unknown claimed profile",
            patient(json!({"meta": {"profile": ["http://partner.test/StructureDefinition/nope"]}})),
            vec![],
            "Patient.meta.profile[0]",
            Severity::Warning,
            "not-found",
            "not defined",
        ),
    ]
}

#[test]
fn each_defect_class_is_reported_with_its_path_and_severity() {
    let v = validator();
    let mut failures = Vec::new();
    for (class, resource, profiles, expression, severity, code, words) in cases() {
        let profiles: Vec<String> = profiles.iter().map(|p| p.to_string()).collect();
        let issues = v.validate(&resource, &profiles);
        let hit = issues.iter().any(|i| {
            i.expression.as_deref() == Some(expression)
                && i.severity == severity
                && i.code == code
                && i.diagnostics.contains(words)
        });
        if !hit {
            failures.push(format!(
                "{class}: expected {severity:?} {code} @ {expression} ~ {words:?}; got\n{}",
                show(&issues)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn resources_that_meet_the_test_profiles_have_no_errors() {
    let v = validator();
    let good_patient = patient(
        json!({"active": true, "gender": "female", "deceasedDateTime": "2020-01-01",
        "birthDate": "1900", "multipleBirthInteger": 9,
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": "Shelbyville"}},
                      {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                       "valueCode": "F"}],
        "address": [{"line": ["1 Main St"], "_line": [{"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName", "valueString": "Main"}]}]}],
        "telecom": [{"system": "phone", "value": "1"}, {"system": "phone", "value": "2"},
                    {"system": "email", "value": "a@b.test"}, {"system": "fax", "value": "3"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}}),
    );
    let good_observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "component": [{"code": {"text": "c"}, "valueQuantity": {"value": 1, "unit": "mg"}}]});
    // `amountType` beside `amount[x]` is an element of its own, not a type of the choice
    let sibling_not_choice = json!({"resourceType": "SubstanceReferenceInformation",
        "target": [{"amountString": "x", "amountType": {"text": "t"}}]});
    for (r, p) in [
        (good_patient, TEST_PATIENT),
        (good_observation, TEST_OBSERVATION),
        (
            sibling_not_choice,
            "http://hl7.org/fhir/StructureDefinition/SubstanceReferenceInformation",
        ),
    ] {
        let issues = v.validate(&r, &[p.to_string()]);
        let errors: Vec<&Issue> = issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{p}:\n{}", show(&issues));
    }
}

#[test]
fn every_us_core_and_balp_profile_compiles() {
    let v = validator();
    let mut compiled = 0;
    let mut failed = Vec::new();
    for tgz in ["hl7.fhir.us.core-6.1.0.tgz", "ihe.iti.balp-1.1.4.tgz"] {
        for r in support::package_resources(&support::shared_dir().join("fhir-packages").join(tgz))
        {
            if r["resourceType"] != "StructureDefinition" {
                continue;
            }
            let url = r["url"].as_str().unwrap_or_default();
            match v.plan(url) {
                Ok(_) => compiled += 1,
                Err(e) => failed.push(format!("{url}: {e}")),
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(compiled >= 59 + 21, "only {compiled} profiles");
}

#[test]
fn balp_examples_meet_the_profiles_they_claim() {
    let v = validator();
    let mut checked = 0;
    let mut failures = Vec::new();
    for r in support::package_resources(
        &support::shared_dir().join("fhir-packages/ihe.iti.balp-1.1.4.tgz"),
    ) {
        let claims = r
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if claims == 0 || r["resourceType"] == "StructureDefinition" {
            continue;
        }
        checked += 1;
        let issues = v.validate(&r, &[]);
        if issues.iter().any(|i| i.severity == Severity::Error) {
            failures.push(format!(
                "{}/{}:\n{}",
                r["resourceType"],
                r["id"],
                show(&issues)
            ));
        }
    }
    assert!(
        checked >= 40,
        "only {checked} BALP examples claim a profile"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn us_core_patient_claims_are_checked_against_us_core() {
    let v = validator();
    let mut p = json!({"resourceType": "Patient", "meta": {"profile": [US_CORE_PATIENT]},
        "identifier": [{"system": "urn:mrn", "value": "1"}], "name": [{"family": "Chalmers"}], "gender": "male"});
    assert!(
        !v.validate(&p, &[])
            .iter()
            .any(|i| i.severity == Severity::Error),
        "{}",
        show(&v.validate(&p, &[]))
    );
    p["identifier"][0].as_object_mut().unwrap().remove("system");
    let issues = v.validate(&p, &[]);
    assert!(
        issues.iter().any(|i| i.severity == Severity::Error
            && i.expression.as_deref() == Some("Patient.identifier[0]")),
        "{}",
        show(&issues)
    );
}

#[test]
fn terminology_tells_not_a_member_from_cannot_tell() {
    let t = validator().terminology();
    let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
    let system = Some("http://hl7.org/fhir/administrative-gender");
    assert_eq!(t.contains(gender, system, "female"), Ok(Membership::Member));
    assert_eq!(
        t.contains(gender, system, "nope"),
        Ok(Membership::NotMember)
    );
    // US Core's race value set draws on a CDC code system the packages do not carry
    let race = "http://hl7.org/fhir/us/core/ValueSet/omb-race-category";
    let unknown = t.contains(race, Some("urn:oid:2.16.840.1.113883.6.238"), "2106-3");
    assert!(
        matches!(unknown, Ok(Membership::Unknown(_)) | Ok(Membership::Member)),
        "{unknown:?}"
    );
    assert!(t
        .contains("http://partner.test/ValueSet/none", None, "x")
        .is_err());
    // is-a over the v3 hierarchy
    let below = t
        .descendants(
            "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "_ActEncounterCode",
        )
        .unwrap();
    assert!(below.iter().any(|c| c == "AMB"), "{below:?}");
    assert_eq!(
        t.subsumes(
            "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "_ActEncounterCode",
            "AMB"
        ),
        Ok(fhirgate::terminology::Subsumption::Subsumes)
    );
}

/// US Core slices `Condition.category` by a required binding (no fixed value): a
/// CodeableConcept whose coding is in the value set fills the slice, another does not.
#[test]
fn slices_by_binding_match_codeable_concepts() {
    let v = validator();
    let profile =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-problems-health-concerns";
    let condition = |code: &str| {
        json!({"resourceType": "Condition", "meta": {"profile": [profile]},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": code}]}],
            "code": {"text": "hypertension"}, "subject": {"reference": "Patient/1"}})
    };
    let good = v.validate(&condition("problem-list-item"), &[]);
    assert!(
        !good.iter().any(|i| i.severity == Severity::Error),
        "{}",
        show(&good)
    );
    let bad = v.validate(&condition("encounter-diagnosis"), &[]);
    assert!(
        bad.iter().any(|i| i.severity == Severity::Error
            && i.diagnostics
                .contains("slice us-core of Condition.category")),
        "{}",
        show(&bad)
    );
}
