//! Every error-severity invariant of the core StructureDefinitions holds on the (valid)
//! example resources of the FHIRPath suite: evaluates each constraint on every element it
//! applies to, so false negatives of the engine (wrong navigation, narrative checks, date
//! handling) show up as violated invariants.

use fhirgate::fhirpath::{self, EvalContext, Item};
use serde_json::Value;

use crate::support;

#[test]
fn core_invariants_hold_on_the_suite_examples() {
    let model = support::path_model();
    let core = support::package_resources(
        &support::shared_dir().join("fhir-packages/hl7.fhir.r4.core-4.0.1.tgz"),
    );
    let dir = support::shared_dir().join("testdata/fhirpath/input");
    let mut violations = Vec::new();
    let mut evaluated = 0;
    // codesystem-example has duplicate codes on purpose (the suite's testCombine1 expects
    // csd-1's expression to be false on it); patient-container-example refers to its contained
    // Organization as "1" instead of "#1", so dom-3 (contained resources are referenced) fails
    let expected_violations = [
        "codesystem-example.json \"csd-1\"",
        "patient-container-example.json \"dom-3\"",
    ];
    for entry in std::fs::read_dir(&dir).expect("input dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let resource: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let rt = resource["resourceType"].as_str().unwrap_or("").to_string();
        let Some(sd) = core.iter().find(|r| {
            r["resourceType"] == "StructureDefinition"
                && r["url"].as_str()
                    == Some(&format!("http://hl7.org/fhir/StructureDefinition/{rt}"))
        }) else {
            continue;
        };
        for e in sd["snapshot"]["element"].as_array().into_iter().flatten() {
            let epath = e["path"].as_str().unwrap_or("").replace("[x]", "");
            for c in e["constraint"].as_array().into_iter().flatten() {
                if c["severity"] != "error" {
                    continue;
                }
                let Some(x) = c["expression"].as_str() else {
                    continue;
                };
                let nodes_expr = fhirpath::compile(&epath).expect("path");
                let expr = fhirpath::compile(x).expect("compile");
                let mut ctx = EvalContext::new(model);
                ctx.resource = Some(&resource);
                let nodes = nodes_expr.evaluate(&ctx, &resource).expect("nodes");
                for n in &nodes {
                    evaluated += 1;
                    match expr.evaluate_items(&ctx, std::slice::from_ref(n)) {
                        Ok(r) if matches!(r.as_slice(), [Item::Boolean(false)]) => violations.push(
                            format!("{} {} on {epath}: false [{x}]", path.display(), c["key"]),
                        ),
                        Err(err) => violations.push(format!(
                            "{} {} on {epath}: {err} [{x}]",
                            path.display(),
                            c["key"]
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    let before = violations.len();
    let all = violations.clone();
    violations.retain(|v| !expected_violations.iter().any(|e| v.contains(e)));
    assert_eq!(
        before - violations.len(),
        expected_violations.len(),
        "expected violations not seen; all violations: {all:#?}"
    );
    assert!(evaluated > 100, "only {evaluated} invariant evaluations");
    assert!(
        violations.is_empty(),
        "{} violations in {evaluated} invariant evaluations: {violations:#?}",
        violations.len()
    );
}
