//! Behaviour the official suite does not cover: FHIR JSON conventions (primitive extensions,
//! choice types), resolve() over contained resources and Bundles, UCUM quantity comparison,
//! decimal precision, narrative checks, external constants and the JSON output function.

use fhirgate::fhirpath::{self, EvalContext, Item};
use serde_json::{json, Value};

use crate::support;

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

fn eval_items<'a>(expr: &str, input: &'a Value, ctx: &EvalContext<'a>) -> Vec<Item<'a>> {
    // leak the compiled plan: the items may borrow from it, and tests are short-lived
    let e: &'a fhirpath::Expression = Box::leak(Box::new(
        fhirpath::Expression::new(expr).unwrap_or_else(|e| panic!("{expr}: {e}")),
    ));
    e.evaluate(ctx, input)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

#[test]
fn primitive_with_only_its_extension_is_found_when_it_is_the_only_property() {
    let ad = json!({"resourceType": "ActivityDefinition", "status": "draft",
        "timingTiming": {"_event": [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/cqf-expression",
            "valueExpression": {"language": "text/cql", "expression": "Now()"}}]}]}});
    assert_eq!(eval_json("timing.event.count()", &ad), vec![json!(1)]);
    assert_eq!(
        eval_json("timing.event.hasValue()", &ad),
        vec![json!(false)]
    );
    assert_eq!(
        eval_json("timing.event.extension.value.expression", &ad),
        vec![json!("Now()")]
    );
    let ctx = EvalContext::new(model());
    let event = eval_items("timing.event", &ad, &ctx);
    assert!(
        matches!(event.as_slice(), [Item::Node(n)] if n.json.is_none() && n.ext.is_some() && n.ty == "dateTime"),
        "{event:?}"
    );
    let p = json!({"resourceType": "Patient",
        "name": [{"_given": [{"extension": [{"url": "http://x/e", "valueString": "x"}]}]}]});
    assert_eq!(eval_json("name.given.count()", &p), vec![json!(1)]);
    assert_eq!(
        eval_json("name.given.extension.value", &p),
        vec![json!("x")]
    );
}

#[test]
fn choice_primitive_with_only_an_extension_is_found_on_every_item() {
    let ext = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
    let o = json!({"resourceType": "Observation", "status": "final", "code": {},
        "component": [{"code": {}, "valueString": "a"}, {"code": {}, "_valueString": ext}]});
    assert_eq!(eval_json("component.value.count()", &o), vec![json!(2)]);
    assert_eq!(eval_json("component[1].value.count()", &o), vec![json!(1)]);
    assert_eq!(
        eval_json("component.value.select(hasValue())", &o),
        vec![json!(true), json!(false)]
    );
    assert_eq!(
        eval_json("component.value.extension.value", &o),
        vec![json!("unknown")]
    );
    // the same the other way round
    let o = json!({"resourceType": "Observation", "status": "final", "code": {},
        "component": [{"code": {}, "_valueString": ext}, {"code": {}, "valueString": "a"}]});
    assert_eq!(eval_json("component.value.count()", &o), vec![json!(2)]);
    assert_eq!(
        eval_json("component.value.ofType(string).count()", &o),
        vec![json!(2)]
    );
}

#[test]
fn backbone_elements_report_their_fhir_type() {
    let p = json!({"resourceType": "Patient", "contact": [{"name": {"family": "Du"}}],
        "communication": [{"language": {"text": "fr"}}]});
    assert_eq!(
        eval_json("contact.type().name", &p),
        vec![json!("BackboneElement")]
    );
    assert_eq!(
        eval_json("contact.type().namespace", &p),
        vec![json!("FHIR")]
    );
    assert_eq!(
        eval_json("contact is BackboneElement", &p),
        vec![json!(true)]
    );
    assert_eq!(eval_json("contact is Element", &p), vec![json!(true)]);
    assert_eq!(eval_json("contact is HumanName", &p), vec![json!(false)]);
    // navigation still knows the element's children after a type test
    assert_eq!(
        eval_json("(contact as BackboneElement).name.family", &p),
        vec![json!("Du")]
    );
    assert_eq!(
        eval_json("contact.ofType(BackboneElement).name.family", &p),
        vec![json!("Du")]
    );
    assert_eq!(
        eval_json("contact.as(BackboneElement).name.family", &p),
        vec![json!("Du")]
    );
    assert_eq!(
        eval_json("children().ofType(BackboneElement).count()", &p),
        vec![json!(2)]
    );
    // contentReference elements (Questionnaire.item.item) and inline Elements of data types
    let q = json!({"resourceType": "Questionnaire", "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}]});
    assert_eq!(
        eval_json("item.first().type().name", &q),
        vec![json!("BackboneElement")]
    );
    assert_eq!(
        eval_json("item.item.first().type().name", &q),
        vec![json!("BackboneElement")]
    );
    assert_eq!(eval_json("item.item.linkId", &q), vec![json!("1.1")]);
    let m = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/1"},
        "dosageInstruction": [{"timing": {"repeat": {"frequency": 1}}}]});
    assert_eq!(
        eval_json("dosageInstruction.timing.repeat.type().name", &m),
        vec![json!("Element")]
    );
    // types of everything else are unchanged
    assert_eq!(
        eval_json("contact.name.type().name", &p),
        vec![json!("HumanName")]
    );
    assert_eq!(eval_json("Patient.type().name", &p), vec![json!("Patient")]);
}

#[test]
fn decimal_equivalence_ignores_trailing_zeros_in_the_precision() {
    let empty = json!({});
    for (expr, want) in [
        ("1.10 ~ 1.14", true),
        ("0.50 ~ 0.54", true),
        ("1.10 ~ 1.1", true),
        ("1.100 ~ 1.14", true),
        ("1.10 ~ 1.16", false),
        ("1.1 ~ 1.2", false),
        ("1.0 ~ 1", true),
        ("1.2 / 1.8 ~ 0.67", true),
        // a midpoint rounds away from zero, not to the even neighbour
        ("1.2 ~ 1.25", false),
        ("1.3 ~ 1.25", true),
        ("-1.2 ~ -1.25", false),
        ("-1.3 ~ -1.25", true),
        ("1.10 !~ 1.14", false),
        ("1.10 'mg' ~ 1.14 'mg'", true),
        ("1.10 'mg' ~ 1.16 'mg'", false),
    ] {
        assert_eq!(eval_json(expr, &empty), vec![json!(want)], "{expr}");
    }
}

#[test]
fn quantity_sums_and_differences_take_the_most_granular_unit() {
    let empty = json!({});
    for (expr, value, unit) in [
        ("3 'm' + 3 'cm'", "303", "cm"),
        ("3 'cm' + 3 'm'", "303", "cm"),
        ("3 'm' - 3 'cm'", "297", "cm"),
        ("3 'kg' - 500 'g'", "2500", "g"),
        ("3 'g' + 1 'g'", "4", "g"),
        ("1 day + 1 'h'", "25", "h"),
        ("1 'h' + 1 day", "25", "h"),
        ("1 week - 1 day", "6", "day"),
        ("1 'wk' + 1 week", "2", "wk"),
    ] {
        let r = eval_json(expr, &empty);
        assert_eq!(r.len(), 1, "{expr}: {r:?}");
        let v: rust_decimal::Decimal = r[0]["value"].to_string().parse().expect("decimal");
        assert_eq!(v.normalize().to_string(), value, "{expr}: {r:?}");
        assert_eq!(r[0]["unit"], json!(unit), "{expr}: {r:?}");
    }
    assert_eq!(
        eval_json("3 'm' + 3 'cm' = 3.03 'm'", &empty),
        vec![json!(true)]
    );
    let e = fhirpath::compile("3 'm' + 3 'g'")
        .expect("compile")
        .evaluate(&EvalContext::new(model()), &empty)
        .unwrap_err();
    assert!(e.to_string().contains("cannot add"), "{e}");
}

#[test]
fn string_equivalence_matches_whitespace_character_by_character() {
    let empty = json!({});
    for (expr, want) in [
        ("'a  b' ~ 'a b'", false),
        ("' a' ~ 'a'", false),
        ("'a ' ~ 'a'", false),
        ("'a\tb' ~ 'a b'", true),
        ("'a\r\nb' ~ 'A  B'", true),
        ("'Ab C' ~ 'aB c'", true),
        ("'a  b' !~ 'a b'", true),
    ] {
        assert_eq!(eval_json(expr, &empty), vec![json!(want)], "{expr}");
    }
}

#[test]
fn calendar_years_and_months_compare_with_days_without_a_calendar() {
    let empty = json!({});
    for (expr, want) in [
        ("1 year = 365 days", Some(true)),
        ("1 year ~ 365 days", Some(true)),
        ("1 year = 366 days", Some(false)),
        ("1 year > 364 days", Some(true)),
        ("1 month = 30 days", Some(true)),
        ("6 months = 180 days", Some(true)),
        ("1 year = 8760 hours", Some(true)),
        ("1 year = 365 'd'", Some(true)),
        ("1 year = 12 months", Some(true)),
        // UCUM's year and month are not calendar durations (R4 suite,
        // testStringQuantityYearLiteralToQuantity and ...MonthLiteralToQuantity)
        ("1 year = 1 'a'", None),
        ("1 'a' = 1 year", None),
        ("1 month = 1 'mo'", None),
        ("1 year = 1 'kg'", None),
    ] {
        let r = eval_json(expr, &empty);
        assert_eq!(
            r,
            want.map(|b| json!(b)).into_iter().collect::<Vec<_>>(),
            "{expr}"
        );
    }
    // N1 Time-valued Quantities: "`1 year` is not equal to `1 'a'`, but it is equivalent"
    for (expr, want) in [
        ("1 year ~ 1 'a'", true),
        ("1 'a' ~ 1 year", true),
        ("2 months ~ 2 'mo'", true),
        ("1 year ~ 12 'mo'", true),
        ("1 year ~ 2 'a'", false),
        ("1 year !~ 1 'a'", false),
        ("1 year ~ 1 'kg'", false),
    ] {
        assert_eq!(eval_json(expr, &empty), vec![json!(want)], "{expr}");
    }
}

#[test]
fn as_operator_filters_a_collection_like_the_function() {
    // R4 SearchParameter component-value-quantity: `(Observation.component.value as Quantity)`
    let o = json!({"resourceType": "Observation", "status": "final", "code": {},
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 107, "unit": "mm[Hg]"}},
            {"code": {"text": "note"}, "valueString": "x"},
            {"code": {"text": "diastolic"}, "valueQuantity": {"value": 60, "unit": "mm[Hg]"}}]});
    assert_eq!(
        eval_json("(Observation.component.value as Quantity).value", &o),
        vec![json!(107), json!(60)]
    );
    assert_eq!(
        eval_json("Observation.component.value.as(Quantity).value", &o),
        vec![json!(107), json!(60)]
    );
    assert_eq!(
        eval_json("(Observation.component.value as string)", &o),
        vec![json!("x")]
    );
    assert_eq!(
        eval_json("(Observation.component.value as Period)", &o),
        Vec::<Value>::new()
    );
    assert_eq!(
        eval_json(
            "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
            &o
        )
        .len(),
        2
    );
    // an unknown type is still an error, and `is` keeps the singleton rule
    let ctx = EvalContext::new(model());
    for bad in [
        "Observation.component.value as Quantity1",
        "Observation.component.value is Quantity",
    ] {
        let expr = fhirpath::compile(bad).expect("compile");
        let r = expr.evaluate(&ctx, &o);
        assert!(r.is_err(), "{bad}: {r:?}");
    }
}

#[test]
fn r4_observation_component_search_parameters_index_a_blood_pressure() {
    // the expressions of the R4 core SearchParameters, verbatim (hl7.fhir.r4.core 4.0.1)
    let (_, bp) = support::r4_examples()
        .iter()
        .find(|(name, _)| name == "Observation-blood-pressure.json")
        .expect("R4 example Observation-blood-pressure");
    let ctx = EvalContext::new(model());
    for (param, expr, want) in [
        (
            "component-value-quantity",
            "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
            2,
        ),
        (
            "combo-value-quantity",
            "(Observation.value as Quantity) | (Observation.value as SampledData) | (Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
            2,
        ),
        (
            "component-value-concept",
            "(Observation.component.value as CodeableConcept)",
            0,
        ),
        (
            "combo-value-concept",
            "(Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)",
            0,
        ),
    ] {
        let compiled = fhirpath::compile(expr).expect("compile");
        let r = compiled
            .evaluate(&ctx, bp)
            .unwrap_or_else(|e| panic!("{param}: {e}"));
        assert_eq!(r.len(), want, "{param}: {r:?}");
    }
}
