//! Every R4 example validated in-process against the core definitions: exactly the four
//! examples known to be invalid (three with white space in base64, Questionnaire-qs1
//! without a linkId) carry errors; every other example has none. Failures are listed by
//! file name with their issues.

use std::sync::Arc;

use fhirgate::fhir::{Issue, Severity};
use fhirgate::terminology::Terminology;
use fhirgate::validation::{Validator, ValidatorOptions};

use crate::support;

fn errors(issues: &[Issue]) -> Vec<String> {
    issues
        .iter()
        .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        .map(|i| {
            format!(
                "{} @ {}: {}",
                i.code,
                i.expression.as_deref().unwrap_or("-"),
                i.diagnostics
            )
        })
        .collect()
}

#[test]
fn exactly_the_four_known_invalid_r4_examples_have_errors() {
    let model = support::core_model();
    let terminology = Arc::new(Terminology::new(model.packages().clone()));
    let validator = Validator::new(model, terminology, ValidatorOptions::default());
    let known_invalid = [
        "Binary-example.json",
        "DiagnosticReport-gingival-mass.json",
        "Media-example.json",
        "Questionnaire-qs1.json",
    ];
    let mut unexpected = Vec::new();
    let mut missed = Vec::new();
    // The examples package also carries its own manifest twice (ImplementationGuide-fhir.json
    // and ig-r4.json, without the name and status R4 requires): not instance examples.
    let manifests = ["ImplementationGuide-fhir.json", "ig-r4.json"];
    let mut checked = 0;
    for (name, resource) in support::r4_examples() {
        if manifests.contains(&name.as_str()) {
            continue;
        }
        checked += 1;
        let found = errors(&validator.validate(resource, &[]));
        let expected_invalid = known_invalid.contains(&name.as_str());
        let why = match name.as_str() {
            "Questionnaire-qs1.json" => "linkId",
            _ => "white space",
        };
        if expected_invalid && !found.iter().any(|e| e.contains(why)) {
            missed.push(format!(
                "{name} (expected an error about {why}, found {found:?})"
            ));
        }
        if !expected_invalid && !found.is_empty() {
            unexpected.push(format!("{name}:\n    {}", found.join("\n    ")));
        }
    }
    assert!(checked >= 717, "only {checked} R4 examples");
    assert!(
        missed.is_empty(),
        "known-invalid examples without an error: {missed:?}"
    );
    assert!(
        unexpected.is_empty(),
        "{} valid examples with errors:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
