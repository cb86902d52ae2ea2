//! Behaviour the official suite does not cover: FHIR JSON conventions (primitive extensions,
//! choice types), resolve() over contained resources and Bundles, UCUM quantity comparison,
//! decimal precision, narrative checks, external constants and the JSON output function.

mod support;

use fhirgate::fhirpath::{self, EvalContext, Item};
use serde_json::{json, Value};

fn model() -> &'static support::PackageModel {
    support::path_model()
}

fn eval_json(expr: &str, input: &Value) -> Vec<Value> {
    fhirpath::evaluate_to_json(expr, input, model(), 0).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

#[test]
fn primitive_extensions_and_ids_are_reachable() {
    let p = json!({"resourceType": "Patient", "birthDate": "1974-12-25",
        "_birthDate": {"id": "b1", "extension": [{"url": "http://x/ext", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "name": [{"given": ["A", null], "_given": [null, {"extension": [{"url": "http://x/e2", "valueString": "x"}]}]}]});
    assert_eq!(eval_json("Patient.birthDate.id", &p), vec![json!("b1")]);
    assert_eq!(
        eval_json("birthDate.extension('http://x/ext').value", &p),
        vec![json!("1974-12-25T14:35:45-05:00")]
    );
    assert_eq!(eval_json("name.given.count()", &p), vec![json!(2)]);
    assert_eq!(
        eval_json("name.given[1].hasValue()", &p),
        vec![json!(false)]
    );
    assert_eq!(
        eval_json("name.given[1].extension.value", &p),
        vec![json!("x")]
    );
    assert_eq!(eval_json("birthDate < @2000-01-01", &p), vec![json!(true)]);
}

#[test]
fn resolve_finds_contained_and_bundle_entries() {
    let p = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
        "managingOrganization": {"reference": "#o1"}});
    assert_eq!(
        eval_json("managingOrganization.resolve().name", &p),
        vec![json!("Org")]
    );
    assert_eq!(
        eval_json("managingOrganization.resolve() is Organization", &p),
        vec![json!(true)]
    );
    let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "http://ex.org/fhir/Patient/1", "resource": {"resourceType": "Patient", "id": "1", "generalPractitioner": [{"reference": "Practitioner/2"}]}},
        {"fullUrl": "http://ex.org/fhir/Practitioner/2", "resource": {"resourceType": "Practitioner", "id": "2", "active": true}}]});
    assert_eq!(
        eval_json(
            "Bundle.entry.resource.ofType(Patient).generalPractitioner.resolve().active",
            &b
        ),
        vec![json!(true)]
    );
}

#[test]
fn quantities_compare_across_ucum_units_and_decimals_keep_precision() {
    let empty = json!({});
    assert_eq!(eval_json("1 'kg' = 1000 'g'", &empty), vec![json!(true)]);
    assert_eq!(eval_json("1 'cm' < 1 '[in_i]'", &empty), vec![json!(true)]);
    assert_eq!(
        eval_json("100 'mg/dL' = 1 'g/L'", &empty),
        vec![json!(true)]
    );
    assert_eq!(eval_json("1 'kg' = 1 'm'", &empty), Vec::<Value>::new());
    assert_eq!(eval_json("1.10 + 2.205", &empty)[0].to_string(), "3.305");
    assert_eq!(eval_json("0.1 + 0.2 = 0.3", &empty), vec![json!(true)]);
    let o: Value = serde_json::from_str(r#"{"resourceType": "Observation", "status": "final", "code": {}, "valueQuantity": {"value": 185.50, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}}"#).expect("json");
    assert_eq!(
        eval_json("Observation.value.value", &o)[0].to_string(),
        "185.50"
    );
    assert_eq!(
        eval_json("Observation.value > 80 'kg'", &o),
        vec![json!(true)]
    );
    assert_eq!(
        eval_json("Observation.value.is(Quantity)", &o),
        vec![json!(true)]
    );
}

#[test]
fn narrative_checks_follow_txt_1() {
    let ok = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Hi <b>there</b><img src=\"x.png\" alt=\"x\"/></p></div>"}});
    assert_eq!(eval_json("text.div.htmlChecks()", &ok), vec![json!(true)]);
    for bad in [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">x</p></div>",
        "<div><p>no namespace</p></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:x()\">x</a></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>",
    ] {
        let r = json!({"resourceType": "Patient", "text": {"status": "generated", "div": bad}});
        assert_eq!(
            eval_json("text.div.htmlChecks()", &r),
            vec![json!(false)],
            "{bad}"
        );
    }
}

#[test]
fn external_constants_and_context_variables() {
    let p = json!({"resourceType": "Patient", "id": "x"});
    let expr = fhirpath::compile("%limit + 1 = 3 and %resource.id = 'x' and %`vs-administrative-gender` = 'http://hl7.org/fhir/ValueSet/administrative-gender'").expect("compile");
    let mut ctx = EvalContext::new(model());
    ctx.variables.insert("limit".into(), vec![Item::Integer(2)]);
    let r = expr.evaluate(&ctx, &p).expect("eval");
    assert!(matches!(r.as_slice(), [Item::Boolean(true)]), "{r:?}");
    let e = fhirpath::compile("%unknown")
        .expect("compile")
        .evaluate(&ctx, &p)
        .unwrap_err();
    assert!(e.to_string().contains("%unknown"), "{e}");
}

#[test]
fn compiled_plans_are_cached_by_text() {
    let a = fhirpath::compile("name.given.first()").expect("compile");
    let b = fhirpath::compile("name.given.first()").expect("compile");
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn evaluation_errors_carry_the_position() {
    let p = json!({"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b"}]});
    let ctx = EvalContext::new(model());
    let expr = fhirpath::compile("name.family + 'x'").expect("compile");
    let e = expr.evaluate(&ctx, &p).unwrap_err();
    assert_eq!(e.position().column, 13, "{e}");
    let e = fhirpath::compile("name.matches('(')").unwrap_err();
    assert!(e.to_string().contains("regular expression"), "{e}");
}
