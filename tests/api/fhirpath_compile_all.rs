//! Every `constraint.expression` of every StructureDefinition in the core package, and every
//! `expression` of every SearchParameter in the core and US Core packages, parses and compiles
//! (literal regular expressions included); constraint expressions also pass the static type
//! check against their element's type. Any that do not are listed with the reason.

use fhirgate::fhirpath::{self, ModelInfo};
use serde_json::Value;

use crate::support;

/// The type a constraint on `element` is evaluated against.
fn element_type(model: &dyn ModelInfo, sd_type: &str, element: &Value) -> String {
    let path = element.get("path").and_then(Value::as_str).unwrap_or("");
    if !path.contains('.') {
        return sd_type.to_string();
    }
    let codes: Vec<&str> = element
        .get("type")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("code").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    match codes.as_slice() {
        ["BackboneElement"] | ["Element"] if model.is_type(path) => path.to_string(),
        [one] if !one.starts_with("http") && *one != "BackboneElement" && *one != "Element" => {
            one.to_string()
        }
        _ => String::new(),
    }
}

/// Constraints in the R4 core package that are wrong upstream: they name elements that do not
/// exist on the type they are declared on. They compile; only the static check rejects them.
const KNOWN_UPSTREAM_ERRORS: [(&str, &str); 2] = [
    (
        "http://hl7.org/fhir/StructureDefinition/ChargeItemDefinition cid-0",
        "ChargeItemDefinition has no element 'name' in R4 (the invariant was copied from the canonical-resource pattern)",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/allergyintolerance-substanceExposureRisk inv-1",
        "declared on the Extension root, it names the sub-extension 'substanceExposureRisk' as if it were an element",
    ),
];

#[test]
fn all_core_constraints_and_search_parameters_compile() {
    let model = support::path_model();
    let packages = support::shared_dir().join("fhir-packages");
    let core = support::package_resources(&packages.join("hl7.fhir.r4.core-4.0.1.tgz"));
    let us_core = support::package_resources(&packages.join("hl7.fhir.us.core-6.1.0.tgz"));
    let mut failures = Vec::new();
    let (mut constraints, mut search) = (0, 0);
    let mut checked_upstream = 0;
    for sd in core
        .iter()
        .filter(|r| r["resourceType"] == "StructureDefinition")
    {
        let url = sd["url"].as_str().unwrap_or("?");
        let sd_type = sd["type"].as_str().unwrap_or("");
        for element in sd["snapshot"]["element"].as_array().into_iter().flatten() {
            for c in element["constraint"].as_array().into_iter().flatten() {
                let Some(expr) = c["expression"].as_str() else {
                    continue;
                };
                constraints += 1;
                let key = c["key"].as_str().unwrap_or("?");
                match fhirpath::compile(expr) {
                    Err(e) => failures.push(format!("{url} {key}: {e} [{expr}]")),
                    Ok(compiled) => {
                        let root = element_type(model, sd_type, element);
                        let known = KNOWN_UPSTREAM_ERRORS
                            .iter()
                            .find(|(k, _)| *k == format!("{url} {key}"));
                        match (fhirpath::check(&compiled, &root, model), known) {
                            (Err(_), Some(_)) => checked_upstream += 1,
                            (Ok(()), Some(_)) => failures.push(format!(
                                "{url} {key}: listed as an upstream error but passes the check"
                            )),
                            (Ok(()), None) => {}
                            (Err(e), None) => {
                                failures.push(format!("{url} {key} (on {root}): {e} [{expr}]"))
                            }
                        }
                    }
                }
            }
        }
    }
    for sp in core
        .iter()
        .chain(&us_core)
        .filter(|r| r["resourceType"] == "SearchParameter")
    {
        let Some(expr) = sp["expression"].as_str() else {
            continue;
        };
        search += 1;
        if let Err(e) = fhirpath::compile(expr) {
            failures.push(format!(
                "{} : {e} [{expr}]",
                sp["url"].as_str().unwrap_or("?")
            ));
        }
    }
    assert!(
        constraints > 1000 && search > 1000,
        "packages not read: {constraints} constraint expressions, {search} search parameter \
         expressions"
    );
    assert_eq!(
        checked_upstream,
        KNOWN_UPSTREAM_ERRORS.len(),
        "known upstream errors that no longer occur or were not seen"
    );
    assert!(
        failures.is_empty(),
        "{} expressions do not compile: {failures:#?}",
        failures.len()
    );
}
