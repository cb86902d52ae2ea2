//! The validator never panics, whatever the JSON: R4 examples with one node replaced by
//! a value of another shape (null, number, string, empty or odd object, array, a nested
//! resource), validated in full against its type and, as a profile with slicing, against
//! the core vital-signs profile.

use std::sync::{Arc, OnceLock};

use fhirgate::terminology::Terminology;
use fhirgate::validation::{Validator, ValidatorOptions};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::support;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let model = support::core_model();
        let terminology = Arc::new(Terminology::new(model.packages().clone()));
        Validator::new(model, terminology, ValidatorOptions::default())
    })
}

/// Every JSON pointer below the root of a value.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                let p = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{here}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

fn replacement(kind: u8) -> Value {
    match kind % 9 {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!("x y"),
        3 => json!({}),
        4 => json!([]),
        5 => json!([{"url": "http://hl7.org/fhir/StructureDefinition/nope"}]),
        6 => {
            json!({"resourceType": "Patient", "id": "p", "contained": [{"resourceType": "Bundle"}]})
        }
        7 => json!({"reference": "#missing", "coding": [{"system": 1, "code": []}]}),
        _ => json!(true),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_never_panic(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), kind in any::<u8>()) {
        let examples = support::r4_examples();
        let (_, original) = &examples[pick.index(examples.len())];
        let mut resource = original.clone();
        let mut all = Vec::new();
        pointers(&resource, String::new(), &mut all);
        if !all.is_empty() {
            let p = &all[at.index(all.len())];
            if let Some(slot) = resource.pointer_mut(p) {
                *slot = replacement(kind);
            }
        }
        let _ = validator().validate(&resource, &[]);
        let _ = validator().validate(&resource, &["http://hl7.org/fhir/StructureDefinition/vitalsigns".to_string()]);
    }
}
