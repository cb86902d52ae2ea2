//! The resource model against the specification's own material: every R4
//! example passes the strict JSON reader and survives JSON -> XML -> JSON.

use fhirgate::fhir::{self, json, xml, Format};
use serde_json::json;

use crate::support;

#[test]
fn all_r4_examples_are_read() {
    // The archive holds 720 resource files (ig-r4.json repeats ImplementationGuide/fhir).
    let examples = support::r4_examples();
    assert!(
        examples.len() >= 717,
        "the R4 example set has {}",
        examples.len()
    );
}

#[test]
fn every_r4_example_passes_the_strict_json_reader() {
    let model = support::core_model();
    let mut failures = Vec::new();
    for (name, v) in support::r4_examples() {
        let issues = json::check_resource(&model, v);
        if !issues.is_empty() {
            failures.push(format!("{name}: {issues:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} examples rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_r4_example_round_trips_through_xml() {
    let model = support::core_model();
    let mut failures = Vec::new();
    for (name, v) in support::r4_examples() {
        let xml_text = match xml::to_xml(&model, v, false) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: to XML: {e:?}"));
                continue;
            }
        };
        match fhir::parse_resource(&model, xml_text.as_bytes(), Format::Xml) {
            Ok(back) if back == *v => {}
            Ok(back) => failures.push(format!("{name}: differs after XML:\n  {}\n  {}", v, back)),
            Err(e) => failures.push(format!("{name}: from XML: {e:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} examples failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn decimals_keep_their_precision_and_keys_their_order() {
    let model = support::core_model();
    let text = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50,"unit":"kg"},"id":"a"}"#;
    let v = fhir::parse_resource(&model, text.as_bytes(), Format::Json).unwrap();
    assert_eq!(serde_json::to_string(&v).unwrap(), text);
    let x = xml::to_xml(&model, &v, false).unwrap();
    assert!(x.contains(r#"<value value="1.50"/>"#), "{x}");
}

/// One defect per row: the reader names the element and refuses the resource.
#[test]
fn malformed_resources_are_rejected_with_the_element_path() {
    let model = support::core_model();
    let cases = [
        (json!({"resourceType": "Patient", "foo": 1}), "Patient.foo"),
        (
            json!({"resourceType": "Patient", "active": "yes"}),
            "Patient.active",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": "2020-02-30"}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": "20-01-01"}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            "Patient.name",
        ),
        (
            json!({"resourceType": "Patient", "name": []}),
            "Patient.name",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a", ""]}]}),
            "Patient.name[0].given[1]",
        ),
        (
            json!({"resourceType": "Patient", "id": "a_b"}),
            "Patient.id",
        ),
        (
            json!({"resourceType": "Patient", "gender": null}),
            "Patient.gender",
        ),
        (
            json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
            "Patient.multipleBirthInteger",
        ),
        (
            json!({"resourceType": "Patient", "multipleBirthText": "x"}),
            "Patient.multipleBirthText",
        ),
        (
            json!({"resourceType": "Patient", "contact": [{"gender": 1}]}),
            "Patient.contact[0].gender",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {}}),
            "Observation.code",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "issued": "2020-01-01"}),
            "Observation.issued",
        ),
        (
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]}),
            "Patient.contained[0]",
        ),
        (
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "name": 3}]}),
            "Patient.contained[0].name",
        ),
        (
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}),
            "Patient.text.div",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "http://x", "valueFoo": 1}]}}),
            "Patient.birthDate.extension[0].valueFoo",
        ),
        (
            json!({"resourceType": "Basic", "code": {"text": "x"}, "created": "2020-01-01T10:00:00"}),
            "Basic.created",
        ),
    ];
    for (resource, path) in cases {
        let issues = json::check_resource(&model, &resource);
        assert!(
            issues.iter().any(|i| i.expression.as_deref() == Some(path)),
            "{resource}: expected an issue at {path}, got {issues:?}"
        );
    }
}

#[test]
fn json_with_duplicate_keys_is_refused() {
    let e = json::parse_json(br#"{"resourceType":"Patient","active":true,"active":false}"#)
        .unwrap_err();
    assert!(e.diagnostics.contains("active"), "{e:?}");
}

#[test]
fn xml_with_a_dtd_is_refused_not_expanded() {
    let model = support::core_model();
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><Patient xmlns="http://hl7.org/fhir"><id value="&lol2;"/></Patient>"#;
    let err = fhir::parse_resource(&model, bomb.as_bytes(), Format::Xml).unwrap_err();
    assert!(err[0].diagnostics.contains("DOCTYPE"), "{err:?}");
}

#[test]
fn malformed_xml_is_rejected_with_a_reason() {
    let model = support::core_model();
    for bad in [
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"></Patient>",
        "<Patient><active value=\"true\"/></Patient>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"maybe\"/></Patient>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><foo value=\"1\"/></Patient>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><active>true</active></Patient>",
        "<Nope xmlns=\"http://hl7.org/fhir\"/>",
        "",
    ] {
        assert!(
            fhir::parse_resource(&model, bad.as_bytes(), Format::Xml).is_err(),
            "{bad}"
        );
    }
}

/// Found by the `json_reader` fuzz target (docs/testing.md, "Coverage-guided
/// fuzzing"): a narrative with junk among its `div`'s attributes passed the JSON
/// reader, and fhirgate's XML of it could not be read back (nor by anyone else).
/// Every element's attributes and every entity reference of a narrative are now
/// checked, from JSON and from XML alike.
#[test]
fn narratives_that_are_not_well_formed_xml_are_refused() {
    let model = support::core_model();
    let found = r#"{"resourceType":"ResearchSubject","id":"example","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"[>Put rendering here]</div>"},"status":"candidate","study":{"reference":"ResearchStudy/example"},"individual":{"reference":"Patient/example"}}"#;
    let issues = fhir::parse_resource(&model, found.as_bytes(), Format::Json)
        .expect_err("a div with junk among its attributes is refused");
    assert!(
        issues.iter().any(
            |i| i.expression.as_deref() == Some("ResearchSubject.text.div")
                && i.diagnostics.contains("not well-formed XHTML")
        ),
        "{issues:?}"
    );
    let div = |inner: &str| format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#);
    for bad in [
        div(r#"<p a=b>x</p>"#),
        div(r#"<p class="a" class="b">x</p>"#),
        div("&nbsp;"),
        div("&#1;"),
        div(r#"<p title="&bogus;">x</p>"#),
    ] {
        let patient =
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": bad}});
        let text = patient.to_string();
        assert!(
            fhir::parse_resource(&model, text.as_bytes(), Format::Json).is_err(),
            "JSON: {bad}"
        );
        let xml_text = format!(
            r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>{bad}</text></Patient>"#
        );
        assert!(
            fhir::parse_resource(&model, xml_text.as_bytes(), Format::Xml).is_err(),
            "XML: {bad}"
        );
    }
    // What is well-formed still passes, and is written and read back the same.
    let good = json!({"resourceType": "Patient", "text": {"status": "generated",
        "div": div(r#"<p title="&quot;a&quot;" class="x">&#233; &amp; &lt;b&gt;</p>"#)}});
    let v = fhir::parse_resource(&model, good.to_string().as_bytes(), Format::Json).unwrap();
    let x = xml::to_xml(&model, &v, false).unwrap();
    assert_eq!(
        fhir::parse_resource(&model, x.as_bytes(), Format::Xml).unwrap(),
        v
    );
}
