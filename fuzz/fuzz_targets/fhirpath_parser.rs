//! The FHIRPath parser and compiler: any text compiles or is refused with an error
//! whose position lies inside the text, never a panic. Short expressions that
//! compile are also evaluated against an R4 example with the core model's types
//! (the engine evaluates client-supplied paths: FHIRPath Patch, SearchParameters).
#![no_main]

use std::sync::OnceLock;

use fhirgate::fhirpath::{EvalContext, Expression};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Evaluation is tried for expressions up to this length: longer ones mostly add
/// time, not paths.
const EVALUATE_UP_TO: usize = 256;

fn patient() -> &'static Value {
    static PATIENT: OnceLock<Value> = OnceLock::new();
    PATIENT.get_or_init(|| {
        fhirgate_fuzz::r4_examples()
            .into_iter()
            .find(|v| {
                v.get("id").and_then(Value::as_str) == Some("example")
                    && v.get("resourceType").and_then(Value::as_str) == Some("Patient")
            })
            .expect("the R4 example Patient")
    })
}

fuzz_target!(
    init: {
        fhirgate_fuzz::write_seeds_if_asked(fhirgate_fuzz::fhirpath_seeds);
        fhirgate_fuzz::core_model();
        patient();
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match Expression::new(text) {
            Ok(expr) if text.len() <= EVALUATE_UP_TO => {
                let model = fhirgate_fuzz::core_model();
                let mut ctx = EvalContext::new(model.path_model());
                ctx.input_type = Some("Patient");
                let _ = expr.evaluate(&ctx, patient());
            }
            Ok(_) => {}
            Err(e) => assert!(
                e.position().offset <= text.len(),
                "error position outside the text: {e}"
            ),
        }
    }
);
