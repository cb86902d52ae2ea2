//! Runs the official FHIRPath test suite for FHIR R4 (`tests-fhir-r4.xml`), reporting every
//! test by name. Tests that do not pass must be listed, with a reason, in
//! `conformance/fhirpath-known-failures.md`; an unlisted failure (or a listed test that now
//! passes) fails this test. Date/time expectations in the suite assume a +10:00 local offset,
//! which the runner sets on the evaluation context.
// A specification suite reports every case by name (STYLE: "Specification suites run as
// data-driven tests that report every case by name"), so this test prints.
#![allow(clippy::disallowed_macros)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use fhirgate::fhirpath::{self, EvalContext, Item, ModelInfo};
use quick_xml::events::Event;
use serde_json::Value;

use crate::support;

#[derive(Debug, Default, Clone)]
struct Case {
    name: String,
    group: String,
    input: Option<String>,
    expression: String,
    invalid: Option<String>,
    mode: Option<String>,
    predicate: bool,
    ordered: bool,
    outputs: Vec<(String, String)>,
}

fn suite_dir() -> PathBuf {
    support::shared_dir().join("testdata/fhirpath")
}

fn known_failures_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/fhirpath-known-failures.md")
}

fn read_cases() -> Vec<Case> {
    let xml = std::fs::read_to_string(suite_dir().join("tests-fhir-r4.xml")).expect("suite file");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut cases = Vec::new();
    let mut current: Option<Case> = None;
    let mut group = String::new();
    let mut text = String::new();
    let mut output_type = String::new();
    let attr = |e: &quick_xml::events::BytesStart, name: &str| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == name.as_bytes())
            .map(|a| {
                a.unescape_value()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => match e.name().as_ref() {
                b"group" => group = attr(&e, "name").unwrap_or_default(),
                b"test" => {
                    current = Some(Case {
                        name: attr(&e, "name").unwrap_or_default(),
                        group: group.clone(),
                        input: attr(&e, "inputfile"),
                        mode: attr(&e, "mode"),
                        predicate: attr(&e, "predicate").as_deref() == Some("true"),
                        ordered: attr(&e, "ordered").as_deref() != Some("false"),
                        ..Case::default()
                    })
                }
                b"expression" => {
                    text.clear();
                    if let Some(c) = current.as_mut() {
                        c.invalid = attr(&e, "invalid");
                        if let Some(m) = attr(&e, "mode") {
                            c.mode = Some(m);
                        }
                    }
                }
                b"output" => {
                    text.clear();
                    output_type = attr(&e, "type").unwrap_or_default();
                }
                _ => {}
            },
            Ok(Event::Empty(e)) if e.name().as_ref() == b"output" => {
                if let Some(c) = current.as_mut() {
                    c.outputs
                        .push((attr(&e, "type").unwrap_or_default(), String::new()));
                }
            }
            Ok(Event::Text(t)) => {
                let raw = String::from_utf8_lossy(t.as_ref()).to_string();
                text.push_str(
                    &quick_xml::escape::unescape(&raw)
                        .map(|s| s.to_string())
                        .unwrap_or(raw),
                );
            }
            Ok(Event::GeneralRef(r)) => {
                let name = String::from_utf8_lossy(r.as_ref()).to_string();
                text.push_str(match name.as_str() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Ok(Event::CData(t)) => text.push_str(&String::from_utf8_lossy(t.as_ref())),
            Ok(Event::End(e)) => match e.name().as_ref() {
                b"expression" => {
                    if let Some(c) = current.as_mut() {
                        c.expression = text.clone();
                    }
                }
                b"output" => {
                    if let Some(c) = current.as_mut() {
                        c.outputs.push((output_type.clone(), text.clone()));
                    }
                }
                b"test" => {
                    if let Some(c) = current.take() {
                        cases.push(c);
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Err(e) => panic!("suite XML: {e}"),
            _ => {}
        }
    }
    cases
}

/// Renders a result item the way the suite writes expected outputs.
fn render(item: &Item, model: &dyn ModelInfo) -> String {
    let sys = item.to_system(model).unwrap_or_else(|| item.clone());
    match &sys {
        Item::Date(d) | Item::DateTime(d) => format!("@{}", d.to_iso()),
        Item::Time(t) => format!("@T{}", t.to_iso()),
        Item::Quantity(q) => format!("{} '{}'", q.value, q.unit),
        Item::Node(_) | Item::TypeInfo(..) => format!("{}", item.to_json()),
        other => other.to_fhirpath_string(model).unwrap_or_default(),
    }
}

fn run_case(
    case: &Case,
    model: &support::PackageModel,
    inputs: &mut std::collections::HashMap<String, Value>,
) -> Result<(), String> {
    let input_name = case.input.clone().unwrap_or_default();
    let input = if input_name.is_empty() {
        Value::Object(Default::default())
    } else {
        let json_name = input_name.replace(".xml", ".json");
        inputs
            .entry(json_name.clone())
            .or_insert_with(|| {
                let text = std::fs::read_to_string(suite_dir().join("input").join(&json_name))
                    .expect("input file");
                serde_json::from_str(&text).expect("input JSON")
            })
            .clone()
    };
    let outcome = (|| -> Result<Vec<String>, String> {
        let expr = fhirpath::compile(&case.expression).map_err(|e| e.to_string())?;
        let root_type = input
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        fhirpath::check(&expr, root_type, model).map_err(|e| e.to_string())?;
        let services = support::SuiteServices { model };
        let mut ctx = EvalContext::new(model);
        ctx.tz_offset_minutes = 600;
        ctx.services = &services;
        let result = expr.evaluate(&ctx, &input).map_err(|e| e.to_string())?;
        if case.predicate {
            return Ok(vec![(!result.is_empty()).to_string()]);
        }
        Ok(result.iter().map(|i| render(i, model)).collect())
    })();
    match (&case.invalid, outcome) {
        (Some(kind), Ok(v)) => Err(format!("expected a {kind} error, got {v:?}")),
        (Some(_), Err(_)) => Ok(()),
        (None, Err(e)) => Err(e),
        (None, Ok(mut got)) => {
            let mut want: Vec<String> = case.outputs.iter().map(|(_, v)| v.clone()).collect();
            if !case.ordered {
                got.sort();
                want.sort();
            }
            if got == want {
                Ok(())
            } else {
                Err(format!("expected {want:?}, got {got:?}"))
            }
        }
    }
}

#[test]
fn official_fhirpath_suite_r4() {
    let model = support::path_model();
    let cases = read_cases();
    let mut inputs = std::collections::HashMap::new();
    let known = support::known_failures(&known_failures_file());
    let (mut passed, mut failed) = (0, 0);
    let mut unexpected = Vec::new();
    let mut fixed = Vec::new();
    let mut names = BTreeSet::new();
    for case in &cases {
        let name = case.name.clone();
        names.insert(name.clone());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(case, model, &mut inputs)
        }))
        .unwrap_or_else(|_| Err("PANIC".to_string()));
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {}::{} ... ok", case.group, name);
                if known.contains(&name) {
                    fixed.push(name);
                }
            }
            Err(reason) => {
                failed += 1;
                let tag = if known.contains(&name) {
                    "known failure"
                } else {
                    "FAILED"
                };
                println!(
                    "test {}::{} ... {tag}: {}  [{}]",
                    case.group,
                    name,
                    reason,
                    case.expression.replace('\n', " ")
                );
                if !known.contains(&name) {
                    unexpected.push(name);
                }
            }
        }
    }
    println!("fhirpath suite: {} tests", cases.len());
    println!("{passed} passed, {failed} failed");
    let stale: Vec<_> = known.iter().filter(|k| !names.contains(*k)).collect();
    assert!(
        unexpected.is_empty(),
        "failures not listed in known failures: {unexpected:?}"
    );
    assert!(
        fixed.is_empty(),
        "listed as known failures but passing now: {fixed:?}"
    );
    assert!(stale.is_empty(), "known failures naming no test: {stale:?}");
}
