//! Runs the HL7 PATCH test cases (`../shared/testdata/patch`): every JSON Patch case of
//! `json-patch-tests.json` and every FHIRPath Patch case of `fhir-patch-tests.xml`, reported
//! by name (`--nocapture` prints each). A case that does not pass must be listed, with its
//! reason, in `conformance/patch-known-failures.md`; an unlisted failure, or a listed case that
//! passes now, fails this test. FHIRPath Patch results must also pass the strict structural
//! check, and their property order must be the definition order the expected output has.
//! A second table covers FHIRPath Patch behaviour the HL7 cases leave out.
// A specification suite reports every case by name (STYLE), so this test prints.
#![allow(clippy::disallowed_macros)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use fhirgate::fhir::{self, Model};
use fhirgate::patch::{apply_fhirpath_patch, apply_json_patch};
use quick_xml::events::Event;
use serde_json::Value;

use crate::support;

fn patch_dir() -> PathBuf {
    support::shared_dir().join("testdata/patch")
}

fn known_failures_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/patch-known-failures.md")
}

/// One case: its reported name and how it went.
struct Outcome {
    name: String,
    result: Result<(), String>,
}

fn json_patch_cases() -> Vec<Outcome> {
    let text = std::fs::read_to_string(patch_dir().join("json-patch-tests.json"))
        .expect("json-patch-tests.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("JSON Patch cases");
    cases
        .iter()
        .map(|case| {
            let name = format!(
                "json/{}",
                case["comment"].as_str().unwrap_or("unnamed").trim()
            );
            let got = apply_json_patch(&case["doc"], &case["patch"]);
            let result = match (case.get("expected"), got) {
                (Some(want), Ok(got)) if *want == got => Ok(()),
                (Some(want), Ok(got)) => Err(format!("expected {want}, got {got}")),
                (Some(_), Err(e)) => Err(format!("unexpected error: {e}")),
                (None, Err(_)) => Ok(()),
                (None, Ok(got)) => Err(format!(
                    "expected an error ({}), got {got}",
                    case["error"].as_str().unwrap_or("")
                )),
            };
            Outcome { name, result }
        })
        .collect()
}

/// A FHIRPath Patch case: the raw XML of input, diff and output (or the expected error).
#[derive(Default)]
struct FhirPatchCase {
    name: String,
    input: String,
    diff: String,
    output: Option<String>,
    error: Option<String>,
}

fn attr(e: &quick_xml::events::BytesStart, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name.as_bytes())
        .and_then(|a| a.unescape_value().ok().map(|v| v.to_string()))
}

fn read_fhir_patch_cases() -> Vec<FhirPatchCase> {
    let xml = std::fs::read_to_string(patch_dir().join("fhir-patch-tests.xml"))
        .expect("fhir-patch-tests.xml");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut cases = Vec::new();
    let mut current: Option<FhirPatchCase> = None;
    loop {
        match reader.read_event().expect("fhir-patch-tests.xml is XML") {
            Event::Start(e) => {
                let tag = e.name().as_ref().to_vec();
                match tag.as_slice() {
                    b"case" => {
                        current = Some(FhirPatchCase {
                            name: attr(&e, "name").unwrap_or_default(),
                            ..FhirPatchCase::default()
                        })
                    }
                    b"input" | b"diff" | b"output" => {
                        let inner = reader.read_text(e.name()).expect("case part").to_string();
                        if let Some(c) = current.as_mut() {
                            match tag.as_slice() {
                                b"input" => c.input = inner,
                                b"diff" => c.diff = inner,
                                _ => c.output = Some(inner),
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Empty(e) if e.name().as_ref() == b"error" => {
                if let Some(c) = current.as_mut() {
                    c.error = Some(attr(&e, "msg").unwrap_or_default());
                }
            }
            Event::End(e) if e.name().as_ref() == b"case" => {
                if let Some(c) = current.take() {
                    cases.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    cases
}

/// XHTML compared as markup: the same elements, attributes and text, white space runs
/// counting as one space (the suite's expected narrative is indented differently from the
/// string it patches in).
fn canonical_xhtml(div: &str) -> String {
    let mut reader = quick_xml::Reader::from_str(div);
    let mut out = String::new();
    let tag = |e: &quick_xml::events::BytesStart| {
        let mut attrs: Vec<String> = e
            .attributes()
            .flatten()
            .map(|a| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(a.key.as_ref()),
                    a.unescape_value().unwrap_or_default()
                )
            })
            .collect();
        attrs.sort();
        format!(
            "<{} {}>",
            String::from_utf8_lossy(e.name().as_ref()),
            attrs.join(" ")
        )
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => out.push_str(&tag(&e)),
            Ok(Event::Empty(e)) => {
                out.push_str(&tag(&e));
                out.push_str(&format!(
                    "</{}>",
                    String::from_utf8_lossy(e.name().as_ref())
                ));
            }
            Ok(Event::End(e)) => out.push_str(&format!(
                "</{}>",
                String::from_utf8_lossy(e.name().as_ref())
            )),
            Ok(Event::Text(t)) => {
                let raw = String::from_utf8_lossy(t.as_ref()).to_string();
                // white space runs count as one space
                let mut last_space = false;
                for c in raw.chars() {
                    if c.is_whitespace() {
                        if !last_space {
                            out.push(' ');
                        }
                        last_space = true;
                    } else {
                        out.push(c);
                        last_space = false;
                    }
                }
            }
            // `&quot;` and `"` are the same text.
            Ok(Event::GeneralRef(r)) => {
                let name = String::from_utf8_lossy(r.as_ref()).to_string();
                let numeric = name
                    .strip_prefix("#x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32);
                match (name.as_str(), numeric) {
                    (_, Some(c)) => out.push(c),
                    ("lt", _) => out.push('<'),
                    ("gt", _) => out.push('>'),
                    ("amp", _) => out.push('&'),
                    ("quot", _) => out.push('"'),
                    ("apos", _) => out.push('\''),
                    _ => out.push_str(&format!("&{name};")),
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn comparable(mut resource: Value) -> String {
    if let Some(div) = resource
        .pointer_mut("/text/div")
        .and_then(|d| d.as_str().map(canonical_xhtml))
    {
        resource["text"]["div"] = Value::String(div);
    }
    serde_json::to_string(&resource).unwrap_or_default()
}

fn run_fhir_patch_case(model: &Model, case: &FhirPatchCase) -> Result<(), String> {
    let read = |what: &str, xml: &str| {
        fhir::xml::from_xml(model, xml.trim())
            .map_err(|i| format!("the case's {what} is not FHIR XML: {}", i.diagnostics))
    };
    let input = read("input", &case.input)?;
    let diff = read("diff", &case.diff)?;
    let got = apply_fhirpath_patch(model, &input, &diff);
    match (&case.output, got) {
        (Some(output), Ok(got)) => {
            let want = read("output", output)?;
            let issues = fhir::json::check_resource(model, &got);
            if fhir::outcome::has_errors(&issues) {
                return Err(format!("the result fails the structural check: {issues:?}"));
            }
            let (want, got) = (comparable(want), comparable(got));
            if want == got {
                Ok(())
            } else {
                Err(format!("expected {want}\n     got {got}"))
            }
        }
        (Some(_), Err(e)) => Err(format!("unexpected error: {}", e.describe())),
        (None, Err(_)) => Ok(()),
        (None, Ok(got)) => Err(format!(
            "expected the error `{}`, got {got}",
            case.error.as_deref().unwrap_or("")
        )),
    }
}

fn fhir_patch_cases() -> Vec<Outcome> {
    let model = support::core_model();
    read_fhir_patch_cases()
        .iter()
        .map(|case| Outcome {
            name: format!("fhirpath/{}", case.name),
            result: std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_fhir_patch_case(&model, case)
            }))
            .unwrap_or_else(|_| Err("PANIC".into())),
        })
        .collect()
}

#[test]
fn hl7_patch_test_cases() {
    let known = support::known_failures(&known_failures_file());
    let mut outcomes = json_patch_cases();
    let json_count = outcomes.len();
    outcomes.extend(fhir_patch_cases());
    assert_eq!(json_count, 16, "json-patch-tests.json has 16 cases");
    assert_eq!(
        outcomes.len() - json_count,
        33,
        "fhir-patch-tests.xml has 33 cases"
    );
    let (mut passed, mut failed) = (0, 0);
    let (mut unexpected, mut fixed) = (Vec::new(), Vec::new());
    let mut names = BTreeSet::new();
    for o in &outcomes {
        assert!(names.insert(o.name.clone()), "two cases named {}", o.name);
        let listed = known.contains(&o.name);
        match &o.result {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok", o.name);
                if listed {
                    fixed.push(o.name.clone());
                }
            }
            Err(reason) => {
                failed += 1;
                let tag = if listed { "known failure" } else { "FAILED" };
                println!("test {} ... {tag}: {reason}", o.name);
                if !listed {
                    unexpected.push(o.name.clone());
                }
            }
        }
    }
    println!("patch cases: {passed} passed, {failed} failed");
    let stale: Vec<_> = known.iter().filter(|k| !names.contains(*k)).collect();
    assert!(
        unexpected.is_empty(),
        "failures not listed in conformance/patch-known-failures.md: {unexpected:?}"
    );
    assert!(
        fixed.is_empty(),
        "listed as known failures but passing now: {fixed:?}"
    );
    assert!(stale.is_empty(), "known failures naming no case: {stale:?}");
}

/// A FHIRPath Patch `operation` parameter from its type, path and further parts.
fn operation(kind: &str, path: &str, parts: Value) -> Value {
    let mut all = vec![
        serde_json::json!({"name": "type", "valueCode": kind}),
        serde_json::json!({"name": "path", "valueString": path}),
    ];
    all.extend(parts.as_array().cloned().unwrap_or_default());
    serde_json::json!({"name": "operation", "part": all})
}

/// Behaviour the HL7 cases leave out: choice elements, primitive extensions, empty lists,
/// contained resources, values built from parts, and the errors that keep a patch from
/// guessing. Results are compared as text, so property order counts.
#[test]
fn fhirpath_patch_beyond_the_hl7_cases() {
    use serde_json::json;
    let model = support::core_model();
    let patient = json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["Peter", "James"], "_given": [null, {"id": "g2"}]}], "gender": "male", "birthDate": "1974-12-25", "deceasedBoolean": false, "address": [{"city": "PleasantVille"}]});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = patient.clone();
        f(&mut p);
        p
    };
    let cases: Vec<(&str, Value, Value, Result<Value, &str>)> = vec![
        (
            "a choice element takes the name of its new type, in place",
            patient.clone(),
            operation(
                "replace",
                "Patient.deceased",
                json!([{"name": "value", "valueDateTime": "2020-01-01"}]),
            ),
            Ok(
                json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["Peter", "James"], "_given": [null, {"id": "g2"}]}], "gender": "male", "birthDate": "1974-12-25", "deceasedDateTime": "2020-01-01", "address": [{"city": "PleasantVille"}]}),
            ),
        ),
        (
            "a choice element cannot take a type it does not allow",
            patient.clone(),
            operation(
                "replace",
                "Patient.deceased",
                json!([{"name": "value", "valueString": "yes"}]),
            ),
            Err("cannot hold a string"),
        ),
        (
            "an extension built from parts goes into the primitive's companion",
            patient.clone(),
            operation(
                "add",
                "Patient.birthDate",
                json!([{"name": "name", "valueString": "extension"}, {"name": "value", "part": [{"name": "url", "valueUri": "http://hl7.org/fhir/StructureDefinition/patient-birthTime"}, {"name": "value", "valueDateTime": "1974-12-25T14:35:45-05:00"}]}]),
            ),
            Ok(with(&|p| {
                let mut o = p.as_object().unwrap().clone();
                o.shift_insert(5, "_birthDate".into(), json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]}));
                *p = Value::Object(o);
            })),
        ),
        (
            "a choice part needs a typed value",
            patient.clone(),
            operation(
                "add",
                "Patient.birthDate",
                json!([{"name": "name", "valueString": "extension"}, {"name": "value", "part": [{"name": "url", "valueUri": "http://x"}, {"name": "value", "part": [{"name": "text", "valueString": "t"}]}]}]),
            ),
            Err("choice of types"),
        ),
        (
            "insert into an empty list creates it where the definition orders it",
            patient.clone(),
            operation(
                "insert",
                "Patient.identifier",
                json!([{"name": "index", "valueInteger": 0}, {"name": "value", "valueIdentifier": {"value": "1"}}]),
            ),
            Ok(with(&|p| {
                let mut o = p.as_object().unwrap().clone();
                o.shift_insert(2, "identifier".into(), json!([{"value": "1"}]));
                *p = Value::Object(o);
            })),
        ),
        (
            "insert past the end of a list",
            patient.clone(),
            operation(
                "insert",
                "Patient.identifier",
                json!([{"name": "index", "valueInteger": 1}, {"name": "value", "valueIdentifier": {"value": "1"}}]),
            ),
            Err("past the end"),
        ),
        (
            "deleting a repeating primitive keeps its companions aligned",
            patient.clone(),
            operation("delete", "Patient.name[0].given[0]", json!([])),
            Ok(with(&|p| {
                p["name"][0] = json!({"given": ["James"], "_given": [{"id": "g2"}]})
            })),
        ),
        (
            "moving a repeating primitive moves its companion",
            patient.clone(),
            operation(
                "move",
                "Patient.name[0].given",
                json!([{"name": "source", "valueInteger": 1}, {"name": "destination", "valueInteger": 0}]),
            ),
            Ok(with(
                &|p| {
                    p["name"][0] =
                        json!({"given": ["James", "Peter"], "_given": [{"id": "g2"}, null]})
                },
            )),
        ),
        (
            "move out of range",
            patient.clone(),
            operation(
                "move",
                "Patient.name[0].given",
                json!([{"name": "source", "valueInteger": 2}, {"name": "destination", "valueInteger": 0}]),
            ),
            Err("must both be less than"),
        ),
        (
            "replace a primitive with a value that has an extension",
            patient.clone(),
            operation(
                "replace",
                "Patient.gender",
                json!([{"name": "value", "valueCode": "female", "_valueCode": {"id": "g"}}]),
            ),
            Ok(with(&|p| {
                let mut o = p.as_object().unwrap().clone();
                o.insert("gender".into(), json!("female"));
                o.shift_insert(4, "_gender".into(), json!({"id": "g"}));
                *p = Value::Object(o);
            })),
        ),
        (
            "a contained resource is added as a resource part",
            patient.clone(),
            operation(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "contained"}, {"name": "value", "resource": {"resourceType": "Organization", "id": "o1", "name": "Acme"}}]),
            ),
            Ok(with(&|p| {
                let mut o = p.as_object().unwrap().clone();
                o.shift_insert(
                    2,
                    "contained".into(),
                    json!([{"resourceType": "Organization", "id": "o1", "name": "Acme"}]),
                );
                *p = Value::Object(o);
            })),
        ),
        (
            "an element of a contained resource goes where that resource's definition puts it",
            json!({"resourceType": "Patient", "id": "p", "contained": [{"resourceType": "Organization", "id": "o1", "name": "Acme", "telecom": [{"value": "1"}]}]}),
            operation(
                "add",
                "Patient.contained[0]",
                json!([{"name": "name", "valueString": "alias"}, {"name": "value", "valueString": "ACME"}]),
            ),
            Ok(
                json!({"resourceType": "Patient", "id": "p", "contained": [{"resourceType": "Organization", "id": "o1", "name": "Acme", "alias": ["ACME"], "telecom": [{"value": "1"}]}]}),
            ),
        ),
        (
            "deleting nothing is not an error",
            patient.clone(),
            operation("delete", "Patient.maritalStatus", json!([])),
            Ok(patient.clone()),
        ),
        (
            "delete selects one element at most",
            patient.clone(),
            operation("delete", "Patient.name.given", json!([])),
            Err("selects 2 elements"),
        ),
        (
            "add does not overwrite a non-repeating element",
            patient.clone(),
            operation(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "female"}]),
            ),
            Err("use replace"),
        ),
        (
            "an unknown element",
            patient.clone(),
            operation(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "nickname"}, {"name": "value", "valueString": "Jim"}]),
            ),
            Err("has no element `nickname`"),
        ),
        (
            "a computed value is not an element",
            patient.clone(),
            operation(
                "replace",
                "Patient.birthDate.toString()",
                json!([{"name": "value", "valueDate": "2000-01-01"}]),
            ),
            Err("computed value"),
        ),
        (
            "insert needs a list",
            patient.clone(),
            operation(
                "insert",
                "Patient.gender",
                json!([{"name": "index", "valueInteger": 0}, {"name": "value", "valueCode": "female"}]),
            ),
            Err("not an item of a list"),
        ),
        (
            "the resource itself cannot be deleted",
            patient.clone(),
            operation("delete", "Patient", json!([])),
            Err("cannot be deleted"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, input, op, want) in cases {
        let params = json!({"resourceType": "Parameters", "parameter": [op]});
        let got = apply_fhirpath_patch(&model, &input, &params);
        let ok = match (&want, &got) {
            (Ok(w), Ok(g)) => serde_json::to_string(w).ok() == serde_json::to_string(g).ok(),
            (Err(fragment), Err(e)) => e.to_string().contains(fragment),
            _ => false,
        };
        println!(
            "test fhirpath-behaviour/{what} ... {}",
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failures.push(format!("{what}: wanted {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
